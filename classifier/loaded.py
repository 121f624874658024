"""A head loaded from disk: checks its encoder and turns vectors into predictions."""

from dataclasses import dataclass
from typing import Any

import numpy as np

from classifier.errors import FingerprintMismatchError, InputShapeError
from classifier.metrics import decide
from classifier.tasks import TaskSpec


@dataclass
class LoadedHead:
    """A verified, unpickled head with its metadata."""

    name: str
    version: int
    estimator: Any
    spec: TaskSpec
    thresholds: list[float] | None
    metadata: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the encoder whose vectors the head was trained on."""
        return str(self.metadata["encoder"]["fingerprint"])

    @property
    def dim(self) -> int:
        """Vector width the head expects."""
        return int(self.metadata["encoder"]["dim"])

    def check_encoder(self, fingerprint: str) -> None:
        """Refuse vectors from any encoder other than the one the head was trained on."""
        if fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"head {self.name!r} v{self.version} was trained on encoder {self.fingerprint} "
                f"({self.metadata['encoder'].get('model', '?')}); "
                f"the running encoder is {fingerprint}"
            )

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Probabilities (n, len(labels)), columns in `spec.labels` order."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise InputShapeError(
                f"vectors: head {self.name!r} expects shape (n, {self.dim}), got {vectors.shape}"
            )
        return self.estimator.predict_proba(vectors)

    def predict(self, vectors: np.ndarray) -> list[dict[str, Any]]:
        """One dict per row.

        Binary / multi-class: {"label": ..., "probabilities": {label: p}}.
        Multi-label: {"labels": [labels over their thresholds], "probabilities": {label: p}}.
        """
        probabilities = self.predict_proba(vectors)
        decisions = decide(self.spec, probabilities, self.thresholds)
        labels = list(self.spec.labels)
        results: list[dict[str, Any]] = []
        for row, decision in zip(probabilities, decisions, strict=True):
            scores = {str(label): float(p) for label, p in zip(labels, row, strict=True)}
            if self.spec.multilabel:
                chosen = [label for label, on in zip(labels, decision, strict=True) if on]
                results.append({"labels": chosen, "probabilities": scores})
            else:
                results.append({"label": labels[int(decision)], "probabilities": scores})
        return results
