"""Helpers shared by the bench scripts: servers, Redis, memory, percentiles, result files.

Run bench scripts from the repository root (`python bench/load.py`); each keeps its
server and Redis processes private and stops them on exit.
"""

import asyncio
import contextlib
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
# `python bench/x.py` puts bench/ first on the path; the project's packages must then come
# from this checkout, not from wherever the venv's editable install points.
sys.path.insert(1, str(REPO))
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


def use_private_redis(arguments) -> "RedisServer | None":
    """Flush `arguments.redis_url`, or start a private redis-server and point it there.

    The private server is stopped when this process exits.
    """
    import atexit

    if arguments.redis_url:
        flush_private_redis(arguments.redis_url)
        return None
    server = RedisServer()
    server.start()
    atexit.register(server.kill)
    arguments.redis_url = server.url
    return server


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


def load_average() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages (other jobs share the cores)."""
    return [round(value, 2) for value in os.getloadavg()]


def command_line() -> str:
    """This script's exact command, to print and to store beside its figures."""
    return " ".join(["python", *sys.argv])


class HttpError(Exception):
    """A dropped connection or a response the raw client cannot read."""


class RawHttpClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, one connection per client.

    httpx spends about a millisecond of Python per request on its own; this client spends a
    few tens of microseconds, so a latency measured on a 2-core machine is the server's.
    It sends JSON bodies and reads Content-Length or chunked responses; nothing else.
    """

    def __init__(self, url: str, timeout: float = 60) -> None:
        host_port = url.removeprefix("http://").rstrip("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST `body` (JSON) to `path`; returns (status, response body)."""
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        return await asyncio.wait_for(self._exchange(request), self.timeout)

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        try:
            self._writer.write(request)
            head = await self._reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = await self._read_chunked()
            else:
                body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ) as error:
            await self.close()
            raise HttpError(f"{type(error).__name__}: {error}") from error
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while True:
            size = int((await self._reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await self._reader.readline()
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readline()

    async def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


def fast_event_loop() -> None:
    """Use uvloop for the load generator when it is installed (less client overhead)."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


CANNED_SERVER = """
import asyncio, sys
body = b"x" * int(sys.argv[2])
head = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n"
response = head % len(body) + body

class Canned(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while b"\\r\\n\\r\\n" in self.buffer:
            head_end = self.buffer.index(b"\\r\\n\\r\\n") + 4
            length = 0
            for line in self.buffer[:head_end].split(b"\\r\\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(self.buffer) < head_end + length:
                return
            self.buffer = self.buffer[head_end + length :]
            self.transport.write(response)

async def main():
    server = await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def client_floor(body_bytes: int, requests: int = 400, client: str = "raw") -> dict:
    """p50/p99 (ms) of the load generator against a server that answers at once.

    The server is a bare asyncio protocol in its own process returning `body_bytes` of
    canned JSON-sized body: what is left is the client and the loopback, the part of a
    measured latency that is not the server under test.
    """
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", CANNED_SERVER, str(port), str(body_bytes)], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        result = asyncio.run(
            run_load(
                f"http://127.0.0.1:{port}",
                lambda index: ("/embed", {"texts": ["canned"]}),
                total=requests,
                concurrency=1,
                client=client,
            )
        )
    finally:
        stop_process(process)
    latency = percentiles(result.latencies[requests // 10 :])
    return {key + "_ms": round(value * 1000, 3) for key, value in latency.items()}


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
    client: str = "httpx",
    result: LoadResult | None = None,
) -> LoadResult:
    """POST `total` requests from `concurrency` clients (stopping early after `max_seconds`).

    `make_request(i)` gives the i-th request's path and JSON body. Anything but a 200,
    including a timeout or a dropped connection, counts as a failure. `client` is "httpx"
    (one shared `httpx.AsyncClient`) or "raw" (`RawHttpClient`, one connection per client
    loop, bodies serialised before the clock starts). Pass `result` to watch the counts
    grow while the load runs (to act at a point of its progress).
    """
    result = result if result is not None else LoadResult()
    counter = iter(range(total))
    started = time.perf_counter()

    def note(path: str, sent: float, ok: bool, reason: str) -> None:
        if ok:
            result.latencies.append(time.perf_counter() - sent)
            result.by_path[path] = result.by_path.get(path, 0) + 1
        else:
            result.failures.append(reason)

    def out_of_time() -> bool:
        return max_seconds is not None and time.perf_counter() - started > max_seconds

    async def httpx_loop(client: httpx.AsyncClient) -> None:
        for index in counter:
            if out_of_time():
                return
            path, body = make_request(index)
            sent = time.perf_counter()
            try:
                response = await client.post(path, json=body)
                ok = response.status_code == 200
                reason = f"{path} {response.status_code} {response.text[:200]}"
            except httpx.HTTPError as error:
                ok, reason = False, f"{path} {type(error).__name__}: {error}"
            note(path, sent, ok, reason)

    async def raw_loop() -> None:
        connection = RawHttpClient(url, timeout)
        try:
            for index in counter:
                if out_of_time():
                    return
                path, body = make_request(index)
                payload = json.dumps(body).encode()
                sent = time.perf_counter()
                try:
                    status, answer = await connection.post(path, payload)
                    ok, reason = status == 200, f"{path} {status} {answer[:200]!r}"
                except (HttpError, TimeoutError) as error:
                    ok, reason = False, f"{path} {type(error).__name__}: {error}"
                note(path, sent, ok, reason)
        finally:
            await connection.close()

    if client == "raw":
        await asyncio.gather(*(raw_loop() for _ in range(concurrency)))
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as shared:
            await asyncio.gather(*(httpx_loop(shared) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result
