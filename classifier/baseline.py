"""The bag-of-words baseline every run is compared with: TF-IDF + a linear SVM.

Fitted on the same training rows and scored on the same held-out rows as the head, with
the same metrics (classifier.metrics.evaluate), so the report can say whether the encoder
earns its keep. It is training-time only: never saved, never served.

Features: word 1-2-grams and char_wb 2-5-grams, sublinear tf, each block L2-normalised;
model: scikit-learn's LinearSVC at its default C=1 (one-vs-rest; not tuned to any of our
sets), the quickest strong text classifier there is (0.6 s on 16k sst2 rows against 3.5 s
for logistic regression). Its decision values become scores through a sigmoid (softmax
across classes): the same ranking and argmax, so accuracy, F1 and the AUCs are the SVM's.
Multi-label: one SVM per label, with per-label F1 thresholds tuned on a validation split,
as the heads' are.
"""

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from classifier.dense import sigmoid, softmax
from classifier.metrics import evaluate, tune_thresholds
from classifier.tasks import TaskSpec, stratify_key

BASELINE_C = 1.0
BASELINE_NAME = "tfidf(word1-2+char_wb2-5)+linear-svm(C=1)"
# Scores compared head against baseline (whichever the task has).
COMPARED = ("accuracy", "macro_f1", "weighted_f1", "micro_f1", "roc_auc", "pr_auc")


def tfidf_features(n_rows: int) -> Any:
    """An unfitted word + char TF-IDF union (scikit-learn); min_df 2 once rows allow it."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    # Terms seen once carry no evidence a linear model can generalise from, and drop the
    # vocabulary (and fit time) by half on large sets; tiny sets keep every term.
    min_df = 2 if n_rows >= 200 else 1
    common = {"sublinear_tf": True, "min_df": min_df, "dtype": np.float32}
    return FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), **common)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), **common)),
        ]
    )


def linear_model(task: str, C: float = BASELINE_C) -> Any:
    """A linear SVM (one per label for multi-label)."""
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    model = LinearSVC(C=C)
    return OneVsRestClassifier(model) if task == "multilabel" else model


def aligned_probabilities(model: Any, features: Any, spec: TaskSpec) -> np.ndarray:
    """Scores in [0, 1] with one column per class of `spec` (see the module doc)."""
    decision = np.asarray(model.decision_function(features), dtype=np.float64)
    if spec.multilabel:
        return sigmoid(decision).astype(np.float32)
    if decision.ndim == 1:
        positive = sigmoid(decision)
        return np.column_stack([1 - positive, positive]).astype(np.float32)
    # A class missing from the training rows gets no score (-inf before the softmax).
    full = np.full((decision.shape[0], len(spec.labels)), -np.inf)
    full[:, np.asarray(model.classes_, dtype=np.int64)] = decision
    return softmax(full).astype(np.float32)


def fit_baseline(
    texts: Sequence[str],
    targets: np.ndarray,
    spec: TaskSpec,
    test_texts: Sequence[str],
    test_targets: np.ndarray,
    *,
    tune_threshold: bool,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the baseline on the training rows, score it on the held-out rows.

    Args:
        texts: Training texts.
        targets: Their encoded targets (as classifier.tasks gives them).
        spec: The task.
        test_texts: The held-out texts the head is scored on.
        test_targets: Their encoded targets.
        tune_threshold: Tune per-label (or the binary) F1 thresholds, on 3-fold
            out-of-fold scores of the training rows (the TF-IDF is fitted once on all
            training texts: it never sees a label, so only the SVMs are refitted).
        seed: Seeds the threshold folds.

    Returns:
        {"name", "metrics"} with the same metric keys as the head's (curves left out).

    """
    from sklearn.model_selection import StratifiedKFold

    started = time.perf_counter()
    features = tfidf_features(len(texts))
    matrix = features.fit_transform(list(texts))
    thresholds = None
    if tune_threshold:
        folds = 3 if len(texts) >= 30 else 2
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        held = np.zeros((len(texts), len(spec.labels)), dtype=np.float32)
        for fit_rows, held_rows in splitter.split(matrix, stratify_key(targets, min_count=folds)):
            model = linear_model(spec.task).fit(matrix[fit_rows], targets[fit_rows])
            held[held_rows] = aligned_probabilities(model, matrix[held_rows], spec)
        if spec.multilabel:
            thresholds = tune_thresholds(targets, held)
        else:
            thresholds = tune_thresholds((targets == 1).astype(int)[:, None], held[:, 1:])
    model = linear_model(spec.task).fit(matrix, targets)
    probabilities = aligned_probabilities(model, features.transform(list(test_texts)), spec)
    fit_seconds = time.perf_counter() - started
    scored = evaluate(spec, test_targets, probabilities, thresholds)
    metrics = {key: scored[key] for key in ("n_rows", *COMPARED) if key in scored}
    metrics["fit_seconds"] = fit_seconds
    return {"name": BASELINE_NAME, "metrics": metrics}


def cross_validated_baseline(
    texts: Sequence[str], targets: np.ndarray, spec: TaskSpec, folds: int, seed: int = 0
) -> dict[str, Any]:
    """The baseline scored on out-of-fold predictions of the folds `--cv` uses.

    The folds are those of classifier.training.cross_validate_head (same splitter, same
    seed); multi-label thresholds are tuned on the out-of-fold scores themselves, as the
    CV report of a head does.
    """
    from sklearn.model_selection import StratifiedKFold

    started = time.perf_counter()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    held_scores = np.zeros((len(texts), len(spec.labels)), dtype=np.float32)
    key = stratify_key(targets, min_count=folds)
    for fit_rows, held_rows in splitter.split(np.zeros(len(targets)), key):
        features = tfidf_features(len(fit_rows))
        matrix = features.fit_transform([texts[row] for row in fit_rows])
        model = linear_model(spec.task).fit(matrix, targets[fit_rows])
        held = features.transform([texts[row] for row in held_rows])
        held_scores[held_rows] = aligned_probabilities(model, held, spec)
    thresholds = tune_thresholds(targets, held_scores) if spec.multilabel else None
    scored = evaluate(spec, targets, held_scores, thresholds)
    metrics = {key: scored[key] for key in ("n_rows", *COMPARED) if key in scored}
    metrics["fit_seconds"] = time.perf_counter() - started
    return {"name": BASELINE_NAME, "metrics": metrics}


def compare(head_metrics: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """`baseline` with head_minus_baseline for every score both have."""
    differences = {
        key: float(head_metrics[key]) - float(value)
        for key, value in baseline["metrics"].items()
        if key in COMPARED
        and isinstance(value, float)
        and isinstance(head_metrics.get(key), int | float)
    }
    return {**baseline, "head_minus_baseline": differences}
