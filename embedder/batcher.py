"""Micro-batching: concurrent requests share forward passes on one worker thread."""

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from embedder.errors import QueueFullError

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    texts: list[str]
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Coalesces texts from concurrent callers into batches for one encode function.

    The worker takes the first waiting job, then keeps collecting for up to `max_wait_ms`
    or until `max_batch_texts` texts, encodes them in one call (the encoder sorts by length)
    and hands each caller its own rows, in order.

    Args:
        encode: Texts -> float32 (n, dim); called on the worker thread only.
        max_batch_texts: Most texts coalesced into one call.
        max_wait_ms: How long to wait for company once a job arrives.
        max_queue_texts: Texts allowed to wait; beyond it `submit` raises QueueFullError.

    """

    def __init__(
        self,
        encode: Callable[[list[str]], np.ndarray],
        *,
        max_batch_texts: int = 64,
        max_wait_ms: float = 4.0,
        max_queue_texts: int = 4096,
    ) -> None:
        self.encode_function = encode
        self.max_batch_texts = max_batch_texts
        self.max_wait = max_wait_ms / 1000
        self.max_queue_texts = max_queue_texts
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.on_batch: Callable[[int], None] | None = None

    @property
    def queue_depth(self) -> int:
        """Texts submitted and not yet encoded."""
        return self._pending

    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="encode-worker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the worker after the jobs already queued."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, texts: list[str]) -> Future:
        """Queue `texts`; the future resolves to their vectors, in order."""
        with self._lock:
            if self._pending + len(texts) > self.max_queue_texts and self._pending > 0:
                raise QueueFullError(
                    f"encode queue is full ({self._pending} texts waiting, limit "
                    f"{self.max_queue_texts}); retry shortly",
                    retry_after_seconds=max(1.0, self._pending / 50),
                )
            self._pending += len(texts)
        job = _Job(list(texts))
        self._jobs.put(job)
        return job.future

    def encode(self, texts: list[str]) -> np.ndarray:
        """Blocking form of `submit`, for callers on worker threads."""
        return self.submit(texts).result()

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs = [first]
        count = len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch_texts:
            remaining = deadline - time.monotonic()
            try:
                job = (
                    self._jobs.get(timeout=remaining) if remaining > 0 else self._jobs.get_nowait()
                )
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            count += len(job.texts)
        return jobs, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is None:
                break
            jobs, stopping = self._collect(first)
            texts = [text for job in jobs for text in job.texts]
            try:
                vectors = self.encode_function(texts)
            except Exception as error:  # hand the failure to every waiting caller
                logger.exception("encode failed for a batch of %d texts", len(texts))
                for job in jobs:
                    job.future.set_exception(error)
            else:
                start = 0
                for job in jobs:
                    job.future.set_result(vectors[start : start + len(job.texts)])
                    start += len(job.texts)
            finally:
                with self._lock:
                    self._pending -= len(texts)
                if self.on_batch is not None:
                    self.on_batch(len(texts))
