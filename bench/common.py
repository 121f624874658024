"""Helpers shared by the bench scripts: servers, Redis, memory, percentiles, result files.

Run bench scripts from the repository root (`python bench/load.py`); each keeps its
server and Redis processes private and stops them on exit.
"""

import asyncio
import csv
import json
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import numpy as np
import redis

REPO = Path(__file__).resolve().parent.parent
DATASETS = REPO.parent / "shared" / "datasets"
RESULTS = REPO / "bench" / "results"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ApiServer:
    """`uvicorn api.main:create_app --factory` as a subprocess on loopback.

    Args:
        env: Settings as environment variables (EMBEDDER_MODEL, REDIS_URL, MODELS_DIR, ...).
        log_path: Where the server's stderr (JSON logs) goes.
        port: Port to listen on; default: a spare one.

    """

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, "LOG_LEVEL": "WARNING", **env}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 180) -> dict:
        """Start the server and wait for /health (and for the demo head, which the server
        trains in the background, when DEMO_HEAD_ON_START is on); returns the health body."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        health = wait_for_health(self.url, timeout, self.process)
        if self.env.get("DEMO_HEAD_ON_START", "true").lower() in ("true", "1", "yes"):
            while "demo" not in health["heads"]:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"{self.url}: the demo head was not trained in time")
                time.sleep(0.25)
                health = httpx.get(f"{self.url}/health", timeout=5).json()
        return health

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is None:
            return
        stop_process(self.process)
        self.process = None


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it lingers past 20 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def flush_private_redis(url: str) -> None:
    """Empty the benchmark's Redis db, refusing db 0 (the shared warm cache)."""
    import redis

    if url.rstrip("/").endswith("/0"):
        raise SystemExit("--redis-url: db 0 holds the shared warm cache; pick another db")
    redis.Redis.from_url(url).flushdb()


def wait_for_health(url: str, timeout: float, process: subprocess.Popen | None = None) -> dict:
    """Poll GET /health until it answers 200; raise if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was healthy")
        try:
            response = httpx.get(f"{url}/health", timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url}/health did not answer within {timeout} s")


class RedisServer:
    """A private, non-persistent redis-server on a spare port, for runs that kill it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it answers PING."""
        command = [shutil.which("redis-server") or "redis-server", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentiles(
    values: Sequence[float], points: Sequence[float] = (50, 95, 99)
) -> dict[str, float]:
    """{"p50": ..., ...} of `values` (empty input gives NaN)."""
    array = np.asarray(values, dtype=np.float64)
    return {
        f"p{point:g}": float(np.percentile(array, point)) if len(array) else float("nan")
        for point in points
    }


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def dataset_texts(relative: str = "hate_speech/all.csv", column: str = "text") -> list[str]:
    """Non-empty texts of one column of a shared dataset CSV."""
    with (DATASETS / relative).open(encoding="utf-8", newline="") as handle:
        return [row[column] for row in csv.DictReader(handle) if row[column].strip()]


def random_text(generator: random.Random, words: int = 12) -> str:
    """A never-seen-before text (so the cache cannot answer it)."""
    letters = string.ascii_lowercase
    return " ".join(
        "".join(generator.choices(letters, k=generator.randint(2, 9))) for _ in range(words)
    )


def write_result(name: str, data: dict) -> Path:
    """Write bench/results/<name>.json and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def print_table(rows: Sequence[tuple[str, object]]) -> None:
    """Two aligned columns: name, value."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
        print(f"{name:<{width}}  {shown}")


class LoadResult:
    """What `run_load` saw: per-request latencies (s), failures, wall time."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.by_path: dict[str, int] = {}
        self.seconds = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies) + len(self.failures)


async def run_load(
    url: str,
    make_request: Callable[[int], tuple[str, dict]],
    *,
    total: int,
    concurrency: int,
    max_seconds: float | None = None,
    timeout: float = 60,
    result: LoadResult | None = None,
) -> LoadResult:
    """POST `total` requests from `concurrency` clients (stopping early after `max_seconds`).

    `make_request(i)` gives the i-th request's path and JSON body. Anything but a 200,
    including a timeout or a dropped connection, counts as a failure. Pass `result` to
    watch the counts grow while the load runs (to act at a point of its progress).
    """
    result = result if result is not None else LoadResult()
    counter = iter(range(total))
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for index in counter:
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                return
            path, body = make_request(index)
            sent = time.perf_counter()
            try:
                response = await client.post(path, json=body)
                ok = response.status_code == 200
                reason = f"{path} {response.status_code} {response.text[:200]}"
            except httpx.HTTPError as error:
                ok, reason = False, f"{path} {type(error).__name__}: {error}"
            if ok:
                result.latencies.append(time.perf_counter() - sent)
                result.by_path[path] = result.by_path.get(path, 0) + 1
            else:
                result.failures.append(reason)

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result
