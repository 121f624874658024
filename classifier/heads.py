"""The heads: logistic regression and a small MLP, as scikit-learn estimators on float32 vectors.

`fit(X, y)` takes y as class labels (n,) for binary / multi-class, or a 0/1 matrix
(n, L) for multi-label. `predict_proba` columns follow `classes_` (for multi-label,
`classes_` is the label column indices and each column is that label's probability).

A fitted head saves as a `classifier.dense.DenseClassifier` (`to_state`, see
classifier.persist): the same probabilities from numpy alone, so serving a saved head
imports neither torch nor scikit-learn.
"""

from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier

from classifier.dense import DenseClassifier, forward
from classifier.errors import InvalidParameterError, PersistError, SingleClassError
from classifier.network import train_network
from classifier.resampling import resample_indices
from classifier.tasks import stratify_key
from classifier.weighting import Alpha, balanced_weights, make_loss, resolve_alpha

LOSSES: tuple[str, ...] = ("ce", "focal")


class _Head(ClassifierMixin, BaseEstimator):
    """Shared fitting logic: scaling, label encoding, the torch path, and prediction."""

    loss: str
    gamma: float
    alpha: Alpha
    class_weight: str | None
    resample: str
    random_state: int

    def _check_options(self) -> None:
        if self.loss not in LOSSES:
            raise InvalidParameterError(f"loss: {self.loss!r} is not one of {list(LOSSES)}")
        if self.class_weight not in (None, "balanced"):
            raise InvalidParameterError(
                f"class_weight: {self.class_weight!r} is not None or 'balanced'"
            )
        if self.alpha is not None and self.loss != "focal":
            raise InvalidParameterError(
                "alpha: only used with loss='focal'; use class_weight for 'ce'"
            )

    def _prepare(self, X: np.ndarray, y: Any) -> tuple[np.ndarray, np.ndarray]:
        self._check_options()
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        self.multilabel_ = y.ndim == 2
        if self.multilabel_:
            self.classes_ = np.arange(y.shape[1])
            targets = y.astype(np.int64)
        else:
            self.classes_, targets = np.unique(y, return_inverse=True)
            if len(self.classes_) < 2:
                raise SingleClassError(f"y: only one class ({self.classes_[0]!r}); need at least 2")
        self.n_features_in_ = X.shape[1]
        self.task_ = (
            "multilabel"
            if self.multilabel_
            else ("binary" if len(self.classes_) == 2 else "multiclass")
        )
        # Standardised inputs make one learning rate and one C fit every encoder.
        self.scaler_mean_ = X.mean(axis=0)
        self.scaler_scale_ = X.std(axis=0) + 1e-6
        return self._scale(X), targets

    def _scale(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float32) - self.scaler_mean_) / self.scaler_scale_).astype(
            np.float32
        )

    def _fit_torch(
        self, X: np.ndarray, targets: np.ndarray, hidden_sizes: tuple[int, ...], l2: float
    ) -> None:
        rows = np.arange(len(X))
        validation_rows = None
        if self.validation_fraction > 0 and len(X) >= 20:
            rows, validation_rows = train_test_split(
                rows,
                test_size=self.validation_fraction,
                stratify=stratify_key(targets),
                random_state=self.random_state,
            )
        # Resampling after the split keeps duplicated rows out of early stopping's rows.
        rows = rows[resample_indices(targets[rows], self.resample, self.random_state)]
        n_outputs = 1 if self.task_ == "binary" else len(self.classes_)
        alpha = None
        if self.loss == "focal":
            alpha = resolve_alpha(self.alpha, targets[rows], len(self.classes_), self.task_)
        loss = make_loss(self.task_, self.gamma if self.loss == "focal" else 0.0, alpha)

        def part(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            part_targets = targets[indices]
            weights = None
            if self.class_weight == "balanced":
                weights = balanced_weights(part_targets, len(self.classes_))
            dtype = np.int64 if self.task_ == "multiclass" else np.float32
            return X[indices], part_targets.astype(dtype), weights

        run = train_network(
            part(rows),
            None if validation_rows is None else part(validation_rows),
            loss,
            n_outputs,
            hidden_sizes=hidden_sizes,
            dropout=getattr(self, "dropout", 0.0),
            l2=l2,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            patience=self.patience,
            seed=self.random_state,
        )
        self.weights_, self.biases_ = run.weights, run.biases
        self.loss_history_ = {
            "train": run.train_loss,
            "validation": run.validation_loss,
            "best_epoch": run.best_epoch,
        }

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probabilities (n, len(classes_)); multi-label columns are independent."""
        features = self._scale(X)
        if hasattr(self, "estimator_"):
            return self.estimator_.predict_proba(features).astype(np.float32)
        logits = forward(features, self.weights_, self.biases_)
        if self.task_ == "binary":
            positive = expit(logits[:, 0])
            return np.column_stack([1 - positive, positive]).astype(np.float32)
        if self.task_ == "multiclass":
            return softmax(logits, axis=1).astype(np.float32)
        return expit(logits).astype(np.float32)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class labels (n,), or a 0/1 matrix (n, L) at threshold 0.5 for multi-label."""
        probabilities = self.predict_proba(X)
        if self.multilabel_:
            return (probabilities >= 0.5).astype(np.int64)
        return self.classes_[probabilities.argmax(axis=1)]

    # -- persistence (classifier.persist): a fitted head serves as a DenseClassifier ------

    persist_kind = DenseClassifier.persist_kind

    def to_serving(self) -> DenseClassifier:
        """The fitted head as a numpy-only DenseClassifier with the same probabilities."""
        if not hasattr(self, "scaler_mean_"):
            raise PersistError(f"{type(self).__name__}: fit it before saving")
        output = {"binary": "binary", "multiclass": "softmax", "multilabel": "sigmoid"}[self.task_]
        if hasattr(self, "estimator_"):
            weight, bias = _linear_weights(self.estimator_, self.n_features_in_)
            weights, biases = [weight], [bias]
        else:
            weights, biases = list(self.weights_), list(self.biases_)
        return DenseClassifier(
            self.scaler_mean_, self.scaler_scale_, weights, biases, output, self.classes_.tolist()
        )

    def to_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The DenseClassifier's state (see classifier.persist)."""
        return self.to_serving().to_state()


def _linear_weights(model: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight (d, out), bias (out,)) of a fitted LogisticRegression or one-vs-rest of them."""
    if isinstance(model, OneVsRestClassifier):
        columns = [_linear_weights(part, width) for part in model.estimators_]
        weight = np.concatenate([column[0] for column in columns], axis=1)
        return weight, np.concatenate([column[1] for column in columns])
    if hasattr(model, "coef_"):
        return (
            np.asarray(model.coef_, dtype=np.float32).T.copy(),
            np.asarray(model.intercept_, dtype=np.float32).copy(),
        )
    # A one-vs-rest column with one class in its rows: a constant probability.
    positive = float(model.predict_proba(np.zeros((1, width), dtype=np.float32))[0, -1])
    positive = min(max(positive, 1e-7), 1 - 1e-7)
    bias = np.array([np.log(positive / (1 - positive))], dtype=np.float32)
    return np.zeros((width, 1), dtype=np.float32), bias


class LogisticHead(_Head):
    """Logistic regression: scikit-learn's with loss="ce", the torch trainer with loss="focal".

    Args:
        loss: "ce" (scikit-learn, one-vs-rest for multi-label) or "focal".
        C: Inverse L2 strength on standardised inputs, as in scikit-learn (focal: penalty
            1 / (C * n) per row). 0.003 was best on both hate_speech and toxic (mpnet).
        class_weight: None or "balanced".
        gamma: Focal focusing parameter.
        alpha: Focal class weight: float / list / "balanced" (see weighting.resolve_alpha).
        resample: "none", "over" or "under", applied to training rows inside fit.
        max_iter: scikit-learn solver iterations.
        learning_rate, batch_size, max_epochs, patience, validation_fraction: focal training.
        random_state: Seed.

    """

    def __init__(
        self,
        loss: str = "ce",
        C: float = 0.003,
        class_weight: str | None = None,
        gamma: float = 2.0,
        alpha: Alpha = None,
        resample: str = "none",
        max_iter: int = 2000,
        learning_rate: float = 1e-3,
        batch_size: int = 64,
        max_epochs: int = 200,
        patience: int = 10,
        validation_fraction: float = 0.1,
        random_state: int = 0,
    ) -> None:
        self.loss = loss
        self.C = C
        self.class_weight = class_weight
        self.gamma = gamma
        self.alpha = alpha
        self.resample = resample
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: Any) -> "LogisticHead":
        """Fit on vectors X (n, dim) and labels y; returns self."""
        features, targets = self._prepare(X, y)
        if self.C <= 0:
            raise InvalidParameterError(f"C: must be > 0, got {self.C}")
        if self.loss == "focal":
            self._fit_torch(features, targets, (), l2=1.0 / (self.C * len(features)))
            return self
        rows = resample_indices(targets, self.resample, self.random_state)
        model = LogisticRegression(
            C=self.C,
            class_weight=self.class_weight,
            max_iter=self.max_iter,
            random_state=self.random_state,
        )
        if self.multilabel_:
            model = OneVsRestClassifier(model)
        self.estimator_ = model.fit(features[rows], targets[rows])
        self.loss_history_ = None
        return self


class MLPHead(_Head):
    """A small dense network (ReLU, dropout), Adam, early stopping on a validation split.

    Args:
        hidden_sizes: Widths of the hidden layers.
        dropout: Dropout after each hidden layer.
        weight_decay: L2 penalty on weight matrices.
        loss: "ce" or "focal".
        gamma, alpha: Focal parameters (see LogisticHead).
        class_weight: None or "balanced".
        resample: "none", "over" or "under", applied to training rows inside fit.
        learning_rate, batch_size, max_epochs, patience: Optimisation.
        validation_fraction: Share of training rows held out for early stopping.
        random_state: Seed.

    """

    def __init__(
        self,
        hidden_sizes: tuple[int, ...] = (256,),
        dropout: float = 0.5,
        weight_decay: float = 1e-3,
        loss: str = "ce",
        gamma: float = 2.0,
        alpha: Alpha = None,
        class_weight: str | None = None,
        resample: str = "none",
        # Batch 256 takes a quarter of the optimiser steps of 64 for the same validation AUC
        # (docs/BENCHMARKS.md, retrain), which is what makes a 10k-row retrain take seconds.
        learning_rate: float = 1e-3,
        batch_size: int = 256,
        max_epochs: int = 200,
        patience: int = 10,
        validation_fraction: float = 0.1,
        random_state: int = 0,
    ) -> None:
        self.hidden_sizes = hidden_sizes
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.loss = loss
        self.gamma = gamma
        self.alpha = alpha
        self.class_weight = class_weight
        self.resample = resample
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: Any) -> "MLPHead":
        """Fit on vectors X (n, dim) and labels y; returns self."""
        features, targets = self._prepare(X, y)
        if not 0 <= self.dropout < 1:
            raise InvalidParameterError(f"dropout: must be in [0, 1), got {self.dropout}")
        self._fit_torch(features, targets, tuple(self.hidden_sizes), l2=self.weight_decay)
        return self


HEADS: dict[str, type[_Head]] = {"logreg": LogisticHead, "mlp": MLPHead}
