"""Load run: mixed /embed and /predict against a live server on loopback; zero errors expected.

    python bench/load.py                      # 10,000 requests, 32 clients, MiniLM
    python bench/load.py --model sentence-transformers/all-mpnet-base-v2 --requests 2000

Texts come from the shared hate_speech dataset (repeats: cache hits) mixed with random
ones (never cached). Prints a table and writes bench/results/load.json.
"""

import argparse
import asyncio
import random
import sys
import tempfile

import httpx
import redis
from common import (
    MINILM,
    RESULTS,
    ApiServer,
    dataset_texts,
    metric_value,
    percentiles,
    print_table,
    random_text,
    rss_bytes,
    run_load,
    write_result,
)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--predict-share", type=float, default=0.5)
    parser.add_argument("--random-share", type=float, default=0.15, help="texts never seen before")
    parser.add_argument("--pool", type=int, default=3000, help="distinct dataset texts used")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="flushed first")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def request_maker(arguments: argparse.Namespace):
    generator = random.Random(arguments.seed)
    pool = generator.sample(dataset_texts(), arguments.pool)

    def make_request(index: int) -> tuple[str, dict]:
        texts = [
            random_text(generator)
            if generator.random() < arguments.random_share
            else generator.choice(pool)
            for _ in range(generator.randint(1, 3))
        ]
        if generator.random() < arguments.predict_share:
            return "/predict", {"texts": texts}
        return "/embed", {"texts": texts}

    return make_request


def main() -> int:
    arguments = parse_arguments()
    if arguments.redis_url.rstrip("/").endswith("/0"):
        raise SystemExit("--redis-url: db 0 holds the shared warm cache; pick another db")
    redis.Redis.from_url(arguments.redis_url).flushdb()
    make_request = request_maker(arguments)
    with tempfile.TemporaryDirectory() as models:
        server = ApiServer(
            {
                "EMBEDDER_MODEL": arguments.model,
                "REDIS_URL": arguments.redis_url,
                "MODELS_DIR": models,
                "DEMO_HEAD_ON_START": "true",
            },
            RESULTS / "load.server.log",
        )
        server.start()
        try:
            httpx.post(f"{server.url}/predict", json={"texts": ["warm up"]}, timeout=60)
            rss_before = rss_bytes(server.pid)
            result = asyncio.run(
                run_load(
                    server.url,
                    make_request,
                    total=arguments.requests,
                    concurrency=arguments.concurrency,
                )
            )
            rss_after = rss_bytes(server.pid)
            metrics = httpx.get(f"{server.url}/metrics").text
        finally:
            server.stop()
    latency = {key: value * 1000 for key, value in percentiles(result.latencies).items()}
    summary = {
        "model": arguments.model,
        "requests": result.count,
        "concurrency": arguments.concurrency,
        "errors": len(result.failures),
        "by_path": result.by_path,
        "seconds": round(result.seconds, 2),
        "throughput_rps": round(result.count / result.seconds, 1),
        "latency_ms": {key: round(value, 1) for key, value in latency.items()},
        "rss_mb_before": round(rss_before / 2**20, 1),
        "rss_mb_after": round(rss_after / 2**20, 1),
        "texts_from_cache": int(metric_value(metrics, "bertheads_texts_total", source="cache")),
        "texts_encoded": int(metric_value(metrics, "bertheads_texts_total", source="encoder")),
        "first_errors": result.failures[:5],
    }
    print_table(
        [
            ("model", summary["model"]),
            ("requests (/embed, /predict)", f"{result.count} {result.by_path}"),
            ("concurrency", arguments.concurrency),
            ("errors", summary["errors"]),
            ("wall seconds", result.seconds),
            ("throughput req/s", result.count / result.seconds),
            *((f"latency {key} ms", value) for key, value in latency.items()),
            ("server RSS before MB", rss_before / 2**20),
            ("server RSS after MB", rss_after / 2**20),
            ("texts from cache", summary["texts_from_cache"]),
            ("texts encoded", summary["texts_encoded"]),
        ]
    )
    print(f"wrote {write_result('load', summary)}")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
