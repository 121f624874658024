"""Stacking: a logistic meta-model over the log-odds of several fitted heads' probabilities.

The members are fitted heads of different families (say a lexical model and a logistic
regression on the vectors). The meta-model is fitted on their OUT-OF-FOLD probabilities,
so it learns how far to trust each family where that family had not seen the row; being
a logistic model on log-odds, it is also their joint Platt calibration.

* single-label: features = every member's log-odds of every class column (binary: the
  positive column only); one multinomial (binary: one logistic) model over them;
* multi-label: label j's probability = sigmoid(sum over members of w[m, j] * logit(p_mj)
  + b[j]): one small logistic model per label over the members' opinions of that label.

`fit_meta` (training) imports scikit-learn; `StackedClassifier` (serving) is numpy alone.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from classifier.calibration import _logit, predict_with
from classifier.dense import sigmoid, softmax

# The meta-model has a handful of inputs per member; C=1 on log-odds keeps one very
# confident member from taking all the weight on few rows.
META_C = 1.0
ABSENT_BIAS = -30.0


def meta_features(task: str, probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """Stack features from each member's probabilities: (n, F) single-label, (n, M, L) multi."""
    if task == "multilabel":
        return np.stack([_logit(np.asarray(p, dtype=np.float64)) for p in probabilities], axis=1)
    if task == "binary":
        return np.column_stack(
            [_logit(np.asarray(p, dtype=np.float64)[:, 1]) for p in probabilities]
        )
    return np.column_stack([_logit(np.asarray(p, dtype=np.float64)) for p in probabilities])


def fit_meta(
    task: str,
    features: np.ndarray,
    targets: np.ndarray,
    C: float = META_C,
    n_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the meta-model; returns (weights, bias) as StackedClassifier takes them.

    `n_classes` (multi-class): the head's class count, when `targets` may lack some.
    """
    from sklearn.linear_model import LogisticRegression

    if task != "multilabel":
        model = LogisticRegression(C=C, max_iter=2000).fit(features, targets)
        weights = np.asarray(model.coef_, dtype=np.float64).T  # (F, 1) binary, (F, K) multi
        bias = np.asarray(model.intercept_, dtype=np.float64)
        if task == "multiclass" and n_classes is not None and len(model.classes_) < n_classes:
            # Rows without some class (a CV fold around a rare class): it gets no weight
            # and a bias that keeps its probability near 0.
            present = np.asarray(model.classes_, dtype=np.int64)
            if len(present) == 2:  # scikit-learn fits one column for two classes
                weights = np.column_stack([-weights[:, 0] / 2, weights[:, 0] / 2])
                bias = np.array([-bias[0] / 2, bias[0] / 2])
            full_weights = np.zeros((features.shape[1], n_classes))
            full_bias = np.full(n_classes, ABSENT_BIAS)
            full_weights[:, present], full_bias[present] = weights, bias
            return full_weights, full_bias
        return weights, bias
    members, labels = features.shape[1], features.shape[2]
    weights, bias = np.zeros((members, labels)), np.zeros(labels)
    for label in range(labels):
        truth = targets[:, label]
        if truth.min() == truth.max():
            # One class among the rows: the members' mean opinion, unweighted.
            weights[:, label] = 1.0 / members
            continue
        model = LogisticRegression(C=C, max_iter=2000).fit(features[:, :, label], truth)
        weights[:, label], bias[label] = model.coef_[0], model.intercept_[0]
    return weights, bias


def meta_probabilities(
    task: str, features: np.ndarray, weights: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """The meta-model's probabilities from `meta_features`, float32."""
    if task == "multilabel":
        logits = np.einsum("nml,ml->nl", features, weights) + bias
        return sigmoid(logits).astype(np.float32)
    logits = features @ weights + bias
    if task == "binary":
        positive = sigmoid(logits[:, 0])
        return np.column_stack([1 - positive, positive]).astype(np.float32)
    return softmax(logits).astype(np.float32)


class StackedClassifier:
    """Fitted members plus a logistic meta-model over their log-odds (numpy only).

    Args:
        members: Fitted persistable models; each `predict_proba` has the head's columns.
        task: "binary", "multiclass" or "multilabel".
        weights, bias: From `fit_meta`.

    """

    persist_kind = "stacked_classifier"

    def __init__(
        self, members: Sequence[Any], task: str, weights: np.ndarray, bias: np.ndarray
    ) -> None:
        if not members:
            raise ValueError("members: a stack needs at least one member")
        if task not in ("binary", "multiclass", "multilabel"):
            raise ValueError(f"task: {task!r} is not binary, multiclass or multilabel")
        self.members_ = list(members)
        self.task_ = task
        self.weights_ = np.asarray(weights, dtype=np.float64)
        self.bias_ = np.asarray(bias, dtype=np.float64)
        if self.weights_.ndim != 2 or self.bias_.shape != self.weights_.shape[1:]:
            raise ValueError(f"weights {self.weights_.shape} and bias {self.bias_.shape} differ")
        reads = {
            name for member in self.members_ for name in getattr(member, "inputs_", ("vectors",))
        }
        self.inputs_ = tuple(name for name in ("vectors", "texts") if name in reads)
        self.classes_ = getattr(self.members_[0], "classes_", None)

    def predict_proba(self, X: np.ndarray | None, texts: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities (n, columns), float32."""
        opinions = [predict_with(member, X, texts) for member in self.members_]
        return meta_probabilities(
            self.task_, meta_features(self.task_, opinions), self.weights_, self.bias_
        )

    def to_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Members as components, the meta-model as arrays (see classifier.persist)."""
        return {"task": self.task_}, {
            "members": self.members_,
            "weights": self.weights_,
            "bias": self.bias_,
        }

    @classmethod
    def from_state(cls, config: dict[str, Any], parts: dict[str, Any]) -> "StackedClassifier":
        """Rebuild from `to_state`'s output."""
        return cls(parts["members"], config["task"], parts["weights"], parts["bias"])
