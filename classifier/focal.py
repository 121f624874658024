"""Focal loss (Lin et al. 2017) for sigmoid and softmax outputs; gamma = 0 is cross-entropy.

FL(p_t) = -alpha_t * (1 - p_t) ** gamma * log(p_t). Losses are averaged over samples
(sigmoid: over samples × labels), with optional per-sample weights multiplied in.
"""

import torch
import torch.nn.functional as functional


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss of independent sigmoid outputs (binary: shape (n,), multi-label: (n, L)).

    Args:
        logits: Raw scores.
        targets: 0/1 targets of the same shape.
        gamma: Focusing parameter (>= 0); 0 gives binary cross-entropy.
        alpha: Weight of the positive class (negatives get 1 - alpha); a float,
            or a tensor with one value per label. None weighs both classes 1.
        weights: Optional per-element (or broadcastable) weights, e.g. class weights.

    Returns:
        The mean loss, a scalar.

    """
    targets = targets.to(logits.dtype)
    log_p = functional.logsigmoid(logits)
    log_not_p = functional.logsigmoid(-logits)
    log_p_t = targets * log_p + (1 - targets) * log_not_p
    loss = -((1 - log_p_t.exp()) ** gamma) * log_p_t
    if alpha is not None:
        alpha = torch.as_tensor(alpha, dtype=logits.dtype)
        loss = (targets * alpha + (1 - targets) * (1 - alpha)) * loss
    if weights is not None:
        loss = loss * weights
    return loss.mean()


def softmax_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss of a softmax over classes.

    Args:
        logits: Raw scores (n, k).
        targets: Class indices (n,).
        gamma: Focusing parameter (>= 0); 0 gives cross-entropy.
        alpha: Optional weight per class (k,).
        weights: Optional per-sample weights (n,).

    Returns:
        The mean over samples, a scalar (alpha-weighted terms summed, divided by n).

    """
    log_probabilities = functional.log_softmax(logits, dim=1)
    log_p_t = log_probabilities.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    loss = -((1 - log_p_t.exp()) ** gamma) * log_p_t
    if alpha is not None:
        loss = torch.as_tensor(alpha, dtype=logits.dtype)[targets.long()] * loss
    if weights is not None:
        loss = loss * weights
    return loss.mean()
