"""Bad input, body limits, path traversal, metrics and logs, against a live server on loopback.

One real server (uvicorn in a thread, MiniLM, Redis db 15) serves the module, so raw HTTP can
send what client libraries refuse to: chunked bodies without content-length and paths with
`..` that an HTTP client would normalise away.
"""

import base64
import csv
import json
import os
import random
import re
import select
import shutil
import socket
import string
import subprocess
import sys
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
from tests.conftest import API_DB, MINILM, REPO, free_port, make_settings, redis_db_url

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
        (b"version=1", "text/plain", 415, "content-type"),
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
        ("POST", "/heads/nope/rollback", {}),
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


# -- hostile clients ---------------------------------------------------------------------------
# Each probe below is something a careless or hostile client can send; each answered 500,
# did costly work, or changed state on the code before the hardening of issue 12.


def slow_examples(count: int, words: int = 100) -> list[dict]:
    """Texts never seen before (so nothing is cached) and long enough to fill max_seq_len."""
    generator = random.Random(time.time_ns())
    letters = string.ascii_lowercase
    texts = [
        " ".join(
            "".join(generator.choices(letters, k=generator.randint(3, 8))) for _ in range(words)
        )
        for _ in range(count)
    ]
    return [{"text": text, "label": "ab"[index % 2]} for index, text in enumerate(texts)]


def trains_running(client: httpx.Client | TestClient, headers: dict | None = None) -> float | None:
    """bertheads_trains_running from /metrics, or None when the gauge does not exist."""
    text = client.get("/metrics", headers=headers or {}).text
    match = re.search(r"^bertheads_trains_running (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def live_version(client: httpx.Client, head: str) -> int | None:
    response = client.get(f"/heads/{head}")
    return response.json()["live_version"] if response.status_code == 200 else None


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/heads/support/train", "POST", json.dumps({"examples": []}).encode()),
        ("/heads/support/rollback", "POST", b"{}"),
        ("/heads/support", "DELETE", b""),
    ],
)
@pytest.mark.parametrize("token", ["cl\u00e9", "\u00ff\u00fe", "robust-key\u00e9"])
def test_non_ascii_bearer_token_is_401(live, path, method, body, token):
    server, client, root = live
    before = live_version(client, "support")
    # Header bytes as a client sends them (UTF-8); raw_http writes each str char as one byte.
    raw = f"Bearer {token}".encode().decode("latin-1")
    status, headers, payload = raw_http(
        server.port,
        method,
        path,
        body=body,
        headers={"Content-Type": "application/json", "Authorization": raw},
    )
    assert status == 401, payload[:300]
    error = json.loads(payload)["error"]
    assert error["param"] == "authorization" and headers["www-authenticate"] == "Bearer"
    assert live_version(client, "support") == before and (root / "models" / "support").is_dir()


def test_a_non_ascii_api_key_is_compared_as_the_bytes_sent(tmp_path, redis_url):
    key = "cl\u00e9-s\u00e9cr\u00e8te"
    settings = make_settings(tmp_path, redis_url, api_key=key, protect_reads=True)
    with LiveServer(create_app(settings)) as server:
        sent = f"Bearer {key}".encode().decode("latin-1")  # the UTF-8 bytes, one per char
        status, _, payload = raw_http(server.port, "GET", "/heads", headers={"Authorization": sent})
        assert status == 200, payload[:300]
        wrong = f"Bearer {key[:-1]}\u00e9".encode().decode("latin-1")
        status, _, _ = raw_http(server.port, "GET", "/heads", headers={"Authorization": wrong})
        assert status == 401


SURROGATE, NUL = "\ud800", "\u0000"


@pytest.mark.parametrize("bad", [SURROGATE, "\udfff", NUL], ids=["high", "low", "nul"])
@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/embed", lambda bad: {"texts": ["fine", f"a{bad}b"]}, "texts[1]"),
        ("/embed", lambda bad: {"texts": bad}, "texts"),
        ("/predict", lambda bad: {"texts": [f"{bad}"], "head": "support"}, "texts[0]"),
        ("/predict", lambda bad: {"texts": ["fine"], "head": f"support{bad}"}, "head"),
        ("/v1/embeddings", lambda bad: {"input": ["ok", bad], "model": "default"}, "input[1]"),
        ("/v1/embeddings", lambda bad: {"input": "ok", "model": f"default{bad}"}, "model"),
        (
            "/heads/fresh/train",
            lambda bad: {"examples": [*support_examples(6), {"text": bad, "label": "billing"}]},
            "examples[6]",
        ),
        (
            "/heads/fresh/train",
            lambda bad: {"examples": [*support_examples(6), {"text": "x", "label": f"a{bad}"}]},
            "examples.6.label",
        ),
        (
            "/heads/fresh/train",
            lambda bad: {"examples": [{"text": "x", "labels": ["ok", bad]}]},
            "examples.0.labels.1",
        ),
        ("/heads/fresh/train", lambda bad: {"file": "good.csv", "text_col": bad}, "text_col"),
    ],
    ids=[
        "embed-item",
        "embed-single",
        "predict-text",
        "predict-head",
        "openai-input",
        "openai-model",
        "train-text",
        "train-label",
        "train-labels",
        "train-column",
    ],
)
def test_lone_surrogates_and_nul_are_422_naming_the_field(live, path, body, param, bad):
    _, client, root = live
    # json.dumps writes "\ud800" as the six-character escape, exactly as a hostile client can.
    content = json.dumps(body(bad)).encode()
    response = client.post(
        path, content=content, headers={**AUTH, "content-type": "application/json"}
    )
    assert_error(response, 422, param)
    word = "NUL" if bad == NUL else "surrogate"
    assert word in response.json()["error"]["message"]
    assert not (root / "models" / "fresh").exists()


@pytest.mark.parametrize("path", ["/embed", "/predict", "/v1/embeddings", "/heads/fresh/train"])
def test_a_body_that_is_not_utf8_is_4xx_naming_the_body(live, path):
    _, client, _ = live
    content = b'{"texts": ["caf\xe9"], "input": ["caf\xe9"], "examples": [], "model": "x"}'
    response = client.post(
        path, content=content, headers={**AUTH, "content-type": "application/json"}
    )
    assert_error(response, 400, "body", "UTF-8")


@pytest.mark.parametrize(
    ("example", "param", "words"),
    [
        ({"text": "x", "label": ""}, "examples.3.label", ["empty"]),
        ({"text": "x", "label": "   "}, "examples.3.label", ["empty"]),
        ({"text": "x", "label": None}, "examples[3]", ["exactly one"]),
        ({"text": "x", "label": ["billing"]}, "examples.3.label", []),
        ({"text": "x", "label": {"name": "billing"}}, "examples.3.label", []),
        ({"text": "x", "labels": ["a", ""]}, "examples.3.labels.1", ["empty"]),
    ],
    ids=["empty", "blank", "null", "list", "object", "empty-in-list"],
)
def test_unusable_labels_are_named(live, example, param, words):
    _, client, root = live
    examples = [*support_examples(3), example]
    response = client.post("/heads/fresh/train", json={"examples": examples}, headers=AUTH)
    assert_error(response, 422, param, *words)
    assert not (root / "models" / "fresh").exists()


HOSTILE_FILES: dict[str, tuple[bytes, list[str]]] = {
    # name: (bytes, words the error must hold)
    "latin1.csv": (
        "text,label\nfine,billing\ncaf\u00e9 au lait,shipping\n".encode("latin-1"),
        ["line 3", "UTF-8"],
    ),
    "text_missing_later.jsonl": (
        b'{"text": "one", "label": "a"}\n{"text": "two", "label": "b"}\n{"label": "a"}\n',
        ["row 3 (line 3)", "'text'"],
    ),
    "label_missing_later.jsonl": (
        b'{"text": "one", "label": "a"}\n\n{"text": "two"}\n{"text": "three", "label": "b"}\n',
        ["row 2 (line 3)", "'label'"],
    ),
    "label_is_a_list.jsonl": (
        b'{"text": "one", "label": "a"}\n{"text": "two", "label": ["a", "b"]}\n',
        ["row 2", "one label is expected"],
    ),
    "label_is_null.jsonl": (
        b'{"text": "one", "label": "a"}\n{"text": "two", "label": null}\n',
        ["row 2 (line 2)", "'label'"],
    ),
    "label_is_empty.csv": (b"text,label\none,a\ntwo,\nthree,b\n", ["row 2 (line 3)", "empty"]),
    "text_is_a_number.jsonl": (
        b'{"text": "one", "label": "a"}\n{"text": 7, "label": "b"}\n',
        ["row 2", "not a string"],
    ),
    "surrogate_text.jsonl": (
        b'{"text": "one", "label": "a"}\n{"text": "t\\ud800", "label": "b"}\n',
        ["row 2", "surrogate"],
    ),
    "nul_text.csv": (b"text,label\none,a\nt\x00wo,b\n", ["row 2", "NUL"]),
    "short_row.csv": (b"text,label\none,a\ntwo\nthree,b\n", ["row 2 (line 3)", "'label'"]),
}


@pytest.fixture(scope="module")
def hostile_files(live) -> Path:
    _, _, root = live
    directory = root / "train_data"
    for name, (content, _) in HOSTILE_FILES.items():
        (directory / name).write_bytes(content)
    return directory


@pytest.mark.parametrize("name", list(HOSTILE_FILES))
def test_training_files_are_checked_row_by_row(live, hostile_files, name):
    _, client, root = live
    response = client.post("/heads/fresh/train", json={"file": name}, headers=AUTH)
    assert_error(response, 422, "file", name, *HOSTILE_FILES[name][1])
    assert str(root) not in response.text
    assert not (root / "models" / "fresh").exists()


@pytest.mark.parametrize("name", ["latin1.csv", "text_missing_later.jsonl", "nul_text.csv"])
def test_train_cli_exits_2_naming_the_row(tmp_path, capsys, name):
    from classifier.train import main

    path = tmp_path / name
    path.write_bytes(HOSTILE_FILES[name][0])
    assert main(["--data", str(path), "--no-save", "--model", MINILM]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and error.count("\n") == 1
    for word in HOSTILE_FILES[name][1]:
        assert word in error, error


def test_thousands_of_distinct_labels_are_refused_before_any_work(live):
    _, client, root = live
    examples = [{"text": f"label probe {i}", "label": f"class-{i // 2}"} for i in range(4000)]
    started = time.perf_counter()
    response = client.post(
        "/heads/many/train", json={"examples": examples}, headers=AUTH, timeout=30
    )
    elapsed = time.perf_counter() - started
    assert_error(response, 422, "examples", "2000 distinct labels", "1000", "MAX_LABELS")
    assert elapsed < 10, elapsed  # refused, not trained: a train of 4,000 texts takes minutes
    assert not (root / "models" / "many").exists()


def test_train_slot_is_taken_before_embedding_and_the_second_gets_429(live):
    server, client, root = live
    assert trains_running(client) == 0
    first: dict = {}

    def long_train() -> None:
        with httpx.Client(base_url=server.url, timeout=600) as own:
            first["response"] = own.post(
                "/heads/slow-a/train", json={"examples": slow_examples(200)}, headers=AUTH
            )

    thread = threading.Thread(target=long_train)
    thread.start()
    try:
        wait_until(lambda: trains_running(client) == 1, 60, "the first train to take its slot")
        started = time.perf_counter()
        second = client.post(
            "/heads/slow-b/train", json={"examples": support_examples(40)}, headers=AUTH
        )
        elapsed = time.perf_counter() - started
        assert_error(second, 429, None, "MAX_CONCURRENT_TRAINS", "1")
        assert second.json()["error"]["type"] == "rate_limit_error"
        assert int(second.headers["retry-after"]) >= 1
        assert elapsed < 2, elapsed  # refused at once, not queued behind the running train
        assert "response" not in first  # the first train was still running when refused
    finally:
        thread.join(timeout=600)
    assert first["response"].status_code == 200, first["response"].text
    assert trains_running(client) == 0
    retried = client.post(
        "/heads/slow-b/train", json={"examples": support_examples(40)}, headers=AUTH
    )
    assert retried.status_code == 200, retried.text  # the slot freed
    assert (root / "models" / "slow-b").is_dir()


def test_a_disconnected_client_cancels_its_train(live):
    server, client, root = live
    assert trains_running(client) == 0
    body = json.dumps({"examples": slow_examples(200)}).encode()
    request = (
        "POST /heads/abandoned/train HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    try:
        sock.sendall(request)
        wait_until(lambda: trains_running(client) == 1, 60, "the train to start")
    finally:
        sock.close()  # the client goes away mid-train
    wait_until(lambda: trains_running(client) == 0, 300, "the cancelled train to free its slot")
    assert client.get("/heads/abandoned").status_code == 404  # no version was saved
    assert not (root / "models" / "abandoned").exists() or not any(
        (root / "models" / "abandoned").glob("v*")
    )
    again = client.post(
        "/heads/after-abandon/train", json={"examples": support_examples(40)}, headers=AUTH
    )
    assert again.status_code == 200, again.text


def test_a_slow_upload_holds_no_train_slot(live):
    server, client, _ = live
    body = json.dumps({"examples": support_examples(40)}).encode()
    request = (
        "POST /heads/slow-upload/train HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body[: len(body) // 2]
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(request)  # half the body, then nothing: a slowloris upload
        time.sleep(0.5)
        assert trains_running(client) == 0
        other = client.post(
            "/heads/while-slow/train", json={"examples": support_examples(40)}, headers=AUTH
        )
        assert other.status_code == 200, other.text
    assert client.get("/heads/slow-upload").status_code == 404


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"version": 1}', "text/plain"),
        (b'{"version": 1}', "text/plain;charset=UTF-8"),
        (b"version=1", "application/x-www-form-urlencoded"),
        (b"", "application/x-www-form-urlencoded"),
        (
            b'--x\r\nContent-Disposition: form-data; name="version"\r\n\r\n1\r\n--x--\r\n',
            "multipart/form-data; boundary=x",
        ),
        (b"", None),
    ],
    ids=["text-plain", "text-plain-charset", "form", "empty-form", "multipart", "no-body"],
)
def test_cross_site_rollback_is_refused(live, content, content_type):
    # What a page on another site can make a browser send without a CORS preflight.
    server, client, _ = live
    before = live_version(client, "support")
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    status, _, payload = raw_http(
        server.port, "POST", "/heads/support/rollback", body=content, headers=headers
    )
    assert status == 415, payload[:300]
    assert json.loads(payload)["error"]["param"] == "content-type"
    assert live_version(client, "support") == before


def test_nan_and_inf_in_the_cache_never_reach_a_response(live, minilm):
    import numpy as np

    from embedder.cache import cache_key

    _, client, _ = live
    health = client.get("/health").json()
    raw_space = minilm.fingerprint(normalize=False)
    assert health["fingerprint"] == raw_space  # the server stores raw vectors in this space
    cache = redis.Redis.from_url(redis_db_url(API_DB))
    text = f"poisoned cache entry {time.time_ns()}"
    key = cache_key(raw_space, text)
    poison = np.full(health["dim"], 0.25, dtype=np.float32)
    poison[0], poison[1], poison[2] = np.nan, np.inf, -np.inf

    def plant() -> None:
        cache.set(key, poison.tobytes())

    def close_to(vector: object, reference: object) -> bool:
        # int8 activations are quantised per batch: another batch moves a vector slightly.
        vector, reference = np.asarray(vector, np.float64), np.asarray(reference, np.float64)
        cosine = vector @ reference / np.linalg.norm(vector) / np.linalg.norm(reference)
        return bool(np.isfinite(vector).all() and cosine > 0.98)

    def rejected() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("bertheads_cache_rejected_values "):
                return float(line.split()[1])
        raise AssertionError("no bertheads_cache_rejected_values in /metrics")

    # The server's own clean answer (its backend may be int8, not the fixture's torch),
    # cached, then overwritten with the poison.
    clean = client.post("/embed", json={"texts": [text]})
    assert clean.status_code == 200, clean.text
    expected = np.asarray(clean.json()["embeddings"][0])
    before = rejected()
    plant()
    embedded = client.post("/embed", json={"texts": [text, "a clean text"]})
    assert embedded.status_code == 200, embedded.text
    vectors = embedded.json()["embeddings"]
    assert all(value is not None for row in vectors for value in row)
    assert close_to(vectors[0], expected)
    assert embedded.json()["cached"] == 0  # the poisoned entry was not a hit
    assert np.isfinite(np.frombuffer(cache.get(key), dtype=np.float32)).all()  # replaced
    assert rejected() == before + 1

    cache.set(key, poison.tobytes()[:-4])  # one float short: the wrong length
    shortened = client.post("/embed", json={"texts": [text]})
    assert shortened.status_code == 200 and shortened.json()["cached"] == 0, shortened.text
    assert close_to(shortened.json()["embeddings"][0], expected)
    assert len(cache.get(key)) == health["dim"] * 4  # replaced by a whole vector
    assert rejected() == before + 2

    plant()
    predicted = client.post("/predict", json={"texts": [text], "head": "support"})
    assert predicted.status_code == 200, predicted.text
    probabilities = predicted.json()["predictions"][0]["probabilities"]
    assert all(np.isfinite(value) for value in probabilities.values())

    for encoding in ("float", "base64"):
        plant()
        response = client.post(
            "/v1/embeddings",
            json={"input": [text], "model": "default", "encoding_format": encoding},
        )
        assert response.status_code == 200, response.text
        embedding = response.json()["data"][0]["embedding"]
        if encoding == "base64":
            embedding = np.frombuffer(base64.b64decode(embedding), dtype="<f4")
        assert close_to(embedding, expected)
    cache.close()


def test_openai_usage_is_counted_off_the_event_loop_and_no_further_than_the_cap(
    tmp_path, redis_url, minilm
):
    import asyncio

    settings = make_settings(tmp_path, redis_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        encoder = client.app.state.bertheads.encoder
        real = encoder.token_lengths
        calls: list[tuple[bool, int]] = []

        def observed(texts):
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            calls.append((on_loop, max(len(text) for text in texts)))
            return real(texts)

        encoder.token_lengths = observed
        long_text = " ".join(["tokenisation"] * 3000)  # 38,999 characters, ~9,000 tokens
        long_text = long_text[: settings.max_text_chars]
        short = "a short text"
        response = client.post(
            "/v1/embeddings", json={"input": [long_text, short], "model": "default"}
        )
        assert response.status_code == 200, response.text
        cap = client.app.state.bertheads.service.tokens_read()  # what windows read, if on
        expected = cap + int(minilm.token_lengths([short])[0])
        assert response.json()["usage"]["prompt_tokens"] == expected
        assert calls, "no token counting was observed"
        assert not any(on_loop for on_loop, _ in calls), calls  # never on the event loop
        assert max(longest for _, longest in calls) < 20 * (cap + 1), calls  # a prefix, not 20k


def test_metrics_follow_protect_reads(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url, api_key=KEY, protect_reads=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        refused = client.get("/metrics")
        assert_error(refused, 401, "authorization")
        assert client.get("/metrics", headers=AUTH).status_code == 200
        assert client.get("/health").status_code == 200  # liveness stays open for probes


WRITES = [
    ("POST", "/heads/open/train", {"examples": support_examples(40)}),
    ("POST", "/heads/open/rollback", {}),
    ("DELETE", "/heads/open", None),
]


def test_writes_without_a_key_on_a_public_bind_are_403(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url, host="0.0.0.0")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for method, path, body in WRITES:
            response = client.request(method, path, json=body)
            assert_error(response, 403, "authorization", "API_KEY", "0.0.0.0")
            assert "ALLOW_UNAUTHENTICATED_WRITES" in response.json()["error"]["message"]
        assert not (tmp_path / "models" / "open").exists()
        assert client.post("/embed", json={"texts": ["reads stay open"]}).status_code == 200


def test_unauthenticated_writes_can_be_allowed_explicitly_and_are_logged(
    tmp_path, redis_url, capfd
):
    settings = make_settings(tmp_path, redis_url, host="0.0.0.0", allow_unauthenticated_writes=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        method, path, body = WRITES[0]
        assert client.request(method, path, json=body).status_code == 200
    log = capfd.readouterr().err
    assert "ALLOW_UNAUTHENTICATED_WRITES=true" in log and "0.0.0.0" in log


def test_a_server_that_cannot_bind_shuts_down_cleanly(tmp_path):
    # Startup ends at once when the port is taken, while the every-core ONNX session may
    # still be under construction: the process must not abort inside ONNX Runtime.
    env = {
        **os.environ,
        "EMBEDDER_MODEL": MINILM,
        "REDIS_URL": redis_db_url(API_DB),
        "MODELS_DIR": str(tmp_path / "models"),
        "DEMO_HEAD_ON_START": "false",
    }
    env.pop("EMBEDDER_THREADS", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
        completed = subprocess.run(
            [*command, "--port", str(port)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    output = completed.stdout + completed.stderr
    assert "address already in use" in output, output[-2000:]
    assert "terminate called" not in output and completed.returncode == 3, output[-2000:]


def test_python_m_api_binds_from_settings_and_refuses_open_writes(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "HOST": "0.0.0.0",
        "PORT": str(port),
        "EMBEDDER_MODEL": MINILM,
        "REDIS_URL": redis_db_url(API_DB),
        "MODELS_DIR": str(tmp_path / "models"),
        "DEMO_HEAD_ON_START": "false",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("API_KEY", None)
    env.pop("ALLOW_UNAUTHENTICATED_WRITES", None)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "api"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: process.poll() is not None or _answers(url), 180, "python -m api to serve"
        )
        assert process.poll() is None, log_path.read_text()[-2000:]
        response = httpx.post(f"{url}/heads/x/train", json={"examples": support_examples(8)})
        assert_error(response, 403, "authorization", "API_KEY")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "train, rollback and delete answer 403" in log_path.read_text()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def strict(tmp_path_factory) -> Iterator[tuple[TestClient, Path]]:
    """A server with small limits: 300 examples per train, trains stopped after 0.5 s."""
    root = tmp_path_factory.mktemp("strict")
    data = root / "train_data"
    data.mkdir()
    (data / "too_many.csv").write_text(
        "text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(301))
    )
    (data / "many_labels.csv").write_text(
        "text,label\n" + "".join(f"row {i},class-{i}\n" for i in range(40))
    )
    settings = make_settings(
        root,
        redis_db_url(API_DB),
        api_key=KEY,
        max_train_examples=300,
        max_labels=30,
        train_timeout_seconds=0.5,
        train_data_dir=data,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, root


def test_too_many_examples_are_refused_naming_the_limit(strict):
    client, root = strict
    examples = [{"text": f"example {i}", "label": "ab"[i % 2]} for i in range(301)]
    inline = client.post("/heads/big/train", json={"examples": examples}, headers=AUTH)
    assert_error(inline, 422, "examples", "301 examples", "300", "MAX_TRAIN_EXAMPLES")
    from_file = client.post("/heads/big/train", json={"file": "too_many.csv"}, headers=AUTH)
    assert_error(from_file, 422, "file", "more than 300", "MAX_TRAIN_EXAMPLES")
    labels = client.post("/heads/big/train", json={"file": "many_labels.csv"}, headers=AUTH)
    assert_error(labels, 422, "file", "40 distinct labels", "MAX_LABELS")
    columns = [f"c{i}" for i in range(31)]
    wide = client.post(
        "/heads/big/train", json={"file": "many_labels.csv", "label_cols": columns}, headers=AUTH
    )
    assert_error(wide, 422, "label_cols", "31 labels", "MAX_LABELS")
    assert not (root / "models" / "big").exists()


def test_a_train_past_its_time_limit_is_408_and_saves_nothing(strict):
    client, root = strict
    response = client.post(
        "/heads/timed/train", json={"examples": slow_examples(250)}, headers=AUTH
    )
    assert_error(response, 408, None, "TRAIN_TIMEOUT_SECONDS", "0.5")
    assert response.json()["error"]["type"] == "timeout_error"
    assert client.get("/heads/timed").status_code == 404
    assert not any((root / "models").glob("timed/**/*.json"))
    assert trains_running(client, AUTH) == 0
