"""The Redis cache of embeddings: one key per (vector space, text), raw float32 bytes."""

import hashlib
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import redis

logger = logging.getLogger(__name__)

KEY_PREFIX = "bertheads:emb"
RETRY_SECONDS = 1.0
# Keys per MGET / pipeline: one huge request would block Redis for every other client.
CHUNK_KEYS = 1000


def cache_key(fingerprint: str, text: str) -> str:
    """The Redis key of `text`'s vector in the space `fingerprint`; the only place keys are made."""
    return f"{KEY_PREFIX}:{fingerprint}:{hashlib.sha256(text.encode('utf-8')).hexdigest()}"


def connect(url: str) -> redis.Redis:
    """A Redis client with short timeouts, so a dead server costs milliseconds, not seconds."""
    return redis.Redis.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=10
    )


class EmbeddingCache:
    """Reads and writes vectors in Redis; a failing Redis turns it into a no-op, not an error.

    The first failure is logged once; while Redis is down calls skip it, trying again
    every `RETRY_SECONDS`, and the recovery is logged once too.
    """

    def __init__(self, client: redis.Redis, ttl_seconds: int | None = None) -> None:
        self.client = client
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_try = 0.0
        self.hits = 0
        self.misses = 0

    @property
    def up(self) -> bool:
        """False while the last attempt to reach Redis failed."""
        return self._down_since is None

    def _usable(self) -> bool:
        return self._down_since is None or time.monotonic() >= self._next_try

    def _failed(self, error: Exception) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                logger.warning("embedding cache is down, serving uncached: %s", error)
            self._next_try = time.monotonic() + RETRY_SECONDS

    def _succeeded(self) -> None:
        if self._down_since is not None:
            with self._lock:
                if self._down_since is not None:
                    logger.warning(
                        "embedding cache is back after %.1f s", time.monotonic() - self._down_since
                    )
                    self._down_since = None

    def ping(self) -> bool:
        """Check Redis now (for /health), updating the up/down state."""
        try:
            self.client.ping()
        except redis.RedisError as error:
            self._failed(error)
            return False
        self._succeeded()
        return True

    def get_many(self, fingerprint: str, texts: Sequence[str], dim: int) -> list[np.ndarray | None]:
        """MGETs of at most CHUNK_KEYS keys; a missing, malformed or unreachable entry is None."""
        if not texts or not self._usable():
            return [None] * len(texts)
        keys = [cache_key(fingerprint, text) for text in texts]
        try:
            values: list[bytes | None] = []
            for start in range(0, len(keys), CHUNK_KEYS):
                values.extend(self.client.mget(keys[start : start + CHUNK_KEYS]))
        except redis.RedisError as error:
            self._failed(error)
            return [None] * len(texts)
        self._succeeded()
        expected = dim * 4
        found: list[np.ndarray | None] = [
            np.frombuffer(value, dtype=np.float32) if value and len(value) == expected else None
            for value in values
        ]
        hits = sum(vector is not None for vector in found)
        self.hits += hits
        self.misses += len(texts) - hits
        return found

    def exists_many(self, fingerprint: str, texts: Sequence[str]) -> np.ndarray:
        """Which texts have an entry (bool per text), by pipelined EXISTS; no values move.

        Raises redis.RedisError when Redis cannot answer: a bulk job must know, not guess.
        """
        found = np.zeros(len(texts), dtype=bool)
        for start in range(0, len(texts), CHUNK_KEYS):
            chunk = texts[start : start + CHUNK_KEYS]
            pipe = self.client.pipeline(transaction=False)
            for text in chunk:
                pipe.exists(cache_key(fingerprint, text))
            found[start : start + len(chunk)] = [bool(count) for count in pipe.execute()]
        self._succeeded()
        return found

    def set_many(self, fingerprint: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Write all vectors in pipelines of CHUNK_KEYS; failures are swallowed (the cache is optional)."""
        if not texts or not self._usable():
            return
        try:
            for start in range(0, len(texts), CHUNK_KEYS):
                pipe = self.client.pipeline(transaction=False)
                for text, vector in zip(
                    texts[start : start + CHUNK_KEYS],
                    vectors[start : start + CHUNK_KEYS],
                    strict=True,
                ):
                    payload = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
                    pipe.set(cache_key(fingerprint, text), payload, ex=self.ttl_seconds)
                pipe.execute()
        except redis.RedisError as error:
            self._failed(error)
            return
        self._succeeded()
