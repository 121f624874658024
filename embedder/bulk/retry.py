"""Riding out a Redis outage: retry with backoff, then fail with a clear message."""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

logger = logging.getLogger(__name__)
Result = TypeVar("Result")
FIRST_DELAY_SECONDS = 0.5
LONGEST_DELAY_SECONDS = 8.0


class RedisUnavailableError(RuntimeError):
    """Redis did not come back within the job's patience; what was stored stays stored."""


def with_redis_retries(
    call: Callable[[], Result],
    *,
    what: str,
    url: str,
    patience_seconds: float,
    on_retry: Callable[[], None] | None = None,
) -> Result:
    """`call()`, retried with doubling pauses while it raises redis.RedisError.

    `on_retry` is called before each pause. Raises RedisUnavailableError once
    `patience_seconds` have passed since the first failure.
    """
    delay = FIRST_DELAY_SECONDS
    first_failure: float | None = None
    while True:
        try:
            result = call()
        except redis.RedisError as error:
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
                logger.warning("Redis at %s failed while %s (%s); pausing", url, what, error)
            waited = now - first_failure
            if waited >= patience_seconds:
                raise RedisUnavailableError(
                    f"Redis at {url} did not answer for {waited:.0f} s while {what} "
                    f"(last error: {error}). Every finished batch is stored; run the same "
                    "command again when Redis is back to resume."
                ) from error
            if on_retry is not None:
                on_retry()
            time.sleep(min(delay, patience_seconds - waited + 0.01))
            delay = min(delay * 2, LONGEST_DELAY_SECONDS)
            continue
        if first_failure is not None:
            logger.warning(
                "Redis at %s is back after %.1f s", url, time.monotonic() - first_failure
            )
        return result
