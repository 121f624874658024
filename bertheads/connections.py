"""The one place Redis clients are made from Settings: the embedding cache and the head store.

Entry points (the API factory, classifier/train.py, python -m api.demo, bulk jobs) call
these, so REDIS_URL / REDIS_CLUSTER and HEAD_STORE / HEAD_STORE_CLUSTER mean the same
everywhere. Everything past this point takes the objects, not the Settings.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from bertheads.settings import Settings

if TYPE_CHECKING:
    from classifier.stores import HeadStore
    from embedder.cache import EmbeddingCache


def embedding_cache(settings: Settings, url: str | None = None) -> "EmbeddingCache":
    """The embedding cache at `url` (default REDIS_URL), or a cluster with REDIS_CLUSTER.

    A cluster client is made at first use, so a cluster that is down at start serves
    uncached instead of stopping the service.
    """
    from embedder.cache import open_cache

    return open_cache(
        url or settings.redis_url,
        cluster=settings.redis_cluster,
        ttl_seconds=settings.cache_ttl_seconds,
    )


def head_store(settings: Settings, location: "str | Path | None" = None) -> "HeadStore":
    """The head store at `location` (default HEAD_STORE, else MODELS_DIR).

    A folder, a Redis, or with HEAD_STORE_CLUSTER=true a Redis Cluster.
    """
    from classifier.stores import REDIS_SCHEMES, open_store

    where = str(location or settings.head_store_location)
    # An explicit folder (--models-dir) is a folder whatever HEAD_STORE_CLUSTER says.
    cluster = settings.head_store_cluster and (location is None or where.startswith(REDIS_SCHEMES))
    return open_store(
        where, trash_retention_seconds=settings.trash_retention_seconds, cluster=cluster
    )


def redacted(url: str) -> str:
    """`url` without its password, for logs."""
    from classifier.stores.redis_store import redacted as without_password

    return without_password(url)
