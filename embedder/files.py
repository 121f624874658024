"""Files shared between processes: an exclusive build lock and atomic writes."""

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` so only one process builds its files."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(target: Path, build: Callable[[Path], None]) -> None:
    """Run `build(temporary_path)` and rename the result onto `target`.

    Readers never see a half file: the rename is atomic, and the data is flushed to disk
    before it, so a crash leaves the old file or the new one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".tmp")
    os.close(descriptor)
    scratch = Path(name)
    try:
        build(scratch)
        with scratch.open("rb") as handle:
            os.fsync(handle.fileno())
        scratch.chmod(0o644)  # mkstemp makes it private; the cache is shared by the team's users
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
