"""Cached embedding: look up Redis, encode only the misses, store them back."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from embedder.cache import EmbeddingCache
from embedder.encoder import Encoder
from embedder.pooling import l2_normalize

EncodeFunction = Callable[[list[str]], np.ndarray]
STORE_EVERY = 256  # texts encoded between cache writes


@dataclass
class EmbedResult:
    """Vectors (n, dim) in request order, with how many came from the cache and were truncated."""

    vectors: np.ndarray
    cached: int
    truncated: int


class EmbeddingService:
    """The encoder behind its cache; the one way the API and the CLI get vectors.

    The cache always holds raw (unnormalised) vectors under the raw-space fingerprint;
    normalisation is a deterministic step applied after, so both forms come from one entry.

    Args:
        encoder: The frozen encoder.
        cache: The Redis cache, or None to run uncached.
        encode_raw: What encodes cache misses; default: the encoder directly. The API
            passes its micro-batcher here so concurrent requests share forward passes.

    """

    def __init__(
        self,
        encoder: Encoder,
        cache: EmbeddingCache | None,
        encode_raw: EncodeFunction | None = None,
    ) -> None:
        self.encoder = encoder
        self.cache = cache
        self._encode_raw = encode_raw or encoder.encode_raw
        self.texts_encoded = 0
        self.texts_cached = 0

    @property
    def dim(self) -> int:
        """Vector width."""
        return self.encoder.dim

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the vectors this service returns by default."""
        return self.encoder.fingerprint()

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        progress: bool = False,
        count_truncated: bool = True,
    ) -> EmbedResult:
        """Vectors for `texts`, from the cache where possible.

        Duplicates are encoded once. Returns float32 (len(texts), dim).
        """
        texts = list(texts)
        unique = list(dict.fromkeys(texts))
        raw_space = self.encoder.fingerprint(normalize=False)
        dim = self.encoder.dim
        found = self.cache.get_many(raw_space, unique, dim) if self.cache else [None] * len(unique)
        missing = [text for text, vector in zip(unique, found, strict=True) if vector is None]
        vectors_by_text: dict[str, np.ndarray] = {
            text: vector for text, vector in zip(unique, found, strict=True) if vector is not None
        }
        if missing:
            vectors_by_text.update(self._encode_and_store(missing, raw_space, progress))
        vectors = np.empty((len(texts), dim), dtype=np.float32)
        for row, text in enumerate(texts):
            vectors[row] = vectors_by_text[text]
        normalize = self.encoder.normalize if normalize is None else normalize
        if normalize:
            vectors = l2_normalize(vectors)
        hit_texts = set(vectors_by_text) - set(missing)
        cached = sum(text in hit_texts for text in texts)
        self.texts_encoded += len(missing)
        self.texts_cached += cached
        truncated = self.encoder.count_truncated(texts) if count_truncated else 0
        return EmbedResult(vectors=vectors, cached=cached, truncated=truncated)

    def cached_mask(self, texts: Sequence[str]) -> np.ndarray:
        """Which texts `embed` would serve from the cache alone (bool per text).

        Raises redis.RedisError when the cache cannot answer; without a cache nothing is cached.
        """
        if self.cache is None:
            return np.zeros(len(texts), dtype=bool)
        return self.cache.exists_many(self.encoder.fingerprint(normalize=False), list(texts))

    def _encode_and_store(
        self, missing: list[str], raw_space: str, progress: bool
    ) -> dict[str, np.ndarray]:
        """Encode in chunks, writing each to the cache as soon as it is done.

        A long run that is interrupted keeps what it finished: the next run resumes there.
        Sorting by length first keeps each chunk's batches evenly padded.
        """
        ordered = sorted(missing, key=len, reverse=True)
        encoded: dict[str, np.ndarray] = {}
        bar = tqdm(total=len(ordered), desc="encoding", unit="text", disable=not progress)
        for start in range(0, len(ordered), STORE_EVERY):
            chunk = ordered[start : start + STORE_EVERY]
            vectors = self._encode_raw(chunk)
            if self.cache:
                self.cache.set_many(raw_space, chunk, vectors)
            encoded.update(zip(chunk, vectors, strict=True))
            bar.update(len(chunk))
        bar.close()
        return encoded
