"""Head-store tools: `python -m classifier.stores {list,copy,sign}`.

    list [STORE]                  heads, versions and the live version of each
    copy SOURCE TARGET [--head N] every version (numbers kept, checksums verified) and the
                                  live pointers, e.g. a MODELS_DIR folder into a Redis store
    sign [STORE]                  add HEADS_SIGNING_KEY's HMAC to every version whose
                                  checksum verifies (before turning the key on)

STORE defaults to HEAD_STORE (or MODELS_DIR); a redis:// STORE is a cluster node with
HEAD_STORE_CLUSTER=true, and copy takes --source-cluster / --target-cluster. Joblib heads
are skipped: convert them first with `python -m classifier.legacy convert MODELS_DIR`.
Exit 0 when every version was handled, 1 when some were skipped, 2 on bad usage.
"""

import argparse
import sys

from classifier import headfile
from classifier.errors import ClassifierError
from classifier.stores import HeadStore, open_store
from classifier.stores.base import check_name

LOCK_WAIT_SECONDS = 30.0


def list_store(store: HeadStore) -> list[str]:
    """One line per head: name, versions, live version (or why it has none)."""
    lines = []
    for name, versions in store.iter_heads():
        try:
            live = f"live v{store.live_version(name)}"
        except ClassifierError as error:
            live = f"no live version: {error}"
        lines.append(f"{name}: versions {versions}, {live}")
    return lines


def copy_heads(
    source: HeadStore, target: HeadStore, names: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """Copy heads version by version; returns (done, skipped) messages."""
    done, skipped = [], []
    for name in names or source.names():
        check_name(name)
        with target.lock(name, LOCK_WAIT_SECONDS):
            present = set(target.versions(name))
            for version in source.versions(name):
                label = f"head {name!r} v{version}"
                try:
                    metadata = source.read_metadata(name, version)
                    headfile.check_metadata(metadata, label)
                    artifact = source.read_artifact(name, version)
                    headfile.check_artifact(artifact, metadata, label, None)
                    if version in present:
                        theirs = target.read_metadata(name, version).get("artifact_sha256")
                        if theirs != metadata["artifact_sha256"]:
                            raise ClassifierError(f"{label}: the target has another v{version}")
                        done.append(f"{label}: already there")
                        continue
                    target.save(name, artifact, metadata, version=version)
                    done.append(f"{label}: copied")
                except ClassifierError as error:
                    skipped.append(str(error))
            pointer = source.read_pointer(name)
            if pointer is not None and target.versions(name):
                target.write_pointer(name, pointer)
    return done, skipped


def sign_heads(store: HeadStore, key: bytes) -> tuple[list[str], list[str]]:
    """Add the HMAC under `key` to every version whose checksum verifies."""
    done, skipped = [], []
    for name in store.names():
        with store.lock(name, LOCK_WAIT_SECONDS):
            for version in store.versions(name):
                label = f"head {name!r} v{version}"
                try:
                    metadata = store.read_metadata(name, version)
                    headfile.check_metadata(metadata, label)
                    artifact = store.read_artifact(name, version)
                    headfile.check_artifact(artifact, metadata, label, None)
                    metadata["artifact_hmac"] = headfile.signature(artifact, key)
                    store.write_metadata(name, version, metadata)
                    done.append(f"{label}: signed")
                except ClassifierError as error:
                    skipped.append(str(error))
    return done, skipped


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m classifier.stores", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="heads and versions")
    listing.add_argument("store", nargs="?")
    copying = commands.add_parser("copy", help="copy heads from one store to another")
    copying.add_argument("source")
    copying.add_argument("target")
    copying.add_argument("--head", action="append", help="only this head (repeatable)")
    copying.add_argument("--source-cluster", action="store_true", help="SOURCE: a cluster node")
    copying.add_argument("--target-cluster", action="store_true", help="TARGET: a cluster node")
    signing = commands.add_parser("sign", help="sign every version with HEADS_SIGNING_KEY")
    signing.add_argument("store", nargs="?")
    arguments = parser.parse_args(argv)
    from bertheads.connections import head_store
    from bertheads.settings import Settings

    settings = Settings()
    done: list[str] = []
    skipped: list[str] = []
    try:
        if arguments.command == "list":
            store = head_store(settings, arguments.store)
            print("\n".join(list_store(store)) or "no heads")
            return 0
        if arguments.command == "copy":
            done, skipped = copy_heads(
                open_store(arguments.source, cluster=arguments.source_cluster),
                open_store(arguments.target, cluster=arguments.target_cluster),
                arguments.head,
            )
        else:
            key = (
                settings.heads_signing_key.get_secret_value() if settings.heads_signing_key else ""
            )
            if not key:
                print("error: set HEADS_SIGNING_KEY to sign heads", file=sys.stderr)
                return 2
            store = head_store(settings, arguments.store)
            done, skipped = sign_heads(store, key.encode())
    except ClassifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for message in done:
        print(message)
    for message in skipped:
        print(f"skipped: {message}", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
