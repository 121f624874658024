"""The Redis cache of embeddings: one key per (vector space, text), raw float32 bytes.

The cache is one Redis or a Redis Cluster (`connect(url, cluster=True)`, any node's URL).
Keys carry no hash tag, so a cluster spreads them over every master by the text's hash;
multi-key reads and writes are split per slot and pipelined (redis-py's cluster
pipelines). A cache that cannot answer is skipped, never an error: on a cluster each
master is tracked apart, so while one is down only its share of the keys is served
uncached, and the others keep hitting.
"""

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry

from embedder.errors import InvalidConfigError

logger = logging.getLogger(__name__)

KEY_PREFIX = "bertheads:emb"
RETRY_SECONDS = 1.0
# Keys per MGET / pipeline: one huge request would block Redis for every other client.
CHUNK_KEYS = 1000
# Every failure a cache can raise. SlotNotCoveredError, CrossSlotTransactionError and the
# "no node reachable" RedisClusterException are not redis.RedisError subclasses.
CACHE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)
# The whole cache (one Redis, or a cluster whose layout cannot be read) rather than a node.
WHOLE = "*"
# Keys whose cluster slot no master serves: misses, reported like a down node.
UNSERVED = "unserved slots"
SLOTS = 16384

# Answers that mean "this slot is moving or moved": redis-py's cluster client follows them.
REDIRECTIONS = (MovedError, AskError, TryAgainError)

# What a cluster node answers a client that does not know it is one (REDIS_CLUSTER unset).
CLUSTER_NODE_ERRORS = (MovedError, ClusterCrossSlotError)
# Failures after which the slot map is read again: a failover may have moved the slots.
RELAYOUT_ERRORS = (ClusterDownError, redis.ConnectionError, redis.TimeoutError)

CacheClient = redis.Redis | RedisCluster
Result = TypeVar("Result")


class CacheUnavailableError(redis.ConnectionError):
    """A cluster error that is not a redis.RedisError, re-raised as one for callers."""


def cache_key(fingerprint: str, text: str) -> str:
    """The Redis key of `text`'s vector in the space `fingerprint`; the only place keys are made.

    No `{hash tag}`: on a cluster the key's slot comes from the whole key, so vectors of
    one space spread over every master instead of filling one.
    """
    return f"{KEY_PREFIX}:{fingerprint}:{hashlib.sha256(text.encode('utf-8')).hexdigest()}"


def check_cluster_url(url: str) -> None:
    """Refuse a cluster URL naming a database other than 0 (InvalidConfigError)."""
    path = urlsplit(url).path.strip("/")
    if path not in ("", "0"):
        raise InvalidConfigError(
            f"REDIS_URL: a Redis Cluster has only database 0, the URL names /{path}; "
            "end it with /0 or with the port"
        )


def connect(url: str, *, cluster: bool = False, timeout: float = 0.5) -> CacheClient:
    """A client with short timeouts, so a dead server costs milliseconds, not seconds.

    Args:
        url: redis://[:password@]host:port/db (rediss:// for TLS); with `cluster`, any
            node of the cluster (the others are discovered) and db 0.
        cluster: Make a RedisCluster client. It reads the cluster's layout now, so it
            raises (RedisClusterException, redis.RedisError) when no node answers;
            `open_cache` defers that to the first use instead.
        timeout: Connect and read timeout, seconds.

    """
    if not cluster:
        return redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=10
        )
    check_cluster_url(url)
    return RedisCluster.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=10,
        # A cache fails fast: no retry inside redis-py (it re-reads the layout after a
        # connection error, so a failover is picked up by the next call); the node is
        # skipped for RETRY_SECONDS instead. A hung master then costs one timeout a second.
        retry=Retry(NoBackoff(), 0),
        # Serve the slots that are covered; a missing one is a miss, not a dead cache.
        require_full_coverage=False,
    )


def open_cache(
    url: str, *, cluster: bool = False, ttl_seconds: int | None = None
) -> "EmbeddingCache":
    """The cache at `url`; a cluster client is made at first use (and retried).

    So a cluster that is down when the service starts does not stop it from starting.
    """
    if cluster:
        check_cluster_url(url)  # a wrong setting stops the start, not the first request
        return EmbeddingCache(lambda: connect(url, cluster=True), ttl_seconds)
    return EmbeddingCache(connect(url), ttl_seconds)


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


class EmbeddingCache:
    """Reads and writes vectors in Redis; a failing Redis turns it into a no-op, not an error.

    The first failure of a node (the one Redis, or one cluster master) is logged once;
    while it is down calls skip it, trying again every `RETRY_SECONDS`, and the recovery
    is logged once too.

    Args:
        client: A client from `connect`, or a function making one (called at first use,
            and again after a failure, until it succeeds).
        ttl_seconds: Expiry of written vectors (None: the instance's eviction decides).

    """

    def __init__(
        self, client: CacheClient | Callable[[], CacheClient], ttl_seconds: int | None = None
    ) -> None:
        if isinstance(client, redis.Redis | RedisCluster):
            self._client: CacheClient | None = client
            self._factory: Callable[[], CacheClient] | None = None
        else:
            self._client, self._factory = None, client
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        # node name (WHOLE for the whole cache) -> (down since, next try, error type)
        self._down: dict[str, tuple[float, float, str]] = {}
        self._masters = 0
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # entries refused (wrong length, NaN or Inf) and deleted

    # -- the client and its state ---------------------------------------------------------

    @property
    def client(self) -> CacheClient:
        """The Redis client (made now when it was deferred; raises as `connect` does)."""
        if self._client is None:
            assert self._factory is not None
            with self._lock:
                if self._client is None:
                    self._client = self._factory()
        return self._client

    @property
    def is_cluster(self) -> bool:
        """True for a Redis Cluster (decided by the client, or the deferred factory)."""
        return self._factory is not None or isinstance(self._client, RedisCluster)

    def close(self) -> None:
        """Close the client's connections, if it was ever made."""
        if self._client is not None:
            self._client.close()

    @property
    def up(self) -> bool:
        """False while the last attempt to reach Redis (or any cluster master) failed."""
        return not self._down

    @property
    def problem(self) -> str | None:
        """What is down, for /health (no addresses: the log has them), or None."""
        down = dict(self._down)
        if not down:
            return None
        if WHOLE in down and down[WHOLE][2] in {kind.__name__ for kind in CLUSTER_NODE_ERRORS}:
            return (
                "the embedding cache is a Redis Cluster node (it answers MOVED or "
                "CROSSSLOT); set "
                "REDIS_CLUSTER=true. Serving uncached"
            )
        if WHOLE in down:
            return f"the embedding cache does not answer ({down[WHOLE][2]}); serving uncached"
        parts = []
        if down.pop(UNSERVED, None) is not None:
            parts.append("some cluster slots are served by no master; their keys are uncached")
        if down:
            kinds = ", ".join(sorted({kind for _, _, kind in down.values()}))
            total = max(self._masters, len(down))
            parts.append(
                f"{len(down)} of {total} cluster masters do not answer ({kinds}); "
                "their share of the keys is served uncached"
            )
        return "; ".join(parts)

    def _usable(self, node: str = WHOLE) -> bool:
        """May this call use `node` (WHOLE: the cache at all)? Call it once per name per call.

        A node that is down is skipped until its retry is due; then exactly one caller gets
        True (the probe) and the retry moves on by RETRY_SECONDS for everyone else, so a
        master that hangs (timeouts, not refusals) stalls one request a second, not all.
        """
        entry = self._down.get(node)
        if entry is None:
            return True
        with self._lock:
            entry = self._down.get(node)
            now = time.monotonic()
            if entry is None:
                return True
            if now < entry[1]:
                return False
            self._down[node] = (entry[0], now + RETRY_SECONDS, entry[2])
            return True

    def _failed(self, error: Exception, node: str = WHOLE) -> None:
        with self._lock:
            now = time.monotonic()
            entry = self._down.get(node)
            if entry is None:
                if node == WHOLE and isinstance(error, CLUSTER_NODE_ERRORS):
                    logger.warning(
                        "embedding cache: REDIS_URL names a node of a Redis Cluster (it "
                        "answered MOVED or CROSSSLOT); set REDIS_CLUSTER=true. Serving "
                        "uncached: %s",
                        _describe(error),
                    )
                elif node == WHOLE:
                    logger.warning(
                        "embedding cache is down, serving uncached: %s", _describe(error)
                    )
                elif node == UNSERVED:
                    logger.warning(
                        "embedding cache: %s; their keys are served uncached", _describe(error)
                    )
                else:
                    logger.warning(
                        "embedding cache: cluster master %s is down, its keys are served "
                        "uncached: %s",
                        node,
                        _describe(error),
                    )
            since = now if entry is None else entry[0]
            self._down[node] = (since, now + RETRY_SECONDS, type(error).__name__)

    def _succeeded(self, node: str = WHOLE) -> None:
        if not self._down:
            return
        with self._lock:
            # A node that answers also shows the cluster's layout was readable.
            for name in (node, WHOLE) if node != WHOLE else (WHOLE,):
                entry = self._down.pop(name, None)
                if entry is None:
                    continue
                seconds = time.monotonic() - entry[0]
                if name == WHOLE:
                    logger.warning("embedding cache is back after %.1f s", seconds)
                elif name == UNSERVED:
                    logger.warning("embedding cache: every cluster slot is served again")
                else:
                    logger.warning(
                        "embedding cache: cluster master %s is back after %.1f s", name, seconds
                    )

    def ping(self) -> bool:
        """Check Redis now (for /health), updating the up/down state.

        On a cluster every master is pinged on its own; True while at least one answers
        (`up` is False and `problem` says what while any is down).
        """
        try:
            client = self.client
            if not isinstance(client, RedisCluster):
                client.ping()
                self._succeeded()
                return True
            masters = client.get_primaries()
            self._forget_departed(client)
        except CACHE_ERRORS as error:
            self._failed(error)
            return False
        answered = 0
        for node in masters:
            if not self._usable(node.name):  # down, and another call is probing it
                continue
            try:
                client.ping(target_nodes=node)
            except CACHE_ERRORS as error:
                self._failed(error, node.name)
                continue
            self._succeeded(node.name)
            answered += 1
        if masters and not answered:
            self._failed(RedisClusterException("no cluster master answers"))
        elif UNSERVED in self._down and self._usable(UNSERVED):
            self._reread_layout(client)
            if len(client.nodes_manager.slots_cache) == SLOTS:
                self._succeeded(UNSERVED)
            else:
                self._failed(SlotNotCoveredError("some slots are served by no master"), UNSERVED)
        return answered > 0

    # -- grouping keys by node --------------------------------------------------------------

    def _groups(self, keys: Sequence[str]) -> dict[str, list[int]]:
        """Key positions per node: the master of each key's slot, or WHOLE for one Redis.

        Raises what the cluster client raises when its layout cannot be read.
        """
        client = self.client
        if not isinstance(client, RedisCluster):
            return {WHOLE: list(range(len(keys)))}
        if not self._masters:
            self._masters = len(client.get_primaries())
        groups: dict[str, list[int]] = {}
        manager = client.nodes_manager
        reread = False
        for position, key in enumerate(keys):
            slot = client.keyslot(key)
            try:
                name = manager.get_node_from_slot(slot).name
            except SlotNotCoveredError as error:
                name = UNSERVED
                if not reread and self._usable(UNSERVED):
                    # Due for a retry: the slot may be served again since it was seen unserved.
                    reread = True
                    self._reread_layout(client)
                    with contextlib.suppress(SlotNotCoveredError):
                        name = manager.get_node_from_slot(slot).name
                if name == UNSERVED:
                    self._failed(error, UNSERVED)
            groups.setdefault(name, []).append(position)
        if UNSERVED in self._down and UNSERVED not in groups and reread:
            self._succeeded(UNSERVED)
        if len(self._down) > (WHOLE in self._down) + (UNSERVED in self._down):
            self._forget_departed(client)
        return groups

    def _forget_departed(self, client: RedisCluster) -> None:
        """Drop down-marks of nodes that are no longer masters (replaced by a failover)."""
        masters = {node.name for node in client.get_primaries()}
        self._masters = len(masters)
        with self._lock:
            for name in [name for name in self._down if name not in (WHOLE, UNSERVED)]:
                if name not in masters:
                    del self._down[name]
                    logger.warning(
                        "embedding cache: %s is no longer a cluster master (failed over); "
                        "its slots are served by another",
                        name,
                    )

    def _per_node(
        self,
        keys: Sequence[str],
        operation: Callable[[CacheClient, list[int]], Result],
    ) -> dict[str, tuple[list[int], Result]]:
        """Run `operation(client, positions)` for the nodes that answer; skip the others.

        All usable nodes go in one call first (redis-py pipelines it across them); only
        when that fails does each node get a call of its own, to find the one that is down
        and keep serving from the rest.
        """
        if not self._usable():
            return {}
        try:
            client = self.client
            groups = self._groups(keys)
        except CACHE_ERRORS as error:
            self._failed(error)
            return {}
        # WHOLE (one Redis) was claimed above; a claim is taken once per call.
        usable = {
            node: positions
            for node, positions in groups.items()
            if node == WHOLE or self._usable(node)
        }
        if not usable:
            return {}
        together = sorted(position for positions in usable.values() for position in positions)
        try:
            result = operation(client, together)
        except CACHE_ERRORS as error:
            if len(usable) == 1:
                self._failed(error, next(iter(usable)))
                if isinstance(error, RELAYOUT_ERRORS):
                    self._reread_layout(client)
                return {}
        else:
            for node in usable:
                self._succeeded(node)
            return {"": (together, result)}
        answers: dict[str, tuple[list[int], Result]] = {}
        for node, positions in usable.items():
            try:
                answers[node] = (positions, operation(client, positions))
            except CACHE_ERRORS as error:
                self._failed(error, node)
                if isinstance(error, RELAYOUT_ERRORS):
                    self._reread_layout(client)
                continue
            self._succeeded(node)
        return answers

    @staticmethod
    def _cluster_send(client: RedisCluster, commands: list[tuple[str, tuple]]) -> list[Any]:
        """Run (routing key, command) pairs on their masters; the answers, in order.

        Every master's commands go out on a connection of its own pool before any answer
        is read, so the masters work at once: redis-py's cluster pipeline spends about
        0.1 ms of Python per command, and a plain pipeline per master waits for each in
        turn. An answer that is a redirection (MOVED, ASK, TRYAGAIN: a slot that moved or is
        moving) is returned as that error, for the caller to redo through redis-py, which
        follows it and updates its slot map. Any other error is raised once every answer
        has been read (the connections stay usable).
        """
        manager = client.nodes_manager
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for index, (key, _) in enumerate(commands):
            node = manager.get_node_from_slot(client.keyslot(key))
            by_node.setdefault(node.name, (node, []))[1].append(index)
        answers: list[Any] = [None] * len(commands)
        failure: Exception | None = None
        sent: list[list[Any]] = []  # [node client, connection, command indexes, all read]
        try:
            for node, indexes in by_node.values():
                node_client = client.get_redis_connection(node)
                connection = node_client.connection_pool.get_connection()
                sent.append([node_client, connection, indexes, False])
                connection.send_packed_command(
                    connection.pack_commands([commands[index][1] for index in indexes])
                )
            for entry in sent:
                node_client, connection, indexes, _ = entry
                for index in indexes:
                    name = commands[index][1][0]
                    try:
                        answers[index] = node_client.parse_response(connection, name)
                    except REDIRECTIONS as redirection:
                        answers[index] = redirection
                    except redis.ResponseError as error:  # read the rest, then raise
                        failure = failure or error
                entry[3] = True
        finally:
            for node_client, connection, _, clean in sent:
                if not clean:  # answers left unread would reach the next user of it
                    connection.disconnect()
                node_client.connection_pool.release(connection)
        if failure is not None:
            raise failure
        return answers

    @classmethod
    def _cluster_mget(cls, client: RedisCluster, keys: list[str]) -> list[bytes | None]:
        """One MGET per slot (a cluster MGET cannot span slots), all masters at once."""
        by_slot: dict[int, list[int]] = {}
        for position, key in enumerate(keys):
            by_slot.setdefault(client.keyslot(key), []).append(position)
        groups = list(by_slot.values())
        answers = cls._cluster_send(
            client, [(keys[group[0]], ("MGET", *(keys[p] for p in group))) for group in groups]
        )
        values: list[bytes | None] = [None] * len(keys)
        redirected: list[int] = []
        for group, answer in zip(groups, answers, strict=True):
            if isinstance(answer, REDIRECTIONS):
                redirected.extend(group)
                continue
            for position, value in zip(group, answer, strict=True):
                values[position] = value
        if redirected:
            found = client.mget_nonatomic([keys[position] for position in redirected])
            for position, value in zip(redirected, found, strict=True):
                values[position] = value
        return values

    @staticmethod
    def _reread_layout(client: CacheClient) -> None:
        """Re-read which master serves which slot (a slot no longer served, a failover).

        redis-py does not after a CLUSTERDOWN inside a pipeline, nor when a slot it found
        unserved is served again.
        """
        if isinstance(client, RedisCluster):
            try:
                client.nodes_manager.initialize()
            except CACHE_ERRORS as error:
                logger.debug("cluster layout not re-read: %s", error)

    # -- reading and writing ------------------------------------------------------------------

    def get_many(self, fingerprint: str, texts: Sequence[str], dim: int) -> list[np.ndarray | None]:
        """MGETs of at most CHUNK_KEYS keys (per slot on a cluster).

        A missing, malformed or unreachable entry is None.
        """
        found: list[np.ndarray | None] = [None] * len(texts)
        if not texts:
            return found
        keys = [cache_key(fingerprint, text) for text in texts]

        def read(client: CacheClient, positions: list[int]) -> list[bytes | None]:
            wanted = [keys[position] for position in positions]
            values: list[bytes | None] = []
            for start in range(0, len(wanted), CHUNK_KEYS):
                chunk = wanted[start : start + CHUNK_KEYS]
                if isinstance(client, RedisCluster):
                    values.extend(self._cluster_mget(client, chunk))
                else:
                    values.extend(client.mget(chunk))
            return values

        expected = dim * 4
        bad: list[str] = []
        for positions, values in self._per_node(keys, read).values():
            for position, value in zip(positions, values, strict=True):
                if value is None:
                    continue
                vector = np.frombuffer(value, dtype=np.float32) if len(value) == expected else None
                if vector is None or not np.isfinite(vector).all():
                    bad.append(texts[position])  # a wrong length, NaN or Inf: never served
                else:
                    found[position] = vector
        if bad:
            self.rejected += len(bad)
            logger.warning(
                "%d cached vector(s) of the wrong length or with NaN/Inf: deleted, encoding again",
                len(bad),
            )
            self.delete_many(fingerprint, bad)
        hits = sum(vector is not None for vector in found)
        self.hits += hits
        self.misses += len(texts) - hits
        return found

    def exists_many(self, fingerprint: str, texts: Sequence[str]) -> np.ndarray:
        """Which texts have an entry (bool per text), by pipelined EXISTS; no values move.

        Raises redis.RedisError (cluster errors re-raised as CacheUnavailableError) when the
        cache cannot answer: a bulk job must know, not guess.
        """
        found = np.zeros(len(texts), dtype=bool)
        try:
            client = self.client
            for start in range(0, len(texts), CHUNK_KEYS):
                keys = [cache_key(fingerprint, text) for text in texts[start : start + CHUNK_KEYS]]
                if isinstance(client, RedisCluster):
                    answers = self._cluster_send(client, [(key, ("EXISTS", key)) for key in keys])
                    counts = [
                        client.exists(key) if isinstance(answer, REDIRECTIONS) else answer
                        for key, answer in zip(keys, answers, strict=True)
                    ]
                else:
                    pipe = client.pipeline(transaction=False)
                    for key in keys:
                        pipe.exists(key)
                    counts = pipe.execute()
                found[start : start + len(keys)] = [bool(count) for count in counts]
        except redis.RedisError as error:
            self._failed(error)
            raise
        except RedisClusterException as error:
            self._failed(error)
            raise CacheUnavailableError(f"the embedding cache cannot answer: {error}") from error
        self._succeeded()
        return found

    def set_many(self, fingerprint: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Write all vectors in pipelines of CHUNK_KEYS; failures are swallowed (optional cache)."""
        if not texts:
            return
        keys = [cache_key(fingerprint, text) for text in texts]

        expiry = ("EX", self.ttl_seconds) if self.ttl_seconds else ()

        def write(client: CacheClient, positions: list[int]) -> None:
            for start in range(0, len(positions), CHUNK_KEYS):
                chunk = positions[start : start + CHUNK_KEYS]
                payloads = {
                    position: np.ascontiguousarray(vectors[position], dtype=np.float32).tobytes()
                    for position in chunk
                }
                if isinstance(client, RedisCluster):
                    commands = [(keys[p], ("SET", keys[p], payloads[p], *expiry)) for p in chunk]
                    answers = self._cluster_send(client, commands)
                    for position, answer in zip(chunk, answers, strict=True):
                        if isinstance(answer, REDIRECTIONS):  # redis-py follows it
                            client.set(keys[position], payloads[position], ex=self.ttl_seconds)
                    continue
                pipe = client.pipeline(transaction=False)
                for position in chunk:
                    pipe.set(keys[position], payloads[position], ex=self.ttl_seconds)
                pipe.execute()

        self._per_node(keys, write)

    def delete_many(self, fingerprint: str, texts: Sequence[str]) -> int:
        """Delete the texts' entries (a poisoned value); returns how many went.

        Best effort like writes: a cache that cannot answer deletes nothing and says 0.
        """
        if not texts:
            return 0
        keys = [cache_key(fingerprint, text) for text in texts]

        def delete(client: CacheClient, positions: list[int]) -> int:
            gone = 0
            for start in range(0, len(positions), CHUNK_KEYS):
                # A cluster client splits a multi-key DEL per slot by itself.
                gone += int(
                    client.delete(*(keys[p] for p in positions[start : start + CHUNK_KEYS]))
                )
            return gone

        return sum(count for _, count in self._per_node(keys, delete).values())
