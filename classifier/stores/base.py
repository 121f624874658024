"""The head-store protocol: where heads live, built once for every backend.

A store keeps, per head name, numbered immutable versions (an artifact's bytes and its
sidecar metadata JSON), a live pointer (classifier.live), and a lock. Implementations
provide the primitives below; the shared rules (which version is live, pruning) are
written here once, so the folder and the Redis store behave alike:

* `save` gives a version number no two writers can share, writes the artifact and then
  the metadata atomically (a version exists once its metadata does) and durably;
* `delete` and `discard_version` move things to the trash, purged after the retention;
* `change_stamp` changes whenever anything changes through the store, so replicas poll
  one small value;
* `lock(name)` is held across processes and machines by every change that must not
  interleave (commit of a train, rollback, delete); it raises HeadBusyError when it
  cannot be had in time, and never falls back to a local lock.

Errors are named: HeadNotFoundError, CorruptHeadError, LivePointerError,
HeadStoreUnavailableError (backend down), HeadStoreFullError (ENOSPC / Redis OOM),
HeadBusyError. Messages name heads and versions, never internal paths or addresses.
"""

import abc
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from classifier import live
from classifier.errors import InvalidParameterError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> None:
    """Refuse a head name that is not 1-64 letters, digits, '_', '.', '-'."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidParameterError(
            f"name: {name!r} must be 1-64 characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )


class HeadStore(abc.ABC):
    """Where heads live. Thread-safe; one instance per process is enough.

    Args (common to implementations):
        trash_retention_seconds: How long deleted heads and pruned versions stay in the
            trash before `purge_trash` (folder) or expiry (Redis) removes them.

    """

    #: A human-readable location for logs and the CLI (never sent to API clients).
    location: str

    # -- reading ----------------------------------------------------------------------

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Names of the heads with at least one version, sorted."""

    @abc.abstractmethod
    def versions(self, name: str) -> list[int]:
        """Saved versions of `name`, oldest first ([] when there is no such head)."""

    @abc.abstractmethod
    def read_metadata(self, name: str, version: int) -> dict[str, Any]:
        """The sidecar JSON of one version (HeadNotFoundError, CorruptHeadError)."""

    @abc.abstractmethod
    def read_artifact(self, name: str, version: int) -> bytes:
        """The artifact bytes of one version, read once (CorruptHeadError when missing)."""

    @abc.abstractmethod
    def read_pointer(self, name: str) -> bytes | None:
        """The live pointer's bytes, or None when the head has none."""

    @abc.abstractmethod
    def change_stamp(self) -> str:
        """A value that changes whenever anything changes through the store."""

    # -- writing ----------------------------------------------------------------------

    @abc.abstractmethod
    def save(
        self, name: str, artifact: bytes, metadata: dict[str, Any], version: int | None = None
    ) -> int:
        """Store a new version; returns its number (metadata gets "name" and "version").

        `version` asks for that number (copying between stores); it must be free.
        """

    @abc.abstractmethod
    def write_metadata(self, name: str, version: int, metadata: dict[str, Any]) -> None:
        """Replace an existing version's sidecar atomically (signing; the artifact stays)."""

    @abc.abstractmethod
    def write_pointer(self, name: str, pointer: bytes) -> None:
        """Replace the live pointer atomically."""

    @abc.abstractmethod
    def delete(self, name: str) -> str:
        """Move the whole head to the trash; returns the trash entry's name."""

    @abc.abstractmethod
    def discard_version(self, name: str, version: int) -> None:
        """Move one version to the trash (pruning)."""

    @abc.abstractmethod
    def purge_trash(self) -> int:
        """Remove trash older than the retention; returns how many entries went."""

    @abc.abstractmethod
    def lock(self, name: str, wait_seconds: float) -> AbstractContextManager[None]:
        """The head's cross-process lock; raises HeadBusyError if not had in `wait_seconds`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- rules shared by every store ---------------------------------------------------

    def live_version(self, name: str) -> int | None:
        """The version that serves (classifier.live); LivePointerError when unreadable."""
        check_name(name)
        return live.resolve_live(name, self.versions(name), self.read_pointer(name))

    def set_live(self, name: str, version: int, reason: str) -> None:
        """Pin `version` as live."""
        check_name(name)
        self.write_pointer(name, live.encode_pointer(version, reason))

    def prune(self, name: str, keep: int, live_version: int | None) -> list[int]:
        """Discard all but the newest `keep` versions, never the live one; returns them."""
        versions = self.versions(name)
        kept = set(versions[-keep:]) if keep > 0 else set()
        if live_version is not None:
            kept.add(live_version)
        discarded = [version for version in versions if version not in kept]
        for version in discarded:
            self.discard_version(name, version)
        return discarded

    def iter_heads(self) -> Iterator[tuple[str, list[int]]]:
        """(name, versions) of every head."""
        for name in self.names():
            yield name, self.versions(name)
