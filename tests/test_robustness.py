"""Bad input, body limits, path traversal, metrics and logs, against a live server on loopback.

One real server (uvicorn in a thread, MiniLM, Redis db 15) serves the module, so raw HTTP can
send what client libraries refuse to: chunked bodies without content-length and paths with
`..` that an HTTP client would normalise away.
"""

import csv
import json
import re
import select
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from tests.conftest import API_DB, REPO, free_port, make_settings, redis_db_url

KEY = "robust-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 2 * 1024 * 1024
SUPPORT = REPO / "data" / "demo_support.csv"


def support_examples(limit: int = 80) -> list[dict]:
    with SUPPORT.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    return [{"text": row["text"], "label": row["label"]} for row in rows]


def write_training_files(directory: Path) -> None:
    directory.mkdir()
    rows = support_examples(40)
    lines = "".join(f'"{row["text"]}",{row["label"]}\n' for row in rows)
    (directory / "good.csv").write_text("text,label\n" + lines)
    (directory / "no_label.csv").write_text("text,category\n" + lines)
    (directory / "one_class.csv").write_text(
        "text,label\n" + "".join(f"sample text {i},billing\n" for i in range(20))
    )
    (directory / "other_labels.csv").write_text(
        "text,label\n" + "".join(f"text {i},{'spam' if i % 2 else 'ham'}\n" for i in range(20))
    )
    (directory / "not_binary.csv").write_text(
        "text,urgent\n" + "".join(f"text {i},{'maybe' if i == 3 else i % 2}\n" for i in range(9))
    )


class LiveServer:
    """The app under uvicorn in a background thread, on a spare loopback port."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[LiveServer, httpx.Client, Path]]:
    root = tmp_path_factory.mktemp("robust")
    write_training_files(root / "train_data")
    url = redis_db_url(API_DB)
    redis.Redis.from_url(url).flushdb()
    settings = make_settings(
        root, url, api_key=KEY, default_head="support", train_data_dir=root / "train_data"
    )
    with (
        LiveServer(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        for _ in range(2):  # two versions, so a rollback has somewhere to go
            trained = client.post(
                "/heads/support/train", json={"examples": support_examples()}, headers=AUTH
            )
            assert trained.status_code == 200, trained.text
        # A head-shaped directory outside MODELS_DIR that traversal attempts aim at.
        shutil.copytree(root / "models" / "support", root / "outside" / "victim")
        yield server, client, root
    redis.Redis.from_url(url).flushdb()


def assert_error(response: httpx.Response, status: int, param: str | None, *words: str) -> None:
    """The one error body shape, the expected status, the field named, no traceback."""
    assert response.status_code == status, response.text[:500]
    assert "Traceback" not in response.text and 'File "' not in response.text
    error = response.json()["error"]
    assert error["code"] == status and isinstance(error["message"], str)
    if param is not None:
        assert (error["param"] or "").startswith(param), error
        assert param.split("[")[0].split(".")[0] in error["message"], error
    for word in words:
        assert word in error["message"], error


# -- bad input on the endpoints that take texts ----------------------------------------------

TEXT_ENDPOINTS = {
    "embed": ("/embed", "texts", lambda texts: {"texts": texts}),
    "predict": ("/predict", "texts", lambda texts: {"texts": texts, "head": "support"}),
    "openai": ("/v1/embeddings", "input", lambda texts: {"input": texts, "model": "default"}),
    "train": (
        "/heads/fresh/train",
        "examples",
        lambda texts: {
            "examples": texts
            if not isinstance(texts, list)
            else [{"text": text, "label": "a" if i % 2 else "b"} for i, text in enumerate(texts)]
        },
    ),
}
# Already covered for /embed by tests/test_api_embed.py.
COVERED_FOR_EMBED = {"invalid_json", "text_plain", "missing", "wrong_type", "empty_list", "empty"}

# name -> (body or raw bytes, content type, status, param suffix, words in message)
TEXT_CASES = {
    "invalid_json": (b'{"texts": [', "application/json", 422, "body", ["JSON"]),
    "text_plain": (b"hello", "text/plain", 415, "content-type", ["application/json"]),
    "no_content_type": (b'{"texts": ["a"]}', None, 415, "content-type", ["application/json"]),
    "json_array_body": (b'["a", "b"]', "application/json", 422, None, []),
    "missing": ({}, "application/json", 422, "FIELD", []),
    "wrong_type": ("NUMBER", "application/json", 422, "FIELD", []),
    "empty_list": ([], "application/json", 422, "FIELD", ["at least 1"]),
    "empty": ([""], "application/json", 422, "FIELD[0]", ["empty"]),
    "one_megabyte_text": (["m" * 1_000_000], "application/json", 422, "FIELD[0]", ["20000"]),
    "ten_thousand_texts": (["short"] * 10_000, "application/json", 422, "FIELD", ["256"]),
}
TEXT_ONLY_CASES = {  # items that are not strings; train has its own shapes for these
    "null_item": (["ok", None], 422, "FIELD", []),
    "nested_list": ([["nested"]], 422, "FIELD", []),
    "number_item": (["ok", 7], 422, "FIELD", []),
}


def build_request(endpoint: str, case: object) -> tuple[str, bytes, dict[str, str]]:
    path, field, wrap = TEXT_ENDPOINTS[endpoint]
    if isinstance(case, bytes):
        return path, case, {}
    if case == {}:
        body: object = {key: value for key, value in wrap(["x"]).items() if key != field}
    elif case == "NUMBER":
        body = {**wrap(["x"]), field: 5}
    else:
        body = wrap(case)
    return path, json.dumps(body).encode(), {}


@pytest.mark.parametrize("endpoint", list(TEXT_ENDPOINTS))
@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_text_endpoints_reject_bad_input(live, endpoint, case):
    if endpoint == "embed" and case in COVERED_FOR_EMBED:
        pytest.skip("covered in tests/test_api_embed.py")
    if endpoint == "train" and case == "ten_thousand_texts":
        pytest.skip("training takes up to 200,000 examples; see test_train_rejects_* instead")
    _, client, _ = live
    payload, content_type, status, param, words = TEXT_CASES[case]
    path, body, _ = build_request(endpoint, payload)
    field = TEXT_ENDPOINTS[endpoint][1]
    headers = {**AUTH, **({"content-type": content_type} if content_type else {})}
    response = client.post(path, content=body, headers=headers)
    if param and "FIELD" in param:
        # Training texts sit inside examples[i].text; the param names the example.
        param = param.replace("FIELD", field)
        if endpoint == "train" and case == "wrong_type":
            param = "examples"
    assert_error(response, status, param, *words)


@pytest.mark.parametrize("endpoint", ["predict", "openai", "embed"])
@pytest.mark.parametrize("case", list(TEXT_ONLY_CASES))
def test_non_string_items_are_rejected(live, endpoint, case):
    if endpoint == "embed" and case in ("null_item", "nested_list"):
        pytest.skip("covered in tests/test_api_embed.py")
    _, client, _ = live
    items, status, param, words = TEXT_ONLY_CASES[case]
    path, field, wrap = TEXT_ENDPOINTS[endpoint]
    response = client.post(path, json=wrap(items), headers=AUTH)
    assert_error(response, status, param.replace("FIELD", field), *words)


@pytest.mark.parametrize(
    ("examples", "param"),
    [
        ([None], "examples.0"),
        ([["a", "b"]], "examples.0"),
        ([{"text": None, "label": "a"}], "examples.0.text"),
        ([{"text": ["nested"], "label": "a"}], "examples.0.text"),
        ([{"text": "a", "label": ["x"]}], "examples.0.label"),
    ],
)
def test_train_rejects_malformed_examples(live, examples, param):
    _, client, _ = live
    response = client.post("/heads/fresh/train", json={"examples": examples}, headers=AUTH)
    assert_error(response, 422, param)


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"file": "no_label.csv"}, 422, "file", ["'label'", "available columns", "category"]),
        ({"file": "no_label.csv", "text_col": "body"}, 422, "file", ["'body'"]),
        ({"file": "one_class.csv"}, 422, "labels", ["one class", "at least 2"]),
        ({"file": "not_binary.csv", "label_cols": ["urgent"]}, 422, "file", ["expected 0 or 1"]),
        ({"file": "missing.csv"}, 422, "file", ["TRAIN_DATA_DIR"]),
        ({"file": "../../../etc/passwd"}, 422, "file", ["TRAIN_DATA_DIR"]),
        ({"file": "/etc/hostname"}, 422, "file", ["TRAIN_DATA_DIR"]),
        ({"file": "bad\u0000name.csv"}, 422, "file", ["TRAIN_DATA_DIR"]),
        ({"file": "x" * 5000 + ".csv"}, 422, "file", ["TRAIN_DATA_DIR"]),
        ({"file": "good.csv", "examples": support_examples(4)}, 422, "examples", ["exactly one"]),
        ({"file": "good.csv", "seed": -1}, 422, "seed", ["greater than or equal"]),
        ({"file": "good.csv", "test_size": 0}, 422, "test_size", ["greater than"]),
    ],
)
def test_train_from_file_rejects_bad_data(live, body, status, param, words):
    _, client, root = live
    response = client.post("/heads/fresh/train", json=body, headers=AUTH)
    assert_error(response, status, None, *words)
    error = response.json()["error"]
    assert param in error["message"]
    assert str(root) not in error["message"]  # server paths stay on the server


def test_train_labels_must_match_the_head_from_a_file(live):
    _, client, _ = live
    response = client.post("/heads/support/train", json={"file": "other_labels.csv"}, headers=AUTH)
    assert_error(response, 422, "labels", "billing", "ham", "replace_labels")


@pytest.mark.parametrize(
    "examples",
    [
        [{"text": f"tiny {i}", "label": "ab"[i % 2]} for i in range(4)],  # no room to hold out
        [{"text": f"tag {i}", "labels": ["only"]} for i in range(10)],  # one label, always on
    ],
    ids=["too_few_to_split", "multilabel_always_on"],
)
def test_data_too_small_to_train_is_4xx(live, examples):
    _, client, _ = live
    response = client.post("/heads/tiny/train", json={"examples": examples}, headers=AUTH)
    assert 400 <= response.status_code < 500, response.text
    assert_error(response, response.status_code, "examples")


# -- rollback, unknown heads, endpoints without a body ----------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type", "status", "param"),
    [
        (b'{"version": ', "application/json", 422, "body"),
        (b"version=1", "text/plain", 422, "body"),
        (b'{"version": "one"}', "application/json", 422, "version"),
        (b'{"version": 0}', "application/json", 422, "version"),
        (b'{"version": null, "extra": 1}', "application/json", 422, "extra"),
        (b"[]", "application/json", 422, "body"),
        (b'{"version": 99}', "application/json", 404, "version"),
        (b'{"version": 1e400}', "application/json", 422, "version"),
    ],
)
def test_rollback_rejects_bad_input(live, content, content_type, status, param):
    _, client, _ = live
    response = client.post(
        "/heads/support/rollback", content=content, headers={**AUTH, "content-type": content_type}
    )
    assert_error(response, status, param)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/predict", {"texts": ["hi"], "head": "nope"}),
        ("GET", "/heads/nope", None),
        ("POST", "/heads/nope/rollback", None),
        ("DELETE", "/heads/nope", None),
    ],
)
def test_unknown_head_is_404_naming_it(live, method, path, body):
    _, client, _ = live
    response = client.request(method, path, json=body, headers=AUTH)
    assert_error(response, 404, "head", "'nope'")


BODILESS = [
    ("GET", "/heads", 200),
    ("GET", "/heads/support", 200),
    ("GET", "/health", 200),
    ("GET", "/metrics", 200),
    ("DELETE", "/heads/never-existed", 404),
]


@pytest.mark.parametrize(("method", "path", "status"), BODILESS)
@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b'{"broken": ', "application/json"), (b"\x00\xff junk", "text/plain"), (b"{}", None)],
)
def test_endpoints_without_a_body_ignore_junk(live, method, path, status, content, content_type):
    _, client, _ = live
    headers = {**AUTH, **({"content-type": content_type} if content_type else {})}
    response = client.request(method, path, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text


# -- body size limit ---------------------------------------------------------------------------

ALL_ENDPOINTS = [
    ("POST", "/embed"),
    ("POST", "/predict"),
    ("POST", "/v1/embeddings"),
    ("POST", "/heads/support/train"),
    ("POST", "/heads/support/rollback"),
    ("GET", "/heads"),
    ("GET", "/heads/support"),
    ("DELETE", "/heads/support"),
    ("GET", "/health"),
    ("GET", "/metrics"),
]
BODY_READERS = ALL_ENDPOINTS[:5]


def raw_http(
    port: int,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    chunks: Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 exchange over a bare socket: nothing normalises the path or the framing."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(
        "Transfer-Encoding: chunked" if chunks is not None else f"Content-Length: {len(body)}"
    )
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            if chunks is not None:
                for chunk in chunks:
                    if select.select([sock], [], [], 0)[0]:
                        break  # the server answered before the end of the body
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while block := sock.recv(65536):
                data += block
        except ConnectionResetError:
            pass
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    return int(status_line.split()[1]), {k.lower(): v for k, v in found.items()}, payload


def oversized_json(size: int) -> bytes:
    return b'{"texts": ["' + b"q" * size + b'"]}'


@pytest.mark.parametrize(("method", "path"), ALL_ENDPOINTS)
def test_declared_oversized_body_is_413(live, method, path):
    server, _, root = live
    status, headers, payload = raw_http(
        server.port,
        method,
        path,
        body=oversized_json(LIMIT + 1),
        headers={"Content-Type": "application/json", **AUTH},
    )
    assert status == 413
    error = json.loads(payload)["error"]
    assert error["param"] == "body" and str(LIMIT) in error["message"]
    assert headers["x-request-id"]
    assert (root / "models" / "support").is_dir()  # the DELETE never ran


@pytest.mark.parametrize(("method", "path"), BODY_READERS)
def test_chunked_oversized_body_is_413(live, method, path):
    server, client, _ = live
    body = oversized_json(LIMIT + 100_000)
    chunks = (body[start : start + 65536] for start in range(0, len(body), 65536))
    status, _, payload = raw_http(
        server.port,
        method,
        path,
        chunks=chunks,
        headers={"Content-Type": "application/json", **AUTH},
    )
    assert status == 413, payload[:300]
    assert str(LIMIT) in json.loads(payload)["error"]["message"]
    assert client.get("/health").status_code == 200


def test_chunked_body_under_the_limit_is_served(live):
    server, _, _ = live
    body = json.dumps({"texts": ["chunked but small", "second"]}).encode()
    status, _, payload = raw_http(
        server.port,
        "POST",
        "/embed",
        chunks=[body[:10], body[10:]],
        headers={"Content-Type": "application/json"},
    )
    assert status == 200 and len(json.loads(payload)["embeddings"]) == 2


# -- path traversal ----------------------------------------------------------------------------

TRAVERSAL_NAMES = [
    "..%2F..%2Foutside%2Fvictim",
    "..%2Foutside%2Fvictim",
    "%2e%2e%2Foutside%2Fvictim",
    "..",
    "%2e%2e",
    ".trash",
    "support%2F..%2F..%2Foutside%2Fvictim",
    "..%5Coutside%5Cvictim",
    "victim%00",
    "a" * 65,
    "b" * 5000,
]


def tree_state(directory: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(path.relative_to(directory)), path.stat().st_size, path.stat().st_mtime_ns)
        for path in directory.rglob("*")
    )


@pytest.mark.parametrize("name", TRAVERSAL_NAMES)
def test_traversal_names_are_refused_and_touch_nothing(live, name):
    server, _, root = live
    victim, models = root / "outside" / "victim", root / "models"
    before_victim, before_models = tree_state(victim), sorted(p.name for p in models.iterdir())
    calls = [
        ("GET", f"/heads/{name}", b""),
        ("DELETE", f"/heads/{name}", b""),
        ("POST", f"/heads/{name}/rollback", b'{"version": 1}'),
        ("POST", f"/heads/{name}/train", json.dumps({"examples": support_examples(8)}).encode()),
    ]
    for method, target, body in calls:
        status, _, payload = raw_http(
            server.port,
            method,
            target,
            body=body,
            headers={"Content-Type": "application/json", **AUTH},
        )
        assert 400 <= status < 500, (method, target[:80], status, payload[:200])
        assert b"Traceback" not in payload
    assert tree_state(victim) == before_victim
    assert sorted(p.name for p in models.iterdir()) == before_models


# -- metrics and logs --------------------------------------------------------------------------


def samples(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_metrics_cover_routes_cache_batches_heads_and_training(live):
    _, client, _ = live
    unique = [f"metrics probe {time.time_ns()} {i}" for i in range(3)]
    before = samples(client)
    assert client.post("/embed", json={"texts": unique}).status_code == 200
    assert client.post("/predict", json={"texts": unique}).status_code == 200
    assert client.get("/heads/nope").status_code == 404
    assert client.post("/embed", json={"texts": []}).status_code == 422
    after = samples(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("bertheads_texts_total", source="encoder") == 3
    assert delta("bertheads_texts_total", source="cache") == 3
    route = {"method": "POST", "route": "/embed"}
    assert delta("bertheads_requests_total", **route, status="200") == 1
    assert delta("bertheads_requests_total", **route, status="422") == 1
    assert delta("bertheads_requests_total", method="GET", route="/heads/{name}", status="404") == 1
    assert delta("bertheads_request_seconds_count", method="POST", route="/predict") == 1
    assert value(after, "bertheads_request_seconds_bucket", **route, le="+Inf") >= 2
    assert delta("bertheads_encode_batch_texts_count") >= 1
    assert ("bertheads_encode_queue_texts", frozenset()) in after
    live_version = client.get("/heads/support").json()["live_version"]
    assert value(after, "bertheads_head_version", head="support") == live_version
    assert value(after, "bertheads_train_seconds_count", head="support") >= 2
    assert value(after, "bertheads_cache_up") == 1
    routes = {dict(labels).get("route") for (_, labels) in after}
    assert not any("nope" in str(route) or ".." in str(route) for route in routes)


def test_logs_hold_request_ids_and_no_request_text(tmp_path, redis_url, capfd):
    secret = "zebra-quokka-7781 my card number is private"
    settings = make_settings(tmp_path, redis_url, log_level="INFO", api_key=KEY)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sent_id = "trace-abc-123"
        echoed = client.post("/embed", json={"texts": [secret]}, headers={"X-Request-ID": sent_id})
        assert echoed.status_code == 200 and echoed.headers["x-request-id"] == sent_id
        generated = client.post("/v1/embeddings", json={"input": secret, "model": "default"})
        generated_id = generated.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated_id)
        examples = [{"text": f"{secret} {i}", "label": "ab"[i % 2]} for i in range(12)]
        trained = client.post("/heads/s/train", json={"examples": examples}, headers=AUTH)
        assert trained.status_code == 200, trained.text
        client.post("/predict", json={"texts": [secret], "head": "s"})
        client.post("/predict", json={"texts": [secret + "x" * 30_000], "head": "s"})
        client.post("/embed", json={"texts": [secret, None]})
        too_big = client.post("/embed", json={"texts": [secret * 80_000]})
        assert too_big.status_code == 413 and too_big.headers["x-request-id"]
    err = capfd.readouterr().err
    entries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert entries, err[:500]
    assert "zebra-quokka" not in err
    access = [entry for entry in entries if entry["logger"] == "api.access"]
    assert any(e["request_id"] == sent_id and "/embed 200" in e["message"] for e in access)
    assert any(e["request_id"] == generated_id for e in access)
    assert all(set(e) >= {"time", "level", "logger", "request_id", "message"} for e in entries)
