"""Evaluation plots as PNG files (matplotlib, Agg backend, imported only when plotting)."""

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from classifier.tasks import TaskSpec


def _curves(spec: TaskSpec, targets: np.ndarray, probabilities: np.ndarray) -> list[tuple]:
    """(name, 0/1 truth, score) per curve: the positive class, each class, or each label."""
    names = [str(label) for label in spec.labels]
    if spec.task == "binary":
        return [(names[1], targets == 1, probabilities[:, 1])]
    if spec.task == "multiclass":
        return [(name, targets == i, probabilities[:, i]) for i, name in enumerate(names)]
    return [(name, targets[:, i] == 1, probabilities[:, i]) for i, name in enumerate(names)]


def save_plots(
    out_dir: Path,
    spec: TaskSpec,
    metrics: dict[str, Any],
    evaluation: tuple[np.ndarray, np.ndarray] | None,
    loss_history: dict[str, Any] | None,
) -> list[Path]:
    """Write confusion matrix, ROC, precision-recall, per-class F1, loss and reliability plots.

    Args:
        out_dir: Directory for the PNG files.
        spec: The task.
        metrics: Output of metrics.evaluate (confusion matrix, per-class F1), with the
            `calibration` block (reliability bins; classifier.calibration) when present.
        evaluation: (targets, probabilities) of the held-out rows, or None.
        loss_history: {"train": [...], "validation": [...]} of a torch-trained head, or None.

    Returns:
        The written files.

    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(figure: Any, filename: str) -> None:
        figure.tight_layout()
        figure.savefig(out_dir / filename, dpi=110)
        plt.close(figure)
        written.append(out_dir / filename)

    matrix = metrics.get("confusion_matrix")
    if matrix is not None:
        cells = matrix if isinstance(matrix, list) else list(matrix.values())
        titles = None if isinstance(matrix, list) else list(matrix)
        count = 1 if titles is None else len(cells)
        figure, axes = plt.subplots(1, count, figsize=(4 * count, 3.8), squeeze=False)
        for position, axis in enumerate(axes[0]):
            values = np.asarray(cells if titles is None else cells[position])
            ticks = metrics["labels"] if titles is None else ["0", "1"]
            axis.imshow(values, cmap="Blues")
            for (row, column), value in np.ndenumerate(values):
                color = "white" if value > values.max() / 2 else "black"
                axis.text(column, row, str(value), ha="center", va="center", color=color)
            axis.set_xticks(range(len(ticks)), ticks, rotation=45, ha="right")
            axis.set_yticks(range(len(ticks)), ticks)
            axis.set_xlabel("predicted")
            axis.set_ylabel("true")
            axis.set_title("confusion matrix" if titles is None else titles[position])
        save(figure, "confusion_matrix.png")
    if evaluation is not None:
        curves = _curves(spec, *evaluation)
        for filename, kind in (("roc_curve.png", "roc"), ("pr_curve.png", "pr")):
            figure, axis = plt.subplots(figsize=(5.5, 4.5))
            for name, truth, score in curves:
                if truth.min() == truth.max():
                    continue
                if kind == "roc":
                    false_positive, true_positive, _ = roc_curve(truth, score)
                    axis.plot(false_positive, true_positive, label=name)
                else:
                    precision, recall, _ = precision_recall_curve(truth, score)
                    axis.plot(recall, precision, label=name)
            if kind == "roc":
                axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
            axis.set_xlabel("false positive rate" if kind == "roc" else "recall")
            axis.set_ylabel("true positive rate" if kind == "roc" else "precision")
            axis.set_title("ROC" if kind == "roc" else "precision-recall")
            axis.legend(fontsize=8)
            save(figure, filename)
    if metrics.get("per_class"):
        names = list(metrics["per_class"])
        figure, axis = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.8))
        axis.bar(names, [metrics["per_class"][name]["f1"] for name in names])
        axis.set_ylim(0, 1)
        axis.set_ylabel("F1")
        axis.set_title("per-class F1")
        axis.tick_params(axis="x", rotation=45)
        save(figure, "per_class_f1.png")
    if loss_history and loss_history.get("train"):
        figure, axis = plt.subplots(figsize=(5.5, 4))
        axis.plot(loss_history["train"], label="train")
        if loss_history.get("validation"):
            axis.plot(loss_history["validation"], label="validation")
        axis.axvline(loss_history.get("best_epoch", 0), color="grey", linestyle=":")
        axis.set_xlabel("epoch")
        axis.set_ylabel("loss")
        axis.set_title("training loss")
        axis.legend()
        save(figure, "loss_curve.png")
    calibration = metrics.get("calibration") or {}
    bins = [b for b in calibration.get("reliability") or [] if b.get("count")]
    if bins:
        figure, axis = plt.subplots(figsize=(5, 4.5))
        axis.plot([0, 1], [0, 1], "k:", linewidth=0.8, label="perfectly calibrated")
        confidence = [b["confidence"] for b in bins]
        accuracy = [b["accuracy"] for b in bins]
        axis.plot(confidence, accuracy, "o-", label="this head")
        for x, y, b in zip(confidence, accuracy, bins, strict=True):
            axis.annotate(
                str(b["count"]),
                (x, y),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color="grey",
            )
        multilabel = spec.multilabel
        axis.set_xlabel("predicted probability" if multilabel else "confidence (top class)")
        axis.set_ylabel("share positive" if multilabel else "accuracy")
        ece = calibration.get("ece")
        method = calibration.get("method", "none")
        title = "reliability" + ("" if ece is None else f" (ECE {ece:.3f}, {method})")
        axis.set_title(title)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.legend(fontsize=8, loc="upper left")
        save(figure, "reliability.png")
    return written
