"""Cooperative cancellation of long work: a client that went away, or a time limit.

Long jobs (embedding a training set, searching heads, training epochs) call
`token.check()` between steps; it raises once the token is cancelled or its deadline
passed. Code that takes a token accepts None for "never cancelled".
"""

import threading
import time


class CancelledError(Exception):
    """The work was cancelled (for example, its HTTP client disconnected)."""


class DeadlineExceededError(CancelledError):
    """The work ran past its time limit."""

    def __init__(self, message: str, limit_seconds: float) -> None:
        super().__init__(message)
        self.limit_seconds = limit_seconds


class CancelToken:
    """A flag set from another thread plus an optional deadline.

    Args:
        timeout_seconds: Time allowed from now; None for no limit.
        limit_name: The setting that sets the limit, named in the error message.

    """

    def __init__(self, timeout_seconds: float | None = None, limit_name: str = "") -> None:
        self._event = threading.Event()
        self._reason = "cancelled"
        self.timeout_seconds = timeout_seconds
        self.limit_name = limit_name
        self.deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the work to stop at its next check."""
        self._reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once `cancel` was called or the deadline passed."""
        return self._event.is_set() or self.expired

    @property
    def expired(self) -> bool:
        """True once the deadline passed."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        """Raise if the work should stop.

        Raises:
            DeadlineExceededError: The time limit passed.
            CancelledError: `cancel` was called.

        """
        if self._event.is_set():
            raise CancelledError(self._reason)
        if self.expired:
            limit = f" ({self.limit_name})" if self.limit_name else ""
            raise DeadlineExceededError(
                f"stopped after the time limit of {self.timeout_seconds:g} s{limit}",
                float(self.timeout_seconds or 0),
            )


def check(token: CancelToken | None) -> None:
    """`token.check()`, or nothing when there is no token."""
    if token is not None:
        token.check()
