"""Evaluation metrics and per-label decision thresholds, as plain JSON-ready dicts.

`decide` lives in classifier.decisions (numpy only, for the serving path); it is
re-exported here for the training code.
"""

import math
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from classifier.decisions import decide
from classifier.tasks import TaskSpec

CURVE_POINTS = 60  # per curve in metrics["curves"]: enough to draw, small enough to serve


def tune_thresholds(targets: np.ndarray, probabilities: np.ndarray) -> list[float]:
    """Per column, the probability threshold that maximises F1 on these rows (0.5 if undecidable).

    Args:
        targets: 0/1 matrix (n, L).
        probabilities: Scores (n, L).

    """
    thresholds = []
    for column in range(targets.shape[1]):
        truth = targets[:, column]
        if truth.min() == truth.max():
            thresholds.append(0.5)
            continue
        precision, recall, cuts = precision_recall_curve(truth, probabilities[:, column])
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        thresholds.append(float(cuts[int(np.argmax(f1[:-1]))]))
    return thresholds


def _score(function: Any, *args: Any, **kwargs: Any) -> float | None:
    """Compute a score, or None where it is undefined (e.g. one class only among the rows)."""
    try:
        value = float(function(*args, **kwargs))
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _thin(x: np.ndarray, y: np.ndarray, limit: int) -> dict[str, list[float]]:
    """At most `limit` points of a curve, spread evenly along its length, ends kept."""
    if len(x) > limit:
        length = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
        wanted = np.linspace(0.0, length[-1], limit)
        keep = np.unique(np.minimum(np.searchsorted(length, wanted), len(x) - 1))
        keep[0], keep[-1] = 0, len(x) - 1
        x, y = x[keep], y[keep]
    return {"x": [round(float(v), 4) for v in x], "y": [round(float(v), 4) for v in y]}


def curves(
    spec: TaskSpec, targets: np.ndarray, probabilities: np.ndarray, limit: int = CURVE_POINTS
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """ROC (x: false positive rate) and PR (x: recall) points per label, <= `limit` each.

    Binary: the positive class; multi-class: each class against the rest; multi-label: each
    label. Labels with one class only among the rows have no curve.
    """
    names = [str(label) for label in spec.labels]
    if spec.multilabel:
        columns = [(name, targets[:, i], i) for i, name in enumerate(names)]
    elif spec.task == "binary":
        columns = [(names[1], targets == 1, 1)]
    else:
        columns = [(name, targets == i, i) for i, name in enumerate(names)]
    drawn: dict[str, dict[str, dict[str, list[float]]]] = {"roc": {}, "pr": {}}
    for name, truth, column in columns:
        truth = np.asarray(truth, dtype=np.int64)
        if truth.min() == truth.max():
            continue
        false_positive, true_positive, _ = roc_curve(truth, probabilities[:, column])
        drawn["roc"][name] = _thin(false_positive, true_positive, limit)
        precision, recall, _ = precision_recall_curve(truth, probabilities[:, column])
        drawn["pr"][name] = _thin(recall[::-1], precision[::-1], limit)
    return drawn


def evaluate(
    spec: TaskSpec,
    targets: np.ndarray,
    probabilities: np.ndarray,
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    """Accuracy, F1s, ROC-AUC, PR-AUC, per-class scores, confusion matrix and curves.

    Multi-label: accuracy is exact-match, ROC-AUC and PR-AUC are macro over labels that
    have both classes among the rows; predictions use `thresholds`.
    """
    predictions = decide(spec, probabilities, thresholds)
    names = [str(label) for label in spec.labels]
    indices = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=indices, zero_division=0
    )
    per_class: dict[str, dict[str, Any]] = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    metrics: dict[str, Any] = {
        "task": spec.task,
        "n_rows": len(targets),
        "accuracy": float(accuracy_score(targets, predictions)),
        "macro_f1": float(f1_score(targets, predictions, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(targets, predictions, average="weighted", zero_division=0)),
    }
    if spec.multilabel:
        for i, name in enumerate(names):
            per_class[name]["roc_auc"] = _score(roc_auc_score, targets[:, i], probabilities[:, i])
            per_class[name]["pr_auc"] = _score(
                average_precision_score, targets[:, i], probabilities[:, i]
            )
            per_class[name]["threshold"] = None if thresholds is None else float(thresholds[i])
        for key in ("roc_auc", "pr_auc"):
            values = [scores[key] for scores in per_class.values() if scores[key] is not None]
            metrics[key] = float(np.mean(values)) if values else None
        metrics["micro_f1"] = float(
            f1_score(targets, predictions, average="micro", zero_division=0)
        )
        metrics["confusion_matrix"] = {
            name: matrix.tolist()
            for name, matrix in zip(
                names, multilabel_confusion_matrix(targets, predictions), strict=True
            )
        }
    else:
        if spec.task == "binary":
            metrics["roc_auc"] = _score(roc_auc_score, targets, probabilities[:, 1])
            metrics["pr_auc"] = _score(average_precision_score, targets, probabilities[:, 1])
            metrics["positive_label"] = names[1]
        else:
            one_hot = np.eye(len(names), dtype=np.int64)[targets]
            present = one_hot.sum(axis=0) > 0
            metrics["roc_auc"] = _score(
                roc_auc_score, one_hot[:, present], probabilities[:, present], average="macro"
            )
            metrics["pr_auc"] = _score(
                average_precision_score,
                one_hot[:, present],
                probabilities[:, present],
                average="macro",
            )
        metrics["confusion_matrix"] = confusion_matrix(
            targets, predictions, labels=indices
        ).tolist()
    metrics["labels"] = names
    metrics["per_class"] = per_class
    metrics["curves"] = curves(spec, targets, probabilities)
    return metrics
