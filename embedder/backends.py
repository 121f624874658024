"""Choose, build and check the backend that turns token ids into pooled vectors.

Backends: `torch` (fp32 on CPU: the reference; fp16 on CUDA), `onnx` (ONNX Runtime fp32)
and `onnx-int8` (ONNX Runtime, int8 weights). Every backend but CPU torch must pass the
fidelity gate (`embedder.fidelity`) on this machine; one that fails is refused and, unless
told otherwise, the encoder serves torch fp32 instead and records why.

Device rule (EMBEDDER_DEVICE): `cpu` runs the configured backend on CPU. `cuda` runs torch
in fp16 on the GPU whatever backend is configured (the ONNX backends here are CPU-only) and
fails clearly without one. `auto` means cuda when a GPU is usable, else cpu; torch is
imported to ask only when the configured backend is torch or an NVIDIA device node exists,
so the ONNX path on a machine without a GPU never imports torch.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedder import fidelity
from embedder.errors import InvalidConfigError, UnfaithfulBackendError

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
DEVICES = ("auto", "cpu", "cuda")
NVIDIA_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version")
CPU_BATCH_SIZE = 32

# (input_ids, attention_mask, pooling) -> pooled float32 vectors (batch, dim)
Backend = Callable[[np.ndarray, np.ndarray, str], np.ndarray]


@dataclass
class LoadedBackend:
    """A backend ready to run, with what it is and why it was chosen."""

    run: Backend
    name: str  # the backend serving: torch | onnx | onnx-int8
    device: str  # cpu | cuda
    precision: str  # fp32 | fp16 | int8
    requested: str  # the backend configured
    fallback_reason: str | None = None
    fidelity: dict | None = None  # the gate's figures for the configured pooling


def _nvidia_present() -> bool:
    return any(Path(node).exists() for node in NVIDIA_DEVICE_NODES)


def resolve_device(device: str, backend: str) -> str:
    """'cpu' or 'cuda' for the configured device and backend (see the module's rule).

    Raises:
        InvalidConfigError: Unknown device, or `cuda` asked for where no GPU is usable.

    """
    if device not in DEVICES:
        raise InvalidConfigError(
            f"EMBEDDER_DEVICE={device!r} is not valid; valid choices: {', '.join(DEVICES)}"
        )
    if device == "cpu" or (device == "auto" and backend != "torch" and not _nvidia_present()):
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise InvalidConfigError(
            "EMBEDDER_DEVICE='cuda' but torch sees no usable CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "valid choices here: auto, cpu"
        )
    return "cpu"


def gate_verdict(
    run: Backend, candidate: str, runtime: str, directory: Path, model_path: Path
) -> dict:
    """The stored verdict on `candidate` for this CPU and runtime, measured if missing."""
    path = fidelity.verdict_path(directory, candidate, runtime)
    verdict = fidelity.read_verdict(path)
    if verdict is None:
        reference = fidelity.load_reference(directory / fidelity.REFERENCE_FILE)
        scores = fidelity.measure(run, model_path, reference)
        verdict = fidelity.write_verdict(path, candidate, runtime, scores)
        logger.info("fidelity gate on %s: %s", candidate, verdict["poolings"])
    return verdict


def _torch(model_path: Path, device: str, half: bool, threads: int | None) -> Backend:
    from embedder.torch_backend import TorchBackend

    return TorchBackend(model_path, device=device, half=half, threads=threads)


def load_backend(
    name: str,
    *,
    model_path: Path,
    model_id: str,
    weights_sha256: str,
    cache_dir: Path,
    pooling: str,
    device: str = "cpu",
    threads: int | None = None,
    fallback: bool = True,
) -> LoadedBackend:
    """Build backend `name` for the model, gate it, and fall back to torch fp32 if it fails.

    Args:
        name: One of BACKENDS.
        model_path: The model's directory.
        model_id: The model's name, for messages.
        weights_sha256: Keys the exported files.
        cache_dir: Root of the exported files and verdicts.
        pooling: The pooling served; the gate checks this one.
        device: One of DEVICES (see the module's rule).
        threads: CPU threads for the backend; default: every core.
        fallback: Serve torch fp32 when `name` fails the gate (else raise).

    Raises:
        UnfaithfulBackendError: `name` failed the gate and `fallback` is False.

    """
    if name not in BACKENDS:
        raise InvalidConfigError(
            f"EMBEDDER_BACKEND={name!r} is not valid; valid choices: {', '.join(BACKENDS)}"
        )
    device = resolve_device(device, name)
    from embedder.onnx_backend import model_directory

    directory = model_directory(cache_dir, weights_sha256)
    if device == "cuda":
        return _load_cuda(name, model_path, model_id, directory, pooling)
    if name == "torch":
        return LoadedBackend(
            _torch(model_path, "cpu", False, threads), "torch", "cpu", "fp32", name
        )
    from embedder.onnx_backend import OnnxBackend, ensure_files, runtime_name

    path = ensure_files(model_path, directory, name)
    backend = OnnxBackend(path, threads)
    verdict = gate_verdict(backend, path.stem, runtime_name(), directory, model_path)
    reason = fidelity.refusal(name, model_id, verdict, pooling)
    if reason is None:
        scores = verdict["poolings"][pooling]
        return LoadedBackend(backend, name, "cpu", backend.precision, name, fidelity=scores)
    if not fallback:
        raise UnfaithfulBackendError(
            f"{reason}; valid faithful choices on this CPU: torch"
            + ("" if name == "onnx" else ", onnx")
        )
    logger.warning("%s; serving torch fp32 instead", reason)
    torch_backend = _torch(model_path, "cpu", False, threads)
    return LoadedBackend(torch_backend, "torch", "cpu", "fp32", name, fallback_reason=reason)


def _load_cuda(
    name: str, model_path: Path, model_id: str, directory: Path, pooling: str
) -> LoadedBackend:
    """Torch fp16 on the GPU if it passes the gate, else torch fp32 on the GPU."""
    import torch

    from embedder.onnx_backend import ensure_files

    if name != "torch":
        logger.info("EMBEDDER_DEVICE resolves to cuda: serving torch fp16 instead of %s", name)
    ensure_files(model_path, directory, "reference")
    half = _torch(model_path, "cuda", True, None)
    runtime = f"torch {torch.__version__} cuda {torch.cuda.get_device_name(0)}"
    verdict = gate_verdict(half, "torch-fp16", runtime, directory, model_path)
    reason = fidelity.refusal("torch fp16 (cuda)", model_id, verdict, pooling)
    if reason is None:
        scores = verdict["poolings"][pooling]
        return LoadedBackend(half, "torch", "cuda", "fp16", name, fidelity=scores)
    logger.warning("%s; serving torch fp32 on cuda instead", reason)
    del half
    full = _torch(model_path, "cuda", False, None)
    return LoadedBackend(full, "torch", "cuda", "fp32", name, fallback_reason=reason)


def default_batch_size(device: str) -> int:
    """Texts per forward pass when none is configured: 32 on CPU, by memory on a GPU."""
    if device == "cuda":
        from embedder.torch_backend import cuda_batch_size

        return cuda_batch_size()
    return CPU_BATCH_SIZE
