"""ONNX Runtime backends: the model exported once to ONNX, optionally with int8 weights.

Files live under `cache_dir/onnx/<weights_sha256[:16]>/`: the fp32 export, the int8 model,
the fp32 reference vectors of the fidelity gate, per-CPU verdicts, and per-CPU graphs that
ONNX Runtime has already optimised, so a session opens without redoing its graph fusions.
Building (export, quantization) needs torch and takes minutes: `python -m embedder.prepare`
does it at install; a server that finds files missing builds them, logged, instead of failing.
"""

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedder.cores import available_cores
from embedder.fidelity import REFERENCE_FILE, cpu_signature
from embedder.files import locked, write_atomically
from embedder.onnx_int8 import INT8_FILE
from embedder.pooling import pool

if TYPE_CHECKING:
    import onnxruntime

logger = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
OPTIMIZED_FOLDER = "optimized"


def model_directory(cache_dir: Path, weights_sha256: str) -> Path:
    """The folder of one model's exported files."""
    return cache_dir / "onnx" / weights_sha256[:16]


def runtime_name() -> str:
    """'onnxruntime <version>': part of every ONNX verdict's and optimised graph's key."""
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


VARIANTS = ("reference", "onnx", "onnx-int8")


def ensure_files(model_path: Path, directory: Path, variant: str, at_install: bool = False) -> Path:
    """Build what `variant` needs if missing; return its file (ONNX model or reference).

    Every variant needs the fp32 reference vectors of the gate; `onnx` adds the export and
    `onnx-int8` the int8 model. Safe across processes: one builds under the folder's lock,
    the others wait and reuse the files.
    """
    steps = [(directory / REFERENCE_FILE, "fp32 reference vectors", _build_reference)]
    if variant in ("onnx", "onnx-int8"):
        steps.append((directory / FP32_FILE, "ONNX export", _build_export))
    if variant == "onnx-int8":
        steps.append((directory / INT8_FILE, "int8 quantization", _build_int8))
    wanted = steps[-1][0]
    if all(path.is_file() for path, _, _ in steps):
        return wanted
    with locked(directory):
        for path, title, build in steps:
            if path.is_file():
                continue
            if at_install:
                logger.info("building %s for %s", title, model_path)
            else:
                logger.warning(
                    "%s missing for %s: building it now (python -m embedder.prepare does this "
                    "at install)",
                    title,
                    model_path,
                )
            started = time.perf_counter()
            build(model_path, directory)
            logger.info("%s done in %.1f s", title, time.perf_counter() - started)
    return wanted


def _build_reference(model_path: Path, directory: Path) -> None:
    from embedder.fidelity import build_reference

    build_reference(model_path, directory / REFERENCE_FILE)


def _build_export(model_path: Path, directory: Path) -> None:
    from embedder.onnx_export import export_onnx

    export_onnx(model_path, directory / FP32_FILE)


def _build_int8(model_path: Path, directory: Path) -> None:
    from embedder.onnx_int8 import quantize_onnx

    quantize_onnx(directory / FP32_FILE, directory / INT8_FILE, model_path)


def optimized_path(source: Path) -> Path:
    """Where ONNX Runtime's optimised graph of `source` for this CPU and runtime is kept.

    Level-ALL graphs may hold CPU-specific rewrites, so the key names the CPU as well.
    """
    signature = cpu_signature(runtime_name())
    return source.parent / OPTIMIZED_FOLDER / f"{source.stem}-{signature}.onnx"


def _session_options(threads: int | None) -> "onnxruntime.SessionOptions":
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the "hardware specific graph" notice is expected here
    return options


def make_session(
    path: Path, threads: int | None = None, optimize: bool = True
) -> "onnxruntime.InferenceSession":
    """An ORT CPU session; with `optimize`, from the saved optimised graph (saved first)."""
    import onnxruntime

    options = _session_options(threads)
    level = onnxruntime.GraphOptimizationLevel
    if not optimize:
        options.graph_optimization_level = level.ORT_ENABLE_ALL
        return onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    optimized = optimized_path(path)
    if not optimized.is_file():
        try:
            save_optimized(path, optimized)
        except OSError as error:
            # A read-only model cache: optimise in memory at every start instead.
            logger.warning("optimised graph not saved, %s is not writable: %s", optimized, error)
            options.graph_optimization_level = level.ORT_ENABLE_ALL
            return onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
    # Its fusions are done already; running the optimisers again only costs start-up time.
    options.graph_optimization_level = level.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(
        str(optimized), sess_options=options, providers=["CPUExecutionProvider"]
    )


def save_optimized(source: Path, target: Path) -> None:
    """Let ONNX Runtime optimise `source` fully and write the resulting graph to `target`."""
    import onnxruntime

    def build(scratch: Path) -> None:
        options = _session_options(1)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(scratch)
        onnxruntime.InferenceSession(
            str(source), sess_options=options, providers=["CPUExecutionProvider"]
        )

    started = time.perf_counter()
    write_atomically(target, build)
    logger.info("optimised graph of %s saved in %.1f s", source.name, time.perf_counter() - started)


class OnnxBackend:
    """The model run by ONNX Runtime on CPU, in fp32 or with int8 weights."""

    def __init__(self, path: Path, threads: int | None = None, optimize: bool = True) -> None:
        self.path = path
        self.session = make_session(path, threads, optimize)
        self.precision = "int8" if path.name == INT8_FILE else "fp32"

    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, pooling: str
    ) -> np.ndarray:
        """Pooled float32 vectors (batch, dim) for one padded batch."""
        (tokens,) = self.session.run(
            ["last_hidden_state"],
            {
                "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            },
        )
        return pool(tokens, attention_mask, pooling)
