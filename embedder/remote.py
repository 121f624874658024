"""An EmbeddingService look-alike that asks a running bertheads server for vectors.

A trainer on a laptop can use the server's encoder and its Redis cache instead of loading
the model: texts the server has seen are answered from its cache, the same as local encoding.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bertheads.client import Client
from embedder.service import EmbedResult


class RemoteEmbeddingService:
    """Vectors from a bertheads server, with the surface a trainer uses of EmbeddingService.

    Args:
        url: The server's base URL, e.g. "http://127.0.0.1:8000".
        api_key: Sent as a bearer token (needed when the server sets PROTECT_READS).
        client: An existing client to use instead of building one (url/api_key are then unused).

    """

    def __init__(
        self, url: str, api_key: str | None = None, *, client: Client | None = None
    ) -> None:
        self.client = client or Client(url, api_key)
        self._health: dict[str, Any] | None = None

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def describe(self) -> dict[str, Any]:
        """The server's vector space (model, dim, fingerprint, backend), like Encoder.describe()."""
        if self._health is None:
            self._health = self.client.health()
        return {key: self._health[key] for key in ("model", "dim", "fingerprint", "backend")}

    @property
    def dim(self) -> int:
        """Vector width."""
        return int(self.describe()["dim"])

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the server's vector space; saved heads record it."""
        return str(self.describe()["fingerprint"])

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        progress: bool = False,
        count_truncated: bool = True,
    ) -> EmbedResult:
        """Vectors for `texts` from the server (float32 (n, dim), request order).

        Args:
            texts: The texts.
            normalize: L2-normalise; default: the server's setting.
            progress: Show a progress bar over texts.
            count_truncated: Accepted for EmbeddingService compatibility; the server always counts.

        """
        texts = list(texts)
        if not texts:
            return EmbedResult(np.empty((0, self.dim), dtype=np.float32), 0, 0)
        with tqdm(total=len(texts), unit="text", desc="embed", disable=not progress) as bar:
            response = self.client.embed_detailed(texts, normalize=normalize, on_chunk=bar.update)
        truncated = response.truncated if count_truncated else 0
        return EmbedResult(vectors=response.vectors, cached=response.cached, truncated=truncated)
