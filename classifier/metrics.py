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
)

from classifier.decisions import decide
from classifier.tasks import TaskSpec


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


def evaluate(
    spec: TaskSpec,
    targets: np.ndarray,
    probabilities: np.ndarray,
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    """Accuracy, F1s, ROC-AUC, PR-AUC, per-class scores and the confusion matrix.

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
    return metrics
