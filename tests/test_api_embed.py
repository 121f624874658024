"""POST /embed, /health and the error contract, through the real app on MiniLM and Redis."""

import os
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from embedder.cores import available_cores
from tests.conftest import make_settings


@pytest.fixture
def client(tmp_path, redis_url):
    # Texts over 32 tokens are cut here (truncate mode); tests/test_long_texts.py covers windows.
    settings = make_settings(
        tmp_path,
        redis_url,
        max_batch=8,
        max_text_chars=200,
        embedder_max_seq_len=32,
        long_texts="truncate",
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_embed_list_and_cache(client, minilm):
    texts = ["hello world", "a second sentence", "hello world"]
    first = client.post("/embed", json={"texts": texts})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["dim"] == 384 and len(body["embeddings"]) == 3
    assert body["cached"] == 0 and body["truncated"] == 0
    served = np.array(body["embeddings"])
    # The vectors of the backend serving (onnx-int8 by default), within the fidelity gate of
    # the torch fp32 reference.
    encoder = client.app.state.bertheads.encoder
    np.testing.assert_allclose(served, encoder.encode(texts), atol=1e-6)
    reference = minilm.encode(texts)
    cosines = (
        (served * reference).sum(1)
        / np.linalg.norm(served, axis=1)
        / np.linalg.norm(reference, axis=1)
    )
    assert cosines.min() >= 0.98
    again = client.post("/embed", json={"texts": texts}).json()
    assert again["cached"] == 3 and again["embeddings"] == body["embeddings"]


def test_embed_one_string_normalize_and_truncation(client):
    body = client.post("/embed", json={"texts": "word " * 39, "normalize": True}).json()
    assert len(body["embeddings"]) == 1 and body["truncated"] == 1
    assert abs(np.linalg.norm(body["embeddings"][0]) - 1) < 1e-5


@pytest.mark.parametrize(
    ("payload", "param", "words"),
    [
        ({"texts": []}, "texts", "at least 1"),
        ({"texts": ["ok", "   "]}, "texts[1]", "empty"),
        ({"texts": ""}, "texts", "empty"),
        ({"texts": ["ok", 3]}, "texts", "string"),
        ({"texts": ["ok", None]}, "texts", "string"),
        ({"texts": [["nested"]]}, "texts", "string"),
        ({"texts": ["x"] * 9}, "texts", "at most 8"),
        ({"texts": ["y" * 201]}, "texts[0]", "limit is 200"),
        ({}, "texts", "required"),
        ({"texts": ["ok"], "normalize": "sometimes"}, "normalize", "bool"),
        ({"texts": ["ok"], "colour": "blue"}, "colour", "not permitted"),
    ],
)
def test_embed_rejects_bad_input_with_422(client, payload, param, words):
    response = client.post("/embed", json=payload)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == 422 and error["type"] == "invalid_request_error"
    assert error["param"].startswith(param)
    assert words in error["message"] and "Traceback" not in response.text


def test_invalid_json_wrong_type_and_huge_body(client):
    broken = client.post(
        "/embed", content=b'{"texts": [', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422 and "JSON" in broken.json()["error"]["message"]
    text_plain = client.post("/embed", content=b"hello", headers={"content-type": "text/plain"})
    assert text_plain.status_code == 415 and text_plain.json()["error"]["param"] == "content-type"
    huge = client.post("/embed", json={"texts": ["z" * (3 * 1024 * 1024)]})
    assert huge.status_code == 413 and "2097152 bytes" in huge.json()["error"]["message"]


def test_health_and_metrics(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["cache"] == "up" and health["dim"] == 384
    assert len(health["fingerprint"]) == 20
    started = client.app.state.bertheads.batcher.workers
    assert health["encode_workers"] == f"{started}/{started}"
    client.post("/embed", json={"texts": ["count me"]})
    metrics = client.get("/metrics").text
    assert 'bertheads_requests_total{method="POST",route="/embed",status="200"}' in metrics
    assert 'bertheads_texts_total{source="encoder"}' in metrics


def test_redis_dies_and_returns(tmp_path, spare_redis):
    settings = make_settings(tmp_path, spare_redis.url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        texts = ["survives redis", "and so does this"]
        assert client.post("/embed", json={"texts": texts}).json()["cached"] == 0
        assert client.post("/embed", json={"texts": texts}).json()["cached"] == 2
        spare_redis.kill()
        while_down = client.post("/embed", json={"texts": texts})
        assert while_down.status_code == 200 and while_down.json()["cached"] == 0
        health = client.get("/health").json()
        assert health["cache"] == "down" and health["status"] == "degraded"
        spare_redis.start()
        time.sleep(1.2)  # past the cache's retry interval
        assert client.post("/embed", json={"texts": texts}).json()["cached"] == 0  # empty restart
        assert client.post("/embed", json={"texts": texts}).json()["cached"] == 2
        assert client.get("/health").json()["cache"] == "up"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_lone_request_is_encoded_on_every_core_by_the_same_backend(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url)
    with TestClient(create_app(settings)) as client:
        state = client.app.state.bertheads
        assert state.batcher.workers == available_cores()  # one single-threaded call each
        deadline = time.monotonic() + 60
        while state.batcher.encode_alone is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the every-core session loads after startup
        assert state.batcher.encode_alone is not None
        answer = client.post("/embed", json={"texts": ["one text, nobody else waiting"]})
        vector = np.array(answer.json()["embeddings"][0], dtype=np.float32)
        narrow = state.encoder.encode_raw(["one text, nobody else waiting"])[0]
    cosine = vector @ narrow / (np.linalg.norm(vector) * np.linalg.norm(narrow))
    assert state.encoder.backend_name == "onnx-int8" and cosine > 0.9999


def test_explicit_threads_keep_one_session(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url, embedder_threads=available_cores())
    with TestClient(create_app(settings)) as client:
        state = client.app.state.bertheads
        assert state.batcher.workers == 1
        time.sleep(1)  # long enough for the every-core session to load, were it wanted
        assert state.batcher.encode_alone is None
