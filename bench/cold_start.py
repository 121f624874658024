"""Cold start: process start to the first answered /embed, median of 3, per backend.

    python bench/cold_start.py                          # mpnet; onnx-int8 (default), onnx, torch
    python bench/cold_start.py --model sentence-transformers/all-MiniLM-L6-v2 --backends torch
    python bench/cold_start.py --session-open           # ORT session open, saved graph or not

The baseline, measured in the same run, is a fresh `python` that loads the same model
directory with `SentenceTransformer` and encodes one text. Files are built first with
`python -m embedder.prepare` (as the install does; timed and reported, not in the median).
Beside the server, "encoder only" is a fresh `python` that loads our encoder and encodes one
text (no web server, no heads): what the embedder itself costs.
The server runs with an empty MODELS_DIR and no demo head (--demo-head to include one),
a private Redis DB, and a new text each time so the first /embed really encodes.
Prints a table and writes bench/results/cold_start.json (or cold_start_session.json).
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

MPNET = "sentence-transformers/all-mpnet-base-v2"

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
    parser.add_argument("--backends", default="onnx-int8,onnx,torch")
    parser.add_argument(
        "--session-open", action="store_true", help="time ORT session opens of the int8 model"
    )
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


ENCODER_ONLY = (
    "import sys\n"
    "from embedder import load_encoder\n"
    "encoder = load_encoder(sys.argv[1], backend=sys.argv[2], device='auto')\n"
    "encoder.encode(['first text'])\n"
    "assert encoder.backend_name == sys.argv[2], encoder.fallback_reason\n"
    "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n"
)


def local_model_path(model: str) -> Path:
    """The model's directory as the server resolves it (reassembles mpnet the first time)."""
    from embedder.resolve import resolve_model

    return resolve_model(model, None).path


def encoder_only_seconds(model: str, backend: str) -> tuple[float, str]:
    """A fresh interpreter: load our encoder and encode one text; seconds, heavy imports."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", ENCODER_ONLY, model, backend],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - started, done.stdout.strip()


def prepare_seconds(model: str, backend: str) -> float:
    """`python -m embedder.prepare` for `backend`: builds what is missing, gates it."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "embedder.prepare", "--model", model, "--backend", backend],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


SESSION_OPEN = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from embedder.onnx_backend import make_session\n"
    "started = time.perf_counter()\n"
    "make_session(Path(sys.argv[1]), optimize=sys.argv[2] == 'saved')\n"
    "print(time.perf_counter() - started)\n"
)


def session_open(model: str, repeats: int) -> int:
    """Median seconds to open an ORT session on the int8 model, each in a fresh process."""
    from embedder.onnx_backend import model_directory
    from embedder.onnx_int8 import INT8_FILE
    from embedder.resolve import default_cache_dir, resolve_model

    prepare_seconds(model, "onnx-int8")
    sha = resolve_model(model, None).weights_sha256
    path = model_directory(default_cache_dir(), sha) / INT8_FILE
    seconds: dict[str, list[float]] = {"saved": [], "unoptimised file": []}
    for _ in range(repeats):
        for mode in seconds:
            done = subprocess.run(
                [sys.executable, "-c", SESSION_OPEN, str(path), mode],
                cwd=REPO,
                check=True,
                capture_output=True,
                text=True,
            )
            seconds[mode].append(float(done.stdout.strip()))
    print(f"ORT session open, {path.name} of {model}, median of {repeats} fresh processes:")
    for mode, values in seconds.items():
        runs = " ".join(f"{value:.2f}" for value in values)
        print(f"  {mode:<18}{statistics.median(values):>6.2f} s   runs {runs}")
    summary = {
        "model": model,
        "file": path.name,
        "median_seconds": {mode: round(statistics.median(v), 3) for mode, v in seconds.items()},
        "runs_seconds": {mode: [round(x, 3) for x in v] for mode, v in seconds.items()},
        "load_average_at_end": list(os.getloadavg()),
    }
    print(f"wrote {write_result('cold_start_session', summary)}")
    return 0


def main() -> int:
    arguments = parse_arguments()
    if arguments.session_open:
        return session_open(arguments.model, max(arguments.repeats, 5))
    if arguments.redis_url.rstrip("/").endswith("/0"):
        raise SystemExit("--redis-url: db 0 holds the shared warm cache; pick another db")
    redis.Redis.from_url(arguments.redis_url).flushdb()
    model_path = local_model_path(arguments.model)  # reassembles mpnet if it is not yet
    print(f"model directory {model_path} (in place before the timed starts)")
    backends = arguments.backends.split(",")
    prepared = {}
    for backend in backends:
        prepared[backend] = round(prepare_seconds(arguments.model, backend), 1)
        print(f"{backend}: python -m embedder.prepare took {prepared[backend]} s (install step)")
    plain: list[float] = []
    results: dict[str, dict] = {}
    for backend in backends:
        runs: list[float] = []
        alone: list[float] = []
        heavy = ""
        try:
            for _ in range(arguments.repeats):
                plain.append(plain_load_seconds(model_path))
                runs.append(
                    first_embed_seconds(
                        arguments.model, backend, arguments.redis_url, arguments.demo_head
                    )[0]
                )
                seconds, heavy = encoder_only_seconds(arguments.model, backend)
                alone.append(seconds)
                print(
                    f"{backend}: server {runs[-1]:.2f} s, encoder only {alone[-1]:.2f} s "
                    f"(plain load {plain[-1]:.2f} s)",
                    flush=True,
                )
        except (RuntimeError, subprocess.CalledProcessError) as error:
            print(f"{backend}: FAILED: {error}")
            results[backend] = {"error": str(error)[-1500:], "runs_seconds": runs}
            continue
        results[backend] = {
            "median_seconds": round(statistics.median(runs), 2),
            "runs_seconds": [round(value, 2) for value in runs],
            "encoder_only_median_seconds": round(statistics.median(alone), 2),
            "encoder_only_runs_seconds": [round(value, 2) for value in alone],
            "heavy_modules_imported_by_encoder": heavy,
            "prepare_seconds": prepared[backend],
        }
    plain_median = statistics.median(plain) if plain else float("nan")
    print(f"\n{'backend':<11}{'server s':>9}{'/ plain':>9}{'encoder s':>11}{'/ plain':>9}  runs s")
    plain_runs = " ".join(f"{value:.2f}" for value in plain)
    print(f"{'plain ST':<11}{plain_median:>9.2f}{1:>9.2f}{'':>11}{'':>9}  {plain_runs}")
    for backend, row in results.items():
        if "median_seconds" not in row:
            print(f"{backend:<11}{'failed':>9}")
            continue
        row["ratio_to_plain"] = round(row["median_seconds"] / plain_median, 2)
        row["encoder_only_ratio_to_plain"] = round(
            row["encoder_only_median_seconds"] / plain_median, 2
        )
        runs = " ".join(f"{value:.2f}" for value in row["runs_seconds"])
        print(
            f"{backend:<11}{row['median_seconds']:>9.2f}{row['ratio_to_plain']:>9.2f}"
            f"{row['encoder_only_median_seconds']:>11.2f}{row['encoder_only_ratio_to_plain']:>9.2f}"
            f"  {runs}"
        )
    summary = {
        "model": arguments.model,
        "demo_head": arguments.demo_head,
        "model_dir": str(model_path),
        "plain_sentence_transformers_seconds": [round(value, 2) for value in plain],
        "plain_median_seconds": round(plain_median, 2),
        "load_average_at_end": list(os.getloadavg()),
        "backends": results,
    }
    print(f"wrote {write_result('cold_start', summary)}")
    return 0 if all("median_seconds" in row for row in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
