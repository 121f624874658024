"""Heads in a folder (MODELS_DIR, or HEAD_STORE=/a/path): one machine, or a shared mount.

    <root>/<name>/v<N>.safetensors   artifact (classifier.headfile)
    <root>/<name>/v<N>.json          sidecar metadata; the version exists once this exists
    <root>/<name>/live.json          live pointer (classifier.live)
    <root>/.changes                  change stamp, rewritten on every change
    <root>/.locks/<name>.lock        flock(2) per head
    <root>/.trash/<name>-<ms>/       a deleted head; <name>-v<N>-<ms>/ a pruned version

Every write goes to a temporary file that is fsynced, then linked or renamed into place,
then the folder is fsynced. Version files are placed with link(2), which never overwrites,
so two writers (threads, processes, machines on one mount) cannot take one number. A full
disk raises HeadStoreFullError after removing the temporary files.
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from classifier.errors import (
    CorruptHeadError,
    HeadBusyError,
    HeadNotFoundError,
    HeadStoreError,
    HeadStoreFullError,
    HeadStoreUnavailableError,
    InvalidParameterError,
)
from classifier.live import POINTER
from classifier.stores.base import NAME_PATTERN, HeadStore, check_name

ARTIFACT_SUFFIX = ".safetensors"
VERSION_FILE = re.compile(r"^v(\d+)\.json$")
ANY_VERSION_FILE = re.compile(r"^v(\d+)\.(json|safetensors|joblib)$")
TRASH = ".trash"
LOCKS = ".locks"
CHANGES = ".changes"
FULL_ERRORS = (errno.ENOSPC, errno.EDQUOT)


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_temporary(directory: Path, data: bytes, suffix: str) -> Path:
    """A new fsynced temporary file in `directory` holding `data` (removed on failure)."""
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return Path(temporary)


def replace_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably: temporary file, fsync, rename, fsync dir."""
    temporary: Path | None = write_temporary(path.parent, data, ".tmp")
    try:
        os.replace(temporary, path)
        temporary = None
        _fsync_directory(path.parent)
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _full(error: OSError, what: str) -> Exception:
    if error.errno in FULL_ERRORS:
        return HeadStoreFullError(
            f"no space left in the head store while {what}; nothing was saved. "
            "Free space (or delete old heads) and try again"
        )
    return HeadStoreError(f"the head store failed while {what} ({os.strerror(error.errno or 0)})")


class FolderStore(HeadStore):
    """Heads as files under `root` (see the module docstring for the layout).

    Args:
        root: The folder; created when missing.
        trash_retention_seconds: Age after which `purge_trash` removes trash entries.

    """

    def __init__(self, root: Path | str, *, trash_retention_seconds: float = 7 * 24 * 3600) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self.trash_retention_seconds = trash_retention_seconds
        # Once the folder was seen, its absence means "unmounted", not "no heads".
        self._seen_root = self.root.is_dir()

    # -- files --------------------------------------------------------------------------

    def _directory(self, name: str) -> Path:
        check_name(name)
        return self.root / name

    def _replace(self, path: Path, data: bytes, what: str) -> None:
        try:
            replace_durably(path, data)
        except OSError as error:
            raise _full(error, what) from None

    def mark_changed(self) -> None:
        """Give .changes a new token, so pollers rescan (a lost token costs one rescan)."""
        with contextlib.suppress(OSError):
            temporary = write_temporary(self.root, uuid.uuid4().hex.encode(), ".stamp")
            os.replace(temporary, self.root / CHANGES)

    def _ensure_root(self) -> None:
        self._seen_root = True
        if not self.root.is_dir():
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                _fsync_directory(self.root.parent)
            except OSError as error:
                raise _full(error, "creating the head store folder") from None

    # -- reading ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the heads with at least one version.

        A folder that existed and is gone (an unmounted share) is HeadStoreUnavailableError,
        not "no heads": replicas keep serving what they loaded instead of dropping it.
        """
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            if self._seen_root:
                raise HeadStoreUnavailableError(
                    "the head store folder is gone (unmounted?); serving the heads loaded"
                ) from None
            return []
        except OSError as error:
            raise HeadStoreUnavailableError(
                f"the head store folder cannot be read ({os.strerror(error.errno or 0)})"
            ) from None
        self._seen_root = True
        return sorted(
            entry.name
            for entry in entries
            if NAME_PATTERN.match(entry.name)
            and entry.is_dir(follow_symlinks=False)
            and self.versions(entry.name)
        )

    def versions(self, name: str) -> list[int]:
        """Versions with a metadata file, oldest first."""
        directory = self._directory(name)
        try:
            entries = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(match.group(1)) for match in map(VERSION_FILE.match, entries) if match)

    def read_metadata(self, name: str, version: int) -> dict[str, Any]:
        """The sidecar JSON of one version."""
        path = self._directory(name) / f"v{int(version)}.json"
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            versions = self.versions(name)
            if not versions:
                raise HeadNotFoundError(f"head {name!r}: not found") from None
            raise HeadNotFoundError(
                f"head {name!r}: no version {version}; versions: {versions}"
            ) from None
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise CorruptHeadError(
                f"head {name!r} v{version}: unreadable metadata ({type(error).__name__})"
            ) from None
        if not isinstance(data, dict):
            raise CorruptHeadError(f"head {name!r} v{version}: metadata is not a JSON object")
        return data

    def read_artifact(self, name: str, version: int) -> bytes:
        """The artifact bytes (one read)."""
        filename = f"v{int(version)}{ARTIFACT_SUFFIX}"
        try:
            return (self._directory(name) / filename).read_bytes()
        except FileNotFoundError:
            raise CorruptHeadError(f"head {name!r} v{version}: {filename} is missing") from None
        except OSError as error:
            raise CorruptHeadError(
                f"head {name!r} v{version}: {filename} is unreadable ({os.strerror(error.errno)})"
            ) from None

    def read_pointer(self, name: str) -> bytes | None:
        """live.json's bytes, or None when absent."""
        try:
            return (self._directory(name) / POINTER).read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return b""  # unreadable: resolve_live reports it, nothing rolls forward

    def change_stamp(self) -> str:
        """The token in .changes ('' before the first change)."""
        try:
            return (self.root / CHANGES).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return ""

    # -- writing ------------------------------------------------------------------------

    def _next_free(self, directory: Path) -> int:
        taken = [
            int(match.group(1))
            for match in map(ANY_VERSION_FILE.match, os.listdir(directory))
            if match
        ]
        return max(taken, default=0) + 1

    def save(
        self, name: str, artifact: bytes, metadata: dict[str, Any], version: int | None = None
    ) -> int:
        """Link the artifact, then the metadata, under the next free number (or `version`)."""
        directory = self._directory(name)
        self._ensure_root()
        placed: list[Path] = []
        temporaries: list[Path] = []
        try:
            if not directory.is_dir():
                directory.mkdir(exist_ok=True)
                _fsync_directory(self.root)
            temporaries.append(write_temporary(directory, artifact, ARTIFACT_SUFFIX))
            wanted = version
            version = self._next_free(directory) if wanted is None else int(wanted)
            while True:
                target = directory / f"v{version}{ARTIFACT_SUFFIX}"
                try:
                    if (directory / f"v{version}.json").exists():
                        raise FileExistsError(version)
                    os.link(temporaries[0], target)  # never overwrites: the number is ours
                    placed.append(target)
                    break
                except FileExistsError:
                    if wanted is not None:
                        raise InvalidParameterError(
                            f"head {name!r}: version {wanted} exists already"
                        ) from None
                    version += 1
            document = {**metadata, "name": name, "version": version}
            data = json.dumps(document, indent=2).encode("utf-8")
            temporaries.append(write_temporary(directory, data, ".json"))
            metadata_path = directory / f"v{version}.json"
            os.link(temporaries[1], metadata_path)
            placed.append(metadata_path)
            _fsync_directory(directory)
        except OSError as error:
            for path in reversed(placed):  # an artifact without its metadata is no version
                with contextlib.suppress(OSError):
                    path.unlink()
            raise _full(error, f"saving head {name!r}") from None
        finally:
            for temporary in temporaries:
                with contextlib.suppress(OSError):
                    temporary.unlink()
        self.mark_changed()
        return version

    def write_metadata(self, name: str, version: int, metadata: dict[str, Any]) -> None:
        """Replace v<N>.json durably (the version must exist)."""
        if int(version) not in self.versions(name):
            raise HeadNotFoundError(f"head {name!r}: no version {version}")
        document = {**metadata, "name": name, "version": int(version)}
        path = self._directory(name) / f"v{int(version)}.json"
        self._replace(path, json.dumps(document, indent=2).encode("utf-8"), f"updating {name!r}")
        self.mark_changed()

    def write_pointer(self, name: str, pointer: bytes) -> None:
        """Replace live.json durably."""
        self._replace(self._directory(name) / POINTER, pointer, f"pinning head {name!r}")
        self.mark_changed()

    def _trash(self) -> Path:
        trash = self.root / TRASH
        if not trash.is_dir():
            trash.mkdir(parents=True, exist_ok=True)
            _fsync_directory(self.root)
        return trash

    def delete(self, name: str) -> str:
        """Move `<root>/<name>` to `.trash/<name>-<ms>`."""
        directory = self._directory(name)
        if not self.versions(name):
            raise HeadNotFoundError(f"head {name!r}: not found")
        entry = f"{name}-{int(time.time() * 1000)}"
        try:
            trash = self._trash()
            os.rename(directory, trash / entry)
            _fsync_directory(self.root)
            _fsync_directory(trash)
        except OSError as error:
            raise _full(error, f"deleting head {name!r}") from None
        self.mark_changed()
        return f"{TRASH}/{entry}"

    def discard_version(self, name: str, version: int) -> None:
        """Move v<N>.json (first: the version is gone at once) and its artifact to the trash."""
        directory = self._directory(name)
        try:
            target = self._trash() / f"{name}-v{int(version)}-{int(time.time() * 1000)}"
            target.mkdir()
            names = (f"v{version}.json", f"v{version}{ARTIFACT_SUFFIX}", f"v{version}.joblib")
            for filename in names:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(directory / filename, target / filename)
            _fsync_directory(directory)
            _fsync_directory(target.parent)
        except OSError as error:
            raise _full(error, f"pruning head {name!r}") from None
        self.mark_changed()

    def purge_trash(self) -> int:
        """Remove trash entries older than the retention (their name ends in -<ms>)."""
        trash = self.root / TRASH
        if not trash.is_dir():
            return 0
        cutoff = (time.time() - self.trash_retention_seconds) * 1000
        purged = 0
        for entry in os.scandir(trash):
            stamp = entry.name.rsplit("-", 1)[-1]
            if stamp.isdigit() and int(stamp) <= cutoff:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                purged += 1
        return purged

    @contextlib.contextmanager
    def lock(self, name: str, wait_seconds: float) -> Iterator[None]:
        """flock(2) on .locks/<name>.lock, polled until `wait_seconds` pass."""
        check_name(name)
        locks = self.root / LOCKS
        try:
            locks.mkdir(parents=True, exist_ok=True)
            handle = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _full(error, f"locking head {name!r}") from None
        try:
            deadline = time.monotonic() + wait_seconds
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise HeadBusyError(
                            f"head {name!r} is being changed by another train, rollback or "
                            f"delete (waited {wait_seconds:g} s for its lock); try again"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            os.close(handle)
