"""Train a head on vectors and labels: split, fit, tune thresholds, evaluate. No files, no HTTP."""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from classifier.errors import (
    EmptyDataError,
    InputShapeError,
    InvalidParameterError,
    TrainingDataError,
)
from classifier.heads import HEADS, LOSSES
from classifier.metrics import decide, evaluate, tune_thresholds
from classifier.resampling import RESAMPLE_METHODS
from classifier.tasks import TaskSpec, encode_labels, stratify_key
from classifier.weighting import Alpha


@dataclass
class TrainedHead:
    """A fitted head with what it needs to predict and what we learned about it.

    `evaluation` holds the held-out targets and probabilities (for plots); `thresholds` is
    one cut per label (multi-label), one for the positive class (tuned binary), or None.
    """

    estimator: Any
    spec: TaskSpec
    thresholds: list[float] | None
    metrics: dict[str, Any]
    params: dict[str, Any]
    fit_seconds: float
    n_train: int
    loss_history: dict[str, Any] | None = None
    evaluation: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Probabilities, columns in `spec.labels` order."""
        return self.estimator.predict_proba(vectors)

    def predict_indices(self, vectors: np.ndarray) -> np.ndarray:
        """Class indices (n,) or a 0/1 matrix (n, L), at the stored thresholds."""
        return decide(self.spec, self.predict_proba(vectors), self.thresholds)


def build_head(head: str = "logreg", **params: Any) -> Any:
    """Build an unfitted head by name ("logreg" or "mlp"); unknown parameters are refused."""
    if head not in HEADS:
        raise InvalidParameterError(f"head: {head!r} is not one of {sorted(HEADS)}")
    estimator_class = HEADS[head]
    valid = estimator_class().get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise InvalidParameterError(f"{head}: unknown parameters {unknown}; valid: {sorted(valid)}")
    return estimator_class(**params)


def _fit_and_tune(
    head: str,
    params: dict[str, Any],
    spec: TaskSpec,
    X: np.ndarray,
    y: np.ndarray,
    tune: bool,
    threshold_fraction: float,
    seed: int,
) -> tuple[Any, list[float] | None, float]:
    thresholds = None
    if tune:
        # Thresholds come from a head that never saw the validation rows;
        # the head kept is refit on all rows.
        fit_rows, validation_rows = train_test_split(
            np.arange(len(X)),
            test_size=threshold_fraction,
            stratify=stratify_key(y),
            random_state=seed,
        )
        probe = build_head(head, **params).fit(X[fit_rows], y[fit_rows])
        probabilities = probe.predict_proba(X[validation_rows])
        truth = (
            y[validation_rows]
            if spec.multilabel
            else (y[validation_rows] == 1).astype(int)[:, None]
        )
        thresholds = tune_thresholds(
            truth, probabilities if spec.multilabel else probabilities[:, 1:]
        )
    started = time.perf_counter()
    estimator = build_head(head, **params).fit(X, y)
    return estimator, thresholds, time.perf_counter() - started


def train_head(
    vectors: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    label_names: Sequence[str] | None = None,
    test_vectors: np.ndarray | None = None,
    test_labels: Sequence[Any] | np.ndarray | None = None,
    test_size: float = 0.2,
    head: str = "logreg",
    loss: str = "ce",
    gamma: float = 2.0,
    alpha: Alpha = None,
    class_weight: str | None = None,
    resample: str = "none",
    seed: int = 0,
    tune_threshold: bool | None = None,
    threshold_fraction: float = 0.2,
    **head_params: Any,
) -> TrainedHead:
    """Fit a head on float32 vectors and evaluate it on held-out rows.

    Args:
        vectors: Training vectors (n, dim).
        labels: Class labels (n,) for binary / multi-class; label lists or a 0/1 matrix
            (n, L) for multi-label (see tasks.encode_labels).
        label_names: Column names of a multi-label matrix.
        test_vectors: Explicit evaluation vectors; else `test_size` of the training
            rows are split off (stratified).
        test_labels: Labels of `test_vectors`, in the training labels' form.
        test_size: Share held out when no test rows are given; 0 skips evaluation.
        head: "logreg" or "mlp".
        loss: "ce" or "focal".
        gamma: Focal focusing parameter.
        alpha: Focal class weight: float, list or "balanced" (weighting.resolve_alpha).
        class_weight: None or "balanced".
        resample: "none", "over" or "under" (training rows only, inside the head's fit).
        seed: Seeds splits, resampling and training.
        tune_threshold: Tune per-label F1 thresholds on a validation split; default:
            on for multi-label, off otherwise (binary may opt in).
        threshold_fraction: Share of training rows used to tune thresholds.
        **head_params: Further head parameters (C, hidden_sizes, dropout, max_epochs, ...).

    Returns:
        The fitted head (refit on all training rows) with metrics on the held-out rows.

    """
    X = np.asarray(vectors, dtype=np.float32)
    if X.ndim != 2 or len(X) == 0:
        raise EmptyDataError(f"vectors: need a non-empty (n, dim) array, got shape {X.shape}")
    spec, y = encode_labels(labels, label_names)
    if len(y) != len(X):
        raise InputShapeError(f"labels: {len(y)} rows but vectors has {len(X)}")
    if loss not in LOSSES:
        raise InvalidParameterError(f"loss: {loss!r} is not one of {list(LOSSES)}")
    if resample not in RESAMPLE_METHODS:
        raise InvalidParameterError(
            f"resample: {resample!r} is not one of {list(RESAMPLE_METHODS)}"
        )
    params = {
        "loss": loss,
        "gamma": gamma,
        "alpha": alpha,
        "class_weight": class_weight,
        "resample": resample,
        "random_state": seed,
        **head_params,
    }
    build_head(head, **params)  # refuse bad options before any work
    try:
        return _fit_and_evaluate(
            X,
            y,
            spec,
            head,
            params,
            label_names,
            test_vectors,
            test_labels,
            test_size,
            tune_threshold,
            threshold_fraction,
            seed,
        )
    except ValueError as error:
        # scikit-learn refuses data too small to split or score, e.g. fewer held-out rows
        # than classes, or a label that is always on: that is the data's fault, not ours.
        raise TrainingDataError(f"cannot train on this data: {error}") from None


def _fit_and_evaluate(
    X: np.ndarray,
    y: np.ndarray,
    spec: TaskSpec,
    head: str,
    params: dict[str, Any],
    label_names: Sequence[str] | None,
    test_vectors: np.ndarray | None,
    test_labels: Any,
    test_size: float,
    tune_threshold: bool | None,
    threshold_fraction: float,
    seed: int,
) -> TrainedHead:
    test_X, test_y = None, None
    if test_vectors is not None:
        test_X = np.asarray(test_vectors, dtype=np.float32)
        if test_X.shape[1:] != X.shape[1:]:
            raise InputShapeError(
                f"test_vectors: width {test_X.shape[1:]} differs from {X.shape[1:]}"
            )
        test_y = _encode_like(spec, test_labels, label_names)
    elif test_size > 0:
        if not 0 < test_size < 1:
            raise InvalidParameterError(f"test_size: must be in [0, 1), got {test_size}")
        train_rows, test_rows = train_test_split(
            np.arange(len(X)), test_size=test_size, stratify=stratify_key(y), random_state=seed
        )
        X, y, test_X, test_y = X[train_rows], y[train_rows], X[test_rows], y[test_rows]
    tune = spec.multilabel if tune_threshold is None else tune_threshold
    if tune and spec.task == "multiclass":
        raise InvalidParameterError("tune_threshold: only for binary or multi-label tasks")
    estimator, thresholds, fit_seconds = _fit_and_tune(
        head, params, spec, X, y, tune, threshold_fraction, seed
    )
    metrics: dict[str, Any] = {}
    evaluation = None
    if test_X is not None:
        probabilities = estimator.predict_proba(test_X)
        metrics = evaluate(spec, test_y, probabilities, thresholds)
        evaluation = (test_y, probabilities)
    metrics["fit_seconds"] = fit_seconds
    return TrainedHead(
        estimator=estimator,
        spec=spec,
        thresholds=thresholds,
        metrics=metrics,
        params={"head": head, **params},
        fit_seconds=fit_seconds,
        n_train=len(X),
        loss_history=getattr(estimator, "loss_history_", None),
        evaluation=evaluation,
    )


def _encode_like(spec: TaskSpec, labels: Any, label_names: Sequence[str] | None) -> np.ndarray:
    """Encode evaluation labels with the training labels' classes (they may lack some)."""
    if labels is None:
        raise InvalidParameterError("test_labels: required with test_vectors")
    if spec.multilabel:
        if isinstance(labels, np.ndarray) and labels.ndim == 2:
            return labels.astype(np.int64)
        index = {name: column for column, name in enumerate(spec.labels)}
        matrix = np.zeros((len(labels), len(spec.labels)), dtype=np.int64)
        for row, names in enumerate(labels):
            matrix[row, [index[name] for name in names if name in index]] = 1
        return matrix
    index = {label: position for position, label in enumerate(spec.labels)}
    unknown = sorted({str(label) for label in labels if label not in index})
    if unknown:
        raise InvalidParameterError(
            f"test_labels: classes {unknown} not in training classes {list(spec.labels)}"
        )
    return np.array([index[label] for label in labels], dtype=np.int64)


def cross_validate_head(
    vectors: np.ndarray, labels: Sequence[Any] | np.ndarray, folds: int = 5, **options: Any
) -> tuple[TrainedHead, dict[str, Any]]:
    """K stratified folds (mean ± std of each score), then a final head on all rows.

    Args:
        vectors: Vectors (n, dim), as in train_head.
        labels: Labels, as in train_head.
        folds: Number of folds (>= 2).
        **options: Passed to train_head (not test_* arguments).

    Returns:
        The final head (its `evaluation` holds out-of-fold predictions) and the summary
        {"folds": [...], "<metric>": {"mean", "std"}}.

    """
    if folds < 2:
        raise InvalidParameterError(f"cv: need at least 2 folds, got {folds}")
    X = np.asarray(vectors, dtype=np.float32)
    spec, y = encode_labels(labels, options.get("label_names"))
    given = np.asarray(labels, dtype=object) if not isinstance(labels, np.ndarray) else labels
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=options.get("seed", 0))
    fold_metrics, out_of_fold = [], np.zeros((len(X), len(spec.labels)), dtype=np.float32)
    for train_rows, test_rows in splitter.split(X, stratify_key(y, min_count=folds)):
        fold = train_head(
            X[train_rows],
            _rows(given, train_rows),
            test_vectors=X[test_rows],
            test_labels=_rows(given, test_rows),
            **options,
        )
        fold_metrics.append(fold.metrics)
        out_of_fold[test_rows] = fold.evaluation[1]
    final = train_head(X, labels, test_size=0, **options)
    summary: dict[str, Any] = {"folds": fold_metrics}
    for key in ("accuracy", "macro_f1", "weighted_f1", "roc_auc", "pr_auc", "fit_seconds"):
        values = [metrics[key] for metrics in fold_metrics if metrics.get(key) is not None]
        summary[key] = (
            {"mean": float(np.mean(values)), "std": float(np.std(values))} if values else None
        )
    final.evaluation = (y, out_of_fold)
    return final, summary


def _rows(labels: Any, rows: np.ndarray) -> Any:
    return labels[rows] if isinstance(labels, np.ndarray) else [labels[row] for row in rows]
