"""The Redis client of a bulk job: a single server or a Redis Cluster (REDIS_CLUSTER)."""

import inspect

import redis

from embedder.cache import connect


def redis_client(url: str, cluster: bool) -> redis.Redis:
    """The cache's client, made by `embedder.cache.connect` like the API's."""
    if not cluster:
        return connect(url)
    if "cluster" not in inspect.signature(connect).parameters:
        raise ValueError("REDIS_CLUSTER is set but this build's cache cannot reach a cluster")
    return connect(url, cluster=True)  # type: ignore[call-arg]
