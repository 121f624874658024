"""/predict latency of a cached text: hybrid and lexical heads against an embedding head.

    python bench/lexical_predict.py
    python bench/lexical_predict.py --rounds 500 --model sentence-transformers/all-mpnet-base-v2

One server (uvicorn, a private redis-server), three heads trained on data/demo_support.csv
over the API: embedding logreg, hybrid (logreg, w=1) and lexical (logreg). The request
texts are embedded once before timing, so the embedding and hybrid heads read cached
vectors. Requests go one at a time, the three heads interleaved round by round so load
from other processes hits them alike; medians and ratios against the embedding head of
the same run. Writes bench/results/lexical_predict.json.
"""

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import MINILM, REPO, ApiServer, RedisServer, write_result

HEADS = {
    "embedding": {"head": "logreg"},
    "hybrid": {"head": "logreg", "features": "hybrid", "vector_weight": 1.0},
    "lexical": {"head": "logreg", "features": "lexical"},
}
KEY = "bench-key"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--batch", type=int, default=1, help="texts per request")
    return parser.parse_args()


def main() -> int:
    arguments = parse_arguments()
    with (REPO / "data" / "demo_support.csv").open(encoding="utf-8", newline="") as handle:
        examples = [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(handle)]
    texts = [
        "I was charged twice for my order last week and still have no refund, can you help?",
        "The parcel tracking page has said 'in transit' for nine days now.",
        "After the update the app logs me out every time I switch screens.",
        "Please change the e-mail address on my account to my work one.",
    ]
    redis_server = RedisServer()
    redis_server.start()
    with tempfile.TemporaryDirectory() as folder:
        server = ApiServer(
            {
                "EMBEDDER_MODEL": arguments.model,
                "REDIS_URL": redis_server.url,
                "MODELS_DIR": str(Path(folder) / "models"),
                "DEMO_HEAD_ON_START": "false",
                "API_KEY": KEY,
            },
            Path(folder) / "server.log",
        )
        try:
            server.start()
            timings = run(server.url, examples, texts, arguments)
        finally:
            server.stop()
            redis_server.kill()
    medians = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    result = {
        "model": arguments.model,
        "rounds": arguments.rounds,
        "batch": arguments.batch,
        "p50_ms": medians,
        "p90_ms": {
            name: statistics.quantiles(values, n=10)[-1] * 1000 for name, values in timings.items()
        },
        "ratio_to_embedding": {name: medians[name] / medians["embedding"] for name in medians},
    }
    for name in HEADS:
        print(
            f"{name:10s} p50 {medians[name]:.2f} ms  p90 {result['p90_ms'][name]:.2f} ms  "
            f"x{result['ratio_to_embedding'][name]:.2f} of embedding"
        )
    write_result("lexical_predict", result)
    return 0


def run(
    url: str, examples: list[dict], texts: list[str], arguments: argparse.Namespace
) -> dict[str, list[float]]:
    headers = {"Authorization": f"Bearer {KEY}"}
    timings: dict[str, list[float]] = {name: [] for name in HEADS}
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, options in HEADS.items():
            response = client.post(
                f"/heads/{name}/train", json={"examples": examples, **options}, headers=headers
            )
            response.raise_for_status()
        batches = [
            [texts[(start + index) % len(texts)] for index in range(arguments.batch)]
            for start in range(len(texts))
        ]
        for batch in batches:  # embed (and cache) every request text before timing
            for name in HEADS:
                client.post("/predict", json={"texts": batch, "head": name}).raise_for_status()
        order = list(HEADS)
        for round_number in range(arguments.rounds):
            batch = batches[round_number % len(batches)]
            shift = round_number % len(order)
            for name in order[shift:] + order[:shift]:
                started = time.perf_counter()
                response = client.post("/predict", json={"texts": batch, "head": name})
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                timings[name].append(elapsed)
    return timings


if __name__ == "__main__":
    sys.exit(main())
