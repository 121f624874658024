"""REDIS_CLUSTER=true: the cache, train.py and a Redis head store on a real 3-master cluster.

The cluster is three `redis-server --cluster-enabled yes` processes on spare ports, joined by
`redis-cli --cluster create ... --cluster-yes` (tests/local_cluster.py), with
`cluster-require-full-coverage no` so the other masters serve while one is down.
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from redis.cluster import RedisCluster
from redis.crc import key_slot

from api.main import create_app
from bertheads.connections import embedding_cache, head_store
from classifier.errors import HeadBusyError, HeadStoreConfigError, HeadStoreUnavailableError
from classifier.live import encode_pointer
from classifier.stores.redis_store import RedisStore
from embedder import EmbeddingService
from embedder.cache import RETRY_SECONDS, cache_key, open_cache
from tests.conftest import MINILM, REPO, free_port, make_settings
from tests.local_cluster import LocalCluster

TEXTS = [
    f"cluster sentence number {index} about {word}"
    for index, word in enumerate(
        ["billing", "refunds", "passwords", "delivery", "invoices", "accounts"] * 10
    )
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
    local.start()
    yield local
    local.stop()


@pytest.fixture(autouse=True)
def empty_cluster(cluster) -> Iterator[None]:
    cluster.flush()
    yield
    for node in cluster.nodes:  # a test that killed a node leaves the cluster whole again
        if node.process is None:
            node.start()
    cluster.wait_ok()


@pytest.fixture(scope="module")
def api(cluster, tmp_path_factory) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path_factory.mktemp("api"), cluster.url, redis_cluster=True, max_batch=256
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def master_of(cluster: LocalCluster, key: str):
    return cluster.node_of_slot(key_slot(key.encode()))


def raw_space(api: TestClient) -> str:
    return api.app.state.bertheads.encoder.fingerprint(normalize=False)


def embed(api: TestClient, texts: list[str]) -> dict:
    response = api.post("/embed", json={"texts": texts})
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_vectors(served: list, reference: np.ndarray) -> None:
    """Cached rows are the stored bytes; re-encoded ones match within the int8 backend's
    fidelity (its dynamic quantisation depends a little on the batch they share)."""
    served_array = np.array(served)
    cosines = (served_array * reference).sum(1) / (
        np.linalg.norm(served_array, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosines.min() >= 0.98, cosines.min()


def wait_until(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


# -- the cache --------------------------------------------------------------------------


def test_api_embeds_through_the_cluster_and_hits(api, cluster):
    first = embed(api, TEXTS)
    assert first["cached"] == 0
    second = embed(api, TEXTS)
    assert second["cached"] == len(TEXTS)
    np.testing.assert_array_equal(np.array(first["embeddings"]), np.array(second["embeddings"]))
    health = api.get("/health").json()
    assert health["cache"] == "up" and health["status"] == "ok" and health["cache_problem"] is None


def test_keys_spread_over_every_master(api, cluster):
    embed(api, TEXTS)
    counts = cluster.key_counts()
    assert sum(counts.values()) == len(TEXTS)
    # Hash of the whole key, no hash tag: 60 keys land on all three masters, none takes most.
    assert all(count >= len(TEXTS) // 6 for count in counts.values()), counts
    assert "{" not in cache_key(raw_space(api), TEXTS[0])


def test_a_dead_master_serves_the_others_keys_and_comes_back(api, cluster):
    reference = np.array(embed(api, TEXTS)["embeddings"])
    space = raw_space(api)
    victim = master_of(cluster, cache_key(space, TEXTS[0]))
    on_victim = [text for text in TEXTS if master_of(cluster, cache_key(space, text)) is victim]
    victim.kill()

    while_down = embed(api, TEXTS)
    # Uncached for the dead master's keys only; every vector is still right.
    assert while_down["cached"] == len(TEXTS) - len(on_victim)
    health = api.get("/health").json()
    assert health["status"] == "degraded" and health["cache"] == "degraded"
    assert "1 of 3 cluster masters" in health["cache_problem"]
    assert str(victim.port) not in health["cache_problem"]  # addresses stay in the log
    again = embed(api, TEXTS)
    assert again["cached"] == len(TEXTS) - len(on_victim)
    assert_same_vectors(while_down["embeddings"], reference)
    assert_same_vectors(again["embeddings"], reference)
    # Written while the master is down: the live masters take their share of the writes.
    fresh = [f"written during the outage {index}" for index in range(30)]
    assert embed(api, fresh)["cached"] == 0
    on_live = [text for text in fresh if master_of(cluster, cache_key(space, text)) is not victim]
    assert 0 < len(on_live) < len(fresh)
    assert embed(api, fresh)["cached"] == len(on_live)

    victim.start()  # same folder, same nodes.conf: it rejoins with its slots, empty
    cluster.wait_ok()
    time.sleep(RETRY_SECONDS + 0.2)
    wait_until(lambda: api.get("/health").json()["cache"] == "up")
    embed(api, TEXTS)  # re-fills the returned master
    assert embed(api, TEXTS)["cached"] == len(TEXTS)
    assert api.get("/health").json()["status"] == "ok"


def test_concurrent_requests_across_a_master_kill_all_answer(api, cluster):
    """Four clients at once; a master dies after a quarter of the requests and comes back
    after half: every request answers 200, hits fall while it is down and return after."""
    import threading

    embed(api, TEXTS)
    statuses: list[int] = []
    cached: list[tuple[int, int]] = []  # (request number, cached texts)
    lock = threading.Lock()
    counter = iter(range(240))
    victim = master_of(cluster, cache_key(raw_space(api), TEXTS[0]))
    killed, restarted = threading.Event(), threading.Event()

    def client_loop() -> None:
        for number in counter:
            response = api.post("/embed", json={"texts": TEXTS[number % 6 :: 6]})
            with lock:
                statuses.append(response.status_code)
                if response.status_code == 200:
                    cached.append((number, response.json()["cached"]))
                done = len(statuses)
            if done == 60 and not killed.is_set():
                killed.set()
                victim.kill()
            if done == 120 and not restarted.is_set():
                restarted.set()
                victim.start()

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert killed.is_set() and restarted.is_set()
    assert statuses.count(200) == 240, sorted(set(statuses))
    during = [hits for number, hits in cached if 70 <= number < 120]
    assert min(during) < 10  # the dead master's keys missed
    cluster.wait_ok()
    time.sleep(RETRY_SECONDS + 0.2)
    embed(api, TEXTS)
    assert embed(api, TEXTS)["cached"] == len(TEXTS)


def test_a_hung_master_costs_timeouts_not_the_health_probe(api, cluster):
    """SIGSTOP: the master accepts connections and never answers (a partition). Requests and
    /health still answer, inside the Kubernetes probe's 3 s timeout, and only one call at
    a time pays the 0.5 s socket timeout."""
    embed(api, TEXTS)
    space = raw_space(api)
    victim = master_of(cluster, cache_key(space, TEXTS[0]))
    on_victim = [text for text in TEXTS if master_of(cluster, cache_key(space, text)) is victim]
    victim.freeze()
    try:
        slowest = 0.0
        for _ in range(4):
            started = time.monotonic()
            body = embed(api, TEXTS)
            health = api.get("/health")
            slowest = max(slowest, time.monotonic() - started)
            assert health.status_code == 200
            assert body["cached"] >= len(TEXTS) - len(on_victim)
        assert health.json()["cache"] == "degraded"
        assert slowest < 3.0, slowest
        assert embed(api, TEXTS)["cached"] == len(TEXTS) - len(on_victim)
    finally:
        victim.thaw()
    cluster.wait_ok()
    time.sleep(RETRY_SECONDS + 0.2)
    wait_until(lambda: api.get("/health").json()["cache"] == "up")
    assert embed(api, TEXTS)["cached"] == len(TEXTS)  # the frozen master kept its keys


def test_every_master_down_is_a_down_cache_not_an_error(api, cluster):
    embed(api, TEXTS[:5])
    for node in cluster.nodes:
        node.kill()
    body = embed(api, TEXTS[:5])
    assert body["cached"] == 0
    health = api.get("/health").json()
    assert health["cache"] == "down" and health["status"] == "degraded"
    predict = api.post("/predict", json={"texts": ["x"]})
    assert predict.status_code != 500
    for node in cluster.nodes:
        node.start()
    cluster.wait_ok()
    wait_until(lambda: api.get("/health").json()["cache"] == "up")
    embed(api, TEXTS[:5])
    assert embed(api, TEXTS[:5])["cached"] == 5


def _same_slot_text(space: str, text: str, prefix: str = "slot mate") -> str:
    """Another text whose key hashes to the same cluster slot as `text`'s."""
    slot = key_slot(cache_key(space, text).encode())
    for index in range(2_000_000):
        other = f"{prefix} {index}"
        if key_slot(cache_key(space, other).encode()) == slot:
            return other
    raise AssertionError("no text found for the slot")


def test_slot_migration_ask_and_moved_still_answer(api, cluster):
    space = raw_space(api)
    migrated, stays = TEXTS[0], _same_slot_text(space, TEXTS[0])
    texts = [migrated, stays, *TEXTS[1:10]]
    reference = np.array(embed(api, texts)["embeddings"])
    slot = key_slot(cache_key(space, migrated).encode())
    source = cluster.node_of_slot(slot)
    target = next(node for node in cluster.nodes if node is not source)
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    source_client, target_client = source.client(), target.client()
    try:
        target_client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source_client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        source_client.execute_command(
            "MIGRATE", "127.0.0.1", target.port, cache_key(space, migrated), 0, 5000
        )
        # One key moved, its slot mate not: ASK for the one, TRYAGAIN for an MGET of both.
        alone = embed(api, [migrated])
        assert alone["cached"] == 1  # followed the ASK redirection to the importing node
        mixed = api.post("/embed", json={"texts": texts})
        assert mixed.status_code == 200, mixed.text
        assert_same_vectors(mixed.json()["embeddings"], reference)
        # A new key of the migrating slot: the source answers ASK to its SET, redis-py
        # writes it on the importing node, and it is read back from there.
        newcomer = _same_slot_text(space, migrated, prefix="newcomer")
        time.sleep(RETRY_SECONDS + 0.2)  # the TRYAGAIN above may have skipped the source
        assert embed(api, [newcomer])["cached"] == 0
        assert embed(api, [newcomer])["cached"] == 1
        with target.client() as client:
            client.execute_command("ASKING")
            assert client.exists(cache_key(space, newcomer)) == 1

        source_client.execute_command(
            "MIGRATE", "127.0.0.1", target.port, cache_key(space, stays), 0, 5000
        )
        for node in cluster.nodes:
            client = node.client()
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            client.close()
    finally:
        source_client.close()
        target_client.close()
    cluster.wait_ok()
    assert cluster.node_of_slot(slot) is target
    time.sleep(RETRY_SECONDS + 0.2)  # the TRYAGAIN storm may have skipped the source a moment
    # The client still maps the slot to the source: MOVED, followed, and every key hits.
    after = embed(api, texts)
    assert after["cached"] == len(texts), after["cached"]
    np.testing.assert_array_equal(np.array(after["embeddings"]), reference)


def test_an_unserved_slot_is_a_miss_not_a_500(api, cluster):
    """SlotNotCoveredError is no redis.RedisError: it must still degrade like a down cache."""
    space = raw_space(api)
    text = TEXTS[3]
    slot = key_slot(cache_key(space, text).encode())
    owner = cluster.node_of_slot(slot)
    embed(api, [text])
    embed(api, TEXTS[4:10])
    try:
        for node in cluster.nodes:  # nobody serves the slot: redis-py raises SlotNotCoveredError
            client = node.client()
            client.execute_command("CLUSTER DELSLOTS", slot)
            client.close()
        body = api.post("/embed", json={"texts": [text, *TEXTS[4:10]]})
        assert body.status_code == 200, body.text
        time.sleep(RETRY_SECONDS + 0.2)  # the owner answered CLUSTERDOWN: skipped a moment
        body = api.post("/embed", json={"texts": [text, *TEXTS[4:10]]})
        assert body.status_code == 200, body.text
        # Only the unserved slot's key is a miss; the rest of the cache still hits.
        assert body.json()["cached"] == 6
        assert api.post("/predict", json={"texts": [text]}).status_code != 500
        health = api.get("/health").json()
        assert health["cache"] == "degraded" and "served by no master" in health["cache_problem"]
    finally:
        client = owner.client()
        client.execute_command("CLUSTER ADDSLOTS", slot)
        client.close()
    cluster.wait_ok()
    time.sleep(RETRY_SECONDS + 0.2)
    wait_until(lambda: api.get("/health").json()["cache"] == "up")


def test_a_cluster_without_redis_cluster_true_is_named_in_health(cluster, minilm, tmp_path):
    cache = embedding_cache(make_settings(tmp_path, cluster.url))  # REDIS_CLUSTER unset
    service = EmbeddingService(minilm, cache)
    assert service.embed(TEXTS[:10]).cached == 0  # answers, uncached
    assert not cache.up and "REDIS_CLUSTER=true" in cache.problem


def test_a_cluster_down_at_start_serves_uncached(tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(tmp_path, dead, redis_cluster=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = client.post("/embed", json={"texts": ["nobody home"]})
        assert body.status_code == 200 and body.json()["cached"] == 0
        health = client.get("/health").json()
        assert health["cache"] == "down" and health["status"] == "degraded"


def test_bulk_checks_work_and_fail_loudly(cluster, minilm, tmp_path):
    settings = make_settings(tmp_path, cluster.url, redis_cluster=True)
    service = EmbeddingService(minilm, embedding_cache(settings))
    service.embed(TEXTS[:20])
    mask = service.cached_mask([*TEXTS[:20], "not there"])
    assert mask.tolist() == [True] * 20 + [False]
    assert service.cache.delete_many(minilm.fingerprint(normalize=False), TEXTS[:2]) == 2
    assert service.cached_mask(TEXTS[:3]).tolist() == [False, False, True]
    dead = open_cache(f"redis://127.0.0.1:{free_port()}/0", cluster=True)
    with pytest.raises(redis.RedisError):  # the bulk job must know, not guess
        EmbeddingService(minilm, dead).cached_mask(["x"])


def test_a_cluster_url_must_name_db_0(tmp_path):
    from embedder.errors import InvalidConfigError

    settings = make_settings(tmp_path, "redis://127.0.0.1:7000/3", redis_cluster=True)
    with pytest.raises(InvalidConfigError, match="only database 0"):
        embedding_cache(settings)  # at start, not at the first request


def test_train_cli_embeds_through_the_cluster(cluster, tmp_path):
    data = tmp_path / "support.csv"
    rows = (REPO / "data" / "demo_support.csv").read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(rows[:41]) + "\n", encoding="utf-8")
    env = {
        **os.environ,
        "REDIS_URL": cluster.url,
        "REDIS_CLUSTER": "true",
        "EMBEDDER_MODEL": MINILM,
    }
    env.pop("HEAD_STORE", None)
    command = [sys.executable, "classifier/train.py", "--data", str(data), "--name", "support"]
    command += ["--models-dir", str(tmp_path / "models"), "--out", str(tmp_path / "run")]
    command += ["--test-size", "0.25"]
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    stored = sum(cluster.key_counts().values())
    assert stored >= 30  # one key per distinct text, on the cluster
    assert all(count > 0 for count in cluster.key_counts().values())
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert sum(cluster.key_counts().values()) == stored  # the rerun hit every text
    assert (tmp_path / "models" / "support").is_dir()


# -- the head store on a cluster ----------------------------------------------------------


@pytest.fixture
def noeviction(cluster) -> Iterator[None]:
    for node in cluster.nodes:
        client = node.client()
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
    yield
    for node in cluster.nodes:
        client = node.client()
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.close()


def test_head_store_refuses_an_evicting_cluster(cluster, tmp_path):
    settings = make_settings(tmp_path, cluster.url, head_store=cluster.url, head_store_cluster=True)
    with pytest.raises(HeadStoreConfigError, match="allkeys-lru"):
        head_store(settings)


def test_head_store_on_a_cluster_versions_locks_and_deletes(cluster, noeviction, tmp_path):
    settings = make_settings(tmp_path, cluster.url, head_store=cluster.url, head_store_cluster=True)
    store, other = head_store(settings), head_store(settings)
    try:
        assert isinstance(store, RedisStore) and isinstance(store.client, RedisCluster)
        assert [store.save("h", b"one", {"format": 2}), other.save("h", b"two", {})] == [1, 2]
        store.set_live("h", 1, "test")
        assert other.live_version("h") == 1 and other.read_artifact("h", 2) == b"two"
        assert other.names() == ["h"]
        slots = {key_slot(key) for key in cluster.nodes[0].client().keys("*{h}*")} | {
            key_slot(key) for node in cluster.nodes[1:] for key in node.client().keys("*{h}*")
        }
        assert len(slots) == 1  # one head's keys share a slot: its MULTI/EXEC is legal
        with store.lock("h", 1.0), pytest.raises(HeadBusyError), other.lock("h", 0.3):
            pass
        with other.lock("h", 1.0):
            pass
        store.write_pointer("h", encode_pointer(2, "test"))
        assert other.live_version("h") == 2
        store.delete("h")
        assert other.names() == [] and other.versions("h") == []
    finally:
        store.close()
        other.close()


def test_head_store_cluster_url_must_name_db_0():
    with pytest.raises(HeadStoreConfigError, match="only database 0"):
        RedisStore("redis://127.0.0.1:7000/2", cluster=True)


def test_head_store_cluster_down_is_unavailable_not_a_crash(tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisStore(dead, cluster=True)  # made lazily: no exception at start
    with pytest.raises(HeadStoreUnavailableError):
        store.names()
    with pytest.raises(HeadStoreUnavailableError), store.lock("h", 0.1):
        pass


def test_api_serves_heads_from_a_cluster_head_store(cluster, noeviction, tmp_path):
    settings = make_settings(
        tmp_path,
        cluster.url,
        redis_cluster=True,
        head_store=cluster.url,
        head_store_cluster=True,
        head_poll_seconds=0.2,
    )
    examples = [{"text": text, "label": text.split()[-1]} for text in TEXTS[:48]]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        trained = client.post("/heads/topics/train", json={"examples": examples})
        assert trained.status_code == 200, trained.text
        predicted = client.post("/predict", json={"head": "topics", "texts": [TEXTS[0]]})
        assert predicted.status_code == 200, predicted.text
        body = predicted.json()
        assert body["version"] == 1
        assert body["predictions"][0]["label"] in {example["label"] for example in examples}
        assert client.get("/health").json()["head_store"] == "up"

        # The master of the change stamp dies: heads already loaded keep serving.
        from classifier.stores.redis_store import CHANGES

        victim = master_of(cluster, CHANGES)
        victim.kill()
        wait_until(lambda: client.get("/health").json()["head_store"] == "down")
        health = client.get("/health").json()
        assert health["status"] == "degraded" and health["heads"] == ["topics"]
        still = client.post("/predict", json={"head": "topics", "texts": [TEXTS[1]]})
        assert still.status_code == 200, still.text
        victim.start()
        cluster.wait_ok()
        wait_until(lambda: client.get("/health").json()["head_store"] == "up")


def test_copy_a_folder_into_a_cluster_head_store(cluster, noeviction, tmp_path):
    from classifier.artifacts import load_head, save_head
    from classifier.stores.__main__ import main as stores_tool
    from classifier.stores.folder import FolderStore
    from classifier.training import train_head

    features = np.random.default_rng(0).normal(size=(120, 6)).astype(np.float32)
    labels = np.where(features[:, 0] > 0, "up", "down").tolist()
    folder = FolderStore(tmp_path / "models")
    for seed in range(2):
        trained = train_head(features, labels, test_size=0, seed=seed)
        save_head(trained, folder, "h", {"fingerprint": "f", "dim": 6})
    folder.set_live("h", 1, "rollback")
    code = stores_tool(["copy", str(tmp_path / "models"), cluster.url, "--target-cluster"])
    assert code == 0
    target = RedisStore(cluster.url, cluster=True)
    try:
        assert target.versions("h") == [1, 2] and target.live_version("h") == 1
        np.testing.assert_allclose(
            load_head(target, "h").predict_proba(features),
            load_head(folder, "h").predict_proba(features),
        )
    finally:
        target.close()


def test_a_failover_to_a_replica_brings_the_hits_back_without_the_master(minilm, tmp_path):
    """3 masters with a replica each: a master dies, its replica is promoted, and the cache
    finds the new master by itself (the slot map is read again after the connection error)."""
    local = LocalCluster(tmp_path / "replicated", masters=3, replicas=1)
    local.start()
    try:
        service = EmbeddingService(minilm, open_cache(local.url, cluster=True))
        service.embed(TEXTS)
        assert service.embed(TEXTS).cached == len(TEXTS)
        slot = key_slot(cache_key(minilm.fingerprint(normalize=False), TEXTS[0]).encode())
        victim = local.node_of_slot(slot)
        with victim.client() as client:
            client.execute_command("WAIT", 1, 5000)  # the replica has every key
        victim.kill()
        assert service.embed(TEXTS).cached < len(TEXTS)  # its keys miss until the failover
        wait_until(lambda: local.node_of_slot(slot) is not victim, timeout=30)
        wait_until(lambda: service.embed(TEXTS).cached == len(TEXTS), timeout=20)
        assert victim.process is None and service.cache.up
    finally:
        local.stop()
