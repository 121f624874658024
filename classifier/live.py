"""Which saved version of a head serves: the one its live pointer names. Same rules in every store.

Every save that goes live and every rollback writes the pointer, JSON
`{"version": N, "reason": "train" | "rollback" | ..., "set": "<UTC time>"}`. Then:

* no pointer at all (a head saved before pointers, or a crash between the first save and
  its pointer): the newest version serves;
* a pointer of the first format, `{"version": V, "newest": M}`, keeps its rule: a version
  newer than M serves, else V;
* an empty or unreadable pointer, or one naming a version that does not exist, raises
  LivePointerError: the operator sees it (GET /heads/{name}, the log) and pins a version
  with a rollback. Nothing rolls forward silently.
"""

import json
from datetime import UTC, datetime

from classifier.errors import LivePointerError

POINTER = "live.json"


def encode_pointer(version: int, reason: str) -> bytes:
    """The pointer bytes that pin `version`."""
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return json.dumps({"version": int(version), "reason": reason, "set": created}).encode()


def resolve_live(name: str, versions: list[int], pointer: bytes | None) -> int | None:
    """The version that serves, given the saved versions (oldest first) and the pointer bytes.

    Raises:
        LivePointerError: The pointer is empty, unreadable or names a missing version.

    """
    if not versions:
        return None
    if pointer is None:
        return versions[-1]
    fix = f"pin a version with POST /heads/{name}/rollback"
    try:
        data = json.loads(pointer.decode("utf-8"))
        version = int(data["version"])
        newest = int(data["newest"]) if "newest" in data else None
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        what = "empty" if not pointer.strip() else "unreadable"
        raise LivePointerError(
            f"head {name!r}: the live pointer is {what}; no version is switched to until an "
            f"operator does: {fix}"
        ) from None
    if newest is not None and versions[-1] > newest:
        return versions[-1]
    if version not in versions:
        raise LivePointerError(
            f"head {name!r}: the live pointer names v{version}, which does not exist "
            f"(versions: {versions}); {fix}"
        )
    return version
