"""The train endpoint's default head: `auto` with its budget, and the report in its answer."""

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.conftest import make_settings
from tests.test_api_heads import AUTH, KEY, support_examples, train


@pytest.fixture
def client(tmp_path, redis_url):
    settings = make_settings(
        tmp_path, redis_url, api_key=KEY, train_budget_seconds=2, train_timeout_seconds=300
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_the_default_head_answers_with_its_leaderboard_baseline_and_calibration(client):
    answer = train(client, "support", support_examples())
    for field in ("selection_metric", "chosen", "leaderboard", "search", "baseline", "calibration"):
        assert field in answer, field
    assert answer["search"]["budget_seconds"] == 2
    assert answer["chosen"]["candidate"] == answer["leaderboard"][0]["candidate"]
    families = {row["family"] for row in answer["leaderboard"] if row["status"] == "ok"}
    assert {"lexical", "logreg", "hybrid", "mlp"} <= families
    baseline = answer["baseline"]
    for key, difference in baseline["head_minus_baseline"].items():
        assert difference == pytest.approx(answer["metrics"][key] - baseline["metrics"][key])
    described = client.get("/heads/support").json()["versions"][-1]
    assert described["leaderboard"] == answer["leaderboard"]
    predicted = client.post("/predict", json={"texts": ["I was charged twice"], "head": "support"})
    assert predicted.status_code == 200, predicted.text


def test_a_named_head_s_option_without_a_head_trains_logreg_as_before(client):
    answer = train(client, "support", support_examples(60), class_weight="balanced")
    described = client.get("/heads/support").json()["versions"][-1]
    assert described["params"]["head"] == "logreg" and "leaderboard" not in answer
    assert "baseline" in answer


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"head": "auto", "loss": "focal"}, "loss"),
        ({"head": "auto", "features": "hybrid"}, "features"),
        ({"head": "logreg", "budget_seconds": 5}, "budget_seconds"),
        ({"budget_seconds": 300}, "budget_seconds"),
    ],
)
def test_options_that_do_not_fit_the_head_are_422_naming_the_field(client, options, field):
    response = client.post(
        "/heads/support/train", json={"examples": support_examples(40), **options}, headers=AUTH
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert field in error["message"]
    assert client.get("/heads/support").status_code == 404
