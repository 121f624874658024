"""Which saved version of a head serves: the newest, unless a rollback pinned an older one.

`<models_dir>/<name>/live.json` records a pinned version and the newest version at the time
it was pinned. A version saved after that (by the API or the command line) goes live again,
so "train, then serve" needs no extra step, while a rollback sticks until the next train.
"""

import json
import os
import tempfile
from pathlib import Path

from classifier.artifacts import NAME_PATTERN, versions_in

POINTER = "live.json"


def list_versions(models_dir: Path, name: str) -> list[int]:
    """Saved versions of `name`, oldest first (a version exists once its JSON does)."""
    return versions_in(Path(models_dir) / name)


def head_names(models_dir: Path) -> list[str]:
    """Names of the heads with at least one saved version."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and NAME_PATTERN.match(entry.name) and list_versions(root, entry.name)
    )


def _read_pointer(models_dir: Path, name: str) -> dict[str, int] | None:
    try:
        pointer = json.loads((Path(models_dir) / name / POINTER).read_text())
        return {"version": int(pointer["version"]), "newest": int(pointer["newest"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_version(models_dir: Path, name: str) -> int | None:
    """The version that should serve, or None if the head has none."""
    versions = list_versions(models_dir, name)
    if not versions:
        return None
    pointer = _read_pointer(models_dir, name)
    if pointer and pointer["version"] in versions and versions[-1] <= pointer["newest"]:
        return pointer["version"]
    return versions[-1]


def set_live_version(models_dir: Path, name: str, version: int) -> None:
    """Pin `version` as live (atomic: write a temporary file, then rename)."""
    directory = Path(models_dir) / name
    newest = list_versions(models_dir, name)[-1]
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(handle, "w") as stream:
        json.dump({"version": version, "newest": newest}, stream)
    os.replace(temporary, directory / POINTER)


def live_stamp(models_dir: Path, name: str) -> tuple[int, int] | None:
    """A cheap token that changes whenever the live version or its files change."""
    version = live_version(models_dir, name)
    if version is None:
        return None
    try:
        changed = (Path(models_dir) / name / f"v{version}.json").stat().st_mtime_ns
    except OSError:
        return None
    return version, changed
