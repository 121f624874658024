"""A head rebuilt from its artifact: vectors (and texts) in, predictions out, numpy alone.

No torch and no scikit-learn on this path: the API loads and serves heads without them.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from classifier.decisions import decide
from classifier.errors import FingerprintMismatchError, InputShapeError
from classifier.tasks import TaskSpec


@dataclass(frozen=True)
class LoadedHead:
    """A verified head: its model (see classifier.persist), what it predicts, and its metadata.

    `inputs` says what the model reads: "vectors" (the encoder's), "texts" (lexical
    features), or both; `predict` checks that what it needs was given.
    """

    name: str
    version: int
    model: Any
    spec: TaskSpec
    thresholds: list[float] | None
    metadata: dict[str, Any]
    fingerprint: str
    dim: int
    inputs: tuple[str, ...] = ("vectors",)

    @property
    def needs_vectors(self) -> bool:
        """True when predictions need the encoder's vectors."""
        return "vectors" in self.inputs

    @property
    def needs_texts(self) -> bool:
        """True when predictions need the raw texts (lexical features)."""
        return "texts" in self.inputs

    def check_encoder(self, fingerprint: str) -> None:
        """Refuse vectors from any encoder other than the one the head was trained on."""
        if self.needs_vectors and fingerprint != self.fingerprint:
            model = self.metadata.get("encoder", {}).get("model", "?")
            raise FingerprintMismatchError(
                f"head {self.name!r} v{self.version} was trained on encoder {self.fingerprint} "
                f"({model}); the running encoder is {fingerprint}"
            )

    def predict_proba(
        self, vectors: np.ndarray | None, texts: Sequence[str] | None = None
    ) -> np.ndarray:
        """Probabilities (n, len(labels)), columns in `spec.labels` order."""
        if self.needs_vectors:
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != self.dim:
                raise InputShapeError(
                    f"vectors: head {self.name!r} expects shape (n, {self.dim}), "
                    f"got {vectors.shape}"
                )
        if self.needs_texts and texts is None:
            raise InputShapeError(f"texts: head {self.name!r} reads the texts; none were given")
        if self.needs_texts:
            return self.model.predict_proba(vectors, texts=list(texts))
        return self.model.predict_proba(vectors)

    def predict(
        self, vectors: np.ndarray | None, texts: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One dict per row.

        Binary / multi-class: {"label": ..., "probabilities": {label: p}}.
        Multi-label: {"labels": [labels over their thresholds], "probabilities": {label: p}}.
        """
        probabilities = self.predict_proba(vectors, texts)
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
