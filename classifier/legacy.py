"""Convert heads saved as joblib pickles (format 1) to plain arrays, once, in place.

    python -m classifier.legacy convert MODELS_DIR [--dry-run]

This is the ONLY module that reads old joblib heads, and nothing on the serving path
imports it: the server refuses a joblib head (LegacyHeadError names this command) and
serves every other head. Converting unpickles, which can run code, so run it only on a
folder you trust; each file is first checked against the sha256 in its JSON.

Each version keeps its number: `vN.safetensors` is written (durably), the predictions of
the converted head are compared with the pickled estimator's on random vectors, then
`vN.json` is replaced by the new sidecar and `vN.joblib` moves to `.trash/`. A live
pointer of the first format is rewritten in the current one, pinning the same version.
With HEADS_SIGNING_KEY set, the converted heads are signed with it.
"""

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from classifier import headfile, live
from classifier.data import file_sha256
from classifier.errors import ClassifierError, CorruptHeadError
from classifier.stores.folder import (
    ARTIFACT_SUFFIX,
    TRASH,
    FolderStore,
    _fsync_directory,
    replace_durably,
    write_temporary,
)
from classifier.tasks import TaskSpec

TOLERANCE = 1e-4
LEGACY_KEYS = ("joblib_file", "joblib_sha256")


def _estimator(path: Path, metadata: dict[str, Any], label: str) -> Any:
    import joblib

    expected = metadata.get("joblib_sha256")
    actual = file_sha256(path)
    if actual != expected:
        raise CorruptHeadError(
            f"{label}: {path.name} checksum {actual[:12]}… does not match its JSON "
            f"({str(expected)[:12]}…); not unpickled, not converted"
        )
    payload = joblib.load(path)
    return payload["estimator"] if isinstance(payload, dict) else payload


def convert_version(
    store: FolderStore,
    name: str,
    version: int,
    dry_run: bool = False,
    signing_key: bytes | None = None,
) -> str:
    """Convert one legacy version in place (signed when a key is given); raises on failure."""
    label = f"head {name!r} v{version}"
    metadata = store.read_metadata(name, version)
    if not headfile.is_legacy(metadata):
        return f"{label}: already converted"
    directory = store.root / name
    pickled = directory / str(metadata.get("joblib_file", f"v{version}.joblib"))
    estimator = _estimator(pickled, metadata, label)
    encoder = metadata["encoder"]
    spec = TaskSpec(metadata["task"], tuple(metadata["labels"]))
    artifact = headfile.encode_head(estimator, spec, metadata.get("thresholds"), encoder)
    sidecar = {key: value for key, value in metadata.items() if key not in LEGACY_KEYS}
    sidecar.update(headfile.artifact_fields(artifact, signing_key))
    sidecar["converted"] = {
        "from": "joblib",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "joblib_sha256": metadata.get("joblib_sha256"),
    }
    loaded = headfile.decode_head(
        artifact, sidecar, name=name, version=version, signing_key=signing_key
    )
    probe = np.random.default_rng(version).normal(size=(64, int(encoder["dim"])))
    probe = probe.astype(np.float32)
    difference = float(np.abs(loaded.predict_proba(probe) - estimator.predict_proba(probe)).max())
    if difference > TOLERANCE:
        raise CorruptHeadError(
            f"{label}: the converted head's probabilities differ by {difference:.2g}; not converted"
        )
    if dry_run:
        return f"{label}: would convert (probabilities match within {difference:.1g})"
    # Artifact first, then the JSON that makes it the version: a crash in between leaves
    # the old joblib version as it was.
    temporary = write_temporary(directory, artifact, ARTIFACT_SUFFIX)
    try:
        os.replace(temporary, directory / f"v{version}{ARTIFACT_SUFFIX}")
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_directory(directory)
    replace_durably(directory / f"v{version}.json", json.dumps(sidecar, indent=2).encode())
    old = directory / str(metadata.get("joblib_file", f"v{version}.joblib"))
    if old.exists():
        trash = store.root / TRASH / f"{name}-v{version}-joblib-{int(time.time() * 1000)}"
        trash.mkdir(parents=True)
        os.rename(old, trash / old.name)
        _fsync_directory(directory)
    return f"{label}: converted (probabilities match within {difference:.1g})"


def convert_pointer(store: FolderStore, name: str, dry_run: bool = False) -> str | None:
    """Rewrite a first-format live pointer ({"version", "newest"}) in the current format."""
    pointer = store.read_pointer(name)
    if pointer is None or b'"newest"' not in pointer:
        return None
    version = live.resolve_live(name, store.versions(name), pointer)
    if not dry_run and version is not None:
        store.set_live(name, version, "converted")
    return f"head {name!r}: live pointer rewritten, v{version} stays live"


def convert(
    models_dir: Path, dry_run: bool = False, signing_key: bytes | None = None
) -> tuple[list[str], list[str]]:
    """Convert every legacy version under `models_dir`; returns (done, failed) messages."""
    store = FolderStore(models_dir)
    done, failed = [], []
    for name in store.names():
        for version in store.versions(name):
            try:
                done.append(convert_version(store, name, version, dry_run, signing_key))
            except (ClassifierError, OSError, KeyError, ValueError) as error:
                failed.append(f"head {name!r} v{version}: {error}")
            except Exception as error:  # an unpickling failure can raise anything
                failed.append(f"head {name!r} v{version}: cannot unpickle ({error!r})")
        try:
            message = convert_pointer(store, name, dry_run)
        except ClassifierError as error:
            failed.append(str(error))
        else:
            if message:
                done.append(message)
    if not dry_run and done:
        store.mark_changed()
    return done, failed


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when everything converted, 1 when a version failed, 2 on bad usage."""
    parser = argparse.ArgumentParser(
        prog="python -m classifier.legacy", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("convert", help="convert joblib heads in a models folder")
    command.add_argument("models_dir", type=Path, help="the folder (MODELS_DIR)")
    command.add_argument("--dry-run", action="store_true", help="check, change nothing")
    arguments = parser.parse_args(argv)
    if not arguments.models_dir.is_dir():
        print(f"error: {arguments.models_dir} is not a folder", file=sys.stderr)
        return 2
    from bertheads.settings import Settings

    secret = Settings().heads_signing_key
    key = secret.get_secret_value().encode() if secret is not None else b""
    done, failed = convert(arguments.models_dir, arguments.dry_run, key or None)
    for message in done:
        print(message)
    for message in failed:
        print(f"error: {message}", file=sys.stderr)
    if not done and not failed:
        print("no heads found")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
