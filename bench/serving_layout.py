"""Encode layouts of the server, side by side: one thread per call on every core vs one call on all.

    python bench/serving_layout.py                         # 1,4,16,64 clients, 3 starts each
    python bench/serving_layout.py --clients 16 --starts 5 --texts 512

Layouts: the default (EMBEDDER_THREADS unset: one single-threaded encode worker per core,
and a second session on every core for a bucket that has the workers to itself) and
`EMBEDDER_THREADS=<cores>` (one worker whose calls use every core, the layout before). Each layout's
server is started `--starts` times, alternating, so slow spells of the shared machine fall
on both; per start and client count, fresh hate_speech texts (never cached) are sent one per
request. Reports the median texts/s and p50 latency per layout and their ratio, and each
start's encode threads' CPU seconds (a dead or idle worker shows as one busy thread).
Writes bench/results/<name>.json.
"""

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import (
    ApiServer,
    command_line,
    dataset_texts,
    fast_event_loop,
    load_average,
    run_load,
    use_private_redis,
    write_result,
)

from embedder.cores import available_cores


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-mpnet-base-v2")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--texts", type=int, default=512, help="uncached texts per level")
    parser.add_argument("--starts", type=int, default=3, help="server starts per layout")
    parser.add_argument("--redis-url", help="a Redis DB to flush and use (default: private)")
    parser.add_argument("--name", default="serving_layout")
    return parser.parse_args()


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process `pid`."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{thread}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended while we looked
        seconds[int(thread)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def measure(server: ApiServer, texts: list[str], clients: int) -> dict:
    """One uncached level: texts/s, p50 ms, and CPU seconds of the threads that worked."""
    tag = uuid.uuid4().hex[:8]
    fresh = [f"{text} {tag}{index}" for index, text in enumerate(texts)]
    before = thread_cpu_seconds(server.process.pid)
    result = asyncio.run(
        run_load(
            server.url,
            lambda index: ("/embed", {"texts": [fresh[index]]}),
            total=len(fresh),
            concurrency=clients,
            client="raw",
        )
    )
    after = thread_cpu_seconds(server.process.pid)
    busy = sorted(
        (round(after[thread] - before.get(thread, 0.0), 2) for thread in after),
        reverse=True,
    )
    return {
        "texts_per_s": round(len(result.latencies) / result.seconds, 1),
        "p50_ms": round(statistics.median(result.latencies) * 1000, 1),
        "errors": len(result.failures),
        "busiest_threads_cpu_s": busy[:3],
    }


def main() -> int:
    arguments = parse_arguments()
    fast_event_loop()
    use_private_redis(arguments)
    cores = available_cores()
    layouts = {"default": None, f"{cores} threads x 1 worker": str(cores)}
    clients = [int(part) for part in arguments.clients.split(",")]
    texts = list(dict.fromkeys(dataset_texts("hate_speech/all.csv")))
    random.Random(0).shuffle(texts)
    texts = texts[: arguments.texts]
    print(f"command: {command_line()}\nload average at start: {load_average()}")
    runs: dict[str, dict[int, list[dict]]] = {name: {n: [] for n in clients} for name in layouts}
    for start in range(arguments.starts):
        for name, threads in layouts.items():
            with tempfile.TemporaryDirectory() as models:
                env = {
                    "EMBEDDER_MODEL": arguments.model,
                    "REDIS_URL": arguments.redis_url,
                    "MODELS_DIR": models,
                    "DEMO_HEAD_ON_START": "false",
                } | ({"EMBEDDER_THREADS": threads} if threads else {})
                server = ApiServer(env, Path(models) / "server.log")
                if not threads:  # the default layout, whatever the shell says
                    server.env.pop("EMBEDDER_THREADS", None)
                server.start(timeout=600)
                try:
                    time.sleep(2)  # the every-core session loads after startup
                    measure(server, texts[:64], 8)  # warm-up: first-call allocations
                    for count in clients:
                        row = measure(server, texts, count)
                        runs[name][count].append(row)
                        print(f"start {start} {name:<24} {count:>3} clients {row}", flush=True)
                finally:
                    server.stop()
    summary = {}
    default, before = list(layouts)
    for count in clients:
        medians = {
            name: {
                key: statistics.median(row[key] for row in runs[name][count])
                for key in ("texts_per_s", "p50_ms")
            }
            for name in layouts
        }
        ratio = medians[default]["texts_per_s"] / medians[before]["texts_per_s"]
        summary[count] = {**medians, "texts_per_s_ratio": round(ratio, 3)}
        print(
            f"{count:>3} clients: texts/s {medians[default]['texts_per_s']} vs "
            f"{medians[before]['texts_per_s']} ({ratio:.2f}x), p50 ms "
            f"{medians[default]['p50_ms']} vs {medians[before]['p50_ms']}"
        )
    errors = sum(row["errors"] for name in runs for rows in runs[name].values() for row in rows)
    result = {
        "command": command_line(),
        "cores": cores,
        "layouts": layouts,
        "runs": {
            name: {str(n): rows for n, rows in levels.items()} for name, levels in runs.items()
        },
        "summary": {str(count): value for count, value in summary.items()},
        "load_average_end": load_average(),
        "errors": errors,
    }
    print(f"wrote {write_result(arguments.name, result)}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
