"""The Python client and RemoteEmbeddingService against a live uvicorn server."""

import csv
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from bertheads.client import ApiError, Client, ServerUnreachableError
from embedder.remote import RemoteEmbeddingService
from tests.conftest import MINILM, REPO, free_port, redis_db_url
from tests.test_api_replicas import start_server, wait_healthy

# A database of its own: the cache counts asserted here must not see other modules' flushes.
CLIENT_DB = 13
KEY = "client-test-key"
SERVER_MAX_BATCH = 100
SERVER_QUEUE_TEXTS = 100


@contextmanager
def live_server(models_dir: Path, db: int, **env: str) -> Iterator[str]:
    """A real `uvicorn api.main:create_app` on a free port, serving MiniLM; yields its URL."""
    redis_url = redis_db_url(db)
    redis.Redis.from_url(redis_url).flushdb()
    settings = {
        "EMBEDDER_MODEL": MINILM,
        "REDIS_URL": redis_url,
        "MODELS_DIR": str(models_dir),
        "DEMO_HEAD_ON_START": "false",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    port = free_port()
    process = start_server(port, {**os.environ, **settings})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        redis.Redis.from_url(redis_url).flushdb()


def request_count(url: str, route: str, status: int) -> float:
    """bertheads_requests_total for one route and status, read from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    pattern = (
        rf'bertheads_requests_total\{{[^}}]*route="{re.escape(route)}",status="{status}"\}} (\S+)'
    )
    return sum(float(value) for value in re.findall(pattern, text))


def queue_depth(url: str) -> float:
    match = re.search(
        r"^bertheads_encode_queue_texts (\S+)$", httpx.get(f"{url}/metrics").text, re.M
    )
    return float(match.group(1)) if match else 0.0


def support_rows() -> list[dict[str, str]]:
    with (REPO / "data" / "demo_support.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    models = tmp_path_factory.mktemp("client") / "models"
    with live_server(
        models,
        CLIENT_DB,
        API_KEY=KEY,
        MAX_BATCH=str(SERVER_MAX_BATCH),
        QUEUE_MAX_TEXTS=str(SERVER_QUEUE_TEXTS),
        DEFAULT_HEAD="support",
        # The vectors are compared with the torch `minilm` fixture's, bit for bit.
        EMBEDDER_BACKEND="torch",
    ) as url:
        yield url


# Runs first: the module's server has no head yet.
def test_503_is_retried_with_backoff_then_raised(server):
    with Client(server, max_retries=1, backoff_seconds=0.4) as client:
        assert client.health()["heads"] == []
        before = request_count(server, "/predict", 503)
        started = time.monotonic()
        with pytest.raises(ApiError) as caught:
            client.predict("where is my parcel?")
        elapsed = time.monotonic() - started
    assert caught.value.status == 503 and caught.value.type == "service_unavailable"
    assert "no head is loaded" in caught.value.message
    assert request_count(server, "/predict", 503) - before == 2
    assert elapsed >= 0.4
    with Client(server, max_retries=0) as client, pytest.raises(ApiError):
        client.predict("where is my parcel?")
    assert request_count(server, "/predict", 503) - before == 3


def test_unreachable_server_raises_after_retries():
    with Client(f"http://127.0.0.1:{free_port()}", max_retries=2, backoff_seconds=0.05) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError):
            client.health()
    assert time.monotonic() - started >= 0.05 + 0.1


def test_embed_splits_large_input_adapts_to_max_batch_and_keeps_order(server, minilm):
    topics = ["refund", "parcel", "password", "invoice", "login", "address"]
    texts = [f"{topics[index % len(topics)]} question number {index}" for index in range(600)]
    before_ok = request_count(server, "/embed", 200)
    before_refused = request_count(server, "/embed", 422)
    with Client(server) as client:  # batch_size 256 > the server's 100
        vectors = client.embed(texts)
        assert client.batch_size == SERVER_MAX_BATCH
        single = client.embed(texts[7])
    assert vectors.shape == (600, 384) and vectors.dtype == np.float32
    assert request_count(server, "/embed", 422) - before_refused == 1
    assert request_count(server, "/embed", 200) - before_ok == 7  # 6 chunks + the single text
    picks = [0, 7, 99, 100, 301, 599]
    np.testing.assert_allclose(vectors[picks], minilm.encode([texts[i] for i in picks]), atol=1e-5)
    assert single.shape == (1, 384)
    np.testing.assert_array_equal(single[0], vectors[7])


def test_train_and_predict_round_trip(server):
    rows = support_rows()
    train_rows, test_rows = rows[:240], rows[240:]
    examples = [(row["text"], row["label"]) for row in train_rows]
    with Client(server) as anonymous, pytest.raises(ApiError) as caught:
        anonymous.train("support", examples)
    assert caught.value.status == 401 and caught.value.param == "authorization"

    with Client(server, api_key=KEY) as client:
        summary = client.train("support", examples, seed=1)
        assert summary["version"] == 1
        assert "support" in [head["name"] for head in client.heads()["heads"]]
        result = client.predict([row["text"] for row in test_rows])
        with pytest.raises(ApiError) as missing:
            client.predict("hello", head="no-such-head")
    assert result.head == "support" and result.version == 1
    assert len(result.predictions) == len(test_rows)
    accuracy = np.mean(
        [got == row["label"] for got, row in zip(result.labels, test_rows, strict=True)]
    )
    assert accuracy > 0.75
    assert set(result.predictions[0].probabilities) == {
        "account",
        "billing",
        "shipping",
        "technical",
    }
    assert missing.value.status == 404 and missing.value.param == "head"


def test_429_is_retried_after_the_servers_retry_after(server):
    # 40 long, uncached texts hold the encode queue while a second request (70 texts) arrives.
    filler = " ".join(["the parcel arrived late and the box was damaged"] * 20)
    blocker = [f"{index} {filler}" for index in range(40)]
    late = [f"second request text number {index}" for index in range(70)]
    thread = threading.Thread(
        target=httpx.post,
        args=(f"{server}/embed",),
        kwargs={"json": {"texts": blocker}, "timeout": 60},
    )
    before = request_count(server, "/embed", 429)
    thread.start()
    deadline = time.monotonic() + 10
    while queue_depth(server) == 0:
        assert time.monotonic() < deadline, "the blocking request never reached the encode queue"
        time.sleep(0.01)
    started = time.monotonic()
    with Client(server, max_retries=1, backoff_seconds=0.05) as client:
        try:
            outcome: object = client.embed(late).shape
        except ApiError as error:  # the blocker was still encoding at the one retry
            outcome = (error.status, error.type)
    elapsed = time.monotonic() - started
    thread.join()
    assert outcome in ((70, 384), (429, "rate_limit_error"))
    assert request_count(server, "/embed", 429) - before >= 1
    # The one retry waited for Retry-After (at least 1 s), not for the 0.05 s backoff.
    assert elapsed >= 1.0
    with Client(server) as client:
        assert client.embed(late).shape == (70, 384)


def test_remote_embedding_service_uses_the_servers_cache(server, minilm):
    remote = RemoteEmbeddingService(server)
    try:
        texts = [f"remote service sentence {index}" for index in range(40)]
        # Over what 16 windows of 128 tokens read: truncated whatever LONG_TEXTS says.
        texts.append(" ".join(["a very long sentence"] * 420))
        first = remote.embed(texts, progress=True)
        second = remote.embed(texts)
        normalized = remote.embed(texts[:3], normalize=True)
        assert remote.dim == 384
        assert remote.fingerprint == minilm.fingerprint()
        assert remote.describe()["model"] == MINILM
    finally:
        remote.close()
    assert first.vectors.shape == (41, 384) and first.vectors.dtype == np.float32
    assert first.cached == 0 and first.truncated == 1
    assert second.cached == 41
    np.testing.assert_array_equal(first.vectors, second.vectors)
    np.testing.assert_allclose(np.linalg.norm(normalized.vectors, axis=1), 1.0, atol=1e-5)
    assert remote.embed([]).vectors.shape == (0, 384)
