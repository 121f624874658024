"""Shared fixtures: the real MiniLM model, a real Redis server of the test session's own.

Each pytest session starts a private redis-server on a spare port (or uses
BERTHEADS_TEST_REDIS_PORT when set), so concurrent sessions never flush each other's data
and the machine's own Redis on 6379 is left alone.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bertheads.settings import Settings
from embedder import Encoder, load_encoder

REPO = Path(__file__).resolve().parent.parent
DATASETS = REPO.parent / "shared" / "datasets"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
API_DB = 15
REDIS_PORT_VARIABLE = "BERTHEADS_TEST_REDIS_PORT"


def redis_db_url(db: int) -> str:
    """URL of database `db` on the session's private Redis."""
    return f"redis://127.0.0.1:{os.environ[REDIS_PORT_VARIABLE]}/{db}"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(REDIS_PORT_VARIABLE):
        return
    server = RedisProcess(free_port())
    server.start()
    config._bertheads_redis = server  # type: ignore[attr-defined]
    os.environ[REDIS_PORT_VARIABLE] = str(server.port)


def pytest_unconfigure(config: pytest.Config) -> None:
    server = getattr(config, "_bertheads_redis", None)
    if server is not None:
        server.kill()
        os.environ.pop(REDIS_PORT_VARIABLE, None)


@pytest.fixture(scope="session")
def minilm() -> Encoder:
    return load_encoder(MINILM)


@pytest.fixture
def redis_url() -> Iterator[str]:
    url = redis_db_url(API_DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def make_settings(tmp_path: Path, redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "embedder_model": MINILM,
        "redis_url": redis_url,
        "models_dir": tmp_path / "models",
        "demo_head_on_start": False,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


def run_python_json(script: str, *arguments: str) -> dict:
    """Run `script` in a fresh Python process (imports start empty) and parse its JSON output."""
    result = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run_train_cli(redis_db: int, *arguments: str) -> subprocess.CompletedProcess:
    """`classifier/train.py` on MiniLM with its cache in Redis database `redis_db`."""
    command = [sys.executable, "classifier/train.py", "--model", MINILM]
    command += ["--redis-url", redis_db_url(redis_db), *arguments]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisProcess:
    """A throw-away redis-server on a spare port, for tests that kill it."""

    def __init__(self, port: int, *extra_args: str) -> None:
        self.port = port
        self.extra_args = extra_args  # e.g. "--maxmemory", "1mb"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def spare_redis() -> Iterator[RedisProcess]:
    server = RedisProcess(free_port())
    server.start()
    yield server
    server.kill()
