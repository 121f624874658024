"""Long texts read as overlapping token windows: real MiniLM, real Redis, real app."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from embedder import EmbeddingCache, EmbeddingService, cache_key, connect, load_encoder
from embedder.errors import InvalidConfigError
from embedder.windows import window_space
from tests.conftest import MINILM, REPO, make_settings

MAX_SEQ_LEN = 32  # short windows keep the model cheap; 30 tokens of text per window
OVERLAP = 8
CLS, SEP = 101, 102  # MiniLM's (BERT's) special tokens


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(MINILM, max_seq_len=MAX_SEQ_LEN, backend="torch")


@pytest.fixture
def cache(redis_url):
    cache = EmbeddingCache(connect(redis_url))
    yield cache
    cache.client.close()


def service_for(encoder, cache, **options) -> EmbeddingService:
    options = {"long_texts": "windows", "overlap_tokens": OVERLAP, "max_windows": 16} | options
    return EmbeddingService(encoder, cache, **options)


def words(count: int, seed: int = 0) -> str:
    """A text of `count` distinct-ish words, one token each in MiniLM's vocabulary."""
    vocabulary = [
        "river",
        "stone",
        "cloud",
        "paper",
        "green",
        "music",
        "table",
        "window",
        "light",
        "garden",
    ]
    generator = np.random.default_rng(seed)
    return " ".join(vocabulary[index] for index in generator.integers(0, 10, count))


def expected_windows(encoder, text: str, max_windows: int = 16) -> list[list[int]]:
    """The windows written out from the rule: 30-token slices every 22 tokens, [CLS] .. [SEP]."""
    content = encoder.tokenizer.encode(text, add_special_tokens=False).ids
    width, stride = MAX_SEQ_LEN - 2, MAX_SEQ_LEN - 2 - OVERLAP
    windows, start = [], 0
    while True:
        windows.append([CLS, *content[start : start + width], SEP])
        if start + width >= len(content):
            break
        start += stride
    return windows[:max_windows]


def encode_alone(encoder, ids: list[int]) -> np.ndarray:
    """One window through the backend by itself: no padding, no batch."""
    array = np.array([ids], dtype=np.int64)
    return encoder.backend(array, np.ones_like(array), encoder.pooling)[0]


def test_a_long_text_is_the_token_weighted_mean_of_its_windows(encoder, cache):
    text = words(100)  # 100 tokens: windows at 0, 22, 44, 66, 88 (the last holds 12 tokens)
    service = service_for(encoder, cache)
    plan = service.plan([text])[0]
    windows = expected_windows(encoder, text)
    assert len(windows) == 5 and len(windows[-1]) == 2 + 100 - 88
    assert [list(window.ids) for window in plan.windows] == windows
    result = service.embed([text])
    alone = np.stack([encode_alone(encoder, ids) for ids in windows])
    counts = np.array([len(ids) for ids in windows], dtype=np.float64)
    expected = (counts @ alone) / counts.sum()
    np.testing.assert_allclose(result.vectors[0], expected, atol=2e-5)
    # Not the plain mean (the short last window weighs less), and not the truncated vector.
    assert np.abs(result.vectors[0] - alone.mean(axis=0)).max() > 1e-4
    truncated = encoder.encode([text])[0]
    assert np.abs(result.vectors[0] - truncated).max() > 1e-3
    # The first window is token for token what truncation keeps.
    np.testing.assert_allclose(alone[0], truncated, atol=2e-5)
    assert result.truncated == 0 and result.cached == 0
    # Every window is cached under its token ids in the window space; the text is not.
    space = encoder.fingerprint(normalize=False)
    for window in plan.windows:
        assert cache.client.exists(cache_key(window_space(space), window.cache_text()))
    assert not cache.client.exists(cache_key(space, text))


def test_truncate_mode_is_todays_behaviour(encoder, cache):
    texts = [words(100, seed=1), "a short one", words(31, seed=2)]
    service = service_for(encoder, cache, long_texts="truncate")
    first = service.embed(texts)
    np.testing.assert_allclose(first.vectors, encoder.encode(texts), atol=1e-6)
    assert first.truncated == encoder.count_truncated(texts) == 2
    space = encoder.fingerprint(normalize=False)
    assert all(cache.client.exists(cache_key(space, text)) for text in texts)
    assert not cache.client.keys(f"*{window_space(space)}*")
    again = service.embed(texts)
    assert again.cached == 3 and again.truncated == 2
    np.testing.assert_array_equal(again.vectors, first.vectors)


def test_a_text_is_cached_only_when_all_its_windows_are(encoder, cache):
    long_text, other_long, short = words(100, seed=3), words(60, seed=4), "short text"
    texts = [long_text, short, other_long]
    service = service_for(encoder, cache)
    assert service.cached_mask(texts).tolist() == [False, False, False]
    first = service.embed(texts)
    assert first.cached == 0
    assert service.cached_mask(texts).tolist() == [True, True, True]
    second = service.embed(texts)
    assert second.cached == 3
    np.testing.assert_array_equal(second.vectors, first.vectors)
    # One window gone: that text alone is encoded again (its window), the others are hits.
    space = window_space(encoder.fingerprint(normalize=False))
    window = service.plan([long_text])[0].windows[2]
    assert cache.client.delete(cache_key(space, window.cache_text())) == 1
    assert service.cached_mask(texts).tolist() == [False, True, True]
    before = service.texts_encoded
    third = service.embed(texts)
    assert third.cached == 2 and service.texts_encoded == before + 1
    np.testing.assert_allclose(third.vectors, first.vectors, atol=2e-5)


def test_more_windows_than_allowed_count_as_truncated(encoder, cache):
    service = service_for(encoder, cache, max_windows=2)
    fits, cut, short = words(52, seed=5), words(100, seed=6), "tiny"  # 52 tokens: 2 windows
    result = service.embed([fits, cut, short, cut])
    assert result.truncated == 2  # `cut` twice, as sent
    plans = service.plan([fits, cut])
    assert [len(plan.windows) for plan in plans] == [2, 2]
    assert [plan.truncated for plan in plans] == [False, True]
    windows = expected_windows(encoder, cut, max_windows=2)
    alone = np.stack([encode_alone(encoder, ids) for ids in windows])
    counts = np.array([len(ids) for ids in windows], dtype=np.float64)
    np.testing.assert_allclose(result.vectors[1], counts @ alone / counts.sum(), atol=2e-5)


def test_a_mixed_batch_keeps_its_order_and_shares_forward_passes(encoder, cache):
    texts = [
        "first short",
        words(100, seed=7),
        "second short",
        words(45, seed=8),
        words(100, seed=7),  # a duplicate long text
        "third short",
        words(200, seed=9),
    ]
    calls: list[int] = []

    def recording(items):
        calls.append(len(items))
        return encoder.encode_raw(items)

    service = EmbeddingService(
        encoder, cache, recording, long_texts="windows", overlap_tokens=OVERLAP
    )
    together = service.embed(texts)
    # Every miss of the request (3 short texts, 5 + 2 + 9 windows) in one call.
    assert calls == [3 + 5 + 2 + 9]
    alone_service = service_for(encoder, None)
    for row, text in enumerate(texts):
        np.testing.assert_allclose(
            together.vectors[row], alone_service.embed([text]).vectors[0], atol=2e-5
        )
    np.testing.assert_array_equal(together.vectors[1], together.vectors[4])


def test_padding_does_not_change_a_window(encoder):
    """A short window padded beside full ones gives the vector it gives alone."""
    service = service_for(encoder, None)
    plan = service.plan([words(70, seed=10)])[0]
    mixed = encoder.encode_raw(["a text", *plan.windows])
    for row, window in enumerate(plan.windows, start=1):
        np.testing.assert_allclose(mixed[row], encode_alone(encoder, list(window.ids)), atol=2e-5)


def test_settings_that_cannot_work_are_refused(encoder):
    with pytest.raises(InvalidConfigError, match="LONG_TEXTS='pages'"):
        EmbeddingService(encoder, None, long_texts="pages")
    with pytest.raises(InvalidConfigError, match="LONG_TEXT_MAX_WINDOWS=0"):
        EmbeddingService(encoder, None, long_texts="windows", max_windows=0)
    # An overlap of a whole window would never move on: capped at half a window.
    service = EmbeddingService(encoder, None, long_texts="windows", overlap_tokens=500)
    assert service.describe_long_texts()["overlap_tokens"] == (MAX_SEQ_LEN - 2) // 2


@pytest.fixture
def api(tmp_path, redis_url):
    settings = make_settings(
        tmp_path,
        redis_url,
        embedder_max_seq_len=MAX_SEQ_LEN,
        embedder_backend="torch",
        long_texts="windows",
        long_text_max_windows=3,
        long_text_overlap_tokens=OVERLAP,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_the_api_counts_long_texts_honestly(api, encoder):
    three_windows, five_windows = words(70, seed=11), words(100, seed=12)
    texts = ["short", three_windows, five_windows]
    first = api.post("/embed", json={"texts": texts})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["cached"] == 0 and body["truncated"] == 1  # only the one over 3 windows
    expected = service_for(encoder, None, max_windows=3).embed(texts).vectors
    np.testing.assert_allclose(np.array(body["embeddings"]), expected, atol=2e-5)
    again = api.post("/embed", json={"texts": texts}).json()
    assert again["cached"] == 3 and again["truncated"] == 1
    assert again["embeddings"] == body["embeddings"]
    # A window's entry poisoned with NaN is dropped and encoded again, never served.
    state = api.app.state.bertheads
    window = state.service.plan([three_windows])[0].windows[1]
    key = cache_key(window_space(encoder.fingerprint(normalize=False)), window.cache_text())
    client = redis.Redis.from_url(state.settings.redis_url)
    client.set(key, np.full(encoder.dim, np.nan, dtype=np.float32).tobytes())
    healed = api.post("/embed", json={"texts": texts}).json()
    assert healed["embeddings"] == body["embeddings"]
    assert np.isfinite(np.frombuffer(client.get(key), dtype=np.float32)).all()
    client.close()
    alone = api.post("/embed", json={"texts": [five_windows]}).json()
    assert alone["cached"] == 1 and alone["truncated"] == 1
    assert api.get("/health").json()["long_texts"] == {
        "mode": "windows",
        "max_windows": 3,
        "overlap_tokens": OVERLAP,
        "window_tokens": MAX_SEQ_LEN,
    }


def run_train(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "classifier/train.py", "--model", MINILM, *arguments]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_train_cli_reads_long_texts_as_asked(tmp_path, redis_url):
    data = tmp_path / "long.csv"
    with data.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for index in range(16):
            label = ("calm", "storm")[index % 2]
            # 200 words (over 128 tokens) with the label's word only near the end.
            writer.writerow([f"{words(180, seed=index)} {label} {words(20, seed=99)}", label])
    common = ["--data", str(data), "--test-size", "0.25", "--no-save", "--redis-url", redis_url]
    windows = run_train(*common, "--long-texts", "windows", "--out", str(tmp_path / "w"))
    assert windows.returncode == 0, windows.stderr
    embedding = json.loads((tmp_path / "w" / "metrics.json").read_text())["embedding"]
    assert embedding["long_texts"]["mode"] == "windows" and embedding["truncated"] == 0
    truncate = run_train(*common, "--long-texts", "truncate", "--out", str(tmp_path / "t"))
    assert truncate.returncode == 0, truncate.stderr
    embedding = json.loads((tmp_path / "t" / "metrics.json").read_text())["embedding"]
    assert embedding["long_texts"]["mode"] == "truncate" and embedding["truncated"] == 16
    assert embedding["cached"] == 0  # the text keys hold cut vectors, the windows sit apart
    remote = run_train(
        *common, "--long-texts", "windows", "--embed-url", "http://127.0.0.1:9", "--out", "x"
    )
    assert remote.returncode == 2 and "--long-texts" in remote.stderr


@pytest.mark.parametrize("pooling", ["max", "cls"])
def test_windows_are_pooled_as_the_encoder_pools_tokens(pooling):
    encoder = load_encoder(MINILM, max_seq_len=MAX_SEQ_LEN, backend="torch", pooling=pooling)
    text = words(80, seed=13)
    vector = service_for(encoder, None).embed([text]).vectors[0]
    alone = np.stack([encode_alone(encoder, ids) for ids in expected_windows(encoder, text)])
    # max: the maximum over every token position read; cls: the windows' first tokens' mean.
    expected = alone.max(axis=0) if pooling == "max" else alone.mean(axis=0)
    np.testing.assert_allclose(vector, expected, atol=2e-5)
