"""Heads on disk and across processes: corrupt files, foreign encoders, two live replicas."""

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.conftest import API_DB, MINILM, REPO, free_port, make_settings, redis_db_url
from tests.test_api_heads import AUTH, KEY, support_examples


def test_corrupt_and_foreign_heads_are_skipped_others_serve(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url, api_key=KEY)
    with TestClient(create_app(settings)) as client:
        for name in ("good", "broken", "foreign"):
            response = client.post(
                f"/heads/{name}/train", json={"examples": support_examples(60)}, headers=AUTH
            )
            assert response.status_code == 200
    models = settings.models_dir
    joblib_file = models / "broken" / "v1.joblib"
    joblib_file.write_bytes(joblib_file.read_bytes()[:100])  # truncated
    metadata_file = models / "foreign" / "v1.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["encoder"]["fingerprint"] = "0" * 20
    metadata_file.write_text(json.dumps(metadata))

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/health").json()["heads"] == ["good"]
        ok = client.post("/predict", json={"texts": ["refund please"], "head": "good"})
        assert ok.status_code == 200
        broken = client.post("/predict", json={"texts": ["refund"], "head": "broken"})
        assert broken.status_code == 404 and "checksum" in broken.json()["error"]["message"]
        foreign = client.get("/heads/foreign").json()
        assert foreign["available"] is False and "encoder" in foreign["problem"]


def start_server(port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_healthy(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become healthy")


@pytest.fixture
def two_servers(tmp_path, redis_url):
    env = {
        **os.environ,
        "EMBEDDER_MODEL": MINILM,
        "REDIS_URL": redis_db_url(API_DB),
        "MODELS_DIR": str(tmp_path / "models"),
        "DEMO_HEAD_ON_START": "false",
        "API_KEY": KEY,
        "LOG_LEVEL": "WARNING",
        "HEAD_POLL_SECONDS": "0.2",
    }
    ports = [free_port(), free_port()]
    processes = [start_server(port, env) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, process in zip(urls, processes, strict=True):
            wait_healthy(url, process)
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=20)


def test_train_on_one_replica_is_served_by_the_other_within_a_second(two_servers):
    first, second = two_servers
    response = httpx.post(
        f"{first}/heads/shared/train",
        headers=AUTH,
        timeout=120,
        json={"examples": support_examples(80)},
    )
    assert response.status_code == 200, response.text
    trained_at = time.monotonic()
    version = response.json()["version"]
    while True:
        answer = httpx.post(f"{second}/predict", json={"texts": ["refund"], "head": "shared"})
        if answer.status_code == 200 and answer.json()["version"] == version:
            break
        assert time.monotonic() - trained_at < 1.0, answer.text
        time.sleep(0.02)
    deleted = httpx.delete(f"{second}/heads/shared", headers=AUTH)
    assert deleted.status_code == 200
    deleted_at = time.monotonic()
    while (
        httpx.post(f"{first}/predict", json={"texts": ["x"], "head": "shared"}).status_code != 503
    ):
        assert time.monotonic() - deleted_at < 1.0
        time.sleep(0.02)
