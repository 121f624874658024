"""The encoder, the cache keys and the cached service, on the real MiniLM and Redis."""

import numpy as np
import pytest
import redis

from embedder import (
    EmbeddingCache,
    EmbeddingService,
    InvalidConfigError,
    ModelNotFoundError,
    cache_key,
    connect,
    load_encoder,
)
from embedder.batcher import MicroBatcher
from tests.conftest import MINILM

TEXTS = [
    "The cat sat on the mat.",
    "A short one.",
    "Stock markets fell sharply on Monday after the announcement of new tariffs.",
    "A short one.",
]


def test_encode_shape_dtype_and_order(minilm):
    vectors = minilm.encode(TEXTS)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    # Length sorting inside must not reorder the rows.
    one_by_one = np.vstack([minilm.encode([text]) for text in TEXTS])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    np.testing.assert_array_equal(vectors[1], vectors[3])


def test_poolings_and_lengths_give_distinct_fingerprints(minilm):
    other_pooling = load_encoder(MINILM, pooling="cls")
    shorter = load_encoder(MINILM, max_seq_len=16)
    prints = {
        minilm.fingerprint(),
        other_pooling.fingerprint(),
        shorter.fingerprint(),
        minilm.fingerprint(normalize=True),
    }
    assert len(prints) == 4
    assert not np.allclose(minilm.encode(TEXTS[:1]), other_pooling.encode(TEXTS[:1]))


def test_truncation_is_counted(minilm):
    shorter = load_encoder(MINILM, max_seq_len=8)
    assert (
        shorter.count_truncated(["two words", "this sentence has clearly more than eight tokens"])
        == 1
    )
    assert minilm.count_truncated(["two words"]) == 0


def test_bad_options_list_valid_choices():
    with pytest.raises(InvalidConfigError, match="mean, cls, max"):
        load_encoder(MINILM, pooling="median")
    with pytest.raises(InvalidConfigError, match="2 to 256"):
        load_encoder(MINILM, max_seq_len=100_000)


def test_unknown_model_names_every_way(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as caught:
        load_encoder("nobody/no-such-model", cache_dir=tmp_path)
    message = str(caught.value)
    assert "nobody/no-such-model" in message and "EMBEDDER_MODEL" in message and "hub" in message


def test_cache_hit_is_bit_identical_to_fresh_encode(minilm, redis_url):
    service = EmbeddingService(minilm, EmbeddingCache(connect(redis_url)))
    first = service.embed(TEXTS)
    assert first.cached == 0
    second = service.embed(TEXTS)
    assert second.cached == 4
    fresh = minilm.encode(TEXTS)
    assert first.vectors.tobytes() == fresh.tobytes()
    assert second.vectors.tobytes() == fresh.tobytes()
    stored = redis.Redis.from_url(redis_url).get(
        cache_key(minilm.fingerprint(normalize=False), TEXTS[0])
    )
    assert stored == fresh[0].tobytes()


def test_duplicates_in_one_request_are_encoded_once(minilm, redis_url):
    cache = EmbeddingCache(connect(redis_url))
    service = EmbeddingService(minilm, cache)
    service.embed(["same", "same", "same", "other"])
    assert service.texts_encoded == 2
    assert len(redis.Redis.from_url(redis_url).keys("*")) == 2


def test_other_pooling_or_length_never_reads_foreign_entries(minilm, redis_url):
    client = connect(redis_url)
    EmbeddingService(minilm, EmbeddingCache(client)).embed(TEXTS)
    for other in (load_encoder(MINILM, pooling="max"), load_encoder(MINILM, max_seq_len=8)):
        result = EmbeddingService(other, EmbeddingCache(client)).embed(TEXTS)
        assert result.cached == 0
        # What the same service gives uncached (texts over 8 tokens are read as windows).
        uncached = EmbeddingService(other, None).embed(TEXTS).vectors
        np.testing.assert_allclose(result.vectors, uncached, atol=1e-6)


def test_normalize_comes_from_the_same_entry(minilm, redis_url):
    service = EmbeddingService(minilm, EmbeddingCache(connect(redis_url)))
    raw = service.embed(TEXTS[:2])
    normalized = service.embed(TEXTS[:2], normalize=True)
    assert normalized.cached == 2
    np.testing.assert_allclose(np.linalg.norm(normalized.vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(raw.vectors, normalized.vectors)


def test_dead_redis_degrades_to_uncached(minilm, spare_redis):
    cache = EmbeddingCache(connect(spare_redis.url))
    service = EmbeddingService(minilm, cache)
    service.embed(TEXTS)
    spare_redis.kill()
    result = service.embed(TEXTS)
    assert result.cached == 0 and not cache.up
    np.testing.assert_array_equal(result.vectors, minilm.encode(TEXTS))


def test_reads_and_writes_go_in_chunks_of_chunk_keys(spare_redis):
    """2,500 keys: three MGETs and three pipelines, never one request of 2,500 keys."""
    from embedder.cache import CHUNK_KEYS

    client = connect(spare_redis.url)
    cache = EmbeddingCache(client)
    texts = [f"text {index}" for index in range(2 * CHUNK_KEYS + 500)]
    vectors = np.random.default_rng(0).random((len(texts), 8), dtype=np.float32)
    client.config_resetstat()
    cache.set_many("space", texts, vectors)
    found = cache.get_many("space", texts, 8)
    assert cache.exists_many("space", texts).all()
    np.testing.assert_array_equal(np.stack(found), vectors)
    stats = client.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 3
    assert stats["cmdstat_set"]["calls"] == len(texts)
    assert stats["cmdstat_exists"]["calls"] == len(texts)
    # The slow log keeps the argument count of each command: no MGET above CHUNK_KEYS keys.
    client.config_set("slowlog-log-slower-than", 0)
    client.slowlog_reset()
    cache.get_many("space", texts, 8)
    lengths = [
        slowlog_arguments(entry["command"])
        for entry in client.slowlog_get(128)
        if entry["command"].startswith(b"MGET")
    ]
    assert sorted(lengths) == [500, CHUNK_KEYS, CHUNK_KEYS]


def slowlog_arguments(command: bytes) -> int:
    """Arguments of a slow-log entry: it shows 31 and then "... (N more arguments)"."""
    words = command.split()
    if words[-1] == b"arguments)":
        return len(words) - 1 - 4 + int(words[-3].lstrip(b"("))
    return len(words) - 1


def test_batcher_returns_each_callers_rows_in_order(minilm):
    from concurrent.futures import ThreadPoolExecutor

    batcher = MicroBatcher(minilm.encode_raw, max_batch_texts=64, max_wait_ms=20)
    calls: list[int] = []
    batcher.on_batch = calls.append
    batcher.start()
    requests = [[f"request {i} text {j}" for j in range(i % 3 + 1)] for i in range(12)]
    try:
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(batcher.encode, requests))
    finally:
        batcher.stop()
    for texts, vectors in zip(requests, results, strict=True):
        np.testing.assert_allclose(vectors, minilm.encode_raw(texts), atol=1e-5)
    assert len(calls) < len(requests)  # some requests really shared a forward pass
    assert batcher.queue_depth == 0


def test_counting_lengths_while_encoding_is_thread_safe(minilm):
    import threading

    texts = [("word " * count).strip() for count in range(1, 40)]
    stop = threading.Event()
    failures: list[Exception] = []

    def count_lengths() -> None:
        while not stop.is_set():
            try:
                minilm.token_lengths(texts)
            except Exception as error:  # collected, then asserted below
                failures.append(error)

    counter = threading.Thread(target=count_lengths)
    counter.start()
    try:
        for start in range(12):
            minilm.encode_raw(texts[start : start + 16])
    except Exception as error:
        failures.append(error)
    finally:
        stop.set()
        counter.join()
    assert failures == []


TOKENIZER_TEXTS = [
    "Hello, World!",
    "naïve café déjà vu — ünïcödé",
    "lol that's the dumbest thing i've read all day!!! :)",
    "",
    "word " * 300,
]


def assert_same_tokens_as_transformers(model: str, max_seq_len: int) -> None:
    from transformers import AutoTokenizer

    from embedder.resolve import resolve_model
    from embedder.tokenization import BatchTokenizer

    path = resolve_model(model).path
    expected = AutoTokenizer.from_pretrained(str(path))(
        TOKENIZER_TEXTS, padding=True, truncation=True, max_length=max_seq_len, return_tensors="np"
    )
    ids, mask = BatchTokenizer(path, max_seq_len)(TOKENIZER_TEXTS)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])


@pytest.mark.parametrize("max_seq_len", [8, 128, 256])
def test_rust_tokenizer_gives_the_ids_transformers_gives(max_seq_len):
    assert_same_tokens_as_transformers(MINILM, max_seq_len)


@pytest.mark.slow
def test_rust_tokenizer_matches_transformers_on_the_default_model():
    assert_same_tokens_as_transformers("sentence-transformers/all-mpnet-base-v2", 128)


def test_exposed_tokenizer_neither_truncates_nor_pads(minilm):
    from tokenizers import Tokenizer

    assert isinstance(minilm.tokenizer, Tokenizer)
    assert minilm.tokenizer.truncation is None and minilm.tokenizer.padding is None
    long_text = "word " * 400
    assert len(minilm.tokenizer.encode(long_text).ids) == 402
    assert minilm.token_lengths([long_text, "two words"]).tolist() == [402, 4]
    assert minilm.count_truncated([long_text, "two words"]) == 1


def test_unknown_backend_or_device_lists_valid_choices():
    with pytest.raises(InvalidConfigError, match="torch, onnx, onnx-int8"):
        load_encoder(MINILM, backend="tensorrt")
    with pytest.raises(InvalidConfigError, match="auto, cpu, cuda"):
        load_encoder(MINILM, device="tpu")


def test_settings_default_to_int8_and_pass_device_threads_and_batch_size():
    from bertheads.settings import Settings

    settings = Settings()
    options = settings.encoder_options()
    assert settings.embedder_backend == "onnx-int8"
    assert options["backend"] == "onnx-int8" and options["device"] == settings.embedder_device
    assert options["batch_size"] is None  # unset: chosen for the device
    assert options["threads"] == settings.embedder_threads
    assert (
        Settings(embedder_batch_size=64, embedder_threads=2).encoder_options()["batch_size"] == 64
    )
    assert load_encoder(MINILM, batch_size=None).batch_size == 32  # CPU default
