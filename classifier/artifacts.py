"""Saved heads: `<models_dir>/<name>/v<version>.joblib` plus `v<version>.json` metadata.

The JSON is written last and holds the joblib file's sha256, so a version exists once
its JSON exists, and a joblib file that does not match is refused before unpickling.
"""

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from classifier.data import file_sha256
from classifier.errors import CorruptHeadError, HeadNotFoundError, InvalidParameterError
from classifier.loaded import LoadedHead
from classifier.tasks import TaskSpec
from classifier.training import TrainedHead

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_PATTERN = re.compile(r"^v(\d+)\.json$")
FORMAT_VERSION = 1


@dataclass
class HeadRecord:
    """Where a saved head lives and its metadata."""

    name: str
    version: int
    joblib_path: Path
    metadata_path: Path
    metadata: dict[str, Any]


def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise InvalidParameterError(
            f"name: {name!r} must be 1-64 characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )


def versions_in(directory: Path) -> list[int]:
    """Saved versions in a head directory, oldest first (a version exists once its JSON does)."""
    if not directory.is_dir():
        return []
    return sorted(
        int(match.group(1))
        for match in (VERSION_PATTERN.match(entry.name) for entry in directory.iterdir())
        if match
    )


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def save_head(
    trained: TrainedHead,
    models_dir: Path,
    name: str,
    encoder_info: dict[str, Any],
    data_hashes: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> HeadRecord:
    """Save a trained head as the next free version of `name`, atomically.

    Args:
        trained: The result of training.train_head.
        models_dir: Root directory of saved heads.
        name: Head name (letters, digits, '_', '.', '-').
        encoder_info: Must hold "fingerprint" and "dim" (e.g. Encoder.describe()).
        data_hashes: File name (or data id) -> sha256 of the training / test data.
        extra: More JSON-ready metadata (e.g. timings).

    Returns:
        The record of the saved version.

    """
    _check_name(name)
    if "fingerprint" not in encoder_info or "dim" not in encoder_info:
        raise InvalidParameterError("encoder_info: needs 'fingerprint' and 'dim'")
    directory = Path(models_dir) / name
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".joblib")
    os.close(handle)
    try:
        joblib.dump({"estimator": trained.estimator, "format": FORMAT_VERSION}, temporary)
        checksum = file_sha256(Path(temporary))
        version = (versions_in(directory) or [0])[-1] + 1
        while True:
            joblib_path = directory / f"v{version}.joblib"
            try:
                # A hard link never overwrites: two writers cannot take one version number.
                os.link(temporary, joblib_path)
                break
            except FileExistsError:
                version += 1
    finally:
        os.unlink(temporary)
    metadata = _json_ready(
        {
            "name": name,
            "version": version,
            "format": FORMAT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "encoder": {
                "fingerprint": encoder_info["fingerprint"],
                "dim": encoder_info["dim"],
                **encoder_info,
            },
            "task": trained.spec.task,
            "labels": list(trained.spec.labels),
            "thresholds": trained.thresholds,
            "params": trained.params,
            "n_train": trained.n_train,
            "fit_seconds": trained.fit_seconds,
            "data_hashes": data_hashes or {},
            "metrics": trained.metrics,
            "joblib_file": joblib_path.name,
            "joblib_sha256": checksum,
            **(extra or {}),
        }
    )
    metadata_path = directory / f"v{version}.json"
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(metadata, stream, indent=2)
    os.replace(temporary, metadata_path)
    return HeadRecord(name, version, joblib_path, metadata_path, metadata)


def list_heads(models_dir: Path) -> list[dict[str, Any]]:
    """List saved heads: name, versions, latest metadata (unreadable ones skipped)."""
    heads = []
    root = Path(models_dir)
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        versions = versions_in(directory)
        if not versions or not NAME_PATTERN.match(directory.name):
            continue
        try:
            latest = read_metadata(root, directory.name, versions[-1])
        except CorruptHeadError:
            continue
        heads.append({"name": directory.name, "versions": versions, "latest": latest})
    return heads


def read_metadata(models_dir: Path, name: str, version: int | None = None) -> dict[str, Any]:
    """Read the JSON metadata of a version (default: the latest)."""
    _check_name(name)
    directory = Path(models_dir) / name
    versions = versions_in(directory)
    if not versions:
        raise HeadNotFoundError(f"head {name!r}: not found in {models_dir}")
    version = versions[-1] if version is None else version
    if version not in versions:
        raise HeadNotFoundError(f"head {name!r}: no version {version}; versions: {versions}")
    try:
        return json.loads((directory / f"v{version}.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CorruptHeadError(f"head {name!r} v{version}: unreadable metadata ({error})") from None


def load_head(
    models_dir: Path,
    name: str,
    version: int | None = None,
    expected_fingerprint: str | None = None,
) -> LoadedHead:
    """Load a saved head (default: latest version) after verifying its checksum.

    Args:
        models_dir: Root directory of saved heads.
        name: Head name.
        version: Version number, or None for the latest.
        expected_fingerprint: The running encoder's fingerprint; a head trained on
            another encoder raises FingerprintMismatchError.

    Raises:
        HeadNotFoundError: No such head or version.
        CorruptHeadError: Missing/mismatching joblib file or unreadable metadata.
        FingerprintMismatchError: Trained on another encoder.

    """
    metadata = read_metadata(models_dir, name, version)
    version = int(metadata.get("version", version or 0))
    path = Path(models_dir) / name / f"v{version}.joblib"
    if not path.is_file():
        raise CorruptHeadError(f"head {name!r} v{version}: {path.name} is missing")
    expected = metadata.get("joblib_sha256")
    actual = file_sha256(path)
    if actual != expected:
        raise CorruptHeadError(
            f"head {name!r} v{version}: {path.name} checksum {actual[:12]}… does not match "
            f"the recorded {str(expected)[:12]}…; refusing to load it"
        )
    try:
        payload = joblib.load(path)
        estimator = payload["estimator"]
    except Exception as error:  # a verified file can still be from an incompatible library version
        raise CorruptHeadError(f"head {name!r} v{version}: cannot unpickle ({error})") from None
    loaded = LoadedHead(
        name=name,
        version=version,
        estimator=estimator,
        spec=TaskSpec(metadata["task"], tuple(metadata["labels"])),
        thresholds=metadata.get("thresholds"),
        metadata=metadata,
    )
    if expected_fingerprint is not None:
        loaded.check_encoder(expected_fingerprint)
    return loaded
