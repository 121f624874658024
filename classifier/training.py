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
from classifier.features import FEATURES
from classifier.heads import HEADS, LOSSES
from classifier.metrics import decide, evaluate, tune_thresholds
from classifier.resampling import RESAMPLE_METHODS
from classifier.tasks import TaskSpec, encode_labels, stratify_key, take_rows
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
    # Metadata blocks beside the metrics: chosen, leaderboard, search, baseline, calibration
    # (classifier.reporting; /work/brief/METADATA.md).
    report: dict[str, Any] = field(default_factory=dict)

    def predict_proba(
        self, vectors: np.ndarray | None, texts: Sequence[str] | None = None
    ) -> np.ndarray:
        """Probabilities, columns in `spec.labels` order (texts for heads that read them)."""
        return predict_estimator(self.estimator, vectors, texts)

    def predict_indices(
        self, vectors: np.ndarray | None, texts: Sequence[str] | None = None
    ) -> np.ndarray:
        """Class indices (n,) or a 0/1 matrix (n, L), at the stored thresholds."""
        return decide(self.spec, self.predict_proba(vectors, texts), self.thresholds)


def build_head(head: str = "logreg", features: str = "embedding", **params: Any) -> Any:
    """Build an unfitted head by name; unknown parameters are refused.

    features="embedding": "logreg" or "mlp" on the vectors. "lexical" / "hybrid":
    a classifier.features head whose linear model is `head` ("logreg" or "svm").
    """
    if features not in FEATURES:
        raise InvalidParameterError(f"features: {features!r} is not one of {list(FEATURES)}")
    if features != "embedding":
        from classifier.features.fitting import build_text_head

        return build_text_head(features, head, **params)
    if head not in HEADS:
        raise InvalidParameterError(f"head: {head!r} is not one of {sorted(HEADS)}")
    estimator_class = HEADS[head]
    valid = estimator_class().get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise InvalidParameterError(f"{head}: unknown parameters {unknown}; valid: {sorted(valid)}")
    return estimator_class(**params)


def reads_texts(estimator: Any) -> bool:
    """True when the estimator's fit / predict_proba take the texts (lexical features)."""
    return "texts" in getattr(estimator, "inputs_", ("vectors",))


def fit_estimator(estimator: Any, X: np.ndarray | None, y: np.ndarray, texts: Any) -> Any:
    """`estimator.fit`, with the texts for the heads that read them."""
    if reads_texts(estimator):
        return estimator.fit(X, y, texts=texts)
    return estimator.fit(X, y)


def predict_estimator(estimator: Any, X: np.ndarray | None, texts: Any) -> np.ndarray:
    """`estimator.predict_proba`, with the texts for the heads that read them."""
    if reads_texts(estimator):
        return estimator.predict_proba(X, texts=texts)
    return estimator.predict_proba(X)


def holdout_rows(targets: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The stratified split train_head makes for `test_size` (the same rows, same seed)."""
    if not 0 < test_size < 1:
        raise InvalidParameterError(f"test_size: must be in (0, 1), got {test_size}")
    try:
        train, held = train_test_split(
            np.arange(len(targets)),
            test_size=test_size,
            stratify=stratify_key(targets),
            random_state=seed,
        )
    except ValueError as error:
        # Too few rows to hold out one of each class: the data's fault, said so.
        raise TrainingDataError(
            f"test_size: cannot hold out {test_size:g} of {len(targets)} rows ({error})"
        ) from None
    return train, held


def _fit_and_tune(
    head: str,
    params: dict[str, Any],
    spec: TaskSpec,
    X: np.ndarray | None,
    y: np.ndarray,
    texts: list[str] | None,
    tune: bool,
    threshold_fraction: float,
    seed: int,
) -> tuple[Any, list[float] | None, float]:
    thresholds = None
    if tune:
        # Thresholds come from a head that never saw the validation rows;
        # the head kept is refit on all rows.
        fit_rows, validation_rows = train_test_split(
            np.arange(len(y)),
            test_size=threshold_fraction,
            stratify=stratify_key(y),
            random_state=seed,
        )
        probe = fit_estimator(
            build_head(head, **params),
            take_rows(X, fit_rows),
            y[fit_rows],
            take_rows(texts, fit_rows),
        )
        probabilities = predict_estimator(
            probe, take_rows(X, validation_rows), take_rows(texts, validation_rows)
        )
        truth = (
            y[validation_rows]
            if spec.multilabel
            else (y[validation_rows] == 1).astype(int)[:, None]
        )
        thresholds = tune_thresholds(
            truth, probabilities if spec.multilabel else probabilities[:, 1:]
        )
    started = time.perf_counter()
    estimator = fit_estimator(build_head(head, **params), X, y, texts)
    return estimator, thresholds, time.perf_counter() - started


def _check_texts(texts: Sequence[str] | None, rows: int, field: str, needed: bool) -> Any:
    if texts is None:
        if needed:
            raise InputShapeError(f"{field}: lexical and hybrid heads need the texts")
        return None
    texts = list(texts)
    if len(texts) != rows:
        raise InputShapeError(f"{field}: {len(texts)} texts for {rows} rows")
    return texts


def train_head(
    vectors: np.ndarray | None,
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
    features: str = "embedding",
    texts: Sequence[str] | None = None,
    test_texts: Sequence[str] | None = None,
    **head_params: Any,
) -> TrainedHead:
    """Fit a head on float32 vectors (and / or the texts) and evaluate it on held-out rows.

    Args:
        vectors: Training vectors (n, dim); None for features="lexical".
        labels: Class labels (n,) for binary / multi-class; label lists or a 0/1 matrix
            (n, L) for multi-label (see tasks.encode_labels).
        label_names: Column names of a multi-label matrix.
        test_vectors: Explicit evaluation vectors; else `test_size` of the training
            rows are split off (stratified).
        test_labels: Labels of `test_vectors`, in the training labels' form.
        test_size: Share held out when no test rows are given; 0 skips evaluation.
        head: "logreg" or "mlp" (embedding); "logreg" or "svm" (lexical, hybrid).
        loss: "ce" or "focal".
        gamma: Focal focusing parameter.
        alpha: Focal class weight: float, list or "balanced" (weighting.resolve_alpha).
        class_weight: None or "balanced".
        resample: "none", "over" or "under" (training rows only, inside the head's fit).
        seed: Seeds splits, resampling and training.
        tune_threshold: Tune per-label F1 thresholds on a validation split; default:
            on for multi-label, off otherwise (binary may opt in).
        threshold_fraction: Share of training rows used to tune thresholds.
        features: "embedding" (the vectors), "lexical" (TF-IDF of the texts) or "hybrid"
            (both, one linear model; see classifier.features).
        texts: Training texts, one per row (needed by lexical and hybrid heads).
        test_texts: Texts of the evaluation rows (with test_vectors / test_labels).
        **head_params: Further head parameters (C, hidden_sizes, vector_weight, ...).

    Returns:
        The fitted head (refit on all training rows) with metrics on the held-out rows.

    """
    if features not in FEATURES:
        raise InvalidParameterError(f"features: {features!r} is not one of {list(FEATURES)}")
    spec, y = encode_labels(labels, label_names)
    X = None
    if features != "lexical" or vectors is not None:
        X = np.asarray(vectors, dtype=np.float32)
        if X.ndim != 2 or len(X) == 0:
            raise EmptyDataError(f"vectors: need a non-empty (n, dim) array, got shape {X.shape}")
        if len(y) != len(X):
            raise InputShapeError(f"labels: {len(y)} rows but vectors has {len(X)}")
    text_rows = _check_texts(texts, len(y), "texts", features != "embedding")
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
    if features != "embedding":
        params["features"] = features
    build_head(head, **params)  # refuse bad options before any work
    test_rows_texts = None
    if test_vectors is not None or test_texts is not None:
        count = len(test_labels) if test_labels is not None else 0
        test_rows_texts = _check_texts(test_texts, count, "test_texts", features != "embedding")
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
            text_rows,
            test_rows_texts,
        )
    except ValueError as error:
        # scikit-learn refuses data too small to split or score, e.g. fewer held-out rows
        # than classes, or a label that is always on: that is the data's fault, not ours.
        raise TrainingDataError(f"cannot train on this data: {error}") from None


def _fit_and_evaluate(
    X: np.ndarray | None,
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
    texts: list[str] | None = None,
    test_texts: list[str] | None = None,
) -> TrainedHead:
    test_X, test_y = None, None
    explicit_test = test_vectors is not None or (X is None and test_texts is not None)
    if X is not None and test_vectors is None and test_texts is not None:
        raise InvalidParameterError("test_vectors: required with test_texts for this head")
    if test_vectors is not None and X is not None:
        test_X = np.asarray(test_vectors, dtype=np.float32)
        if test_X.shape[1:] != X.shape[1:]:
            raise InputShapeError(
                f"test_vectors: width {test_X.shape[1:]} differs from {X.shape[1:]}"
            )
    if explicit_test:
        test_y = _encode_like(spec, test_labels, label_names)
    elif test_size > 0:
        train_rows, test_rows = holdout_rows(y, test_size, seed)
        X, test_X = take_rows(X, train_rows), take_rows(X, test_rows)
        texts, test_texts = take_rows(texts, train_rows), take_rows(texts, test_rows)
        y, test_y = y[train_rows], y[test_rows]
    tune = spec.multilabel if tune_threshold is None else tune_threshold
    if tune and spec.task == "multiclass":
        raise InvalidParameterError("tune_threshold: only for binary or multi-label tasks")
    estimator, thresholds, fit_seconds = _fit_and_tune(
        head, params, spec, X, y, texts, tune, threshold_fraction, seed
    )
    metrics: dict[str, Any] = {}
    evaluation = None
    if test_y is not None:
        probabilities = predict_estimator(estimator, test_X, test_texts)
        metrics = evaluate(spec, test_y, probabilities, thresholds)
        evaluation = (test_y, probabilities)
    metrics["fit_seconds"] = fit_seconds
    lexical = lexical_report(estimator, test_texts if test_y is not None else None)
    if lexical is not None:
        metrics["lexical"] = lexical
    return TrainedHead(
        estimator=estimator,
        spec=spec,
        thresholds=thresholds,
        metrics=metrics,
        params={"head": head, **params},
        fit_seconds=fit_seconds,
        n_train=len(y),
        loss_history=getattr(estimator, "loss_history_", None),
        evaluation=evaluation,
    )


def lexical_report(estimator: Any, test_texts: list[str] | None) -> dict[str, Any] | None:
    """Vocabulary size and texts with no usable token (train, and test when given), or None.

    Such texts get an all-zero TF-IDF row: a hybrid head still reads their vector, a
    lexical head predicts its prior for them.
    """
    report = getattr(estimator, "lexical_report_", None)
    if report is None:
        return None
    report = dict(report)
    if test_texts is not None:
        rows = estimator.to_serving().transform.transform(test_texts)
        report["test_texts_without_tokens"] = len(rows.empty_rows())
    return report


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
    vectors: np.ndarray | None,
    labels: Sequence[Any] | np.ndarray,
    folds: int = 5,
    *,
    texts: Sequence[str] | None = None,
    **options: Any,
) -> tuple[TrainedHead, dict[str, Any]]:
    """K stratified folds (mean ± std of each score), then a final head on all rows.

    Args:
        vectors: Vectors (n, dim), as in train_head (None for features="lexical").
        labels: Labels, as in train_head.
        folds: Number of folds (>= 2).
        texts: The texts, one per row (lexical and hybrid heads).
        **options: Passed to train_head (not test_* arguments).

    Returns:
        The final head (its `evaluation` holds out-of-fold predictions) and the summary
        {"folds": [...], "<metric>": {"mean", "std"}}.

    """
    if folds < 2:
        raise InvalidParameterError(f"cv: need at least 2 folds, got {folds}")
    X = None if vectors is None else np.asarray(vectors, dtype=np.float32)
    text_rows = None if texts is None else list(texts)
    spec, y = encode_labels(labels, options.get("label_names"))
    given = np.asarray(labels, dtype=object) if not isinstance(labels, np.ndarray) else labels
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=options.get("seed", 0))
    fold_metrics, out_of_fold = [], np.zeros((len(y), len(spec.labels)), dtype=np.float32)
    for train_rows, test_rows in splitter.split(np.zeros(len(y)), stratify_key(y, min_count=folds)):
        fold = train_head(
            take_rows(X, train_rows),
            _rows(given, train_rows),
            test_vectors=take_rows(X, test_rows),
            test_labels=_rows(given, test_rows),
            texts=take_rows(text_rows, train_rows),
            test_texts=take_rows(text_rows, test_rows),
            **options,
        )
        fold_metrics.append(fold.metrics)
        out_of_fold[test_rows] = fold.evaluation[1]
    final = train_head(X, labels, test_size=0, texts=text_rows, **options)
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
