"""The fidelity gate: the contract that lets every faithful backend share one vector space.

A backend other than the reference (torch fp32) serves only if its vectors of the
calibration texts stay within cosine floors of the reference vectors, for the configured
pooling, in one batch and one text at a time. The reference vectors are computed once with
torch fp32 and kept beside the exported files. Numerics depend on the CPU's instruction set
(int8 kernels differ between AVX2, AVX-512 and VNNI), so each verdict is stored under a
signature of the CPU and the runtime, and a verdict from another signature is never used.
"""

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from embedder.pooling import POOLINGS
from embedder.tokenization import BatchTokenizer

logger = logging.getLogger(__name__)

# A backend serves only if, on the calibration texts, its cosine to fp32 reaches both.
MIN_COSINE_FLOOR = 0.98
MEAN_COSINE_FLOOR = 0.99
REFERENCE_FILE = "reference-v1.npz"
VERDICTS_FOLDER = "verdicts"
CALIBRATION_MAX_TOKENS = 128
# CPU features that change which kernels ONNX Runtime and PyTorch run (x86 and Arm).
ISA_FLAGS = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "bf16",
)
# Written for calibration: mixed length, register and punctuation.
CALIBRATION_TEXTS = (
    "The weather was lovely this morning, so we walked to the market.",
    "Can anyone recommend a good book about the history of Rome?",
    "I honestly can't believe they cancelled the show after one season!!!",
    "Stock prices fell 3.2% on Tuesday after the central bank raised interest rates.",
    "lol that's the dumbest thing i've read all day",
    "Please restart the server and check the logs for errors before 5 pm.",
    "These people are ruining our neighbourhood and nobody does anything about it.",
    "She won the chess tournament in 2019 and again in 2021.",
    "Thanks so much for your help, it really made my week :)",
    "The committee will review all applications and respond within thirty days.",
    "Why do politicians never answer a simple question?",
    "Add two cups of flour, a pinch of salt and stir until smooth.",
    "He said the immigrants were taking all the jobs, which is simply not true.",
    "Our flight was delayed for six hours and the airline offered no explanation.",
    "I love how the light changes over the mountains in the evening.",
    "WARNING: do not open attachments from unknown senders.",
    "The defendant pleaded not guilty to all charges in court yesterday.",
    "ok",
    "What a waste of money. Terrible product, broke after two days.",
    "Scientists discovered a new species of frog in the rainforests of Peru.",
    "You are a disgrace and everyone in this forum knows it.",
    "The museum is open from Tuesday to Sunday; admission is free for children.",
    "My grandmother taught me how to knit when I was seven years old.",
    "Is there any evidence that this policy actually reduced crime?",
)

# (input_ids, attention_mask, pooling) -> pooled float32 vectors (batch, dim)
PooledRun = Callable[[np.ndarray, np.ndarray, str], np.ndarray]


def cpu_features() -> list[str]:
    """The instruction-set features of this CPU that matter to the kernels, sorted."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return sorted(present & set(ISA_FLAGS))
    return []


def cpu_signature(runtime: str) -> str:
    """A short id of this CPU's relevant features plus `runtime` (e.g. 'onnxruntime 1.32')."""
    parts = [platform.machine(), *cpu_features(), runtime]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def cosine(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, dim) arrays."""
    norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    return (left * right).sum(axis=1) / np.maximum(norms, 1e-12)


def pooled_vectors(run: PooledRun, model_path: Path, pooling: str, one_by_one: bool) -> np.ndarray:
    """The calibration texts' vectors from `run`, in one batch or one text per batch."""
    tokenize = BatchTokenizer(model_path, CALIBRATION_MAX_TOKENS)
    texts = list(CALIBRATION_TEXTS)
    if not one_by_one:
        return run(*tokenize(texts), pooling)
    return np.vstack([run(*tokenize([text]), pooling) for text in texts])


def build_reference(model_path: Path, target: Path) -> None:
    """Write the torch fp32 vectors of the calibration texts for every pooling (needs torch)."""
    from embedder.files import write_atomically
    from embedder.torch_backend import TorchBackend

    reference = TorchBackend(model_path)
    vectors = {
        pooling: pooled_vectors(reference, model_path, pooling, False) for pooling in POOLINGS
    }

    def build(scratch: Path) -> None:
        with scratch.open("wb") as handle:
            np.savez(handle, **vectors)

    logger.info("computing fp32 reference vectors of the calibration texts into %s", target)
    write_atomically(target, build)


def load_reference(path: Path) -> dict[str, np.ndarray]:
    """The reference vectors per pooling; plain arrays only, never pickles."""
    with np.load(path, allow_pickle=False) as stored:
        return {pooling: stored[pooling] for pooling in POOLINGS}


def measure(run: PooledRun, model_path: Path, reference: dict[str, np.ndarray]) -> dict:
    """Mean and min cosine to the reference for every pooling, worst of batched and alone."""
    result = {}
    for pooling in POOLINGS:
        cosines = np.concatenate(
            [
                cosine(pooled_vectors(run, model_path, pooling, alone), reference[pooling])
                for alone in (False, True)
            ]
        )
        result[pooling] = {
            "cosine_mean": round(float(cosines.mean()), 5),
            "cosine_min": round(float(cosines.min()), 5),
        }
    return result


def is_faithful(scores: dict[str, float]) -> bool:
    """True when both cosine figures reach their floors."""
    return scores["cosine_mean"] >= MEAN_COSINE_FLOOR and scores["cosine_min"] >= MIN_COSINE_FLOOR


def verdict_path(directory: Path, candidate: str, runtime: str) -> Path:
    """Where the verdict on `candidate` (a file stem or backend id) for this CPU is kept."""
    return directory / VERDICTS_FOLDER / f"{candidate}-{cpu_signature(runtime)}.json"


def read_verdict(path: Path) -> dict | None:
    """A stored verdict, or None when missing or unreadable (then it is measured again)."""
    try:
        verdict = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(verdict, dict) or not isinstance(verdict.get("poolings"), dict):
        return None
    return verdict


def write_verdict(path: Path, candidate: str, runtime: str, scores: dict) -> dict:
    """Store the measured `scores` with what they were measured on; returns the verdict."""
    from embedder.files import write_atomically

    verdict = {
        "candidate": candidate,
        "runtime": runtime,
        "machine": platform.machine(),
        "cpu_features": cpu_features(),
        "cpu_signature": cpu_signature(runtime),
        "floors": {"cosine_mean": MEAN_COSINE_FLOOR, "cosine_min": MIN_COSINE_FLOOR},
        "poolings": {
            pooling: {**values, "faithful": is_faithful(values)}
            for pooling, values in scores.items()
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda scratch: scratch.write_text(json.dumps(verdict, indent=2)))
    return verdict


def refusal(backend: str, model: str, verdict: dict, pooling: str) -> str | None:
    """Why `backend` may not serve with `pooling` per `verdict`, or None when it may."""
    scores = verdict["poolings"][pooling]
    if scores["faithful"]:
        return None
    return (
        f"backend {backend} is not faithful for {model} on this machine "
        f"({verdict['machine']}: {' '.join(verdict['cpu_features']) or 'features unknown'}; "
        f"{verdict['runtime']}): {pooling}-pooled vectors of the calibration texts reach cosine "
        f"mean {scores['cosine_mean']:.4f} / min {scores['cosine_min']:.4f} to fp32 "
        f"(floors {MEAN_COSINE_FLOOR} / {MIN_COSINE_FLOOR})"
    )
