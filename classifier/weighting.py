"""Class weights and focal alpha for the torch-trained heads, and the loss they minimise."""

from collections.abc import Sequence

import numpy as np
import torch

from classifier.errors import InvalidParameterError
from classifier.focal import sigmoid_focal_loss, softmax_focal_loss
from classifier.network import LossFunction

Alpha = float | str | Sequence[float] | None


def balanced_weights(targets: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-row weights n / (k * count(class)), as scikit-learn's class_weight="balanced".

    Multi-label targets (n, L) get a weight per element, balancing each label's 0s and 1s.
    """
    if targets.ndim == 2:
        positives = targets.sum(axis=0).clip(min=1)
        negatives = (len(targets) - targets.sum(axis=0)).clip(min=1)
        weights = np.where(
            targets == 1, len(targets) / (2 * positives), len(targets) / (2 * negatives)
        )
        return weights.astype(np.float32)
    counts = np.bincount(targets, minlength=n_classes).clip(min=1)
    return (len(targets) / (n_classes * counts))[targets].astype(np.float32)


def resolve_alpha(
    alpha: Alpha, targets: np.ndarray, n_classes: int, task: str
) -> np.ndarray | None:
    """Turn the user's alpha into the focal loss's form.

    Binary and multi-label: weight of the positive class, one per label (negatives get
    1 - alpha). Multi-class: one weight per class. "balanced" derives it from frequencies.
    """
    if alpha is None:
        return None
    n_columns = 1 if task == "binary" else n_classes
    if isinstance(alpha, str):
        if alpha != "balanced":
            raise InvalidParameterError(f"alpha: {alpha!r} is not a number, a list or 'balanced'")
        if task == "multiclass":
            counts = np.bincount(targets, minlength=n_classes).clip(min=1)
            return (len(targets) / (n_classes * counts)).astype(np.float32)
        positives = targets.reshape(len(targets), -1).mean(axis=0)
        return (1 - positives).astype(np.float32)
    values = np.atleast_1d(np.asarray(alpha, dtype=np.float32))
    if task == "multiclass":
        if len(values) != n_classes or (values < 0).any():
            raise InvalidParameterError(
                f"alpha: multi-class needs {n_classes} non-negative weights (one per class) "
                f"or 'balanced', got {values.tolist()}"
            )
        return values
    if len(values) not in (1, n_columns) or ((values < 0) | (values > 1)).any():
        raise InvalidParameterError(
            f"alpha: needs one value in [0, 1] (positive-class weight) or {n_columns} of them, "
            f"got {values.tolist()}"
        )
    return np.broadcast_to(values, (n_columns,)).copy()


def make_loss(task: str, gamma: float, alpha: np.ndarray | None) -> LossFunction:
    """Build the focal loss for `task`; gamma = 0 and alpha = None give plain cross-entropy."""
    if gamma < 0:
        raise InvalidParameterError(f"gamma: must be >= 0, got {gamma}")
    alpha_tensor = None if alpha is None else torch.as_tensor(alpha)

    def loss(
        logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        if task == "multiclass":
            return softmax_focal_loss(logits, targets, gamma, alpha_tensor, weights)
        if task == "binary":
            binary_alpha = None if alpha_tensor is None else alpha_tensor[0]
            return sigmoid_focal_loss(logits[:, 0], targets, gamma, binary_alpha, weights)
        return sigmoid_focal_loss(logits, targets, gamma, alpha_tensor, weights)

    return loss
