"""Resident memory of one API server: ready, with several heads, under load, after load.

    python bench/memory.py                                # default model (mpnet), torch
    python bench/memory.py --backend onnx-int8 --seconds 60

Starts a private Redis and one server (`uvicorn api.main:create_app --factory`, the demo
head trained on start), trains `--heads` more heads over the API, then runs `--clients`
concurrent clients for `--seconds`: /embed of 1-16 never-seen texts of up to ~170 words
(so every forward pass runs at max_seq_len) and /predict on a random head. RSS is sampled
from /proc every 0.2 s; the peak is the kernel's VmHWM. The Kubernetes resource requests
and limits (deploy/kubernetes/base/api-deployment.yaml) are sized from these figures.
Writes bench/results/memory-<backend>.json.
"""

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import (
    RESULTS,
    ApiServer,
    RedisServer,
    dataset_texts,
    print_table,
    random_text,
    rss_bytes,
    run_load,
    write_result,
)

MPNET = "sentence-transformers/all-mpnet-base-v2"
MIB = 2**20


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MPNET)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--heads", type=int, default=4, help="heads trained besides demo")
    parser.add_argument("--train-rows", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--threads", type=int, default=None, help="EMBEDDER_THREADS")
    parser.add_argument("--train-peak-rows", type=int, default=80_000, help="0: skip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--measure-train", nargs=2, metavar=("ROWS", "HEAD"), help=argparse.SUPPRESS
    )
    return parser.parse_args()


def peak_rss_bytes(pid: int) -> int:
    """The kernel's high-water mark of resident memory (VmHWM) since the process started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


class RssSampler(threading.Thread):
    """Samples a process's RSS every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.samples.append(rss_bytes(self.pid))


def train_heads(url: str, count: int, rows: int, generator: random.Random) -> float:
    """Train `count` heads (logreg and mlp in turn) on hate_speech rows; returns seconds."""
    import csv

    from common import DATASETS

    with (DATASETS / "hate_speech" / "train.csv").open(encoding="utf-8", newline="") as handle:
        table = [row for row in csv.DictReader(handle) if row["text"].strip()]
    sample = generator.sample(table, rows)
    examples = [{"text": row["text"], "label": row["label"]} for row in sample]
    started = time.perf_counter()
    for index in range(count):
        body = {"examples": examples, "head": "mlp" if index % 2 else "logreg", "seed": index}
        response = httpx.post(f"{url}/heads/memory{index}/train", json=body, timeout=900)
        response.raise_for_status()
    return time.perf_counter() - started


def measure_train(rows: int, head: str) -> None:
    """In this (fresh) process: print the peak RSS before and after one train_head."""
    import numpy as np

    from classifier.training import train_head

    generator = np.random.default_rng(0)
    vectors = generator.standard_normal((rows, 768), dtype=np.float32)
    labels = [f"class{value}" for value in generator.integers(0, 4, rows)]
    before = peak_rss_bytes(os.getpid())
    train_head(vectors, labels, head=head)
    print(json.dumps({"before": before / MIB, "after": peak_rss_bytes(os.getpid()) / MIB}))


def train_peak_mib(rows: int, head: str) -> float:
    """How much a train of `rows` vectors raises a process's peak RSS (MiB)."""
    command = [sys.executable, __file__, "--measure-train", str(rows), head]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    return figures["after"] - figures["before"]


def request_maker(heads: list[str], generator: random.Random):
    pool = dataset_texts()

    def long_text() -> str:
        return random_text(generator, words=generator.randint(20, 170))

    def make_request(index: int) -> tuple[str, dict]:
        if index % 3 == 2:
            texts = [generator.choice(pool) for _ in range(generator.randint(1, 4))]
            return "/predict", {"texts": texts, "head": generator.choice(heads)}
        return "/embed", {"texts": [long_text() for _ in range(generator.randint(1, 16))]}

    return make_request


def main() -> int:
    arguments = parse_arguments()
    if arguments.measure_train:
        measure_train(int(arguments.measure_train[0]), arguments.measure_train[1])
        return 0
    generator = random.Random(arguments.seed)
    redis_server = RedisServer()
    redis_server.start()
    figures: dict[str, object] = {
        "model": arguments.model,
        "backend": arguments.backend,
        "load_average_at_start": os.getloadavg(),
    }
    env = {
        "EMBEDDER_MODEL": arguments.model,
        "EMBEDDER_BACKEND": arguments.backend,
        "REDIS_URL": redis_server.url,
        "DEMO_HEAD_ON_START": "true",
    }
    if arguments.threads:
        env["EMBEDDER_THREADS"] = str(arguments.threads)
    try:
        with tempfile.TemporaryDirectory() as models:
            server = ApiServer({**env, "MODELS_DIR": models}, RESULTS / "memory.server.log")
            started = time.perf_counter()
            health = server.start(timeout=900)
            figures["start_seconds_with_demo_head"] = round(time.perf_counter() - started, 1)
            figures["backend_serving"] = health.get("backend")
            try:
                figures["rss_mib_ready_1_head"] = rss_bytes(server.pid) / MIB
                figures["train_seconds"] = round(
                    train_heads(server.url, arguments.heads, arguments.train_rows, generator), 1
                )
                heads = httpx.get(f"{server.url}/health").json()["heads"]
                figures["heads"] = len(heads)
                figures[f"rss_mib_{len(heads)}_heads"] = rss_bytes(server.pid) / MIB
                figures["rss_mib_peak_before_load"] = peak_rss_bytes(server.pid) / MIB
                sampler = RssSampler(server.pid)
                sampler.start()
                result = asyncio.run(
                    run_load(
                        server.url,
                        request_maker(heads, generator),
                        total=10**9,
                        concurrency=arguments.clients,
                        max_seconds=arguments.seconds,
                        timeout=300,
                    )
                )
                sampler.halt.set()
                sampler.join()
                figures["load_requests"] = result.count
                figures["load_errors"] = len(result.failures)
                figures["load_by_path"] = result.by_path
                figures["rss_mib_load_median"] = (
                    sorted(sampler.samples)[len(sampler.samples) // 2] / MIB
                )
                figures["rss_mib_load_max_sampled"] = max(sampler.samples) / MIB
                figures["rss_mib_peak_vmhwm"] = peak_rss_bytes(server.pid) / MIB
                time.sleep(10)
                figures["rss_mib_10s_after_load"] = rss_bytes(server.pid) / MIB
                figures["load_average_at_end"] = os.getloadavg()
                figures["first_errors"] = result.failures[:3]
            finally:
                server.stop()
    finally:
        redis_server.kill()
    if arguments.train_peak_rows:
        figures["train_peak_rows"] = arguments.train_peak_rows
        for head in ("logreg", "mlp"):
            figures[f"train_peak_mib_{head}"] = train_peak_mib(arguments.train_peak_rows, head)
    rounded = {k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}
    print_table(list(rounded.items()))
    print(f"wrote {write_result(f'memory-{arguments.backend}', rounded)}")
    return 1 if figures["load_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
