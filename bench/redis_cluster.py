"""Cached /embed through a 3-master Redis Cluster against one Redis, in the same run.

    python bench/redis_cluster.py                  # MiniLM, 1 and 16 texts a request

Starts a private redis-server and a private 3-master cluster (tests/local_cluster.py:
`redis-server --cluster-enabled yes`, `redis-cli --cluster create`), and two API servers,
one on each (REDIS_CLUSTER=true for the second). Every text is embedded once first, so
each measured request is served from the cache alone; a measured response with fewer
cached texts than it sent fails the run (it would be timing the encoder). Requests go
one at a time over a raw keep-alive connection, alternating between the two servers in
rounds, so load from other jobs on the machine falls on both alike.

Also times the cache layer alone in this process (EmbeddingCache.get_many on the same
keys, no HTTP), where the cluster's extra work shows undiluted, and bulk set_many /
exists_many / get_many of --bulk-keys vectors (median of 5), what a bulk job does.

Reports p50/p95 per server and the ratio cluster / single; exits 1 when the cached
/embed p50 ratio exceeds --target (1.5). Writes bench/results/redis_cluster.json.
"""

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import (
    MINILM,
    ApiServer,
    RawHttpClient,
    RedisServer,
    command_line,
    fast_event_loop,
    load_average,
    percentiles,
    random_text,
    write_result,
)

from embedder.cache import open_cache
from tests.local_cluster import LocalCluster


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--pool", type=int, default=512, help="distinct cached texts")
    parser.add_argument("--sizes", default="1,16", help="texts per request, comma-separated")
    parser.add_argument("--requests", type=int, default=600, help="measured requests per size")
    parser.add_argument(
        "--round", type=int, default=1, help="requests per server per round (1: alternate)"
    )
    parser.add_argument("--target", type=float, default=1.5, help="max p50 ratio")
    parser.add_argument("--bulk-keys", type=int, default=5000, help="keys per bulk operation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="redis_cluster")
    return parser.parse_args()


def server_env(arguments: argparse.Namespace, redis_url: str, cluster: bool, models: str) -> dict:
    return {
        "EMBEDDER_MODEL": arguments.model,
        "REDIS_URL": redis_url,
        "REDIS_CLUSTER": "true" if cluster else "false",
        "MODELS_DIR": models,
        "DEMO_HEAD_ON_START": "false",
        "MAX_BATCH": "256",
    }


async def post(client: RawHttpClient, texts: list[str]) -> tuple[float, dict]:
    body = json.dumps({"texts": texts}).encode()
    started = time.perf_counter()
    status, raw = await client.post("/embed", body)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"/embed answered {status}: {raw[:200]!r}")
    return elapsed, json.loads(raw)


async def warm(url: str, pool: list[str]) -> None:
    client = RawHttpClient(url)
    try:
        for start in range(0, len(pool), 64):
            await post(client, pool[start : start + 64])
        _, body = await post(client, pool[:64])
        if body["cached"] != 64:
            raise RuntimeError(f"{url}: the pool is not cached after warming ({body['cached']})")
    finally:
        await client.close()


async def measure_http(
    urls: dict[str, str], pool: list[str], size: int, total: int, per_round: int, seed: int
) -> dict[str, list[float]]:
    """Alternating rounds of `per_round` sequential requests to each server."""
    generator = random.Random(seed)
    clients = {name: RawHttpClient(url) for name, url in urls.items()}
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    try:
        for client in clients.values():  # open the connections before the clock
            await post(client, pool[:size])
        while min(len(values) for values in latencies.values()) < total:
            requests = [generator.sample(pool, size) for _ in range(per_round)]
            order = list(clients)
            generator.shuffle(order)
            for name in order:
                for texts in requests:  # the same texts for both servers
                    elapsed, body = await post(clients[name], texts)
                    if body["cached"] != size:
                        raise RuntimeError(
                            f"{name}: {body['cached']} of {size} texts cached: not a cache read"
                        )
                    latencies[name].append(elapsed)
    finally:
        for client in clients.values():
            await client.close()
    return latencies


def measure_cache_layer(
    caches: dict, fingerprint: str, dim: int, pool: list[str], size: int, total: int, seed: int
) -> dict[str, list[float]]:
    """get_many alone, alternating between the caches in rounds."""
    generator = random.Random(seed)
    latencies: dict[str, list[float]] = {name: [] for name in caches}
    while min(len(values) for values in latencies.values()) < total:
        batch = [generator.sample(pool, size) for _ in range(50)]
        for name, cache in caches.items():
            for texts in batch:
                started = time.perf_counter()
                found = cache.get_many(fingerprint, texts, dim)
                latencies[name].append(time.perf_counter() - started)
                if any(vector is None for vector in found):
                    raise RuntimeError(f"{name}: a pool text is not cached")
    return latencies


def measure_bulk(caches: dict, keys: int, dim: int, repeats: int, seed: int) -> list[dict]:
    """set_many / exists_many / get_many of `keys` vectors, median seconds of `repeats`."""
    import numpy as np

    texts = [f"bulk text {index}" for index in range(keys)]
    vectors = np.random.default_rng(seed).random((keys, dim), dtype=np.float32)
    operations = {
        "set_many": lambda cache: cache.set_many("bench-bulk", texts, vectors),
        "exists_many": lambda cache: cache.exists_many("bench-bulk", texts).all(),
        "get_many": lambda cache: cache.get_many("bench-bulk", texts, dim),
    }
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for operation, run in operations.items():
            for name, cache in caches.items():
                started = time.perf_counter()
                run(cache)
                seconds.setdefault((operation, name), []).append(time.perf_counter() - started)
    rows = []
    for operation in operations:
        single = statistics.median(seconds[(operation, "single")])
        cluster = statistics.median(seconds[(operation, "cluster")])
        rows.append(
            {
                "operation": operation,
                "keys": keys,
                "single_s": single,
                "cluster_s": cluster,
                "ratio": cluster / single,
            }
        )
    return rows


def summary(latencies: dict[str, list[float]]) -> dict:
    milliseconds = {name: [value * 1000 for value in values] for name, values in latencies.items()}
    stats = {name: percentiles(values, (50, 95)) for name, values in milliseconds.items()}
    return {
        "single": stats["single"],
        "cluster": stats["cluster"],
        "count": {name: len(values) for name, values in milliseconds.items()},
        "p50_ratio": stats["cluster"]["p50"] / stats["single"]["p50"],
        "mean_ms": {name: statistics.fmean(values) for name, values in milliseconds.items()},
    }


def main() -> int:
    arguments = parse_arguments()
    fast_event_loop()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    generator = random.Random(arguments.seed)
    pool = [f"{random_text(generator)} #{index}" for index in range(arguments.pool)]
    print(command_line(), "| load average", load_average())
    workdir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    single = RedisServer()
    cluster = LocalCluster(workdir / "cluster")
    servers: dict[str, ApiServer] = {}
    try:
        single.start()
        cluster.start()
        for name, url, is_cluster in (
            ("single", single.url, False),
            ("cluster", cluster.url, True),
        ):
            env = server_env(arguments, url, is_cluster, str(workdir / f"models-{name}"))
            servers[name] = ApiServer(env, workdir / f"{name}.log")
            health = servers[name].start()
            print(f"{name}: {health['backend']} on {health['device']}, cache {health['cache']}")
        urls = {name: server.url for name, server in servers.items()}
        for url in urls.values():
            asyncio.run(warm(url, pool))
        spread = cluster.key_counts()
        print("keys per cluster master:", spread)

        rows = []
        for size in sizes:
            http = asyncio.run(
                measure_http(
                    urls, pool, size, arguments.requests, arguments.round, arguments.seed + size
                )
            )
            rows.append({"texts_per_request": size, "layer": "http /embed", **summary(http)})

        # The cache layer alone, on the keys the servers wrote (EMBEDDER_NORMALIZE is off,
        # so /health's fingerprint is the raw space the cache uses).
        fingerprint, dim = health["fingerprint"], health["dim"]
        caches = {
            "single": open_cache(single.url),
            "cluster": open_cache(cluster.url, cluster=True),
        }
        for size in sizes:
            layer = measure_cache_layer(
                caches, fingerprint, dim, pool, size, arguments.requests, arguments.seed
            )
            rows.append({"texts_per_request": size, "layer": "get_many", **summary(layer)})
        bulk = measure_bulk(caches, arguments.bulk_keys, dim, 5, arguments.seed)
        for cache in caches.values():
            cache.close()
    finally:
        for server in servers.values():
            server.stop()
        cluster.stop()
        single.kill()

    print(
        f"\n{'layer':<12} {'texts':>5} {'single p50':>11} {'cluster p50':>12} {'ratio':>6}"
        f" {'single p95':>11} {'cluster p95':>12}"
    )
    for row in rows:
        print(
            f"{row['layer']:<12} {row['texts_per_request']:>5} {row['single']['p50']:>9.3f}ms "
            f"{row['cluster']['p50']:>10.3f}ms {row['p50_ratio']:>6.2f} "
            f"{row['single']['p95']:>9.3f}ms {row['cluster']['p95']:>10.3f}ms"
        )
    print(
        f"\n{'bulk (median of 5)':<20} {'keys':>6} {'single s':>9} {'cluster s':>10} {'ratio':>6}"
    )
    for row in bulk:
        print(
            f"{row['operation']:<20} {row['keys']:>6} {row['single_s']:>9.3f} "
            f"{row['cluster_s']:>10.3f} {row['ratio']:>6.2f}"
        )
    http_ratios = [row["p50_ratio"] for row in rows if row["layer"] == "http /embed"]
    passed = max(http_ratios) <= arguments.target
    write_result(
        arguments.name,
        {
            "command": command_line(),
            "load_average_after": load_average(),
            "model": arguments.model,
            "pool": arguments.pool,
            "keys_per_master": spread,
            "target_p50_ratio": arguments.target,
            "passed": passed,
            "rows": rows,
            "bulk": bulk,
        },
    )
    print(
        f"\ncached /embed p50 ratio cluster/single: max {max(http_ratios):.2f} "
        f"(target <= {arguments.target}): {'PASS' if passed else 'FAIL'}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
