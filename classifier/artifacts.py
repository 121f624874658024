"""Saved heads on a head store: publish a trained head as a new version, load one back.

`save_head` (the CLI, the API's registry, `python -m api.demo`) encodes the artifact
(classifier.headfile), then under the head's store lock: checks MAX_HEADS, saves the
version, reads it back and loads it exactly as a replica would, pins it live and prunes
old versions. A version that does not load back is discarded and never goes live.
`load_head` reads the metadata, refuses legacy and unsigned heads before reading the
artifact, then reads the artifact's bytes once and builds the head from them.
"""

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from classifier import headfile
from classifier.errors import (
    ClassifierError,
    CorruptHeadError,
    HeadNotFoundError,
    InvalidParameterError,
    TooManyHeadsError,
)
from classifier.loaded import LoadedHead
from classifier.persist import json_ready
from classifier.stores import NAME_PATTERN, HeadStore, check_name, open_store

__all__ = [
    "NAME_PATTERN",
    "HeadRecord",
    "build_metadata",
    "list_heads",
    "load_head",
    "publish",
    "read_metadata",
    "save_head",
]
LOCK_WAIT_SECONDS = 30.0


@dataclass
class HeadRecord:
    """A saved version: its name, number, sidecar metadata and the store it is in."""

    name: str
    version: int
    metadata: dict[str, Any]
    location: str


def build_metadata(
    trained: Any,
    encoder_info: dict[str, Any],
    data_hashes: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The descriptive sidecar of a trained head (artifact fields are added by `publish`)."""
    if "fingerprint" not in encoder_info or "dim" not in encoder_info:
        raise InvalidParameterError("encoder_info: needs 'fingerprint' and 'dim'")
    return json_ready(
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "encoder": dict(encoder_info),
            "task": trained.spec.task,
            "labels": list(trained.spec.labels),
            "thresholds": trained.thresholds,
            "params": trained.params,
            "features": trained.params.get("features", "embedding"),
            "n_train": trained.n_train,
            "fit_seconds": trained.fit_seconds,
            "data_hashes": data_hashes or {},
            "metrics": trained.metrics,
            **getattr(trained, "report", {}),
            **(extra or {}),
        }
    )


def publish(
    store: HeadStore,
    name: str,
    artifact: bytes,
    metadata: dict[str, Any],
    *,
    signing_key: bytes | None = None,
    make_live: bool = True,
    versions_kept: int | None = None,
    max_heads: int | None = None,
    only_if_absent: bool = False,
    lock_wait_seconds: float = LOCK_WAIT_SECONDS,
    hold_lock: bool = True,
) -> tuple[HeadRecord, LoadedHead] | None:
    """Save `artifact` as the next version of `name` under the head's lock; see module doc.

    Returns:
        The record and the head as loaded back from the store, or None when
        `only_if_absent` and the head already exists.

    Raises:
        TooManyHeadsError: The head is new and `max_heads` heads exist already.
        HeadBusyError: The lock was not had within `lock_wait_seconds`.
        HeadStoreFullError, HeadStoreUnavailableError: The store failed; nothing is live.

    `hold_lock=False` is for callers that already hold `store.lock(name)` (the registry,
    which swaps the loaded head in before releasing it).

    """
    check_name(name)
    sidecar = {**metadata, **headfile.artifact_fields(artifact, signing_key)}
    locked = store.lock(name, lock_wait_seconds) if hold_lock else contextlib.nullcontext()
    with locked:
        existing = store.versions(name)
        if only_if_absent and existing:
            return None
        if max_heads is not None and not existing:
            count = len(store.names())
            if count >= max_heads:
                raise TooManyHeadsError(
                    f"head {name!r}: {count} heads exist and MAX_HEADS is {max_heads}; delete "
                    "one (DELETE /heads/{name}) or raise MAX_HEADS"
                )
        version = store.save(name, artifact, sidecar)
        try:
            loaded = load_head(store, name, version, signing_key=signing_key)
        except ClassifierError:
            store.discard_version(name, version)
            raise
        if make_live:
            store.set_live(name, version, "train")
        if versions_kept is not None:
            live = version if make_live else store.live_version(name)
            store.prune(name, versions_kept, live)
        store.purge_trash()
    record = HeadRecord(name, version, loaded.metadata, store.location)
    return record, loaded


def save_head(
    trained: Any,
    store: HeadStore | Path | str,
    name: str,
    encoder_info: dict[str, Any],
    data_hashes: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    *,
    signing_key: bytes | None = None,
    versions_kept: int | None = None,
    max_heads: int | None = None,
) -> HeadRecord:
    """Save a trained head (classifier.training.TrainedHead) as the next live version.

    Args:
        trained: The result of training.train_head (its estimator must be persistable).
        store: A HeadStore, a folder path or a Redis URL.
        name: Head name (letters, digits, '_', '.', '-').
        encoder_info: Must hold "fingerprint" and "dim" (e.g. Encoder.describe()).
        data_hashes: File name (or data id) -> sha256 of the training / test data.
        extra: More JSON-ready metadata (e.g. timings).
        signing_key: HEADS_SIGNING_KEY: the sidecar gets an HMAC of the artifact.
        versions_kept: Keep this many newest versions (and the live one); None keeps all.
        max_heads: Refuse to create a head beyond this many.

    """
    check_name(name)
    head_store = open_store(store)
    metadata = build_metadata(trained, encoder_info, data_hashes, extra)
    artifact = headfile.encode_head(
        trained.estimator, trained.spec, trained.thresholds, encoder_info
    )
    published = publish(
        head_store,
        name,
        artifact,
        metadata,
        signing_key=signing_key,
        versions_kept=versions_kept,
        max_heads=max_heads,
    )
    assert published is not None  # only_if_absent is off
    return published[0]


def load_head(
    store: HeadStore | Path | str,
    name: str,
    version: int | None = None,
    expected_fingerprint: str | None = None,
    signing_key: bytes | None = None,
) -> LoadedHead:
    """Load a saved head (default: its live version), verified, without unpickling anything.

    Raises:
        HeadNotFoundError: No such head or version.
        LegacyHeadError: A joblib head (the message names the conversion command).
        CorruptHeadError: Checksum mismatch, missing artifact, unreadable metadata.
        UnsignedHeadError: `signing_key` is set and the head is unsigned or signed otherwise.
        LivePointerError: `version` is None and the live pointer is unreadable.
        FingerprintMismatchError: Trained on another encoder.

    """
    check_name(name)
    head_store = open_store(store)
    if version is None:
        version = head_store.live_version(name)
        if version is None:
            raise HeadNotFoundError(f"head {name!r}: not found")
    metadata = head_store.read_metadata(name, version)
    label = f"head {name!r} v{version}"
    headfile.check_metadata(metadata, label)  # legacy and unknown formats: not one byte more
    artifact = head_store.read_artifact(name, version)
    loaded = headfile.decode_head(
        artifact, metadata, name=name, version=version, signing_key=signing_key
    )
    if expected_fingerprint is not None:
        loaded.check_encoder(expected_fingerprint)
    return loaded


def read_metadata(
    store: HeadStore | Path | str, name: str, version: int | None = None
) -> dict[str, Any]:
    """The sidecar JSON of a version (default: the newest)."""
    check_name(name)
    head_store = open_store(store)
    if version is None:
        versions = head_store.versions(name)
        if not versions:
            raise HeadNotFoundError(f"head {name!r}: not found")
        version = versions[-1]
    return head_store.read_metadata(name, version)


def list_heads(store: HeadStore | Path | str) -> list[dict[str, Any]]:
    """Saved heads: name, versions, newest metadata (heads with unreadable metadata skipped)."""
    head_store = open_store(store)
    heads = []
    for name, versions in head_store.iter_heads():
        if not versions:
            continue
        try:
            latest = head_store.read_metadata(name, versions[-1])
        except (CorruptHeadError, HeadNotFoundError):
            continue
        heads.append({"name": name, "versions": versions, "latest": latest})
    return heads
