"""Pooling of token vectors into one sentence vector, and L2 normalisation, in numpy."""

import numpy as np

POOLINGS = ("mean", "cls", "max")


def pool(token_vectors: np.ndarray, attention_mask: np.ndarray, mode: str) -> np.ndarray:
    """Reduce (batch, tokens, dim) token vectors to (batch, dim) float32 by `mode`.

    Padding positions (mask 0) are ignored. Sums run in float32 whatever the input type.
    """
    if mode not in POOLINGS:
        raise ValueError(f"unknown pooling {mode!r}; valid choices: {', '.join(POOLINGS)}")
    tokens = np.asarray(token_vectors, dtype=np.float32)
    if mode == "cls":
        return np.ascontiguousarray(tokens[:, 0])
    mask = np.asarray(attention_mask)[:, :, None].astype(bool)
    if mode == "mean":
        counts = np.maximum(mask.sum(axis=1, dtype=np.float32), 1e-9)
        # einsum sums over tokens without building a masked copy of the token vectors.
        summed = np.einsum("btd,bt->bd", tokens, mask[:, :, 0].astype(np.float32))
        return (summed / counts).astype(np.float32, copy=False)
    return np.where(mask, tokens, -np.inf).max(axis=1).astype(np.float32, copy=False)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit length (rows of zeros stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
