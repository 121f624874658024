"""Build the model files once, at install: `python -m embedder.prepare`.

Steps, each logged with its time: find the model (reassembling packaged weights), compute
the fp32 reference vectors of the fidelity gate, export ONNX, quantize to int8, save ONNX
Runtime's optimised graph for this CPU, run the gate on this CPU and store its verdict.
Reads Settings (EMBEDDER_MODEL, EMBEDDER_BACKEND, EMBEDDER_POOLING, EMBEDDER_CACHE_DIR...)
like the server, so the server finds everything built and opens a session in a second.

    python -m embedder.prepare                       # the configured model and backend
    python -m embedder.prepare --backend onnx        # another backend
    python -m embedder.prepare --model sentence-transformers/all-MiniLM-L6-v2

Exits 0 when the configured backend passes the gate, 0 with a warning when it fails and
the server will fall back to torch (the build succeeded; the CPU decides), 1 on errors.
"""

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from embedder.backends import BACKENDS
from embedder.errors import EmbedderError
from embedder.pooling import POOLINGS

logger = logging.getLogger("embedder.prepare")


@contextmanager
def step(title: str) -> Iterator[None]:
    """Log `title` when it starts and its duration when it ends."""
    print(f"[prepare] {title} ...", flush=True)
    started = time.perf_counter()
    yield
    print(f"[prepare] {title}: done in {time.perf_counter() - started:.1f} s", flush=True)


def prepare(
    model: str,
    backend: str,
    pooling: str,
    cache_dir: Path | None,
    threads: int | None = None,
    report: Callable[[str], None] = print,
) -> dict:
    """Build every file `backend` needs for `model` and gate it on this CPU; returns a summary."""
    from embedder import fidelity
    from embedder.backends import gate_verdict
    from embedder.onnx_backend import (
        FP32_FILE,
        OnnxBackend,
        ensure_files,
        model_directory,
        optimized_path,
        runtime_name,
    )
    from embedder.onnx_int8 import INT8_FILE
    from embedder.resolve import default_cache_dir, resolve_model

    cache_dir = cache_dir or default_cache_dir()
    with step(f"find {model} (reassembling packaged weights if needed)"):
        resolved = resolve_model(model, cache_dir)
    report(f"[prepare] model files: {resolved.path} ({resolved.source})")
    directory = model_directory(cache_dir, resolved.weights_sha256)
    with step("fp32 reference vectors of the fidelity gate"):
        ensure_files(resolved.path, directory, "reference", at_install=True)
    summary: dict = {"model": model, "backend": backend, "directory": str(directory)}
    if backend == "torch":
        summary["serves"] = "torch"
        return summary
    with step("ONNX export (fp32)"):
        ensure_files(resolved.path, directory, "onnx", at_install=True)
    if backend == "onnx-int8":
        with step(f"int8 quantization ({INT8_FILE})"):
            ensure_files(resolved.path, directory, "onnx-int8", at_install=True)
    source = directory / (INT8_FILE if backend == "onnx-int8" else FP32_FILE)
    with step("ONNX Runtime optimised graph for this CPU"):
        if not optimized_path(source).is_file():
            OnnxBackend(source, threads)
    with step(f"fidelity gate of {backend} on this CPU"):
        stored = fidelity.read_verdict(
            fidelity.verdict_path(directory, source.stem, runtime_name())
        )
        verdict = stored or gate_verdict(
            OnnxBackend(source, threads), source.stem, runtime_name(), directory, resolved.path
        )
    reason = fidelity.refusal(backend, resolved.model_id, verdict, pooling)
    scores = verdict["poolings"][pooling]
    report(
        f"[prepare] gate ({pooling} pooling): cosine to fp32 mean {scores['cosine_mean']:.4f}, "
        f"min {scores['cosine_min']:.4f} (floors {fidelity.MEAN_COSINE_FLOOR} / "
        f"{fidelity.MIN_COSINE_FLOOR}) on {' '.join(verdict['cpu_features'])}"
    )
    summary.update(verdict=verdict, serves=backend if reason is None else "torch")
    summary["fallback_reason"] = reason
    return summary


def main(argv: list[str] | None = None) -> int:
    """The command line: reads Settings, builds, prints what the server will serve."""
    from bertheads.settings import Settings

    settings = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m embedder.prepare", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default=settings.embedder_model)
    parser.add_argument("--backend", default=settings.embedder_backend, choices=BACKENDS)
    parser.add_argument("--pooling", default=settings.embedder_pooling, choices=POOLINGS)
    parser.add_argument("--cache-dir", type=Path, default=settings.embedder_cache_dir)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        summary = prepare(
            arguments.model,
            arguments.backend,
            arguments.pooling,
            arguments.cache_dir,
            settings.embedder_threads,
        )
    except EmbedderError as error:
        print(f"[prepare] failed: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    if summary.get("fallback_reason"):
        print(f"[prepare] WARNING: {summary['fallback_reason']}", file=sys.stderr)
        print(f"[prepare] the server will serve torch fp32 here ({elapsed:.1f} s in all)")
    else:
        print(f"[prepare] ready: the server will serve {summary['serves']} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
