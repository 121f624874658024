"""From probabilities to decisions with numpy alone (the serving path imports no scikit-learn)."""

import numpy as np

from classifier.tasks import TaskSpec


def decide(spec: TaskSpec, probabilities: np.ndarray, thresholds: list[float] | None) -> np.ndarray:
    """Predicted class indices (n,) or a 0/1 matrix (n, L), using thresholds where given."""
    if spec.multilabel:
        cuts = np.asarray(thresholds if thresholds is not None else [0.5] * probabilities.shape[1])
        return (probabilities >= cuts[None, :]).astype(np.int64)
    if spec.task == "binary" and thresholds is not None:
        return (probabilities[:, 1] >= thresholds[0]).astype(np.int64)
    return probabilities.argmax(axis=1)
