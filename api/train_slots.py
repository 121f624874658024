"""Trainings running at once in this process (MAX_CONCURRENT_TRAINS), and the client watch.

A train takes a slot before it reads or embeds anything; when none is free it is refused
at once with 429 and a Retry-After guessed from the trains running now, never queued
behind them. While a train runs in the thread pool, the request's connection is watched:
a client that goes away cancels the train's token, so the work stops at its next check.
"""

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request

from api.errors import TrainingBusyError
from bertheads.cancel import CancelToken

DISCONNECT_POLL_SECONDS = 0.2
DEFAULT_TRAIN_SECONDS = 10.0  # the Retry-After guess before any train has finished
MAX_RETRY_AFTER_SECONDS = 300
Result = TypeVar("Result")


class TrainSlots:
    """A counter of running trains with a fixed ceiling; taking a slot never waits.

    Args:
        limit: Trains allowed at once (MAX_CONCURRENT_TRAINS).

    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._next_id = 0
        self._last_seconds: float | None = None

    @property
    def running(self) -> int:
        """Trains holding a slot now."""
        return len(self._started)

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        """Hold a slot for the `with` block.

        Raises:
            TrainingBusyError: Every slot is taken (429 with Retry-After).

        """
        with self._lock:
            if len(self._started) >= self.limit:
                raise TrainingBusyError(
                    f"training: {len(self._started)} train(s) already running, the limit is "
                    f"{self.limit} at once (MAX_CONCURRENT_TRAINS); retry after the "
                    "Retry-After seconds",
                    self._retry_after(),
                )
            slot = self._next_id
            self._next_id += 1
            self._started[slot] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                started = self._started.pop(slot)
                self._last_seconds = time.monotonic() - started

    def _retry_after(self) -> int:
        """Seconds until the soonest running train is expected to end (at least 1)."""
        typical = self._last_seconds or DEFAULT_TRAIN_SECONDS
        now = time.monotonic()
        soonest = min(typical - (now - started) for started in self._started.values())
        return int(min(max(1, math.ceil(soonest)), MAX_RETRY_AFTER_SECONDS))


async def run_watched(
    request: Request, token: CancelToken, function: Callable[..., Result], *args: Any, **kwargs: Any
) -> Result:
    """Run `function` in the thread pool; cancel `token` if the client disconnects meanwhile.

    Returns only once the function has returned or raised, so a slot held around this call
    is held for as long as the work really runs.
    """

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)
        token.cancel("training stopped: the client disconnected")

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(function, *args, **kwargs)
    finally:
        watcher.cancel()
