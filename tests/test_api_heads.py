"""Heads over the API: train, predict, list, roll back, delete, keys, hot swap."""

import json
import threading

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.conftest import REPO, make_settings

SUPPORT = REPO / "data" / "demo_support.csv"
REVIEWS = REPO / "data" / "demo_multilabel.jsonl"
KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def support_examples(limit: int = 160) -> list[dict]:
    import csv

    with SUPPORT.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    return [{"text": row["text"], "label": row["label"]} for row in rows]


def review_examples() -> list[dict]:
    lines = REVIEWS.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture
def client(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url, api_key=KEY, default_head="support")
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def train(client, name, examples, **options):
    response = client.post(
        f"/heads/{name}/train", json={"examples": examples, **options}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_no_head_is_503_while_embed_works(client):
    response = client.post("/predict", json={"texts": ["hello"]})
    assert response.status_code == 503
    assert "no head is loaded" in response.json()["error"]["message"]
    assert client.post("/embed", json={"texts": ["hello"]}).status_code == 200


def test_multiclass_train_predict_and_versions(client):
    first = train(client, "support", support_examples())
    assert first["version"] == 1 and first["metrics"]["accuracy"] > 0.5
    response = client.post(
        "/predict", json={"texts": ["I was charged twice for my order", "Where is my parcel?"]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["head"] == "support" and body["version"] == 1
    labels = {"account", "billing", "shipping", "technical"}
    for prediction in body["predictions"]:
        assert prediction["label"] in labels and set(prediction["probabilities"]) == labels
        assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-4
    assert [p["label"] for p in body["predictions"]] == ["billing", "shipping"]

    second = train(client, "support", support_examples(), head="mlp", loss="focal")
    assert second["version"] == 2
    assert client.post("/predict", json={"texts": ["x refund"]}).json()["version"] == 2
    listing = client.get("/heads").json()
    assert listing["default_head"] == "support"
    assert listing["heads"][0]["live_version"] == 2 and listing["heads"][0]["version_count"] == 2
    detail = client.get("/heads/support").json()
    assert detail["task"] == "multiclass" and [v["version"] for v in detail["versions"]] == [1, 2]

    rolled = client.post("/heads/support/rollback", json={}, headers=AUTH)
    assert rolled.status_code == 200 and rolled.json()["version"] == 1
    assert client.post("/predict", json={"texts": ["refund"]}).json()["version"] == 1
    pinned = client.post("/heads/support/rollback", json={"version": 2}, headers=AUTH)
    assert pinned.json()["version"] == 2
    missing = client.post("/heads/support/rollback", json={"version": 9}, headers=AUTH)
    assert missing.status_code == 404 and "versions: [1, 2]" in missing.json()["error"]["message"]


def test_binary_and_multilabel_heads(client):
    examples = [e for e in support_examples() if e["label"] in ("billing", "shipping")]
    train(client, "binary", examples)
    body = client.post("/predict", json={"texts": ["refund my card"], "head": "binary"}).json()
    assert body["predictions"][0]["label"] == "billing"
    result = train(client, "reviews", review_examples())
    assert result["metrics"]["roc_auc"] is not None
    body = client.post(
        "/predict", json={"texts": ["Great price, arrived late"], "head": "reviews"}
    ).json()
    prediction = body["predictions"][0]
    assert "label" not in prediction and isinstance(prediction["labels"], list)
    assert set(prediction["probabilities"]) == {"price", "quality", "delivery", "service"}
    assert client.get("/heads/reviews").json()["thresholds"] is not None


def test_unknown_head_lists_available(client):
    train(client, "support", support_examples(80))
    response = client.post("/predict", json={"texts": ["hi"], "head": "nope"})
    assert response.status_code == 404
    assert "available heads: support" in response.json()["error"]["message"]
    assert client.get("/heads/nope").status_code == 404


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"examples": [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]}, None),
        ({"examples": [{"text": "a", "label": "x"}, {"text": "b", "labels": ["y"]}]}, "examples"),
        ({"examples": [{"text": "a"}]}, "examples[0]"),
        ({"examples": [{"text": " ", "label": "x"}, {"text": "b", "label": "y"}]}, "examples[0]"),
        ({}, "examples"),
        ({"file": "../../etc/passwd"}, "file"),
        ({"examples": [{"text": "a", "label": "x"}], "head": "forest"}, "head"),
        ({"examples": [{"text": "a", "label": "x"}], "colour": 1}, "colour"),
    ],
)
def test_bad_training_requests_are_4xx(client, payload, param):
    response = client.post("/heads/new/train", json=payload, headers=AUTH)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    if param:
        assert error["param"].startswith(param)
    assert "Traceback" not in response.text


def test_labels_must_match_the_live_head(client):
    train(client, "support", support_examples(80))
    other = [{"text": f"text number {i}", "label": "spam" if i % 2 else "ham"} for i in range(20)]
    response = client.post("/heads/support/train", json={"examples": other}, headers=AUTH)
    assert response.status_code == 422 and "billing" in response.json()["error"]["message"]
    replaced = client.post(
        "/heads/support/train", json={"examples": other, "replace_labels": True}, headers=AUTH
    )
    assert replaced.status_code == 200


def test_every_mutating_endpoint_needs_the_key(client):
    train(client, "support", support_examples(80))
    calls = [
        ("post", "/heads/support/train", {"examples": support_examples(40)}),
        ("post", "/heads/support/rollback", {}),
        ("delete", "/heads/support", None),
    ]
    for method, path, payload in calls:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            response = client.request(method, path, json=payload, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["param"] == "authorization"
    assert client.get("/heads").status_code == 200  # reads stay open
    deleted = client.delete("/heads/support", headers=AUTH)
    assert deleted.status_code == 200
    assert client.post("/predict", json={"texts": ["hi"]}).status_code == 503


def test_hammering_predict_during_retrains(client):
    train(client, "support", support_examples(80))
    errors: list[str] = []
    versions_seen: set[int] = set()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            response = client.post("/predict", json={"texts": ["my invoice is wrong"]})
            if response.status_code != 200:
                errors.append(response.text)
            else:
                versions_seen.add(response.json()["version"])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            # A quick named head: this test is about swaps under load, not the search.
            train(client, "support", support_examples(120), head="logreg")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    existing = {v["version"] for v in client.get("/heads/support").json()["versions"]}
    assert versions_seen <= existing and len(versions_seen) >= 2
