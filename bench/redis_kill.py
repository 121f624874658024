"""Redis killed and restarted under load: zero failed requests, the cache comes back by itself.

    python bench/redis_kill.py                  # 8 clients, 3000 requests, MiniLM

Starts a private redis-server on a spare port and a server pointing at it, runs /embed +
/predict, and ties the outage to the load's progress, not to a clock: Redis is killed once
a third of the requests have completed (`--kill-after`), and restarted once /health has
reported the cache down and `--down-requests` more requests have completed. Reports failed
requests, requests served during the outage, cache hits per phase (from /metrics) and what
/health said. Writes bench/results/redis_kill.json.

Exits 1 unless: no request failed, requests were served while Redis was down, /health went
down and came back up, and cache hits resumed after the restart. A load that ends before
the kill or the restart fails too (it would have tested nothing): raise --requests.
"""

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable

import httpx
from common import (
    MINILM,
    RESULTS,
    ApiServer,
    LoadResult,
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
    parser.add_argument(
        "--kill-after", type=int, default=None, help="completed requests before the kill (1/3)"
    )
    parser.add_argument(
        "--down-requests", type=int, default=500, help="requests completed while Redis is down"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--max-seconds", type=float, default=1800, help="safety cap on the whole load"
    )
    parser.add_argument(
        "--pool", type=int, default=300, help="distinct dataset texts (repeats hit)"
    )
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    if arguments.kill_after is None:
        arguments.kill_after = arguments.requests // 3
    if arguments.kill_after + arguments.down_requests >= arguments.requests:
        parser.error("--kill-after + --down-requests must leave requests for after the restart")
    return arguments


def cache_hits(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return metric_value(text, "bertheads_texts_total", source="cache")


class LoadEnded(Exception):
    """The load finished before the point the outage waits for."""


async def wait_for(condition: Callable[[], bool], load: asyncio.Task, what: str) -> None:
    """Poll `condition` until it holds; raise LoadEnded if the load finishes first."""
    while not condition():
        if load.done():
            raise LoadEnded(f"the load ended before {what}")
        await asyncio.sleep(0.02)


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
    marks: dict[str, float | int | str] = {}
    hits: dict[str, float] = {"start": cache_hits(server.url)}
    served: dict[str, int] = {}
    progress = LoadResult()
    started = time.perf_counter()

    async def watch_health() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            while True:
                body = (await client.get("/health")).json()
                health.append((round(time.perf_counter() - started, 2), body["cache"]))
                await asyncio.sleep(0.25)

    def health_says(state: str, since: int) -> bool:
        return any(seen == state for _, seen in health[since:])

    async def break_redis(load: asyncio.Task) -> None:
        await wait_for(
            lambda: progress.count >= arguments.kill_after, load, "the kill point; raise --requests"
        )
        hits["kill"] = await asyncio.to_thread(cache_hits, server.url)
        served["at_kill"] = len(progress.latencies)
        completed_at_kill = progress.count
        health_mark = len(health)
        redis_server.kill()
        marks["killed_at"] = round(time.perf_counter() - started, 2)
        marks["killed_after_requests"] = completed_at_kill
        await wait_for(
            lambda: (
                progress.count - completed_at_kill >= arguments.down_requests
                and health_says("down", health_mark)
            ),
            load,
            "the restart point; raise --requests",
        )
        hits["restart"] = await asyncio.to_thread(cache_hits, server.url)
        served["at_restart"] = len(progress.latencies)
        marks["restarted_after_requests"] = progress.count
        redis_server.start()
        marks["restarted_at"] = round(time.perf_counter() - started, 2)

    watcher = asyncio.create_task(watch_health())
    load = asyncio.create_task(
        run_load(
            server.url,
            make_request,
            total=arguments.requests,
            concurrency=arguments.concurrency,
            max_seconds=arguments.max_seconds,
            result=progress,
        )
    )
    try:
        await break_redis(load)
    except LoadEnded as error:
        marks["incomplete"] = str(error)
    await load
    await asyncio.sleep(1)  # one more /health reading after the last request
    watcher.cancel()
    hits["end"] = await asyncio.to_thread(cache_hits, server.url)
    served["at_end"] = len(progress.latencies)
    return progress, health, marks, hits, served


def phase_counts(hits: dict[str, float], served: dict[str, int]) -> dict[str, dict[str, int]]:
    """Cache hits and served requests before the kill, during the outage and after restart."""
    if "restart" not in hits:
        return {}
    return {
        "cache_hits": {
            "before_kill": int(hits["kill"] - hits["start"]),
            "while_down": int(hits["restart"] - hits["kill"]),
            "after_restart": int(hits["end"] - hits["restart"]),
        },
        "requests_served": {
            "before_kill": served["at_kill"],
            "while_down": served["at_restart"] - served["at_kill"],
            "after_restart": served["at_end"] - served["at_restart"],
        },
    }


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
            load, health, marks, hits, served = asyncio.run(
                scenario(arguments, server, redis_server)
            )
            log = server.log_path.read_text(errors="replace")
        finally:
            server.stop()
            redis_server.kill()
    states = [state for _, state in health]
    went_down = "down" in states
    came_back = went_down and "up" in states[states.index("down") :] and states[-1] == "up"
    phases = phase_counts(hits, served)
    served_while_down = phases.get("requests_served", {}).get("while_down", 0)
    hits_after_restart = phases.get("cache_hits", {}).get("after_restart", 0)
    checks = {
        "no failed requests": not load.failures,
        "outage happened mid-load": "incomplete" not in marks,
        "requests served while Redis was down": served_while_down > 0,
        "/health went down and came back up": came_back,
        "cache hits resumed after the restart": hits_after_restart > 0,
    }
    summary = {
        "model": arguments.model,
        "requests": load.count,
        "failed_requests": len(load.failures),
        "seconds": round(load.seconds, 1),
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        **marks,
        **phases,
        "health_went_down": went_down,
        "health_came_back_up": came_back,
        "checks": checks,
        "passed": all(checks.values()),
        "health_timeline": health,
        "cache_log_lines": [line for line in log.splitlines() if "embedding cache" in line],
        "first_failures": load.failures[:5],
    }
    print_table(
        [
            ("requests", load.count),
            ("failed requests", len(load.failures)),
            ("redis killed after requests", marks.get("killed_after_requests")),
            ("redis restarted after requests", marks.get("restarted_after_requests")),
            ("redis killed at s", marks.get("killed_at")),
            ("redis restarted at s", marks.get("restarted_at")),
            ("requests served before kill", phases.get("requests_served", {}).get("before_kill")),
            ("requests served while down", served_while_down),
            (
                "requests served after restart",
                phases.get("requests_served", {}).get("after_restart"),
            ),
            ("cache hits before kill", phases.get("cache_hits", {}).get("before_kill")),
            ("cache hits while down", phases.get("cache_hits", {}).get("while_down")),
            ("cache hits after restart", hits_after_restart),
            ("/health went down", went_down),
            ("/health came back up", came_back),
        ]
    )
    for line in summary["cache_log_lines"]:
        print("  server log:", line)
    for name, passed in checks.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {name}")
    if "incomplete" in marks:
        print(f"  {marks['incomplete']}")
    print(f"wrote {write_result('redis_kill', summary)}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
