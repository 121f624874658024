"""One head = one safetensors artifact plus a sidecar JSON; bytes in, checked, loaded, no pickle.

The artifact holds every array, and in its header what predicting needs; the sidecar
holds descriptive metadata.

The artifact's header metadata holds `format`, `format_version` and `head`: JSON with the
task, labels, thresholds, the encoder's fingerprint and dim, the model's inputs and its
component tree (classifier.persist). The sidecar holds what describes the version: name,
version, created, metrics, params, data hashes, the artifact's sha256 and size, and with
HEADS_SIGNING_KEY an HMAC-SHA256 of the artifact.

`decode_head` works on bytes read once: it checks the sha256 (and the HMAC when a key is
set: an unsigned or wrongly signed head is refused), then parses those same bytes.
"""

import hashlib
import hmac
import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from classifier import persist
from classifier.errors import (
    CorruptHeadError,
    LegacyHeadError,
    UnsignedHeadError,
)
from classifier.loaded import LoadedHead
from classifier.tasks import TASKS, TaskSpec

FORMAT = "bertheads-head"
FORMAT_VERSION = 2
EXTENSION = ".safetensors"
CONVERT_COMMAND = "python -m classifier.legacy convert MODELS_DIR"
MAX_HEADER_BYTES = 100 * 1024 * 1024


def encode_head(
    model: Any,
    spec: TaskSpec,
    thresholds: list[float] | None,
    encoder: Mapping[str, Any],
) -> bytes:
    """The artifact bytes of a fitted model (anything classifier.persist can dump).

    Args:
        model: The fitted head (e.g. LogisticHead) or any persistable component.
        spec: What it predicts (task and labels, in probability-column order).
        thresholds: Decision thresholds, or None.
        encoder: Must hold "fingerprint" and "dim" of the encoder it was trained on.

    """
    tree, arrays = persist.dump(model)
    inputs = list(getattr(model, "inputs_", ("vectors",)))
    head = {
        "task": spec.task,
        "labels": persist.json_ready(list(spec.labels)),
        "thresholds": persist.json_ready(thresholds),
        "encoder": {"fingerprint": str(encoder["fingerprint"]), "dim": int(encoder["dim"])},
        "inputs": inputs,
        "model": tree,
    }
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "head": json.dumps(head, separators=(",", ":")),
    }
    return save_tensors(arrays, metadata=header)


def sha256(artifact: bytes) -> str:
    """Hex sha256 of the artifact bytes."""
    return hashlib.sha256(artifact).hexdigest()


def signature(artifact: bytes, key: bytes) -> str:
    """Hex HMAC-SHA256 of the artifact bytes under `key`."""
    return hmac.new(key, artifact, hashlib.sha256).hexdigest()


def artifact_fields(artifact: bytes, signing_key: bytes | None) -> dict[str, Any]:
    """The sidecar fields that identify an artifact: sha256, size, HMAC when a key is set."""
    fields: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "artifact_sha256": sha256(artifact),
        "artifact_bytes": len(artifact),
    }
    if signing_key:
        fields["artifact_hmac"] = signature(artifact, signing_key)
    return fields


def is_legacy(metadata: Mapping[str, Any]) -> bool:
    """True for the sidecar of a head saved as a joblib pickle (format 1)."""
    return "artifact_sha256" not in metadata and (
        "joblib_sha256" in metadata or "joblib_file" in metadata
    )


def check_metadata(metadata: Mapping[str, Any], label: str) -> None:
    """Refuse legacy and future formats before any artifact byte is read."""
    if is_legacy(metadata):
        raise LegacyHeadError(
            f"{label} is saved in the old joblib (pickle) format, which is never loaded "
            f"because unpickling can run code; convert it once with `{CONVERT_COMMAND}`"
        )
    version = metadata.get("format")
    if version != FORMAT_VERSION or not isinstance(metadata.get("artifact_sha256"), str):
        raise CorruptHeadError(
            f"{label}: metadata of format {version!r} is not format {FORMAT_VERSION} "
            "(saved by another bertheads version?)"
        )


def check_artifact(
    artifact: bytes, metadata: Mapping[str, Any], label: str, signing_key: bytes | None
) -> None:
    """Checksum, then signature when a key is set; raises CorruptHeadError / UnsignedHeadError."""
    expected = str(metadata.get("artifact_sha256"))
    actual = sha256(artifact)
    if not hmac.compare_digest(actual, expected):
        raise CorruptHeadError(
            f"{label}: artifact checksum {actual[:12]}… does not match the recorded "
            f"{expected[:12]}…; refusing to load it"
        )
    if signing_key:
        recorded = metadata.get("artifact_hmac")
        if not isinstance(recorded, str):
            raise UnsignedHeadError(
                f"{label} is not signed, and HEADS_SIGNING_KEY is set; refusing to load it"
            )
        if not hmac.compare_digest(signature(artifact, signing_key), recorded):
            raise UnsignedHeadError(
                f"{label}: signature does not match HEADS_SIGNING_KEY; refusing to load it"
            )


def read_header(artifact: bytes) -> dict[str, str]:
    """The safetensors header's `__metadata__` (str -> str), bounds-checked."""
    if len(artifact) < 8:
        raise CorruptHeadError("artifact: shorter than a safetensors header")
    (size,) = struct.unpack("<Q", artifact[:8])
    if size > min(MAX_HEADER_BYTES, len(artifact) - 8):
        raise CorruptHeadError("artifact: header size out of range (not a safetensors file)")
    try:
        header = json.loads(artifact[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CorruptHeadError("artifact: header is not JSON (not a safetensors file)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise CorruptHeadError("artifact: no header metadata (not a bertheads head)")
    return metadata


def _parse_head(artifact: bytes, label: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        header = read_header(artifact)
    except CorruptHeadError as error:
        raise CorruptHeadError(f"{label}: {error}") from None
    if header.get("format") != FORMAT or header.get("format_version") != str(FORMAT_VERSION):
        raise CorruptHeadError(
            f"{label}: artifact format {header.get('format')!r} "
            f"v{header.get('format_version')!r} is not {FORMAT} v{FORMAT_VERSION}"
        )
    try:
        head = json.loads(header["head"])
        arrays = load_tensors(artifact)
    except (KeyError, ValueError, RecursionError, TypeError) as error:
        raise CorruptHeadError(f"{label}: unreadable artifact ({error})") from None
    except Exception as error:  # safetensors raises its own SafetensorError on bad tensors
        raise CorruptHeadError(f"{label}: unreadable artifact ({type(error).__name__})") from None
    if not isinstance(head, dict):
        raise CorruptHeadError(f"{label}: artifact header 'head' is not an object")
    return head, arrays


def decode_head(
    artifact: bytes,
    metadata: Mapping[str, Any],
    *,
    name: str,
    version: int,
    signing_key: bytes | None = None,
) -> LoadedHead:
    """Check `artifact` against its sidecar `metadata` and rebuild the head from those bytes.

    Raises:
        LegacyHeadError: A joblib head; the message names the conversion command.
        CorruptHeadError: Checksum mismatch, malformed artifact, unknown component kind.
        UnsignedHeadError: A signing key is set and the signature is missing or wrong.

    """
    label = f"head {name!r} v{version}"
    check_metadata(metadata, label)
    check_artifact(artifact, metadata, label, signing_key)
    head, arrays = _parse_head(artifact, label)
    try:
        task, labels = head["task"], tuple(head["labels"])
        thresholds = head.get("thresholds")
        encoder = head["encoder"]
        fingerprint, dim = str(encoder["fingerprint"]), int(encoder["dim"])
        inputs = tuple(str(item) for item in head.get("inputs", ["vectors"]))
        tree = head["model"]
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptHeadError(f"{label}: artifact header lacks {error}") from None
    if task not in TASKS or not labels or not set(inputs) <= {"vectors", "texts"}:
        raise CorruptHeadError(f"{label}: artifact header has task {task!r}, inputs {inputs}")
    described = metadata.get("encoder", {})
    if (
        metadata.get("task", task) != task
        or list(metadata.get("labels", labels)) != list(labels)
        or not isinstance(described, dict)
        or str(described.get("fingerprint", fingerprint)) != fingerprint
    ):
        raise CorruptHeadError(
            f"{label}: metadata task, labels or encoder differ from the artifact's"
        )
    try:
        model = persist.load(tree, arrays)
    except CorruptHeadError as error:
        raise CorruptHeadError(f"{label}: {error}") from None
    return LoadedHead(
        name=name,
        version=version,
        model=model,
        spec=TaskSpec(task, labels),
        thresholds=None if thresholds is None else [float(cut) for cut in thresholds],
        metadata=dict(metadata),
        fingerprint=fingerprint,
        dim=dim,
        inputs=inputs,
    )
