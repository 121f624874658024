"""The Ray Data actor: one EmbeddingService per actor, batches in, cache entries out."""

import os
import socket
import time
from typing import Any

import numpy as np
import redis

from embedder.bulk.redis_client import redis_client
from embedder.bulk.retry import with_redis_retries
from embedder.bulk.rows import text_hash
from embedder.cache import EmbeddingCache
from embedder.encoder import load_encoder
from embedder.service import EmbeddingService

ENCODED, CACHED, FAILED = "encoded", "cached", "failed"


class EncodeActor:
    """Loads the encoder once, then embeds each batch through `EmbeddingService.embed`.

    Going through the service keeps a bulk run identical to the API: same keys, same
    long-text handling, same chunked writes. A batch counts as done only when its entries
    are verified in Redis; while Redis is away the actor pauses and retries.

    Args:
        model: Model name or directory.
        encoder_options: Keyword arguments of `load_encoder` (Settings.encoder_options()).
        long_text_options: Keyword arguments of `EmbeddingService` (Settings.long_text_options()).
        redis_url: The cache's Redis.
        redis_cluster: Whether `redis_url` is a Redis Cluster.
        ttl_seconds: Expiry of new entries (None: none).
        patience_seconds: How long a Redis outage may last before the batch fails.
        return_vectors: Send the raw vectors back (for --output).

    """

    def __init__(
        self,
        model: str,
        encoder_options: dict[str, Any],
        long_text_options: dict[str, Any],
        redis_url: str,
        redis_cluster: bool,
        ttl_seconds: int | None,
        patience_seconds: float,
        return_vectors: bool,
    ) -> None:
        encoder = load_encoder(model, **encoder_options)
        self.cache = EmbeddingCache(redis_client(redis_url, redis_cluster), ttl_seconds)
        self.service = EmbeddingService(encoder, self.cache, **long_text_options)
        self.redis_url = redis_url
        self.patience_seconds = patience_seconds
        self.return_vectors = return_vectors
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.retries = 0  # Redis retries since the last batch went out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed `batch["text"]`; one output row per text (hash, status, error, ...)."""
        started = time.perf_counter()
        started_at = time.time()  # wall clock: comparable across actors (and synced hosts)
        texts = [str(text) for text in batch["text"]]
        # Another run may have stored some since the driver looked; also checks Redis is up.
        cached = self._retrying(lambda: self.service.cached_mask(texts), "checking the cache")
        status = np.where(cached, CACHED, ENCODED).astype(object)
        errors = [""] * len(texts)  # "" = no error: None would come back as NaN
        dim = self.service.dim
        vectors = np.zeros((len(texts), dim), dtype=np.float32)
        wanted = np.flatnonzero(~cached) if not self.return_vectors else np.arange(len(texts))
        if len(wanted):
            found, failures = self._embed([texts[index] for index in wanted])
            vectors[wanted] = found
            for position, error in failures.items():
                status[wanted[position]] = FAILED
                errors[wanted[position]] = error
        encoded = np.flatnonzero(status == ENCODED)
        if len(encoded):
            self._store_verified([texts[index] for index in encoded], vectors[encoded])
        seconds = time.perf_counter() - started
        output: dict[str, np.ndarray] = {
            "hash": np.array([text_hash(text) for text in texts], dtype=object),
            "status": status,
            "error": np.array(errors, dtype=object),
            "actor": np.array([self.name] * len(texts), dtype=object),
            # Busy time shared over the batch's rows: summed per actor it gives texts/s.
            "seconds": np.full(len(texts), seconds / max(len(texts), 1)),
            "started_at": np.full(len(texts), started_at),
            "ended_at": np.full(len(texts), time.time()),
            "redis_retries": np.zeros(len(texts), dtype=np.int64),
        }
        if len(texts):
            # On the first row only, so sums stay right however Ray splits the output.
            output["redis_retries"][0] = self.retries
            self.retries = 0
        if self.return_vectors:
            output["vector"] = vectors
        return output

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """Raw vectors of `texts`; a failing batch is retried text by text to find the bad ones."""
        try:
            return self.service.embed(texts, normalize=False, count_truncated=False).vectors, {}
        except Exception:
            vectors = np.zeros((len(texts), self.service.dim), dtype=np.float32)
            failures: dict[int, str] = {}
            for index, text in enumerate(texts):
                try:
                    vectors[index] = self.service.embed(
                        [text], normalize=False, count_truncated=False
                    ).vectors[0]
                except Exception as error:  # one text's failure is reported, not fatal
                    failures[index] = f"{type(error).__name__}: {error}"
            return vectors, failures

    def _store_verified(self, texts: list[str], vectors: np.ndarray) -> None:
        """Make sure every text's entry is in Redis, writing again what a failed write lost."""
        fingerprint = self.service.encoder.fingerprint(normalize=False)

        def verify() -> None:
            present = self.service.cached_mask(texts)
            if present.all():
                return
            missing = np.flatnonzero(~present)
            # set_many swallows errors (the API's cache is optional); here they must count.
            self.cache.set_many(fingerprint, [texts[index] for index in missing], vectors[missing])
            if not self.cache.up:
                raise redis.ConnectionError("writing the batch's vectors failed")
            if not self.service.cached_mask(texts).all():
                raise redis.ResponseError("entries missing right after writing them")

        self._retrying(verify, "storing a batch")

    def _retrying(self, call: Any, what: str) -> Any:
        return with_redis_retries(
            call,
            what=what,
            url=self.redis_url,
            patience_seconds=self.patience_seconds,
            on_retry=self._count_retry,
        )

    def _count_retry(self) -> None:
        self.retries += 1
