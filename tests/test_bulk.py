"""The bulk job on a real local Ray (2 CPUs), a real Redis and the small packaged model."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from embedder import EmbeddingCache, Encoder, connect
from embedder.bulk.cli import main
from embedder.bulk.job import BulkJobError, BulkOptions, _sized_for_cluster, run_bulk
from embedder.bulk.retry import RedisUnavailableError, with_redis_retries
from embedder.bulk.rows import text_hash
from embedder.cache import cache_key
from tests.conftest import DATASETS, MINILM, REPO, RedisProcess, free_port, redis_db_url

ray = pytest.importorskip("ray")
BULK_DB = 14
SST2 = DATASETS / "sst2"


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """One local Ray for the module: starting it costs seconds."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        _system_config={"enable_metrics_collection": False},  # its thread crashed under load
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def bulk_url() -> Iterator[str]:
    url = redis_db_url(BULK_DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def sst2_texts(count: int, file: str = "test.csv") -> list[str]:
    with (SST2 / file).open(newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    return list(dict.fromkeys(text for text in texts if text.strip()))[:count]


def options(data: Path, url: str, **overrides: object) -> BulkOptions:
    values: dict[str, object] = {
        "data": data,
        "model": MINILM,
        "encoder_options": {"backend": "torch", "threads": 1},
        "redis_url": url,
        "actors": 2,
        "batch_size": 64,
        "progress": False,
        "patience_seconds": 5.0,
    }
    values.update(overrides)
    return BulkOptions(**values)  # type: ignore[arg-type]


def cached_vectors(encoder: Encoder, url: str, texts: list[str]) -> np.ndarray:
    cache = EmbeddingCache(connect(url))
    found = cache.get_many(encoder.fingerprint(normalize=False), texts, encoder.dim)
    missing = [text for text, vector in zip(texts, found, strict=True) if vector is None]
    assert not missing, f"{len(missing)} texts not cached, e.g. {missing[:3]}"
    return np.stack(found)  # type: ignore[arg-type]


def assert_same_vectors(actual: np.ndarray, expected: np.ndarray) -> None:
    cosine = (actual * expected).sum(1) / (
        np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.9999, cosine.min()


def write_jsonl_with_bad_rows(path: Path, texts: list[str]) -> dict[int, str]:
    """The texts as JSONL, with bad rows planted; returns {row: problem fragment}."""
    lines = [json.dumps({"text": text, "id": index}) for index, text in enumerate(texts)]
    planted = {
        5: (json.dumps({"text": ""}), "empty"),
        17: (json.dumps({"text": 42}), "not a string (int)"),
        40: (json.dumps({"text": None}), "missing (null)"),
        41: ("{not json", "not JSON"),
        77: (json.dumps({"text": "y" * 20_001}), "over the limit of 20000"),
        90: (json.dumps({"title": "no text field"}), "no 'text' field"),
    }
    for row in sorted(planted):
        lines.insert(row - 1, planted[row][0])
    lines.append(json.dumps({"text": texts[0]}))  # a duplicate
    path.write_text("\n".join(lines) + "\n")
    return {row: problem for row, (_, problem) in planted.items()}


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"needs the shared datasets at {DATASETS}")
def test_a_corpus_lands_in_the_cache_equal_to_the_encoder_and_a_rerun_encodes_nothing(
    local_ray: str, bulk_url: str, minilm: Encoder, tmp_path: Path, capsys, monkeypatch
) -> None:
    texts = sst2_texts(300)
    data = tmp_path / "corpus.jsonl"
    planted = write_jsonl_with_bad_rows(data, texts)

    report = run_bulk(options(data, bulk_url))

    assert report.rows_read == len(texts) + len(planted) + 1
    assert report.duplicates == 1
    assert report.already_cached == 0
    assert report.encoded == len(texts)
    assert not report.failed
    assert {bad.row: bad.problem for bad in report.bad_rows}.keys() == planted.keys()
    for bad in report.bad_rows:
        assert planted[bad.row] in bad.problem
        assert bad.path.endswith("corpus.jsonl")
    assert len(report.actor_rates()) == 2  # both actors encoded
    assert_same_vectors(cached_vectors(minilm, bulk_url, texts), minilm.encode_raw(texts))

    # The second run, through the CLI with the server's settings: nothing left to encode.
    monkeypatch.setenv("EMBEDDER_MODEL", MINILM)
    output = tmp_path / "vectors.parquet"
    argv = ["--data", str(data), "--redis-url", bulk_url, "--backend", "torch"]
    code = main([*argv, "--actors", "2", "--output", str(output), "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "encoded: 0\n" in printed.out
    assert f"already cached: {len(texts)}\n" in printed.out
    assert "nothing to encode" in printed.out
    assert "bad row: " in printed.err and "corpus.jsonl row 17: not a string (int)" in printed.err
    table = pq.read_table(output)
    assert table.num_rows == len(texts)
    stored = np.array(table["vector"].to_pylist(), dtype=np.float32)
    by_hash = dict(zip(table["text_sha256"].to_pylist(), stored, strict=True))
    assert_same_vectors(
        np.stack([by_hash[text_hash(text)] for text in texts]), minilm.encode_raw(texts)
    )


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"needs the shared datasets at {DATASETS}")
def test_a_killed_run_restarted_finishes_with_the_same_vectors(
    local_ray: str, bulk_url: str, minilm: Encoder, tmp_path: Path
) -> None:
    texts = sst2_texts(600, "validation.csv")
    data = tmp_path / "shards"
    data.mkdir()
    for shard in range(3):  # a folder of Parquet shards
        part = texts[shard * 200 : (shard + 1) * 200]
        pq.write_table(pa.table({"text": part}), data / f"part-{shard}.parquet")
    client = redis.Redis.from_url(bulk_url)
    environment = {**os.environ, "EMBEDDER_MODEL": MINILM, "EMBEDDER_THREADS": "1"}
    command = [sys.executable, "-m", "embedder.bulk", "--data", str(data), "--redis-url", bulk_url]
    command += ["--backend", "torch", "--ray-address", local_ray, "--actors", "1"]
    command += ["--batch-size", "32", "--no-progress"]
    log = (tmp_path / "first.log").open("wb")  # a file: a full pipe would block the job
    first = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while client.dbsize() < 64 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    exited_by_itself = first.poll()
    first.send_signal(signal.SIGKILL)
    first.wait()
    log.close()
    assert exited_by_itself is None, (tmp_path / "first.log").read_text()[-3000:]
    stored_when_killed = client.dbsize()
    assert 64 <= stored_when_killed < len(texts), stored_when_killed

    report = run_bulk(options(data, bulk_url, actors=2))

    assert report.already_cached >= stored_when_killed
    assert report.encoded == len(texts) - report.already_cached
    assert_same_vectors(cached_vectors(minilm, bulk_url, texts), minilm.encode_raw(texts))


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"needs the shared datasets at {DATASETS}")
def test_writes_refused_mid_job_are_retried_until_redis_takes_them(
    local_ray: str, bulk_url: str, minilm: Encoder, tmp_path: Path
) -> None:
    texts = sst2_texts(600)[300:]
    data = tmp_path / "corpus.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([text] for text in texts)
    client = redis.Redis.from_url(bulk_url)
    outcome: dict[str, object] = {}
    job = threading.Thread(
        target=lambda: outcome.update(report=run_bulk(options(data, bulk_url, batch_size=32)))
    )
    job.start()
    deadline = time.monotonic() + 120
    while client.dbsize() < 32 and job.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    # Writes hang (and time out on the client side) for 4 s; nothing is lost, as in a failover.
    client.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
    stored_at_pause = client.dbsize()
    job.join(timeout=180)
    assert not job.is_alive()
    report = outcome["report"]
    assert 32 <= stored_at_pause < len(texts), stored_at_pause
    assert report.encoded == len(texts) and not report.failed  # type: ignore[attr-defined]
    assert report.redis_retries > 0  # type: ignore[attr-defined]
    assert_same_vectors(cached_vectors(minilm, bulk_url, texts), minilm.encode_raw(texts))


def test_csv_and_tsv_bad_rows_are_reported_with_their_numbers(
    local_ray: str, bulk_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "corpus.tsv"
    data.write_bytes(
        b"id\ttext\n"
        b"1\ta fine text\n"
        b"2\t\n"
        b"3\tanother fine text\textra field\n"
        b"4\tbad utf-8 \xff here\n"
        b"5\ta fine text\n"
        b"6\tthe last fine text\n"
    )
    report = run_bulk(options(data, bulk_url, actors=1))
    problems = {bad.row: bad.problem for bad in report.bad_rows}
    assert problems == {2: "empty", 3: "3 fields, the header has 2", 4: "not valid UTF-8"}
    assert (report.rows_read, report.duplicates, report.encoded) == (6, 1, 2)

    missing_column = tmp_path / "other.csv"
    missing_column.write_text("id,body\n1,hello\n")
    with pytest.raises(BulkJobError, match=r"no column 'text'.*--text-col"):
        run_bulk(options(missing_column, bulk_url, actors=1))


def test_a_redis_that_stays_away_stops_the_job_clearly(local_ray: str, tmp_path: Path) -> None:
    data = tmp_path / "corpus.csv"
    data.write_text("text\nhello\nworld\n")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    expected = rf"Redis at {re.escape(dead)} did not answer.*run the same"
    with pytest.raises(BulkJobError, match=expected):
        run_bulk(options(data, dead, actors=1, patience_seconds=1.5))
    assert time.monotonic() - started < 60


def test_a_ray_address_nobody_answers_stops_the_job_at_once(tmp_path: Path) -> None:
    data = tmp_path / "corpus.csv"
    data.write_text("text\nhello\n")
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "embedder.bulk", "--data", str(data), "--ray-address", address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert f"stopped: --ray-address {address}: nothing answers there" in done.stderr


def test_redis_retries_ride_out_a_restart_and_give_up_after_the_patience() -> None:
    server = RedisProcess(free_port())
    server.start()
    client = connect(server.url)
    key = cache_key("fingerprint", "text")
    try:
        server.kill()
        restart = threading.Timer(1.0, server.start)
        restart.start()
        started = time.monotonic()
        with_redis_retries(
            lambda: client.set(key, b"v"), what="writing", url=server.url, patience_seconds=20
        )
        restart.join()
        assert client.get(key) == b"v"
        assert time.monotonic() - started >= 0.9  # it did wait for the restart
        server.kill()
        with pytest.raises(RedisUnavailableError, match="did not answer for 2 s while writing"):
            with_redis_retries(
                lambda: client.set(key, b"v"), what="writing", url=server.url, patience_seconds=2
            )
    finally:
        server.kill()


def test_the_pool_is_sized_from_the_cluster(tmp_path: Path) -> None:
    unset = options(tmp_path, "redis://unused", actors=None, gpus_per_actor=None)
    on_gpus = _sized_for_cluster(unset, {"CPU": 32.0, "GPU": 4.0})
    assert (on_gpus.actors, on_gpus.gpus_per_actor) == (4, 1.0)
    on_cpus = _sized_for_cluster(replace(unset, cpus_per_actor=2.0), {"CPU": 9.0})
    assert (on_cpus.actors, on_cpus.gpus_per_actor) == (4, 0.0)
    chosen = _sized_for_cluster(replace(unset, actors=3, gpus_per_actor=0.5), {"CPU": 8, "GPU": 1})
    assert (chosen.actors, chosen.gpus_per_actor) == (3, 0.5)


IMPORTS = """
import sys
import api.main, classifier.train, embedder, embedder.bulk, embedder.bulk.cli, embedder.bulk.job
api.main.create_app()
print("RAY=" + str("ray" in sys.modules))
"""


def test_the_api_and_train_never_import_ray() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RAY=False" in done.stdout
