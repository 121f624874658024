"""Lexical and hybrid heads over the API and the CLI: train, predict, bad input."""

import json
import subprocess

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from tests.conftest import REPO, make_settings, run_train_cli
from tests.test_api_heads import AUTH, KEY, support_examples, train

SUPPORT = REPO / "data" / "demo_support.csv"


@pytest.fixture
def client(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url, api_key=KEY, default_head="support")
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def encoder_calls(client) -> tuple[int, int]:
    service = client.app.state.bertheads.service
    return service.texts_encoded, service.texts_cached


def test_lexical_head_trains_and_predicts_without_the_encoder(client, redis_url):
    keys = redis.Redis.from_url(redis_url)
    before, stored = encoder_calls(client), keys.dbsize()
    body = train(client, "support", support_examples(), features="lexical")
    # Neither training nor predicting a lexical head embeds a text.
    assert encoder_calls(client) == before and keys.dbsize() == stored
    assert body["metrics"]["accuracy"] > 0.6
    assert body["metrics"]["lexical"]["vocabulary"] > 100
    texts = ["I was charged twice for my order, refund please", "Where is my parcel?"]
    response = client.post("/predict", json={"texts": texts})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["billing", "shipping"]
    assert encoder_calls(client) == before and keys.dbsize() == stored
    detail = client.get("/heads/support").json()
    assert detail["versions"][-1]["features"] == "lexical"
    assert detail["versions"][-1]["params"]["features"] == "lexical"


def test_hybrid_head_reads_vectors_and_texts(client):
    body = train(
        client, "support", support_examples(), features="hybrid", head="svm", vector_weight=0.5
    )
    assert body["metrics"]["accuracy"] > 0.6
    before = encoder_calls(client)
    texts = ["My invoice shows a double charge", "The app crashes when I log in"]
    response = client.post("/predict", json={"texts": texts, "head": "support"})
    assert response.status_code == 200, response.text
    labels = [p["label"] for p in response.json()["predictions"]]
    assert labels == ["billing", "technical"]
    assert sum(encoder_calls(client)) == sum(before) + 2  # the vectors were read
    probabilities = response.json()["predictions"][0]["probabilities"]
    assert abs(sum(probabilities.values()) - 1) < 1e-4


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ({"features": "bag"}, "features", "'embedding', 'lexical' or 'hybrid'"),
        ({"features": "lexical", "head": "mlp"}, "head", "'logreg' or 'svm'"),
        ({"head": "svm"}, "head", "'lexical' or 'hybrid'"),
        ({"features": "lexical", "vector_weight": 2}, "vector_weight", "only for features"),
        ({"vector_weight": 2}, "vector_weight", "only for features"),
        ({"features": "hybrid", "vector_weight": 0}, "vector_weight", "greater than 0"),
        ({"features": "hybrid", "loss": "focal"}, "loss", "only for embedding heads"),
        ({"features": "lexical", "resample": "over"}, "resample", "only for embedding heads"),
    ],
)
def test_bad_feature_options_are_a_422_naming_the_field(client, options, field, words):
    examples = support_examples(20)
    response = client.post("/heads/x/train", json={"examples": examples, **options}, headers=AUTH)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert field in (error.get("param") or "") + error["message"]
    assert words in error["message"], error["message"]


def test_a_lexical_head_trained_on_blank_texts_is_a_422(client):
    examples = [{"text": text, "label": label} for text, label in [(" ", "a"), ("\t", "b")] * 5]
    response = client.post(
        "/heads/blank/train", json={"examples": examples, "features": "lexical"}, headers=AUTH
    )
    # Blank texts are refused before any head reads them, by the usual text checks or ours.
    assert response.status_code == 422, response.text
    assert "examples" in response.json()["error"]["message"]


# -- the CLI ----------------------------------------------------------------------------------


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return run_train_cli(13, *arguments)


@pytest.mark.parametrize("features", ["lexical", "hybrid"])
def test_cli_trains_text_heads_that_serve(tmp_path, features):
    from classifier import load_head

    models, out = tmp_path / "models", tmp_path / "run"
    extra = ["--vector-weight", "0.5", "--head", "svm"] if features == "hybrid" else []
    result = run_cli(
        "--data",
        str(SUPPORT),
        "--name",
        "support",
        "--models-dir",
        str(models),
        "--out",
        str(out),
        "--features",
        features,
        *extra,
    )
    assert result.returncode == 0, result.stderr
    assert "lexical features:" in result.stdout and "without a usable token" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["features"] == features and metrics["accuracy"] > 0.6
    assert metrics["lexical"]["texts_without_tokens"] == 0
    assert ("cached" in metrics["embedding"]) == (features == "hybrid")
    head = load_head(models, "support")
    assert head.needs_texts and head.needs_vectors == (features == "hybrid")
    assert "encoding" not in result.stderr or features == "hybrid"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--features", "lexical", "--head", "mlp"], "reads only vectors"),
        (["--head", "svm"], "--head svm: needs --features lexical or hybrid"),
        (["--features", "lexical", "--vector-weight", "2"], "--vector-weight: only with"),
        (["--features", "hybrid", "--vector-weight", "-1"], "--vector-weight: must be > 0"),
        (["--features", "lexical", "--loss", "focal"], "loss"),
    ],
)
def test_cli_refuses_bad_feature_options_with_exit_2(tmp_path, arguments, message):
    result = run_cli("--data", str(SUPPORT), "--no-save", "--out", str(tmp_path), *arguments)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_cli_lists_the_feature_choices_for_a_wrong_value():
    bad = run_cli("--data", str(SUPPORT), "--features", "bag")
    assert bad.returncode == 2 and "invalid choice: 'bag'" in bad.stderr
    assert "'embedding', 'lexical', 'hybrid'" in bad.stderr
