"""Heads in Redis (HEAD_STORE=redis://host:6379/2): replicas on many machines, no shared disk.

The instance must not evict: heads have no TTL and must never disappear, and locks carry
a TTL that `volatile-*` policies may evict. Use a Redis of its own with
`maxmemory-policy noeviction` (and AOF persistence), not the evicting embedding cache.
At start the store reads `maxmemory-policy` where CONFIG is allowed: `allkeys-*` is
refused (HeadStoreConfigError), `volatile-*` is logged as a warning.

On a Redis Cluster (`cluster=True`, HEAD_STORE_CLUSTER=true, HEAD_STORE naming any node)
the same keys work: the `{name}` hash tag puts one head's keys in one slot, so each change
is one MULTI/EXEC on one master and the lock, the version counter and the versions share
it; the names set and the change stamp live in other slots and are written outside the
transaction (a reader skips a name without versions; a missed stamp is caught by a rescan).

Keys:

    bertheads:heads:names                  set of head names
    bertheads:heads:changes                change stamp (INCR on every change)
    bertheads:heads:{<name>}:next          version counter (INCR: no two writers share one)
    bertheads:heads:{<name>}:versions      sorted set of version numbers
    bertheads:heads:{<name>}:artifact:<N>  artifact bytes
    bertheads:heads:{<name>}:meta:<N>      sidecar JSON
    bertheads:heads:{<name>}:live          live pointer
    bertheads:heads:{<name>}:lock          the head's lock (TTL, renewed while held)
    bertheads:heads:{<name>}:trash:<ms>:…  deleted or pruned keys, expiring after the retention
"""

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterError, RedisClusterException

from classifier.errors import (
    CorruptHeadError,
    HeadBusyError,
    HeadNotFoundError,
    HeadStoreConfigError,
    HeadStoreError,
    HeadStoreFullError,
    HeadStoreUnavailableError,
    InvalidParameterError,
)
from classifier.stores.base import HeadStore, check_name

logger = logging.getLogger(__name__)
PREFIX = "bertheads:heads"
NAMES = f"{PREFIX}:names"
CHANGES = f"{PREFIX}:changes"
LOCK_TTL_SECONDS = 30.0
# Errors of a cluster client that are not redis.RedisError (SlotNotCoveredError, no
# reachable node, CrossSlotTransactionError): the store is as unavailable as on a timeout.
STORE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)
Result = TypeVar("Result")
StoreClient = redis.Redis | RedisCluster


def _key(name: str, *parts: object) -> str:
    return ":".join([f"{PREFIX}:{{{name}}}", *(str(part) for part in parts)])


def redacted(url: str) -> str:
    """`url` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class RedisStore(HeadStore):
    """Heads in one non-evicting Redis database (see the module docstring for the keys).

    Args:
        url: redis://[:password@]host:port/db (rediss:// for TLS).
        trash_retention_seconds: Expiry of deleted heads' and pruned versions' keys.
        client: An existing client instead of `url` (tests, embedding in other tools).
        cluster: `url` names a node of a Redis Cluster (db 0). The cluster client is made
            at first use, so a cluster that is down at start is reported like a down
            Redis (HeadStoreUnavailableError), not a crash.
        check_policy: Read maxmemory-policy now and refuse an allkeys-* instance.
        lock_ttl_seconds: A lock's TTL; renewed every third of it while held, so a
            crashed holder frees the head after at most this long.

    """

    def __init__(
        self,
        url: str | None = None,
        *,
        trash_retention_seconds: float = 7 * 24 * 3600,
        client: StoreClient | None = None,
        cluster: bool = False,
        check_policy: bool = True,
        lock_ttl_seconds: float = LOCK_TTL_SECONDS,
    ) -> None:
        options: dict[str, Any] = {
            "socket_timeout": 5,
            "socket_connect_timeout": 3,
            "health_check_interval": 30,
        }
        self._client: StoreClient | None = client
        self._url = url
        self._options = options
        self.cluster = cluster or isinstance(client, RedisCluster)
        if client is None:
            if url is None:
                raise ValueError("RedisStore needs a url or a client")
            if cluster and urlsplit(url).path.strip("/") not in ("", "0"):
                raise HeadStoreConfigError(
                    "HEAD_STORE: a Redis Cluster has only database 0; end the URL with /0"
                )
            if not cluster:
                self._client = redis.Redis.from_url(url, **options)
        self._client_lock = threading.Lock()
        self.location = redacted(url) if url else repr(client)
        self.trash_retention_seconds = trash_retention_seconds
        self.lock_ttl_seconds = lock_ttl_seconds
        if check_policy:
            self.check_eviction_policy()

    @property
    def client(self) -> StoreClient:
        """The client; a cluster client is made at first use (raises until a node answers)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    assert self._url is not None
                    self._client = RedisCluster.from_url(self._url, **self._options)
        return self._client

    def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            self._client.close()

    def _call(self, what: str, action: Callable[[], Result]) -> Result:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError, ClusterError) as error:
            # ClusterError: CLUSTERDOWN, a master down, or redirections that never settle.
            raise HeadStoreUnavailableError(
                f"the head store does not answer while {what} ({type(error).__name__})"
            ) from None
        except RedisClusterException as error:
            # Not a RedisError: no node reachable, a slot nobody serves.
            logger.warning("head store cluster error while %s: %s", what, error)
            raise HeadStoreUnavailableError(
                f"the head store does not answer while {what} ({type(error).__name__})"
            ) from None
        except redis.ResponseError as error:
            # A pipeline's message quotes the command, artifact bytes included: never echo it.
            text = str(error)
            if isinstance(error, redis.exceptions.OutOfMemoryError) or "maxmemory" in text:
                raise HeadStoreFullError(
                    f"the head store is out of memory while {what}; nothing was saved. "
                    "Raise its maxmemory or delete old heads"
                ) from None
            raise HeadStoreError(
                f"the head store refused {what} ({type(error).__name__})"
            ) from None
        except redis.RedisError as error:
            raise HeadStoreError(
                f"the head store failed while {what} ({type(error).__name__})"
            ) from None

    def check_eviction_policy(self) -> str | None:
        """maxmemory-policy of the instance; allkeys-* raises, volatile-* warns."""
        try:
            policy = self._policy()
        except redis.ResponseError:
            logger.warning(
                "head store %s: CONFIG is not allowed, so its eviction policy cannot be "
                "checked; it must be noeviction or heads and locks can disappear",
                self.location,
            )
            return None
        except STORE_ERRORS as error:
            logger.warning(
                "head store %s does not answer (%s); its eviction policy is not checked",
                self.location,
                type(error).__name__,
            )
            return None
        if policy.startswith("allkeys"):
            raise HeadStoreConfigError(
                f"head store {self.location}: maxmemory-policy is {policy}, which evicts heads. "
                "Point HEAD_STORE at a Redis with maxmemory-policy noeviction (not the "
                "embedding cache)"
            )
        if policy.startswith("volatile"):
            logger.warning(
                "HEAD STORE %s: maxmemory-policy is %s, which can evict locks and the trash "
                "(keys with a TTL); use noeviction",
                self.location,
                policy,
            )
        return policy

    def _policy(self) -> str:
        """maxmemory-policy; on a cluster every master's, the most evicting one first."""
        client = self.client
        if not isinstance(client, RedisCluster):
            return str(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
        policies = {
            str(
                client.config_get("maxmemory-policy", target_nodes=node).get("maxmemory-policy", "")
            )
            for node in client.get_primaries()
        }
        for prefix in ("allkeys", "volatile", ""):
            for policy in sorted(policies):
                if policy.startswith(prefix):
                    return policy
        return ""

    # -- reading ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names in the names set that hold at least one version."""

        def read() -> list[str]:
            names = sorted(name.decode() for name in self.client.smembers(NAMES))
            pipeline = self.client.pipeline(transaction=False)
            for name in names:
                pipeline.zcard(_key(name, "versions"))
            counts = pipeline.execute()
            return [name for name, count in zip(names, counts, strict=True) if count]

        return self._call("listing heads", read)

    def versions(self, name: str) -> list[int]:
        """ZRANGE of the head's versions."""
        check_name(name)
        members = self._call(
            f"listing versions of {name!r}",
            lambda: self.client.zrange(_key(name, "versions"), 0, -1),
        )
        return sorted(int(member) for member in members)

    def read_metadata(self, name: str, version: int) -> dict[str, Any]:
        """GET meta:<N>, parsed."""
        check_name(name)
        raw = self._call(
            f"reading head {name!r}", lambda: self.client.get(_key(name, "meta", int(version)))
        )
        if raw is None:
            versions = self.versions(name)
            if not versions:
                raise HeadNotFoundError(f"head {name!r}: not found")
            raise HeadNotFoundError(f"head {name!r}: no version {version}; versions: {versions}")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise CorruptHeadError(f"head {name!r} v{version}: unreadable metadata") from None
        if not isinstance(data, dict):
            raise CorruptHeadError(f"head {name!r} v{version}: metadata is not a JSON object")
        return data

    def read_artifact(self, name: str, version: int) -> bytes:
        """GET artifact:<N>."""
        check_name(name)
        raw = self._call(
            f"reading head {name!r}",
            lambda: self.client.get(_key(name, "artifact", int(version))),
        )
        if raw is None:
            raise CorruptHeadError(f"head {name!r} v{version}: the artifact is missing")
        return bytes(raw)

    def read_pointer(self, name: str) -> bytes | None:
        """GET live."""
        check_name(name)
        return self._call(f"reading head {name!r}", lambda: self.client.get(_key(name, "live")))

    def change_stamp(self) -> str:
        """GET changes."""
        raw = self._call("polling for changes", lambda: self.client.get(CHANGES))
        return "" if raw is None else raw.decode()

    # -- writing ------------------------------------------------------------------------

    def _changed(self) -> None:
        # Outside the head's MULTI (another slot); replicas that miss it catch up on a rescan.
        with contextlib.suppress(*STORE_ERRORS):
            self.client.incr(CHANGES)

    def save(
        self, name: str, artifact: bytes, metadata: dict[str, Any], version: int | None = None
    ) -> int:
        """Take a number (INCR next, or claim `version`), then write in one MULTI."""
        check_name(name)
        wanted = version

        def number() -> int:
            if wanted is None:
                while True:
                    found = int(self.client.incr(_key(name, "next")))
                    if self.client.zscore(_key(name, "versions"), found) is None:
                        return found
            # A chosen number (a copy): claim it with SET NX, keep the counter above it.
            claimed = self.client.set(_key(name, "meta", int(wanted)), b"{}", nx=True)
            if not claimed:
                raise InvalidParameterError(f"head {name!r}: version {wanted} exists already")
            script = "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
            script += "redis.call('SET', KEYS[1], ARGV[1]) end"
            self.client.eval(script, 1, _key(name, "next"), int(wanted))
            return int(wanted)

        def write() -> int:
            # Added first: a name without versions is skipped by readers, a version
            # without its name would be invisible.
            self.client.sadd(NAMES, name)
            version = number()
            document = {**metadata, "name": name, "version": version}
            try:
                with self.client.pipeline(transaction=True) as pipeline:
                    pipeline.set(_key(name, "artifact", version), artifact)
                    pipeline.set(_key(name, "meta", version), json.dumps(document).encode())
                    pipeline.zadd(_key(name, "versions"), {str(version): version})
                    pipeline.execute()
            except STORE_ERRORS:
                if wanted is not None:  # free the claimed number again
                    with contextlib.suppress(*STORE_ERRORS):
                        self.client.delete(_key(name, "meta", version))
                raise
            return version

        version = self._call(f"saving head {name!r}", write)
        self._changed()
        return version

    def write_metadata(self, name: str, version: int, metadata: dict[str, Any]) -> None:
        """SET meta:<N> only if it exists (XX)."""
        check_name(name)
        document = json.dumps({**metadata, "name": name, "version": int(version)}).encode()
        written = self._call(
            f"updating head {name!r}",
            lambda: self.client.set(_key(name, "meta", int(version)), document, xx=True),
        )
        if not written:
            raise HeadNotFoundError(f"head {name!r}: no version {version}")
        self._changed()

    def write_pointer(self, name: str, pointer: bytes) -> None:
        """SET live."""
        check_name(name)
        self._call(f"pinning head {name!r}", lambda: self.client.set(_key(name, "live"), pointer))
        self._changed()

    def _move_to_trash(self, pipeline: Any, keys: list[str], trash: str) -> None:
        for key in keys:
            if self.trash_retention_seconds <= 0:
                pipeline.delete(key)
                continue
            target = f"{trash}:{key.split('}:', 1)[1]}"
            # execute_command: redis-py blocks `rename` in cluster pipelines, though both
            # names share the head's hash tag and so its slot.
            pipeline.execute_command("RENAME", key, target)
            pipeline.expire(target, max(1, int(self.trash_retention_seconds)))

    def delete(self, name: str) -> str:
        """Rename every key of the head to trash keys that expire; drop it from the names."""
        check_name(name)
        entry = _key(name, "trash", int(time.time() * 1000))

        def move() -> None:
            versions = [int(member) for member in self.client.zrange(_key(name, "versions"), 0, -1)]
            if not versions:
                raise HeadNotFoundError(f"head {name!r}: not found")
            candidates = [_key(name, "versions"), _key(name, "next"), _key(name, "live")]
            for version in versions:
                candidates += [_key(name, "artifact", version), _key(name, "meta", version)]
            exists = self.client.pipeline(transaction=False)
            for key in candidates:
                exists.exists(key)
            keys = [key for key, found in zip(candidates, exists.execute(), strict=True) if found]
            with self.client.pipeline(transaction=True) as pipeline:
                self._move_to_trash(pipeline, keys, entry)
                pipeline.execute()
            self.client.srem(NAMES, name)

        self._call(f"deleting head {name!r}", move)
        self._changed()
        return f"trash:{name}:{entry.rsplit(':', 1)[1]}"

    def discard_version(self, name: str, version: int) -> None:
        """ZREM the version and move its two keys to the trash, in one MULTI."""
        check_name(name)
        entry = _key(name, "trash", int(time.time() * 1000))

        def move() -> None:
            keys = [_key(name, "artifact", version), _key(name, "meta", version)]
            present = [key for key in keys if self.client.exists(key)]
            with self.client.pipeline(transaction=True) as pipeline:
                pipeline.zrem(_key(name, "versions"), str(version))
                self._move_to_trash(pipeline, present, entry)
                pipeline.execute()

        self._call(f"pruning head {name!r}", move)
        self._changed()

    def purge_trash(self) -> int:
        """Nothing to do: trash keys expire by themselves."""
        return 0

    @contextlib.contextmanager
    def lock(self, name: str, wait_seconds: float) -> Iterator[None]:
        """A Redis lock with a TTL, renewed by a thread while held (a crashed holder frees it)."""
        check_name(name)
        lock = self._call(
            f"locking head {name!r}",
            lambda: self.client.lock(
                _key(name, "lock"),
                timeout=self.lock_ttl_seconds,
                blocking_timeout=wait_seconds,
                thread_local=False,
            ),
        )
        acquired = self._call(f"locking head {name!r}", lock.acquire)
        if not acquired:
            raise HeadBusyError(
                f"head {name!r} is being changed by another train, rollback or delete "
                f"(waited {wait_seconds:g} s for its lock); try again"
            )
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lock_ttl_seconds / 3):
                try:
                    lock.reacquire()
                except STORE_ERRORS as error:
                    logger.warning("head %r: lock renewal failed (%s)", name, error)

        renewer = threading.Thread(target=renew, name=f"head-lock-{name}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            with contextlib.suppress(*STORE_ERRORS):
                lock.release()
