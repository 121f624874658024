"""Random over- and under-sampling of training rows; never called on validation or test rows."""

import numpy as np

from classifier.errors import InvalidParameterError
from classifier.tasks import stratify_key

RESAMPLE_METHODS: tuple[str, ...] = ("none", "over", "under")


def resample_indices(targets: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """Row indices (into `targets`) after resampling, so every class has the same count.

    `over` repeats rows of smaller classes up to the largest class; `under` keeps a
    random subset of each class the size of the smallest. Multi-label rows are grouped
    by their rarest positive label (rows with none form one group).

    Args:
        targets: Class indices (n,) or a 0/1 matrix (n, L).
        method: One of "none", "over", "under".
        seed: Seed of the random choice.

    Returns:
        Indices into the given rows; "none" returns all rows in order.

    """
    if method not in RESAMPLE_METHODS:
        raise InvalidParameterError(f"resample: {method!r} is not one of {list(RESAMPLE_METHODS)}")
    if method == "none":
        return np.arange(len(targets))
    key = stratify_key(targets, min_count=1)
    groups = [np.flatnonzero(key == value) for value in np.unique(key)]
    size = max(map(len, groups)) if method == "over" else min(map(len, groups))
    generator = np.random.default_rng(seed)
    chosen = []
    for rows in groups:
        if method == "over":
            extra = generator.choice(rows, size=size - len(rows), replace=True)
            chosen.append(np.concatenate([rows, extra]))
        else:
            chosen.append(generator.choice(rows, size=size, replace=False))
    return np.sort(np.concatenate(chosen))
