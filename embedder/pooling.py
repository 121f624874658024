"""Pooling of token vectors into one sentence vector, and L2 normalisation."""

import numpy as np
import torch

POOLINGS = ("mean", "cls", "max")


def pool(token_vectors: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce (batch, tokens, dim) token vectors to (batch, dim) by `mode`, ignoring padding."""
    if mode == "cls":
        return token_vectors[:, 0]
    mask = attention_mask.unsqueeze(-1).to(token_vectors.dtype)
    if mode == "mean":
        summed = (token_vectors * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1e-9)
    if mode == "max":
        return token_vectors.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    raise ValueError(f"unknown pooling {mode!r}; valid choices: {', '.join(POOLINGS)}")


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit length (rows of zeros stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
