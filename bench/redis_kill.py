"""Redis killed and restarted under load: zero failed requests, the cache comes back by itself.

    python bench/redis_kill.py                  # 8 clients, 3000 requests or 60 s, MiniLM

Starts a private redis-server on a spare port and a server pointing at it, runs /embed +
/predict, kills Redis a third of the way in, restarts it 10 s later, and reports failed
requests, cache hits per phase (from /metrics) and what /health said. Writes
bench/results/redis_kill.json; exits 1 unless failures == 0 and health went down then up.
"""

import argparse
import asyncio
import random
import sys
import tempfile
import time

import httpx
from common import (
    MINILM,
    RESULTS,
    ApiServer,
    RedisServer,
    dataset_texts,
    metric_value,
    print_table,
    random_text,
    run_load,
    write_result,
)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--down-seconds", type=float, default=10)
    parser.add_argument(
        "--pool", type=int, default=300, help="distinct dataset texts (repeats hit)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def cache_hits(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return metric_value(text, "bertheads_texts_total", source="cache")


async def scenario(arguments: argparse.Namespace, server: ApiServer, redis_server: RedisServer):
    generator = random.Random(arguments.seed)
    pool = generator.sample(dataset_texts(), arguments.pool)

    def make_request(index: int) -> tuple[str, dict]:
        texts = [
            random_text(generator) if generator.random() < 0.1 else generator.choice(pool)
            for _ in range(generator.randint(1, 3))
        ]
        return ("/predict" if index % 2 else "/embed"), {"texts": texts}

    health: list[tuple[float, str]] = []
    marks: dict[str, float] = {}
    hits: dict[str, float] = {"start": cache_hits(server.url)}
    started = time.perf_counter()

    async def watch_health() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            while True:
                body = (await client.get("/health")).json()
                health.append((round(time.perf_counter() - started, 2), body["cache"]))
                await asyncio.sleep(0.5)

    async def break_redis() -> None:
        await asyncio.sleep(arguments.seconds / 3)
        hits["kill"] = await asyncio.to_thread(cache_hits, server.url)
        redis_server.kill()
        marks["killed_at"] = round(time.perf_counter() - started, 2)
        await asyncio.sleep(arguments.down_seconds)
        hits["restart"] = await asyncio.to_thread(cache_hits, server.url)
        redis_server.start()
        marks["restarted_at"] = round(time.perf_counter() - started, 2)

    watcher = asyncio.create_task(watch_health())
    breaker = asyncio.create_task(break_redis())
    load = await run_load(
        server.url,
        make_request,
        total=arguments.requests,
        concurrency=arguments.concurrency,
        max_seconds=arguments.seconds,
    )
    await breaker  # the load may finish first; the restart must still happen
    await asyncio.sleep(2)
    watcher.cancel()
    hits["end"] = await asyncio.to_thread(cache_hits, server.url)
    return load, health, marks, hits


def main() -> int:
    arguments = parse_arguments()
    redis_server = RedisServer()
    redis_server.start()
    with tempfile.TemporaryDirectory() as models:
        server = ApiServer(
            {
                "EMBEDDER_MODEL": arguments.model,
                "REDIS_URL": redis_server.url,
                "MODELS_DIR": models,
                "DEMO_HEAD_ON_START": "true",
            },
            RESULTS / "redis_kill.server.log",
        )
        try:
            server.start()
            load, health, marks, hits = asyncio.run(scenario(arguments, server, redis_server))
            log = server.log_path.read_text(errors="replace")
        finally:
            server.stop()
            redis_server.kill()
    states = [state for _, state in health]
    went_down = "down" in states
    came_back = went_down and "up" in states[states.index("down") :] and states[-1] == "up"
    summary = {
        "model": arguments.model,
        "requests": load.count,
        "failed_requests": len(load.failures),
        "seconds": round(load.seconds, 1),
        **marks,
        "cache_hits": {
            "before_kill": int(hits["kill"] - hits["start"]),
            "while_down": int(hits["restart"] - hits["kill"]),
            "after_restart": int(hits["end"] - hits["restart"]),
        },
        "health_went_down": went_down,
        "health_came_back_up": came_back,
        "health_timeline": health,
        "cache_log_lines": [line for line in log.splitlines() if "embedding cache" in line],
        "first_failures": load.failures[:5],
    }
    print_table(
        [
            ("requests", load.count),
            ("failed requests", len(load.failures)),
            ("redis killed at s", marks.get("killed_at")),
            ("redis restarted at s", marks.get("restarted_at")),
            ("cache hits before kill", summary["cache_hits"]["before_kill"]),
            ("cache hits while down", summary["cache_hits"]["while_down"]),
            ("cache hits after restart", summary["cache_hits"]["after_restart"]),
            ("/health went down", went_down),
            ("/health came back up", came_back),
        ]
    )
    for line in summary["cache_log_lines"]:
        print("  server log:", line)
    print(f"wrote {write_result('redis_kill', summary)}")
    return 0 if not load.failures and came_back else 1


if __name__ == "__main__":
    sys.exit(main())
