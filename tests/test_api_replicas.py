"""Heads across processes: corrupt, legacy and foreign heads, replicas on a folder or on Redis."""

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from classifier import headfile
from classifier.artifacts import load_head
from classifier.stores.folder import FolderStore
from tests.conftest import (
    API_DB,
    MINILM,
    REPO,
    RedisProcess,
    free_port,
    make_settings,
    redis_db_url,
)
from tests.test_api_heads import AUTH, KEY, support_examples
from tests.test_headfile import write_legacy_version


def test_corrupt_and_foreign_heads_are_skipped_others_serve(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url, api_key=KEY)
    with TestClient(create_app(settings)) as client:
        for name in ("good", "broken", "foreign", "old"):
            response = client.post(
                f"/heads/{name}/train", json={"examples": support_examples(60)}, headers=AUTH
            )
            assert response.status_code == 200
    models = settings.models_dir
    artifact = models / "broken" / "v1.safetensors"
    artifact.write_bytes(artifact.read_bytes()[:100])  # truncated
    # "old" as the joblib format saved it: refused by name, never unpickled.
    old = models / "old"
    trained = load_head(models, "old")
    metadata = json.loads((old / "v1.json").read_text())
    for path in old.iterdir():
        path.unlink()
    write_legacy_version(old, 1, trained.model, metadata)
    # "foreign": the same model saved as trained on another encoder.
    foreign = load_head(models, "foreign")
    encoder = {**foreign.metadata["encoder"], "fingerprint": "0" * 20}
    artifact = headfile.encode_head(foreign.model, foreign.spec, foreign.thresholds, encoder)
    sidecar = {**foreign.metadata, "encoder": encoder, **headfile.artifact_fields(artifact, None)}
    store = FolderStore(models)
    store.set_live("foreign", store.save("foreign", artifact, sidecar), "test")

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/health").json()["heads"] == ["good"]
        ok = client.post("/predict", json={"texts": ["refund please"], "head": "good"})
        assert ok.status_code == 200
        broken = client.post("/predict", json={"texts": ["refund"], "head": "broken"})
        assert broken.status_code == 404 and "checksum" in broken.json()["error"]["message"]
        foreign = client.get("/heads/foreign").json()
        assert foreign["available"] is False and "trained on encoder" in foreign["problem"]
        legacy = client.get("/heads/old").json()
        assert legacy["available"] is False
        assert "python -m classifier.legacy convert" in legacy["problem"]


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


def wait_for(check, limit: float, what: str) -> float:
    """Poll `check` until true; the seconds it took (asserts it is within `limit`)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < limit, f"{what}: not within {limit} s"
        time.sleep(0.02)
    return time.monotonic() - started


def predicted_version(url: str, head: str) -> int | None:
    answer = httpx.post(f"{url}/predict", json={"texts": ["refund"], "head": head}, timeout=30)
    return answer.json()["version"] if answer.status_code == 200 else None


def test_replicas_without_a_shared_folder_share_heads_through_redis(tmp_path, redis_url):
    """Two servers, different MODELS_DIR, one HEAD_STORE=redis://: train, roll back, delete."""
    state = RedisProcess(free_port(), "--maxmemory-policy", "noeviction")
    state.start()
    base = {
        **os.environ,
        "EMBEDDER_MODEL": MINILM,
        "REDIS_URL": redis_db_url(API_DB),
        "HEAD_STORE": state.url,
        "DEMO_HEAD_ON_START": "false",
        "API_KEY": KEY,
        "LOG_LEVEL": "WARNING",
        "HEAD_POLL_SECONDS": "0.5",
    }
    ports = [free_port(), free_port()]
    processes = [
        start_server(port, {**base, "MODELS_DIR": str(tmp_path / f"models-{index}")})
        for index, port in enumerate(ports)
    ]
    first, second = (f"http://127.0.0.1:{port}" for port in ports)
    try:
        for url, process in zip((first, second), processes, strict=True):
            wait_healthy(url, process)
        examples = {"examples": support_examples(80)}
        for seed in (0, 1):
            trained = httpx.post(
                f"{first}/heads/shared/train",
                headers=AUTH,
                timeout=120,
                json={**examples, "seed": seed},
            )
            assert trained.status_code == 200, trained.text
        version = trained.json()["version"]
        took = wait_for(lambda: predicted_version(second, "shared") == version, 2.0, "train")
        print(f"train on A served by B after {took:.3f} s")
        rolled = httpx.post(f"{second}/heads/shared/rollback", headers=AUTH, json={"version": 1})
        assert rolled.status_code == 200, rolled.text
        took = wait_for(lambda: predicted_version(first, "shared") == 1, 2.0, "rollback")
        print(f"rollback on B served by A after {took:.3f} s")
        assert httpx.delete(f"{first}/heads/shared", headers=AUTH).status_code == 200
        took = wait_for(lambda: predicted_version(second, "shared") is None, 2.0, "delete")
        print(f"delete on A gone from B after {took:.3f} s")
        # Nothing a replica needs was written to either MODELS_DIR.
        for index in range(2):
            folder = tmp_path / f"models-{index}"
            assert not folder.exists() or not any(folder.iterdir())
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=20)
        state.kill()
