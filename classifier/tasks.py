"""Task detection and label encoding: binary, multi-class or multi-label, from the labels alone."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from classifier.errors import EmptyDataError, SingleClassError, TrainingDataError

Task = Literal["binary", "multiclass", "multilabel"]
TASKS: tuple[str, ...] = ("binary", "multiclass", "multilabel")


@dataclass(frozen=True)
class TaskSpec:
    """What a head predicts: the task and its labels (class names, or label names)."""

    task: Task
    labels: tuple[Any, ...]

    @property
    def multilabel(self) -> bool:
        """True for several independent 0/1 labels."""
        return self.task == "multilabel"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"task": self.task, "labels": list(self.labels)}


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def encode_labels(
    labels: Sequence[Any] | np.ndarray, label_names: Sequence[str] | None = None
) -> tuple[TaskSpec, np.ndarray]:
    """Detect the task and encode labels as integers.

    Args:
        labels: Either a 1-d sequence of class labels (2 distinct → binary, more →
            multi-class), a list of label lists (multi-label), or a 2-d 0/1 matrix
            (multi-label; `label_names` then names its columns).
        label_names: Names of the multi-label columns; for label lists, fixes their order.

    Returns:
        The task spec and the targets: class indices (n,) or a 0/1 matrix (n, n_labels), int64.

    """
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        return _encode_matrix(labels, label_names)
    rows = list(labels)
    if not rows:
        raise EmptyDataError("labels: no rows (need at least 2 classes with examples)")
    if all(isinstance(row, list | tuple | set | frozenset) for row in rows):
        names = list(label_names) if label_names else sorted({name for row in rows for name in row})
        index = {name: column for column, name in enumerate(names)}
        matrix = np.zeros((len(rows), len(names)), dtype=np.int64)
        for row_number, row in enumerate(rows):
            for name in row:
                if name not in index:
                    raise TrainingDataError(f"labels: row {row_number} has unknown label {name!r}")
                matrix[row_number, index[name]] = 1
        return _encode_matrix(matrix, names)
    if label_names is not None:
        raise TrainingDataError(
            "label_names is only for multi-label data (label lists or a matrix)"
        )
    classes = sorted(
        {_native(value) for value in rows}, key=lambda value: (str(type(value)), value)
    )
    if len(classes) < 2:
        raise SingleClassError(f"labels: only one class ({classes[0]!r}); need at least 2")
    index = {value: position for position, value in enumerate(classes)}
    targets = np.array([index[_native(value)] for value in rows], dtype=np.int64)
    task: Task = "binary" if len(classes) == 2 else "multiclass"
    return TaskSpec(task, tuple(classes)), targets


def _encode_matrix(
    matrix: np.ndarray, label_names: Sequence[str] | None
) -> tuple[TaskSpec, np.ndarray]:
    if matrix.shape[0] == 0:
        raise EmptyDataError("labels: no rows")
    if not np.isin(matrix, (0, 1)).all():
        raise TrainingDataError("labels: a multi-label matrix must hold only 0 and 1")
    names = (
        list(label_names) if label_names is not None else [str(i) for i in range(matrix.shape[1])]
    )
    if len(names) != matrix.shape[1] or len(set(names)) != len(names):
        raise TrainingDataError(
            f"label_names: need {matrix.shape[1]} distinct names, got {len(names)}: {names}"
        )
    positives = matrix.sum(axis=0)
    empty = [name for name, count in zip(names, positives, strict=True) if count == 0]
    if empty:
        raise SingleClassError(f"labels: no positive example for {empty}; every label needs one")
    return TaskSpec("multilabel", tuple(names)), matrix.astype(np.int64)


def stratify_key(targets: np.ndarray, min_count: int = 2) -> np.ndarray:
    """Build a 1-d key to stratify splits on; multi-label rows use their rarest positive label.

    Groups smaller than `min_count` are folded into the largest group so that
    scikit-learn's stratified splitters accept the key.
    """
    if targets.ndim == 1:
        key = targets.copy()
    else:
        frequency = targets.sum(axis=0)
        # Rows without any positive label get their own group (-1).
        rarity = np.where(targets == 1, frequency[None, :], np.iinfo(np.int64).max)
        key = np.where(targets.any(axis=1), rarity.argmin(axis=1), -1)
    values, counts = np.unique(key, return_counts=True)
    largest = values[counts.argmax()]
    for value, count in zip(values, counts, strict=True):
        if count < min_count:
            key[key == value] = largest
    return key


def take_rows(values: Any, rows: np.ndarray) -> Any:
    """Rows of an array, of a list (texts), or None."""
    if values is None:
        return None
    if isinstance(values, np.ndarray):
        return values[rows]
    return [values[row] for row in rows]
