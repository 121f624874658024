"""Micro-batching: concurrent requests share forward passes on the encode workers."""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from embedder.cores import available_cores
from embedder.errors import QueueFullError

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    """One caller's texts; its rows fill in as the buckets holding them finish."""

    texts: list[str]
    future: Future = field(default_factory=Future)
    vectors: np.ndarray | None = None
    remaining: int = 0
    failed: bool = False

    def __post_init__(self) -> None:
        self.remaining = len(self.texts)


@dataclass
class _Bucket:
    """Texts of similar length encoded in one call: (job, row in that job) for each text."""

    rows: list[tuple[_Job, int]]
    padded: float  # texts x longest length: what the call pads to

    @property
    def texts(self) -> list[str]:
        return [job.texts[row] for job, row in self.rows]


def length_buckets(lengths: list[int], max_size: int, overhead: float) -> list[list[int]]:
    """Split item indices into groups of similar length that cost the least to encode.

    An encode call pads every text to the group's longest, so a group costs about
    `size * longest` plus a fixed `overhead` (in the same length units) per call. Items are
    sorted by length and cut where that total is smallest (dynamic programming over the
    sorted order, groups of at most `max_size`). Returns groups of indices, shortest first.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    count = len(order)
    best = [0.0] + [float("inf")] * count  # best[end]: cheapest split of order[:end]
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        longest = lengths[order[end - 1]]
        for start in range(max(0, end - max_size), end):
            cost = best[start] + (end - start) * longest + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups: list[list[int]] = []
    end = count
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


class CallCostModel:
    """Learns an encode call's fixed cost, in length units, from the calls' durations.

    Fits `seconds = fixed + per_unit * padded` by least squares over recent calls (an
    exponentially decayed window) and reports `fixed / per_unit`: how many padded
    characters one more call costs. A fixed `overhead` disables the learning.
    """

    DECAY = 0.97
    START, LOWEST, HIGHEST = 64.0, 8.0, 4096.0

    def __init__(self, overhead: float | None = None) -> None:
        self.fixed = overhead is not None
        self.overhead = overhead if overhead is not None else self.START
        self._sums = np.zeros(5)  # weight, x, y, x*x, x*y

    def observe(self, padded: float, seconds: float) -> None:
        """Add one call: `padded` length units took `seconds`."""
        if self.fixed:
            return
        self._sums = self.DECAY * self._sums + np.array(
            [1.0, padded, seconds, padded * padded, padded * seconds]
        )
        _, x, y, xx, xy = self._sums / self._sums[0]
        variance = xx - x * x
        if self._sums[0] < 4 or variance <= 1e-9 * max(xx, 1.0):
            return  # too few calls, or all of one size: the two costs cannot be told apart
        per_unit = (xy - x * y) / variance
        fixed = y - per_unit * x
        if per_unit > 0:
            self.overhead = float(np.clip(fixed / per_unit, self.LOWEST, self.HIGHEST))


def serving_layout(threads_per_call: int | None) -> tuple[int, int]:
    """(encode workers, backend threads per call) for a CPU server.

    Default: one single-threaded call per core. Calls that each use every core stall
    whenever the event loop or Redis client takes a core (each parallel step waits for its
    slowest thread); independent calls do not, and served 1.1-1.4x more texts/s at 4-64
    clients (docs/BENCHMARKS.md section 12). A lone text alone on one core is slower (14
    vs 9 ms for mpnet int8), which `MicroBatcher.encode_alone` is for. `threads_per_call`
    > 1 trades the other way: `cores // threads_per_call` workers.
    """
    threads = threads_per_call or 1
    return max(1, available_cores() // threads), threads


def _settle(future: Future, outcome: np.ndarray | Exception) -> None:
    """Resolve `future`; one its caller cancelled is left as it is (the worker goes on)."""
    resolve = future.set_exception if isinstance(outcome, Exception) else future.set_result
    try:
        resolve(outcome)
    except InvalidStateError:
        logger.debug("a caller cancelled its encode before the answer came")


class MicroBatcher:
    """Coalesces texts from concurrent callers into length-bucketed encode calls.

    A worker takes every job waiting (up to `max_batch_texts` texts; a bigger job goes
    alone), splits their texts into buckets of similar length (`length_buckets`) and
    encodes the buckets shortest first. Each caller gets its rows, in order, as soon as the
    buckets holding them are done, so callers of the first buckets send their next request
    while the later buckets run and the next batch is waiting when this one ends: the
    workers never sit idle while work waits. Only an idle worker waits for company, up to
    `max_wait_ms`, and only while fewer jobs wait than the last batch held (a cohort of
    clients coming back), so a lone client pays no wait. A bucket that has the workers to
    itself goes to `encode_alone` when one is set (e.g. a session using every core).

    Args:
        encode: Texts -> float32 (n, dim); called on the worker threads only.
        max_batch_texts: Most texts taken from the queue at once.
        max_wait_ms: How long an idle worker waits for the rest of a cohort.
        max_queue_texts: Texts allowed to wait; beyond it `submit` raises QueueFullError.
        max_bucket_texts: Most texts in one encode call.
        bucket_overhead: Fixed cost of one encode call, in units of `length` (see
            `length_buckets`); larger merges more, 0 cuts at every length change. None:
            learnt from the calls' durations (`CallCostModel`), as it differs by model,
            backend and by how busy the cores are.
        length: A text's cost per row of its bucket; default: its length in characters.
        workers: Encode threads. Several only help when each encode call uses part of the
            cores (e.g. one backend thread per worker).

    """

    def __init__(
        self,
        encode: Callable[[list[str]], np.ndarray],
        *,
        max_batch_texts: int = 64,
        max_wait_ms: float = 4.0,
        max_queue_texts: int = 4096,
        max_bucket_texts: int = 32,
        bucket_overhead: float | None = None,
        length: Callable[[str], int] = len,
        workers: int = 1,
    ) -> None:
        if workers < 1 or max_batch_texts < 1 or max_bucket_texts < 1:
            raise ValueError("workers, max_batch_texts and max_bucket_texts must be >= 1")
        self.encode_function = encode
        self.max_batch_texts = max_batch_texts
        self.max_wait = max_wait_ms / 1000
        self.max_queue_texts = max_queue_texts
        self.max_bucket_texts = max_bucket_texts
        self.cost_model = CallCostModel(bucket_overhead)
        self.length = length
        self.workers = workers
        self.on_batch: Callable[[int], None] | None = None
        # Set (any time) to encode a bucket that has the workers to itself: a lone request
        # is served fastest by one call on every core, a busy queue by one call per core.
        self.encode_alone: Callable[[list[str]], np.ndarray] | None = None
        self._encoding = 0  # buckets being encoded right now
        self._jobs: deque[tuple[float, _Job]] = deque()
        self._buckets: deque[_Bucket] = deque()
        self._condition = threading.Condition()
        self._pending = 0
        self._last_batch_jobs = 0
        self._texts_per_second = 0.0
        self._stopping = False
        self._threads: list[threading.Thread] = []

    @property
    def workers_alive(self) -> int:
        """Encode threads running (fewer than `workers` means one died: a bug to report)."""
        return sum(thread.is_alive() for thread in self._threads)

    @property
    def queue_depth(self) -> int:
        """Texts submitted and not yet encoded."""
        return self._pending

    def start(self) -> None:
        """Start the worker threads."""
        with self._condition:
            if self._threads:
                return
            self._stopping = False
            self._threads = [
                threading.Thread(target=self._run, name=f"encode-worker-{index}", daemon=True)
                for index in range(self.workers)
            ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 60) -> None:
        """Encode every job already submitted, then stop the workers."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=timeout)

    def submit(self, texts: list[str]) -> Future:
        """Queue `texts`; the future resolves to their vectors (float32, n x dim), in order."""
        job = _Job(list(texts))
        if not job.texts:
            job.future.set_result(np.zeros((0, 0), dtype=np.float32))
            return job.future
        with self._condition:
            if self._stopping or not self._threads:
                raise RuntimeError("the encode batcher is not running")
            if self._pending + len(texts) > self.max_queue_texts and self._pending > 0:
                raise QueueFullError(
                    f"encode queue is full ({self._pending} texts waiting, limit "
                    f"{self.max_queue_texts}); retry shortly",
                    retry_after_seconds=self._retry_after(),
                )
            self._pending += len(job.texts)
            self._jobs.append((time.monotonic(), job))
            self._condition.notify_all()
        return job.future

    def encode(self, texts: list[str]) -> np.ndarray:
        """Blocking form of `submit`, for callers on worker threads."""
        return self.submit(texts).result()

    def _retry_after(self) -> float:
        """Seconds until the queue has drained, at the measured rate (at least 1)."""
        rate = self._texts_per_second or 50.0
        return min(60.0, max(1.0, self._pending / rate))

    def _next_bucket(self) -> tuple[_Bucket, bool] | None:
        """Block until there is a bucket to encode; None once stopped with nothing left.

        Returns (bucket, alone): alone when no other bucket is encoding or waiting.
        """
        with self._condition:
            while True:
                if self._buckets:
                    bucket = self._buckets.popleft()
                    alone = not (self._encoding or self._buckets or self._jobs)
                    self._encoding += 1
                    return bucket, alone
                if self._jobs:
                    self._wait_for_cohort()
                    # The wait releases the lock: another worker may have taken the jobs.
                    if self._jobs:
                        self._buckets.extend(self._bucket_jobs(self._take_jobs()))
                        self._condition.notify_all()  # idle workers: buckets to share
                    continue
                if self._stopping:
                    return None
                self._condition.wait()

    def _wait_for_cohort(self) -> None:
        """Give the callers just served a moment to come back (condition held)."""
        first_arrival = self._jobs[0][0]
        while len(self._jobs) < self._last_batch_jobs and not self._stopping:
            if sum(len(job.texts) for _, job in self._jobs) >= self.max_batch_texts:
                return
            remaining = first_arrival + self.max_wait - time.monotonic()
            if remaining <= 0:
                return
            self._condition.wait(remaining)

    def _take_jobs(self) -> list[_Job]:
        """Waiting jobs in arrival order, up to `max_batch_texts` texts (condition held)."""
        jobs = [self._jobs.popleft()[1]]
        count = len(jobs[0].texts)
        while self._jobs and count + len(self._jobs[0][1].texts) <= self.max_batch_texts:
            job = self._jobs.popleft()[1]
            jobs.append(job)
            count += len(job.texts)
        self._last_batch_jobs = len(jobs)
        return jobs

    def _bucket_jobs(self, jobs: list[_Job]) -> list[_Bucket]:
        rows = [(job, row) for job in jobs for row in range(len(job.texts))]
        lengths = [self.length(job.texts[row]) for job, row in rows]
        groups = length_buckets(lengths, self.max_bucket_texts, self.cost_model.overhead)
        return [
            _Bucket(
                [rows[index] for index in group],
                len(group) * max(lengths[index] for index in group),
            )
            for group in groups
        ]

    def _run(self) -> None:
        while (taken := self._next_bucket()) is not None:
            bucket, alone = taken
            texts = bucket.texts
            encode = self.encode_alone if alone and self.encode_alone else self.encode_function
            started = time.perf_counter()
            try:
                vectors = encode(texts)
                if len(vectors) != len(texts):
                    raise RuntimeError(f"encode returned {len(vectors)} rows for {len(texts)}")
            except Exception as error:  # hand the failure to every waiting caller
                logger.exception("encode failed for a batch of %d texts", len(texts))
                self._fail(bucket, error)
            else:
                # The cost model learns the single-threaded calls that batching is for.
                seconds = None if encode is self.encode_alone else time.perf_counter() - started
                self._deliver(bucket, vectors, seconds)
            if self.on_batch is not None:
                try:
                    self.on_batch(len(texts))
                except Exception:  # a metrics hook must never stop a worker
                    logger.exception("the batch hook failed")

    def _deliver(self, bucket: _Bucket, vectors: np.ndarray, seconds: float | None) -> None:
        """Hand each caller its rows; `seconds` (None: not to learn from) feeds the models."""
        finished: list[_Job] = []
        with self._condition:
            self._pending -= len(bucket.rows)
            self._encoding -= 1
            if seconds is not None:
                # A smoothed encode rate, for the Retry-After of a full queue.
                rate = len(bucket.rows) / max(seconds, 1e-9)
                self._texts_per_second = 0.8 * self._texts_per_second + 0.2 * rate
                self.cost_model.observe(bucket.padded, seconds)
            for (job, row), vector in zip(bucket.rows, vectors, strict=True):
                if job.failed:  # another bucket of this job failed: it has its answer
                    continue
                if job.vectors is None:
                    job.vectors = np.empty((len(job.texts), vectors.shape[1]), dtype=np.float32)
                job.vectors[row] = vector
                job.remaining -= 1
                if job.remaining == 0:
                    finished.append(job)
        for job in finished:  # outside the lock: callbacks may submit again
            _settle(job.future, job.vectors)

    def _fail(self, bucket: _Bucket, error: Exception) -> None:
        failed: list[_Job] = []
        with self._condition:
            self._pending -= len(bucket.rows)
            self._encoding -= 1
            for job, _ in bucket.rows:
                if not job.failed:
                    job.failed = True
                    failed.append(job)
        for job in failed:
            _settle(job.future, error)
