"""Head stores: where heads live (HEAD_STORE). See classifier.stores.base for the protocol.

`open_store("/srv/models")` gives a FolderStore (the default: MODELS_DIR);
`open_store("redis://state:6379/0")` a RedisStore on a non-evicting Redis;
`open_store("redis://node-1:6379/0", cluster=True)` one on a (non-evicting) Redis Cluster.
"""

from pathlib import Path

from classifier.stores.base import NAME_PATTERN, HeadStore, check_name

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

__all__ = ["NAME_PATTERN", "HeadStore", "check_name", "open_store"]


def open_store(
    location: "str | Path | HeadStore",
    *,
    trash_retention_seconds: float = 7 * 24 * 3600,
    cluster: bool = False,
) -> HeadStore:
    """The store at `location`: a Redis URL, or a folder path. A store passes through.

    `cluster`: the Redis URL names a node of a Redis Cluster (HEAD_STORE_CLUSTER).
    """
    if isinstance(location, HeadStore):
        return location
    text = str(location)
    if text.startswith(REDIS_SCHEMES):
        from classifier.stores.redis_store import RedisStore

        return RedisStore(text, trash_retention_seconds=trash_retention_seconds, cluster=cluster)
    if cluster:
        from classifier.errors import HeadStoreConfigError

        raise HeadStoreConfigError(
            "HEAD_STORE_CLUSTER is set but HEAD_STORE is a folder; give HEAD_STORE the "
            "redis:// URL of any node of the cluster, or unset HEAD_STORE_CLUSTER"
        )
    from classifier.stores.folder import FolderStore

    return FolderStore(Path(text), trash_retention_seconds=trash_retention_seconds)
