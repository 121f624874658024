"""The head-store protocol: one contract, run against the folder store and a real Redis."""

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from classifier.errors import (
    CorruptHeadError,
    HeadBusyError,
    HeadNotFoundError,
    HeadStoreConfigError,
    HeadStoreFullError,
    HeadStoreUnavailableError,
    InvalidParameterError,
    LivePointerError,
)
from classifier.stores import HeadStore, open_store
from classifier.stores.folder import FolderStore
from classifier.stores.redis_store import RedisStore
from tests.conftest import RedisProcess, free_port

ARTIFACT = b"artifact bytes \x00\x01\x02" * 10


@pytest.fixture(scope="module")
def state_redis() -> Iterator[RedisProcess]:
    """A non-evicting redis-server of this module's own, as HEAD_STORE should be."""
    server = RedisProcess(free_port(), "--maxmemory-policy", "noeviction")
    server.start()
    yield server
    server.kill()


class Stores:
    """Makes store instances on one backend: separate instances act like separate replicas."""

    def __init__(self, kind: str, root: Path, redis_url: str, retention: float) -> None:
        self.kind, self.root, self.redis_url, self.retention = kind, root, redis_url, retention
        self.opened: list[HeadStore] = []

    def new(self, retention: float | None = None) -> HeadStore:
        keep = self.retention if retention is None else retention
        if self.kind == "folder":
            store: HeadStore = FolderStore(self.root, trash_retention_seconds=keep)
        else:
            store = RedisStore(self.redis_url, trash_retention_seconds=keep, lock_ttl_seconds=1.0)
        self.opened.append(store)
        return store


@pytest.fixture(params=["folder", "redis"])
def stores(request, tmp_path, state_redis) -> Iterator[Stores]:
    client = redis.Redis.from_url(state_redis.url)
    client.flushdb()
    made = Stores(request.param, tmp_path / "heads", state_redis.url, 3600)
    yield made
    for store in made.opened:
        store.close()
    client.flushdb()
    client.close()


def metadata(**extra: object) -> dict:
    return {"format": 2, "task": "binary", **extra}


def test_versions_are_numbered_read_back_and_listed(stores):
    store = stores.new()
    assert store.names() == [] and store.versions("h") == []
    assert [store.save("h", ARTIFACT + bytes([i]), metadata(i=i)) for i in range(3)] == [1, 2, 3]
    assert store.versions("h") == [1, 2, 3] and store.names() == ["h"]
    assert store.read_artifact("h", 2) == ARTIFACT + b"\x01"
    document = store.read_metadata("h", 3)
    assert (document["name"], document["version"], document["i"]) == ("h", 3, 2)
    with pytest.raises(HeadNotFoundError, match=r"versions: \[1, 2, 3\]"):
        store.read_metadata("h", 9)
    with pytest.raises(HeadNotFoundError, match="not found"):
        store.read_metadata("other", 1)
    with pytest.raises(CorruptHeadError, match="missing"):
        store.read_artifact("h", 9)


def test_concurrent_writers_never_share_a_version(stores):
    replicas = [stores.new() for _ in range(6)]
    saved: list[int] = []
    errors: list[BaseException] = []

    def writer(store: HeadStore, index: int) -> None:
        try:
            for round_ in range(5):
                payload = f"{index}-{round_}".encode()
                version = store.save("shared", payload, metadata(writer=index))
                saved.append(version)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(s, i)) for i, s in enumerate(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(saved) == list(range(1, 31))
    reader = stores.new()
    for version in reader.versions("shared"):
        document = reader.read_metadata("shared", version)
        writer_index, _ = reader.read_artifact("shared", version).decode().split("-")
        assert int(writer_index) == document["writer"]  # artifact and metadata belong together


def test_live_pointer_rules(stores):
    store = stores.new()
    for _ in range(3):
        store.save("h", ARTIFACT, metadata())
    assert store.live_version("h") == 3  # no pointer: the newest
    store.set_live("h", 1, "rollback")
    assert store.live_version("h") == 1
    store.save("h", ARTIFACT, metadata())
    assert store.live_version("h") == 1  # a save does not move an explicit pointer
    # The first pointer format keeps its rule: a version newer than "newest" serves.
    store.write_pointer("h", json.dumps({"version": 1, "newest": 3}).encode())
    assert store.live_version("h") == 4
    for broken, words in ((b"", "empty"), (b"{not json", "unreadable"), (b"  \n", "empty")):
        store.write_pointer("h", broken)
        with pytest.raises(LivePointerError, match=words):
            store.live_version("h")
    store.write_pointer("h", json.dumps({"version": 7}).encode())
    with pytest.raises(LivePointerError, match="v7, which does not exist"):
        store.live_version("h")


def test_every_change_moves_the_stamp(stores):
    store, other = stores.new(), stores.new()
    seen = [other.change_stamp()]

    def changed() -> bool:
        stamp = other.change_stamp()
        fresh = stamp != seen[-1]
        seen.append(stamp)
        return fresh

    store.save("h", ARTIFACT, metadata())
    assert changed()
    assert not changed()
    store.save("h", ARTIFACT, metadata())
    store.set_live("h", 1, "rollback")
    assert changed()
    store.discard_version("h", 2)
    assert changed()
    store.delete("h")
    assert changed()


def test_delete_moves_to_trash_and_a_new_head_starts_again(stores):
    store = stores.new()
    store.save("h", ARTIFACT, metadata())
    store.save("h", ARTIFACT, metadata())
    store.set_live("h", 1, "rollback")
    entry = store.delete("h")
    assert "h" in entry and not os.path.isabs(entry)
    assert store.names() == [] and store.versions("h") == [] and store.read_pointer("h") is None
    with pytest.raises(HeadNotFoundError):
        store.delete("h")
    assert store.save("h", b"new", metadata()) == 1
    assert store.read_artifact("h", 1) == b"new" and store.live_version("h") == 1
    if stores.kind == "folder":
        trashed = list((stores.root / ".trash").iterdir())
        assert len(trashed) == 1 and (trashed[0] / "v2.safetensors").read_bytes() == ARTIFACT
    else:
        client = redis.Redis.from_url(stores.redis_url)
        trash = [key for key in client.keys("*:trash:*")]
        assert trash and all(0 < client.ttl(key) <= 3600 for key in trash)


def test_prune_keeps_the_newest_and_never_the_live_one(stores):
    store = stores.new()
    for _ in range(5):
        store.save("h", ARTIFACT, metadata())
    assert store.prune("h", keep=2, live_version=1) == [2, 3]
    assert store.versions("h") == [1, 4, 5]
    with pytest.raises(HeadNotFoundError):
        store.read_metadata("h", 2)


def test_trash_is_purged_after_the_retention(stores):
    store = stores.new(retention=0)
    store.save("h", ARTIFACT, metadata())
    store.save("h", ARTIFACT, metadata())
    store.discard_version("h", 1)
    store.delete("h")
    store.purge_trash()
    if stores.kind == "folder":
        assert list((stores.root / ".trash").iterdir()) == []
    else:
        client = redis.Redis.from_url(stores.redis_url)
        assert client.keys("*:trash:*") == []


def test_the_lock_excludes_other_replicas_and_is_released(stores):
    first, second = stores.new(), stores.new()
    with first.lock("h", wait_seconds=1):
        started = time.monotonic()
        with pytest.raises(HeadBusyError, match="try again"), second.lock("h", wait_seconds=0.3):
            pass
        assert time.monotonic() - started >= 0.15  # it waited before giving up
        with second.lock("other", wait_seconds=0.3):  # other heads are not blocked
            pass
        if stores.kind == "redis":
            time.sleep(2.5)  # past the 1 s TTL: the holder renews it, nobody steals it
            with pytest.raises(HeadBusyError), second.lock("h", wait_seconds=0.2):
                pass
    with second.lock("h", wait_seconds=0.3):
        pass


def test_messages_name_heads_never_paths(stores):
    store = stores.new()
    store.save("h", ARTIFACT, metadata())
    store.write_pointer("h", b"")
    messages = []
    for action in (
        lambda: store.read_metadata("h", 5),
        lambda: store.read_artifact("h", 5),
        lambda: store.live_version("h"),
        lambda: store.delete("missing"),
    ):
        with pytest.raises(Exception) as caught:
            action()
        messages.append(str(caught.value))
    for message in messages:
        assert str(stores.root) not in message and "127.0.0.1" not in message, message


# -- folder only ------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A 64 KiB tmpfs (needs root to mount), so writes really fail with ENOSPC."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_a_named_error_and_leaves_no_temporary_files(tiny_disk):
    store = FolderStore(tiny_disk / "heads")
    assert store.save("h", b"small", metadata()) == 1
    with pytest.raises(HeadStoreFullError, match="no space left"):
        store.save("h", os.urandom(200_000), metadata())
    leftovers = [path.name for path in (tiny_disk / "heads").rglob("*") if ".tmp" in path.name]
    assert leftovers == []
    assert (
        store.versions("h") == [1] and not (tiny_disk / "heads" / "h" / "v2.safetensors").exists()
    )
    assert store.save("h", b"fits again", metadata()) == 2


def test_the_folder_lock_holds_across_processes(tmp_path):
    store = FolderStore(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from classifier.stores.folder import FolderStore\n"
            "with FolderStore(sys.argv[1]).lock('h', 5):\n"
            "    print('held', flush=True); time.sleep(3)",
            str(tmp_path),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(HeadBusyError), store.lock("h", wait_seconds=0.3):
            pass
    finally:
        holder.wait(timeout=20)
    with store.lock("h", wait_seconds=0.3):
        pass


# -- Redis only -------------------------------------------------------------------------------


def test_a_heads_keys_share_one_slot(state_redis):
    client = redis.Redis.from_url(state_redis.url)
    client.flushdb()
    store = RedisStore(state_redis.url)
    store.save("my.head-1", ARTIFACT, metadata())
    store.set_live("my.head-1", 1, "train")
    keys = [key.decode() for key in client.keys("bertheads:heads:{my.head-1}:*")]
    assert len(keys) >= 4 and len({key_slot(key.encode()) for key in keys}) == 1
    client.flushdb()


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [("allkeys-lru", "refused"), ("volatile-lru", "warned"), ("noeviction", "quiet")],
)
def test_an_evicting_redis_is_refused_or_warned_about(policy, outcome, caplog):
    server = RedisProcess(free_port(), "--maxmemory-policy", policy)
    server.start()
    try:
        caplog.set_level(logging.WARNING)
        if outcome == "refused":
            with pytest.raises(HeadStoreConfigError, match="noeviction"):
                open_store(server.url)
            return
        open_store(server.url).close()
        warned = any(policy in record.getMessage() for record in caplog.records)
        assert warned == (outcome == "warned")
    finally:
        server.kill()


def test_redis_out_of_memory_is_a_named_error_and_saves_nothing():
    server = RedisProcess(free_port(), "--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    server.start()
    try:
        store = RedisStore(server.url)
        assert store.save("h", b"small", metadata()) == 1
        with pytest.raises(HeadStoreFullError, match="out of memory"):
            store.save("h", os.urandom(3_000_000), metadata())
        assert store.versions("h") == [1]
        client = redis.Redis.from_url(server.url)
        assert client.exists("bertheads:heads:{h}:artifact:2") == 0
    finally:
        server.kill()


def test_an_unreachable_redis_is_named_unavailable(spare_redis):
    store = RedisStore(spare_redis.url)
    store.save("h", ARTIFACT, metadata())
    spare_redis.kill()
    with pytest.raises(HeadStoreUnavailableError, match="does not answer"):
        store.names()
    with pytest.raises(HeadStoreUnavailableError):
        store.change_stamp()


def test_a_chosen_version_number_and_a_metadata_rewrite(stores):
    store = stores.new()
    assert store.save("h", ARTIFACT, metadata(), version=5) == 5
    assert store.save("h", ARTIFACT, metadata()) == 6  # the counter moved past it
    with pytest.raises(InvalidParameterError, match="exists already"):
        store.save("h", ARTIFACT, metadata(), version=5)
    store.write_metadata("h", 5, {**store.read_metadata("h", 5), "signed": True})
    assert store.read_metadata("h", 5)["signed"] is True and store.versions("h") == [5, 6]
    with pytest.raises(HeadNotFoundError):
        store.write_metadata("h", 9, metadata())


def test_copy_a_folder_into_redis_then_sign_it(tmp_path, state_redis):
    import numpy as np

    from classifier.artifacts import load_head, save_head
    from classifier.errors import UnsignedHeadError
    from classifier.training import train_head

    client = redis.Redis.from_url(state_redis.url)
    client.flushdb()
    X = np.random.default_rng(0).normal(size=(120, 6)).astype(np.float32)
    labels = np.where(X[:, 0] > 0, "up", "down").tolist()
    folder = FolderStore(tmp_path / "models")
    for seed in range(3):
        trained = train_head(X, labels, test_size=0, seed=seed)
        save_head(trained, folder, "h", {"fingerprint": "f", "dim": 6})
    folder.set_live("h", 2, "rollback")
    env = {**os.environ, "HEADS_SIGNING_KEY": ""}
    tool = [sys.executable, "-m", "classifier.stores"]
    root = Path(__file__).resolve().parent.parent
    copied = subprocess.run(
        [*tool, "copy", str(tmp_path / "models"), state_redis.url],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.count("copied") == 3
    target = RedisStore(state_redis.url)
    assert target.versions("h") == [1, 2, 3] and target.live_version("h") == 2
    probe = load_head(target, "h").predict_proba(X)
    np.testing.assert_allclose(probe, load_head(folder, "h").predict_proba(X))
    with pytest.raises(UnsignedHeadError):
        load_head(target, "h", signing_key=b"k")
    signed = subprocess.run(
        [*tool, "sign", state_redis.url],
        cwd=root,
        env={**env, "HEADS_SIGNING_KEY": "k"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert signed.returncode == 0 and signed.stdout.count("signed") == 3, signed.stderr
    assert load_head(target, "h", signing_key=b"k").version == 2
    again = subprocess.run(
        [*tool, "copy", str(tmp_path / "models"), state_redis.url],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 0 and again.stdout.count("already there") == 3
    target.close()
    client.flushdb()
