"""The registry on the head store: failed loads never replace a serving head, locks that hold,
bounded growth, no internal paths, the demo head off the startup path."""

import json
import logging
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.errors import ConflictError, NoHeadError
from api.main import create_app
from api.metrics import Metrics
from api.registry import DEMO_DATA, HeadRegistry
from classifier import headfile
from classifier.errors import HeadBusyError, TooManyHeadsError
from classifier.stores import HeadStore
from classifier.stores.folder import FolderStore
from classifier.stores.redis_store import RedisStore
from embedder import EmbeddingCache, EmbeddingService, connect
from tests.conftest import MINILM, REPO, RedisProcess, free_port, make_settings
from tests.test_api_heads import AUTH, KEY, support_examples
from tests.test_headfile import write_legacy_version


def support(limit: int = 80) -> tuple[list[str], list[str]]:
    rows = support_examples(limit)
    return [row["text"] for row in rows], [row["label"] for row in rows]


@pytest.fixture(scope="module")
def state_redis() -> Iterator[RedisProcess]:
    server = RedisProcess(free_port(), "--maxmemory-policy", "noeviction")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def service(minilm, redis_url) -> EmbeddingService:
    return EmbeddingService(minilm, EmbeddingCache(connect(redis_url)))


@pytest.fixture
def new_store(tmp_path, state_redis) -> Iterator[Callable[[str], HeadStore]]:
    """Store instances on a fresh folder or a fresh Redis db: one per simulated replica."""
    client = redis.Redis.from_url(state_redis.url)
    client.flushdb()
    opened: list[HeadStore] = []

    def make(kind: str, retention: float = 3600) -> HeadStore:
        if kind == "folder":
            store: HeadStore = FolderStore(tmp_path / "heads", trash_retention_seconds=retention)
        else:
            store = RedisStore(state_redis.url, trash_retention_seconds=retention)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
    client.flushdb()


@pytest.fixture
def registries(service) -> Iterator[Callable[..., HeadRegistry]]:
    made: list[HeadRegistry] = []

    def make(store: HeadStore, **options) -> HeadRegistry:
        options.setdefault("poll_seconds", 0.1)
        options.setdefault("rescan_seconds", 0.3)
        registry = HeadRegistry(store, service, Metrics(), **options)
        registry.start()
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.stop()


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "condition not reached"
        time.sleep(0.05)
    return time.monotonic() - started


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# -- a version that fails to load never replaces the one serving ---------------------------------


@pytest.mark.parametrize("kind", ["folder", "redis"])
def test_a_planted_pickle_with_its_checksum_never_runs_and_v1_keeps_serving(
    kind, tmp_path, new_store, registries
):
    registry = registries(new_store(kind))
    texts, labels = support()
    assert registry.train("h", texts, labels, {"head": "logreg"})["version"] == 1
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Payload(str(marker)))
    # Whoever can write the store writes a version 2 whose JSON carries the pickle's sha256,
    # and points the head at it.
    attacker = new_store(kind)
    document = {**attacker.read_metadata("h", 1), "artifact_sha256": headfile.sha256(evil)}
    version = attacker.save("h", evil, document)
    attacker.set_live("h", version, "attack")
    eventually(lambda: "h" in registry.problems)
    assert "v2" in registry.problems["h"] and "still serving v1" in registry.problems["h"]
    assert registry.get("h").version == 1
    assert not marker.exists()
    # A replica starting now does not serve the planted version and does not run it either.
    fresh = registries(new_store(kind))
    with pytest.raises(NoHeadError, match="unavailable"):
        fresh.get("h")
    assert not marker.exists()
    assert str(tmp_path) not in json.dumps(registry.problems)


def test_a_legacy_joblib_version_is_refused_by_name_and_never_unpickled(
    tmp_path, new_store, registries, caplog
):
    store = new_store("folder")
    registry = registries(store)
    texts, labels = support()
    registry.train("h", texts, labels, {"head": "logreg"})
    marker = tmp_path / "pwned"
    write_legacy_version(
        tmp_path / "heads" / "h", 2, Payload(str(marker)), store.read_metadata("h", 1)
    )
    pointer = tmp_path / "heads" / "h" / "live.json"
    pointer.with_suffix(".new").write_text('{"version": 2}')
    pointer.with_suffix(".new").replace(pointer)  # atomically, as a careful attacker would
    caplog.set_level(logging.WARNING)
    eventually(lambda: "h" in registry.problems)
    problem = registry.problems["h"]
    assert "python -m classifier.legacy convert" in problem and "still serving v1" in problem
    assert any("classifier.legacy convert" in record.getMessage() for record in caplog.records)
    assert registry.get("h").version == 1 and not marker.exists()
    assert registry.describe("h")["problem"] == problem


def test_rollback_loads_and_checks_its_target_before_pinning(tmp_path, new_store, registries):
    store = new_store("folder")
    registry = registries(store)
    texts, labels = support()
    registry.train("h", texts, labels, {"head": "logreg"})
    registry.train("h", texts, labels, {"head": "logreg", "seed": 1})
    artifact = tmp_path / "heads" / "h" / "v1.safetensors"
    data = bytearray(artifact.read_bytes())
    data[100] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(ConflictError, match="checksum") as caught:
        registry.rollback("h", 1)
    assert "v2 stays live" in str(caught.value) and str(tmp_path) not in str(caught.value)
    assert store.live_version("h") == 2 and registry.get("h").version == 2


def test_an_empty_pointer_is_shown_and_nothing_rolls_forward(
    tmp_path, new_store, registries, caplog
):
    store = new_store("folder")
    registry = registries(store)
    texts, labels = support()
    for seed in (0, 1):
        registry.train("h", texts, labels, {"head": "logreg", "seed": seed})
    registry.rollback("h", 1)
    caplog.set_level(logging.WARNING)
    (tmp_path / "heads" / "h" / "live.json").write_bytes(b"")
    eventually(lambda: "h" in registry.problems)
    assert "live pointer is empty" in registry.problems["h"]
    assert registry.get("h").version == 1  # not v2, the newest
    assert "live pointer is empty" in registry.describe("h")["problem"]
    assert any("live pointer is empty" in record.getMessage() for record in caplog.records)
    fresh = registries(new_store("folder"))
    assert fresh.live("h") is None and "empty" in fresh.problems["h"]
    registry.rollback("h", 2)  # an operator pins a version: the problem is gone everywhere
    eventually(lambda: fresh.live("h") is not None and fresh.live("h").version == 2)
    assert "h" not in registry.problems and "h" not in fresh.problems


# -- the cross-replica lock: no lock, no commit ----------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "redis"])
def test_changes_without_the_store_lock_fail_and_commit_nothing(kind, new_store, registries):
    registry = registries(new_store(kind), lock_wait_seconds=0.3)
    texts, labels = support()
    registry.train("h", texts, labels, {"head": "logreg"})
    other = new_store(kind)
    with other.lock("h", wait_seconds=1):
        with pytest.raises(HeadBusyError, match="try again"):
            registry.train("h", texts, labels, {"head": "logreg", "seed": 3})
        with pytest.raises(HeadBusyError):
            registry.rollback("h", 1)
        with pytest.raises(HeadBusyError):
            registry.delete("h")
        assert other.versions("h") == [1] and registry.get("h").version == 1
    assert registry.train("h", texts, labels, {"head": "logreg", "seed": 3})["version"] == 2
    assert registry.delete("h")["deleted"] is True


# -- bounded growth ------------------------------------------------------------------------------


def test_versions_kept_heads_capped_trash_purged_labels_removed(tmp_path, new_store, registries):
    store = new_store("folder", retention=0)
    registry = registries(store, versions_kept=2, max_heads=2)
    texts, labels = support(60)
    for seed in range(4):
        registry.train("a", texts, labels, {"head": "logreg", "seed": seed})
    assert store.versions("a") == [3, 4] and registry.get("a").version == 4
    registry.train("b", texts, labels, {"head": "logreg"})
    with pytest.raises(TooManyHeadsError, match="MAX_HEADS is 2"):
        registry.train("c", texts, labels, {"head": "logreg"})
    assert store.names() == ["a", "b"]
    assert 'bertheads_head_version{head="a"}' in registry.metrics.render().decode()
    registry.delete("a")
    assert 'head="a"' not in registry.metrics.render().decode()
    registry.train("c", texts, labels, {"head": "logreg"})  # room again
    registry.refresh(force=True)
    assert list((tmp_path / "heads" / ".trash").iterdir()) == []  # retention 0: purged


# -- replicas follow each other ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "redis"])
def test_train_rollback_delete_propagate_between_registries(kind, new_store, registries):
    first, second = registries(new_store(kind)), registries(new_store(kind))
    texts, labels = support()
    first.train("h", texts, labels, {"head": "logreg"})
    eventually(lambda: second.live("h") is not None, seconds=2)
    first.train("h", texts, labels, {"head": "logreg", "seed": 1})
    eventually(lambda: second.get("h").version == 2, seconds=2)
    second.rollback("h", 1)
    eventually(lambda: first.get("h").version == 1, seconds=2)
    assert 'head="h"' in first.metrics.render().decode()
    second.delete("h")
    eventually(lambda: first.live("h") is None, seconds=2)
    assert 'head="h"' not in first.metrics.render().decode()
    with pytest.raises(NoHeadError):
        first.get("h")


# -- the demo head is trained off the startup path -----------------------------------------------


def test_the_demo_head_trains_in_the_background(new_store, registries):
    registry = registries(new_store("folder"), demo_data=DEMO_DATA)
    assert registry.names() == []  # start() loaded, it did not train
    thread = registry.start_demo_training()
    assert thread is not None
    with pytest.raises(NoHeadError, match="demo head is being trained"):
        registry.get(None)
    thread.join(timeout=300)
    assert registry.get(None).name == "demo" and not registry.demo_training
    assert registry.start_demo_training() is None  # the store has a head: nothing to do


def test_the_api_starts_before_the_demo_head_is_trained(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url, demo_head_on_start=True)
    with TestClient(create_app(settings)) as client:
        registry = client.app.state.bertheads.registry
        assert registry.live("demo") is None  # startup returned without it
        answer = client.post("/predict", json={"texts": ["where is my parcel?"]})
        if answer.status_code == 503:
            assert "being trained" in answer.json()["error"]["message"]
        eventually(lambda: registry.live("demo") is not None, seconds=300)
        served = client.post("/predict", json={"texts": ["where is my parcel?"]})
        assert served.status_code == 200 and served.json()["head"] == "demo"


def test_the_demo_command_trains_into_the_configured_store(tmp_path, redis_url):
    env = {
        **os.environ,
        "EMBEDDER_MODEL": MINILM,
        "REDIS_URL": redis_url,
        "MODELS_DIR": str(tmp_path / "models"),
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "api.demo"]
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert "trained demo v1" in first.stdout
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "exists already" in again.stdout
    assert FolderStore(tmp_path / "models").versions("demo") == [1]


# -- over HTTP: the statuses of store errors, no internal paths ------------------------------------


def test_store_errors_over_http_name_the_limit_and_no_path(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url, api_key=KEY, max_heads=1)
    with TestClient(create_app(settings)) as client:
        examples = {"examples": support_examples(60)}
        assert client.post("/heads/one/train", json=examples, headers=AUTH).status_code == 200
        refused = client.post("/heads/two/train", json=examples, headers=AUTH)
        assert refused.status_code == 409 and "MAX_HEADS" in refused.json()["error"]["message"]
        store = FolderStore(settings.models_dir)
        with store.lock("one", wait_seconds=1):
            client.app.state.bertheads.registry.lock_wait_seconds = 0.2
            busy = client.delete("/heads/one", headers=AUTH)
        assert busy.status_code == 409 and "try again" in busy.json()["error"]["message"]
        (settings.models_dir / "one" / "live.json").write_bytes(b"")
        client.app.state.bertheads.registry.refresh(force=True)
        for path in ("/heads", "/heads/one", "/health"):
            body = client.get(path).text
            assert str(tmp_path) not in body, (path, body[:300])
        assert "live pointer is empty" in client.get("/heads/one").json()["problem"]
        assert "one" in client.get("/health").json()["head_problems"]
        deleted = client.delete("/heads/one", headers=AUTH).json()
        assert not deleted["moved_to"].startswith("/")


def test_a_full_disk_answers_507_and_keeps_serving(tmp_path, redis_url):
    mount = tmp_path / "tiny"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        settings = make_settings(tmp_path, redis_url, api_key=KEY, head_store=str(mount / "heads"))
        with TestClient(create_app(settings)) as client:
            # A logreg head (a few KB) fits the 256 KB store; the default auto head may be a
            # stack with TF-IDF vocabularies, larger than the whole store.
            examples = {"examples": support_examples(60), "head": "logreg"}
            assert client.post("/heads/h/train", json=examples, headers=AUTH).status_code == 200
            filler = mount / "filler"
            with pytest.raises(OSError), open(filler, "wb", buffering=0) as stream:
                while True:
                    stream.write(b"\0" * 4096)
            full = client.post("/heads/h/train", json=examples, headers=AUTH)
            assert full.status_code == 507, full.text
            assert "no space left" in full.json()["error"]["message"]
            assert str(mount) not in full.text
            assert not [p for p in (mount / "heads").rglob("*") if ".tmp" in p.name]
            assert (
                client.post("/predict", json={"texts": ["refund"], "head": "h"}).json()["version"]
                == 1
            )
            filler.unlink()
            assert client.post("/heads/h/train", json=examples, headers=AUTH).status_code == 200
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_cancelled_train_commits_nothing(new_store, registries):
    from bertheads.cancel import CancelledError, CancelToken

    store = new_store("folder")
    registry = registries(store)
    texts, labels = support(40)
    token = CancelToken()
    token.cancel("client went away")
    with pytest.raises(CancelledError, match="client went away"):
        registry.train("h", texts, labels, {"head": "logreg"}, cancel=token)
    assert store.names() == [] and registry.live("h") is None


def test_a_head_store_that_goes_down_degrades_health_and_heads_keep_serving(
    tmp_path, redis_url, spare_redis
):
    settings = make_settings(tmp_path, redis_url, api_key=KEY, head_store=spare_redis.url)
    with TestClient(create_app(settings)) as client:
        examples = {"examples": support_examples(60)}
        assert client.post("/heads/h/train", json=examples, headers=AUTH).status_code == 200
        spare_redis.kill()
        registry = client.app.state.bertheads.registry
        eventually(lambda: registry.store_error is not None)
        health = client.get("/health").json()
        assert health["head_store"] == "down" and health["status"] == "degraded"
        served = client.post("/predict", json={"texts": ["refund"], "head": "h"})
        assert served.status_code == 200 and served.json()["version"] == 1
        listed = client.get("/heads").json()
        assert listed["head_store"] == "down" and [h["name"] for h in listed["heads"]] == ["h"]
        refused = client.post("/heads/h/train", json=examples, headers=AUTH)
        assert refused.status_code == 503 and "does not answer" in refused.text
        assert "127.0.0.1" not in refused.text


def test_a_folder_store_that_disappears_is_down_not_empty(tmp_path, new_store, registries):
    registry = registries(new_store("folder"))
    texts, labels = support(40)
    registry.train("h", texts, labels, {"head": "logreg"})
    (tmp_path / "heads").rename(tmp_path / "elsewhere")  # an unmounted share
    eventually(lambda: registry.store_error is not None)
    assert "gone" in registry.store_error and registry.get("h").version == 1
    (tmp_path / "elsewhere").rename(tmp_path / "heads")
    eventually(lambda: registry.store_error is None)
    assert registry.get("h").version == 1
