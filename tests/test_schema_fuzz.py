"""Property-based run of the API against its own OpenAPI schema: no input may cause a 5xx.

Schemathesis generates valid and invalid requests for every operation in /openapi.json and
sends them to the ASGI app built by `create_app` (real MiniLM, real Redis db 15). Besides
"no server error", every 4xx must carry the one error body shape and no traceback.
"""

import csv
import json

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from starlette.testclient import TestClient

from api.main import create_app
from tests.conftest import API_DB, REPO, make_settings, redis_db_url

EXAMPLES_PER_OPERATION = 25


def one_error_shape(ctx: object, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """A 4xx has the body {"error": {"message", "type", "param", "code"}} and no traceback."""
    if response.status_code < 400:
        return
    text = response.text
    assert "Traceback" not in text, text[:300]
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == response.status_code and error["message"], error


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    url = redis_db_url(API_DB)
    redis.Redis.from_url(url).flushdb()
    data = root / "train_data"
    data.mkdir()
    with (REPO / "data" / "demo_support.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:60]
    (data / "support.csv").write_text(
        "text,label\n" + "".join(f'"{row["text"]}",{row["label"]}\n' for row in rows)
    )
    app = create_app(
        make_settings(
            root, url, default_head="support", train_data_dir=data, max_batch=16, max_text_chars=500
        )
    )
    # Give the fuzzer a live head to predict with, roll back and describe.
    with TestClient(app) as client:
        for _ in range(2):
            response = client.post("/heads/support/train", json={"file": "support.csv"})
            assert response.status_code == 200, response.text
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    redis.Redis.from_url(url).flushdb()


# Listed here (not read from the app) so collection loads no model; the test below fails if
# the schema gains an operation this list lacks.
OPERATIONS = [
    ("POST", "/embed"),
    ("POST", "/predict"),
    ("POST", "/v1/embeddings"),
    ("GET", "/heads"),
    ("GET", "/heads/{name}"),
    ("POST", "/heads/{name}/train"),
    ("POST", "/heads/{name}/rollback"),
    ("DELETE", "/heads/{name}"),
    ("GET", "/health"),
    ("GET", "/metrics"),
]
TAKE_NOTHING = {("GET", "/heads"), ("GET", "/health"), ("GET", "/metrics")}


def test_every_operation_is_fuzzed(api_schema):
    found = {(operation.method.upper(), operation.path) for operation in all_operations(api_schema)}
    assert found == set(OPERATIONS)


def all_operations(api_schema: schemathesis.BaseSchema) -> list:
    return [result.ok() for result in api_schema.get_all_operations()]


# schemathesis's own pytest plugin (`from_fixture`) does not run on pytest 9, so the
# strategies are driven by Hypothesis directly, one test per operation and generation mode.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_input_causes_a_server_error(api_schema, method, path, mode):
    if mode == GenerationMode.NEGATIVE and (method, path) in TAKE_NOTHING:
        pytest.skip("no parameters or body to make invalid")
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error, one_error_shape])

    run()
