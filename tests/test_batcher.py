"""The micro-batcher with the real MiniLM encoder: merging, buckets, order, errors, limits."""

import itertools
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest

from embedder.batcher import CallCostModel, MicroBatcher, length_buckets, serving_layout
from embedder.cores import available_cores
from embedder.errors import QueueFullError

SHORT = [f"short text {index}" for index in range(8)]
LONG = [
    f"{index}: the parcel arrived three weeks late, the box was crushed, the driver left it "
    "in the rain and nobody at the support line could tell me where the refund went"
    for index in range(8)
]


class Recorder:
    """The real encoder, recording each call; `hold` blocks calls until released."""

    def __init__(self, encoder, fail_on: str | None = None) -> None:
        self.encoder = encoder
        self.fail_on = fail_on
        self.calls: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.calls.append(list(texts))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.entered.set()
        try:
            self.hold.wait(timeout=30)
            if self.fail_on is not None and self.fail_on in texts:
                raise ValueError(f"cannot encode {self.fail_on!r}")
            return self.encoder.encode_raw(texts)
        finally:
            with self.lock:
                self.running -= 1


def blocked_batcher(recorder: Recorder, **options) -> MicroBatcher:
    """A started batcher whose worker is inside its first encode call, held there."""
    batcher = MicroBatcher(recorder, **options)
    batcher.start()
    recorder.hold.clear()
    batcher.submit(["the first request, which holds the worker"])
    assert recorder.entered.wait(timeout=30)
    return batcher


def test_each_caller_gets_its_own_rows_in_order(minilm):
    batcher = MicroBatcher(minilm.encode_raw, max_wait_ms=20)
    batcher.start()
    requests = [
        [
            random.Random(index).choice(SHORT + LONG) + f" #{index}.{row}"
            for row in range(index % 4 + 1)
        ]
        for index in range(24)
    ]
    try:
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(batcher.encode, requests))
    finally:
        batcher.stop()
    for texts, vectors in zip(requests, results, strict=True):
        assert vectors.shape == (len(texts), 384) and vectors.dtype == np.float32
        np.testing.assert_allclose(vectors, minilm.encode_raw(texts), atol=1e-5)
    assert batcher.queue_depth == 0


def test_jobs_that_wait_together_are_merged_into_one_call(minilm):
    recorder = Recorder(minilm)
    batcher = blocked_batcher(recorder, bucket_overhead=10_000)
    futures = [batcher.submit([f"waiting request {index}"]) for index in range(10)]
    recorder.hold.set()
    try:
        vectors = [future.result(timeout=60) for future in futures]
    finally:
        batcher.stop()
    # The ten jobs queued behind the first call went into one encode call together.
    assert len(recorder.calls) == 2 and len(recorder.calls[1]) == 10
    expected = minilm.encode_raw([f"waiting request {index}" for index in range(10)])
    np.testing.assert_allclose(np.vstack(vectors), expected, atol=1e-5)


def test_a_returning_cohort_is_merged_by_an_idle_worker(minilm):
    # Eight callers served together come back one by one, 5 ms apart: the idle worker waits
    # (up to max_wait_ms) for the cohort instead of encoding the first arrival alone.
    recorder = Recorder(minilm)
    batcher = blocked_batcher(recorder, max_wait_ms=1_000, bucket_overhead=10_000)
    first_round = [batcher.submit([f"first round {index}"]) for index in range(8)]
    recorder.hold.set()
    try:
        wait(first_round, timeout=60)
        with ThreadPoolExecutor(8) as pool:
            futures = []
            for index in range(8):
                futures.append(pool.submit(batcher.encode, [f"second round {index}"]))
                time.sleep(0.005)
            wait(futures, timeout=60)
    finally:
        batcher.stop()
    assert [len(call) for call in recorder.calls] == [1, 8, 8]


def test_a_lone_caller_does_not_wait_for_company(minilm):
    batcher = MicroBatcher(minilm.encode_raw, max_wait_ms=2_000)
    batcher.start()
    try:
        batcher.encode(["warm up"])
        started = time.monotonic()
        for index in range(3):
            batcher.encode([f"alone {index}"])
        elapsed = time.monotonic() - started
    finally:
        batcher.stop()
    assert elapsed < 2.0  # no 2 s wait for company on any of the three


def test_texts_are_bucketed_by_length_shortest_first(minilm):
    recorder = Recorder(minilm)
    batcher = blocked_batcher(recorder, bucket_overhead=0, max_bucket_texts=32)
    mixed = [text for pair in zip(SHORT, LONG, strict=True) for text in pair]
    futures = [batcher.submit([text]) for text in mixed]
    recorder.hold.set()
    try:
        results = [future.result(timeout=60) for future in futures]
    finally:
        batcher.stop()
    calls = recorder.calls[1:]
    assert [sorted(call) for call in calls] == [sorted(SHORT), sorted(LONG)]
    np.testing.assert_allclose(np.vstack(results), minilm.encode_raw(mixed), atol=1e-5)


def test_short_texts_are_answered_before_the_long_bucket_ends(minilm):
    recorder = Recorder(minilm)
    batcher = blocked_batcher(recorder, bucket_overhead=0)
    finished: list[str] = []
    for text in [LONG[0], SHORT[0]]:
        batcher.submit([text]).add_done_callback(lambda _, text=text: finished.append(text))
    recorder.hold.set()
    batcher.stop()
    assert finished == [SHORT[0], LONG[0]]


def test_an_encode_error_reaches_every_caller_of_the_batch(minilm):
    recorder = Recorder(minilm, fail_on="poison")
    batcher = blocked_batcher(recorder, bucket_overhead=10_000)
    futures = [batcher.submit([f"innocent {index}", "poison"]) for index in range(3)]
    futures += [batcher.submit([f"bystander {index}"]) for index in range(3)]
    recorder.hold.set()
    try:
        for future in futures:
            with pytest.raises(ValueError, match="poison"):
                future.result(timeout=60)
        # The worker survives and serves the next caller.
        assert batcher.encode(["after the failure"]).shape == (1, 384)
    finally:
        batcher.stop()
    assert batcher.queue_depth == 0


def test_a_job_split_over_buckets_fails_once_when_one_bucket_fails(minilm):
    recorder = Recorder(minilm, fail_on="poison")
    batcher = blocked_batcher(recorder, bucket_overhead=0)
    spread = batcher.submit(["poison", LONG[0], LONG[1]])
    recorder.hold.set()
    try:
        with pytest.raises(ValueError, match="poison"):
            spread.result(timeout=60)
        assert batcher.encode([SHORT[1]]).shape == (1, 384)
    finally:
        batcher.stop()
    assert batcher.queue_depth == 0


def test_a_full_queue_refuses_with_a_retry_delay(minilm):
    recorder = Recorder(minilm)
    batcher = blocked_batcher(recorder, max_queue_texts=8)
    accepted = batcher.submit([f"queued {index}" for index in range(7)])  # 1 + 7 = the limit
    with pytest.raises(QueueFullError) as refused:
        batcher.submit(["one too many"])
    assert refused.value.retry_after_seconds >= 1
    recorder.hold.set()
    try:
        assert accepted.result(timeout=60).shape == (7, 384)
        assert batcher.encode(["room again"]).shape == (1, 384)
    finally:
        batcher.stop()


def test_stop_encodes_everything_already_submitted(minilm):
    recorder = Recorder(minilm)
    batcher = blocked_batcher(recorder, max_batch_texts=4)
    futures = [batcher.submit([f"drained {index}", SHORT[index % 8]]) for index in range(10)]
    recorder.hold.set()
    batcher.stop()
    assert all(future.done() for future in futures)
    assert [future.result().shape for future in futures] == [(2, 384)] * 10
    with pytest.raises(RuntimeError, match="not running"):
        batcher.submit(["after stop"])


def test_several_workers_encode_at_the_same_time(minilm):
    recorder = Recorder(minilm)
    batcher = MicroBatcher(recorder, workers=2, max_batch_texts=1)
    batcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(batcher.encode, [[text] for text in LONG]))
    finally:
        batcher.stop()
    assert recorder.most_running == 2
    np.testing.assert_allclose(np.vstack(results), minilm.encode_raw(LONG), atol=1e-5)


def brute_force_cost(lengths: list[int], max_size: int, overhead: float) -> float:
    """Cheapest split of the sorted lengths into consecutive groups, by trying every cut."""
    ordered = sorted(lengths)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(ordered) - 1):
        groups, start = [], 0
        for position, cut in enumerate(cuts, start=1):
            if cut:
                groups.append(ordered[start:position])
                start = position
        groups.append(ordered[start:])
        if all(len(group) <= max_size for group in groups):
            best = min(best, sum(len(group) * max(group) + overhead for group in groups))
    return best


def test_length_buckets_are_the_cheapest_split():
    generator = random.Random(7)
    for _ in range(40):
        lengths = [generator.randint(1, 200) for _ in range(generator.randint(1, 9))]
        overhead = generator.choice([0, 10, 50, 500])
        size = generator.randint(1, 6)
        groups = length_buckets(lengths, size, overhead)
        assert sorted(index for group in groups for index in group) == list(range(len(lengths)))
        assert all(len(group) <= size for group in groups)
        cost = sum(len(group) * max(lengths[i] for i in group) + overhead for group in groups)
        assert cost == pytest.approx(brute_force_cost(lengths, size, overhead))
        longest = [max(lengths[i] for i in group) for group in groups]
        assert longest == sorted(longest)  # shortest bucket first


def test_length_buckets_merge_when_calls_are_costly():
    assert length_buckets([300, 10, 300, 10, 10], 32, overhead=5) == [[1, 3, 4], [0, 2]]
    assert length_buckets([300, 10, 300, 10, 10], 32, overhead=10_000) == [[1, 3, 4, 0, 2]]
    assert length_buckets([10, 11, 30, 300, 310], 2, overhead=10_000) == [[0, 1], [2], [3, 4]]


def test_the_call_cost_model_learns_the_fixed_cost_of_a_call():
    model = CallCostModel()
    generator = random.Random(3)
    for _ in range(200):
        padded = generator.uniform(50, 5_000)
        # 20 ms per call plus 0.1 ms per padded character: one call costs 200 characters.
        model.observe(padded, 0.020 + 0.0001 * padded * generator.uniform(0.95, 1.05))
    assert model.overhead == pytest.approx(200, rel=0.15)
    fixed = CallCostModel(overhead=30)
    fixed.observe(100, 10.0)
    assert fixed.overhead == 30


def test_the_batcher_learns_its_call_cost_from_real_encodes(minilm):
    batcher = MicroBatcher(minilm.encode_raw)
    batcher.start()
    try:
        for size in (1, 8, 2, 16, 4, 1, 12, 3):
            batcher.encode([LONG[index % 8] + f" {size}" for index in range(size)])
    finally:
        batcher.stop()
    learnt = batcher.cost_model.overhead
    assert CallCostModel.LOWEST <= learnt <= CallCostModel.HIGHEST
    assert learnt != CallCostModel.START


def test_workers_racing_for_one_cohort_all_survive(minilm):
    # Idle workers wait for a returning cohort with the lock released; another worker can
    # take the jobs meanwhile. Every worker must come back from that with nothing to take.
    texts = [f"{word} number {index}" for index in range(40) for word in ("alpha", "beta")]
    expected = dict(zip(texts, minilm.encode_raw(texts), strict=True))
    batcher = MicroBatcher(minilm.encode_raw, workers=3, max_wait_ms=20, max_batch_texts=8)
    batcher.start()

    def client(offset: int) -> list[tuple[str, np.ndarray]]:
        answers = []
        for step in range(10):
            text = texts[(offset + step * 7) % len(texts)]
            answers.append((text, batcher.encode([text])[0]))
        return answers

    try:
        with ThreadPoolExecutor(16) as pool:
            results = [pair for answers in pool.map(client, range(16)) for pair in answers]
        assert batcher.workers_alive == 3
    finally:
        batcher.stop()
    assert len(results) == 160
    for text, vector in results:
        np.testing.assert_allclose(vector, expected[text], atol=1e-4)


def test_a_cancelled_caller_does_not_stop_the_worker(minilm):
    recorder = Recorder(minilm)
    batcher = blocked_batcher(recorder)
    try:
        abandoned = batcher.submit(["a caller that gives up"])
        assert abandoned.cancel()
        recorder.hold.set()
        deadline = time.monotonic() + 30
        while batcher.queue_depth and time.monotonic() < deadline:  # the abandoned job's turn
            time.sleep(0.01)
        answer = batcher.submit(["the next caller"]).result(timeout=10)
        assert batcher.workers_alive == 1
    finally:
        batcher.stop()
    np.testing.assert_allclose(answer, minilm.encode_raw(["the next caller"]), atol=1e-5)


def test_cores_follow_the_cgroup_quota_under_the_affinity(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    for content, expected in [
        ("max 100000\n", affinity),
        ("50000 100000\n", 1),  # half a CPU still gets one thread
        (f"{affinity * 100000 + 1} 100000\n", affinity),  # a quota above the affinity
        ("100000 100000\n", 1),
        ("garbage\n", affinity),
    ]:
        cpu_max.write_text(content)
        assert available_cores(cpu_max) == expected, content
    assert available_cores(tmp_path / "absent") == affinity


def test_the_server_runs_one_single_threaded_call_per_core_unless_told():
    cores = available_cores()
    assert serving_layout(None) == (cores, 1)
    assert serving_layout(2) == (max(1, cores // 2), 2)
    assert serving_layout(cores * 4) == (1, cores * 4)


def test_a_bucket_alone_goes_to_the_every_core_encoder_and_others_share_the_cores(minilm):
    narrow, wide = Recorder(minilm), Recorder(minilm)
    batcher = MicroBatcher(narrow, workers=2)
    batcher.encode_alone = wide
    batcher.start()
    try:
        lone = batcher.encode(["a lone request"])
        assert wide.calls == [["a lone request"]] and not narrow.calls
        wide.hold.clear()
        wide.entered.clear()
        first = batcher.submit(["held in the every-core call"])
        assert wide.entered.wait(timeout=30)
        # The cores are taken: the next bucket gets a single-threaded call of its own.
        second = batcher.submit(["arrives while the first is encoding"]).result(timeout=30)
        assert narrow.calls == [["arrives while the first is encoding"]]
        wide.hold.set()
        first = first.result(timeout=30)
    finally:
        batcher.stop()
    texts = ["a lone request", "held in the every-core call", "arrives while the first is encoding"]
    np.testing.assert_allclose(
        np.vstack([lone, first, second]), minilm.encode_raw(texts), atol=1e-5
    )
