"""Cold start: process start to the first answered /embed, median of 3, per backend.

    python bench/cold_start.py                                  # mpnet; torch, onnx
    python bench/cold_start.py --model sentence-transformers/all-MiniLM-L6-v2 --backends torch

The baseline, measured in the same run, is a fresh `python` that loads the same model
directory with `SentenceTransformer` and encodes one text. A backend whose exported file
is not cached yet gets one priming start first (reported separately, not in the median).
The server runs with an empty MODELS_DIR and no demo head (--demo-head to include one),
a private Redis DB, and a new text each time so the first /embed really encodes.
Prints a table and writes bench/results/cold_start.json.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis
from common import REPO, free_port, stop_process, write_result
from http_load import MPNET, local_model_path

PLAIN_LOAD = (
    "import sys\n"
    "from sentence_transformers import SentenceTransformer\n"
    "model = SentenceTransformer(sys.argv[1], device='cpu')\n"
    "model.max_seq_length = 128\n"
    "model.encode(['first text'])\n"
)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MPNET)
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo-head", action="store_true", help="train the demo head at start")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9", help="flushed first")
    return parser.parse_args()


def first_embed_seconds(
    model: str, backend: str, redis_url: str, demo_head: bool, timeout: float = 900
) -> tuple[float, str]:
    """Seconds from Popen to the first 200 from /embed, and the server's log tail."""
    port = free_port()
    with tempfile.TemporaryDirectory() as models:
        env = {
            **os.environ,
            "EMBEDDER_MODEL": model,
            "EMBEDDER_BACKEND": backend,
            "REDIS_URL": redis_url,
            "MODELS_DIR": models,
            "DEMO_HEAD_ON_START": "true" if demo_head else "false",
            "LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
        log_path = Path(models) / "server.log"
        body = {"texts": [f"cold start probe {uuid.uuid4().hex}"]}
        with log_path.open("wb") as log:
            started = time.perf_counter()
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        try:
            while time.perf_counter() - started < timeout:
                if process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-1500:]
                    raise RuntimeError(f"server exited with {process.returncode}:\n{tail}")
                try:
                    response = httpx.post(f"http://127.0.0.1:{port}/embed", json=body, timeout=120)
                    if response.status_code == 200:
                        return time.perf_counter() - started, ""
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            raise RuntimeError(f"no /embed answer within {timeout} s")
        finally:
            stop_process(process)


def plain_load_seconds(model_path: Path) -> float:
    """A fresh interpreter: import sentence-transformers, load the model, encode one text."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(model_path)], check=True, capture_output=True
    )
    return time.perf_counter() - started


def onnx_export(model: str, backend: str) -> Path:
    """Where `backend`'s exported file for `model` lives (present: the start is warm)."""
    from embedder.onnx_backend import FP32_FILE, INT8_FILE
    from embedder.resolve import default_cache_dir, resolve_model

    folder = default_cache_dir() / "onnx" / resolve_model(model, None).weights_sha256[:16]
    return folder / (INT8_FILE if backend == "onnx-int8" else FP32_FILE)


def main() -> int:
    arguments = parse_arguments()
    if arguments.redis_url.rstrip("/").endswith("/0"):
        raise SystemExit("--redis-url: db 0 holds the shared warm cache; pick another db")
    redis.Redis.from_url(arguments.redis_url).flushdb()
    model_path = local_model_path(arguments.model)  # reassembles mpnet if it is not yet
    state = {
        "model_dir": str(model_path),
        "model_dir_reassembled_before_run": True,
        "onnx_exports_before_run": {
            backend: onnx_export(arguments.model, backend).is_file()
            for backend in arguments.backends.split(",")
            if backend != "torch"
        },
    }
    print(f"model directory {model_path} (already in place before the timed starts)")
    plain = []
    results: dict[str, dict] = {}
    for backend in arguments.backends.split(","):
        priming = None
        if backend != "torch" and not onnx_export(arguments.model, backend).is_file():
            print(f"{backend}: no exported model cached; priming start (export) first")
            try:
                priming = first_embed_seconds(
                    arguments.model, backend, arguments.redis_url, arguments.demo_head
                )[0]
            except RuntimeError as error:
                print(f"{backend}: FAILED to start: {error}")
                results[backend] = {"error": str(error)[-1500:]}
                continue
        runs = []
        try:
            for _ in range(arguments.repeats):
                plain.append(plain_load_seconds(model_path))
                runs.append(
                    first_embed_seconds(
                        arguments.model, backend, arguments.redis_url, arguments.demo_head
                    )[0]
                )
                print(f"{backend}: {runs[-1]:.2f} s (plain load {plain[-1]:.2f} s)", flush=True)
        except RuntimeError as error:
            print(f"{backend}: FAILED: {error}")
            results[backend] = {"error": str(error)[-1500:], "runs_seconds": runs}
            continue
        results[backend] = {
            "median_seconds": round(statistics.median(runs), 2),
            "runs_seconds": [round(value, 2) for value in runs],
            "priming_start_seconds": None if priming is None else round(priming, 2),
        }
    plain_median = statistics.median(plain) if plain else float("nan")
    print(f"\n{'backend':<11}{'median s':>9}{'/ plain':>9}  {'priming s':>10}  runs s")
    plain_runs = " ".join(f"{value:.2f}" for value in plain)
    print(f"{'plain ST':<11}{plain_median:>9.2f}{1:>9.2f}  {'':>10}  {plain_runs}")
    for backend, row in results.items():
        if "median_seconds" not in row:
            print(f"{backend:<11}{'failed':>9}")
            continue
        row["ratio_to_plain"] = round(row["median_seconds"] / plain_median, 2)
        runs = " ".join(f"{value:.2f}" for value in row["runs_seconds"])
        print(
            f"{backend:<11}{row['median_seconds']:>9.2f}{row['ratio_to_plain']:>9.2f}"
            f"  {row['priming_start_seconds'] or '':>10}  {runs}"
        )
    summary = {
        "model": arguments.model,
        "demo_head": arguments.demo_head,
        **state,
        "plain_sentence_transformers_seconds": [round(value, 2) for value in plain],
        "plain_median_seconds": round(plain_median, 2),
        "backends": results,
    }
    print(f"wrote {write_result('cold_start', summary)}")
    return 0 if all("median_seconds" in row for row in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
