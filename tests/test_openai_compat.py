"""POST /v1/embeddings driven by the real `openai` package against a live server."""

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import API_DB, MINILM
from tests.test_client import live_server

openai = pytest.importorskip("openai", reason="the openai package is in the test extra")

TEXTS = [
    "I was charged twice for my order.",
    "The app crashes when I open my basket.",
    "My parcel is stuck in customs.",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("openai") / "models", API_DB) as url:
        yield url


@pytest.fixture(scope="module")
def sent_bodies() -> list[dict]:
    return []


@pytest.fixture(scope="module")
def client(server, sent_bodies) -> Iterator["openai.OpenAI"]:
    def record(request) -> None:
        if request.content:
            sent_bodies.append(json.loads(request.content))

    http_client = openai.DefaultHttpxClient(event_hooks={"request": [record]})
    with openai.OpenAI(
        base_url=f"{server}/v1", api_key="unused", max_retries=0, http_client=http_client
    ) as openai_client:
        yield openai_client


def embed_endpoint(server: str, texts: list[str]) -> np.ndarray:
    response = httpx.post(f"{server}/embed", json={"texts": texts}, timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"], dtype=np.float32)


def test_default_encoding_is_base64_and_matches_embed(server, client, sent_bodies):
    raw = client.embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=TEXTS)
    assert sent_bodies[-1]["encoding_format"] == "base64"
    assert all(isinstance(item["embedding"], str) for item in raw.http_response.json()["data"])
    response = raw.parse()
    vectors = np.asarray([item.embedding for item in response.data], dtype=np.float32)
    assert [item.index for item in response.data] == [0, 1, 2]
    assert vectors.shape == (3, 384)
    np.testing.assert_array_equal(vectors, embed_endpoint(server, TEXTS))
    assert response.model == MINILM
    assert response.usage.prompt_tokens > len(TEXTS)
    assert response.usage.total_tokens == response.usage.prompt_tokens


def test_float_encoding_and_single_string(server, client, sent_bodies):
    floats = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    assert sent_bodies[-1]["encoding_format"] == "float"
    vectors = np.asarray([item.embedding for item in floats.data], dtype=np.float32)
    np.testing.assert_array_equal(vectors, embed_endpoint(server, TEXTS))

    single = client.embeddings.create(model="default", input="My parcel is stuck in customs.")
    assert len(single.data) == 1 and single.data[0].index == 0
    np.testing.assert_array_equal(
        np.asarray(single.data[0].embedding, dtype=np.float32), vectors[2]
    )
    # Tokens are counted per text: one text of the three costs less than all three.
    assert 0 < single.usage.prompt_tokens < floats.usage.prompt_tokens


def test_unknown_model_is_an_openai_not_found_error(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    error = caught.value
    assert error.status_code == 404
    assert error.type == "not_found_error" and error.param == "model"
    assert "all-MiniLM-L6-v2" in error.message  # names what is served


def test_empty_input_is_refused_with_the_field_named(client):
    with pytest.raises((openai.UnprocessableEntityError, openai.BadRequestError)) as caught:
        client.embeddings.create(model="all-MiniLM-L6-v2", input=[])
    assert caught.value.param == "input"
    with pytest.raises((openai.UnprocessableEntityError, openai.BadRequestError)) as blank:
        client.embeddings.create(model="all-MiniLM-L6-v2", input=["fine", "   "])
    assert blank.value.param == "input[1]"
