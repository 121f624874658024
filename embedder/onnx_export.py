"""Export a transformers model to ONNX once, and open ONNX Runtime sessions on it.

Files are written atomically (temporary file, then rename) under a file lock, so concurrent
processes never read a half file and never export twice.
"""

import contextlib
import fcntl
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import onnxruntime

logger = logging.getLogger(__name__)

OPSET = 17


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` so only one process builds its files."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(target: Path, build: Callable[[Path], None]) -> None:
    """Run `build(temporary_path)` and rename the result onto `target`."""
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".tmp")
    os.close(descriptor)
    scratch = Path(name)
    try:
        build(scratch)
        scratch.chmod(0o644)  # mkstemp makes it private; the cache is shared by the team's users
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)


class _LastHiddenState(torch.nn.Module):
    """Wraps a transformers model so its ONNX graph has one output: the token vectors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_onnx(model_path: Path, target: Path) -> None:
    """Export the model at `model_path` to an ONNX file with dynamic batch and sequence axes."""
    from transformers import AutoModel

    # Eager attention exports as plain MatMul/Softmax, which ORT's fusions recognise.
    model = AutoModel.from_pretrained(
        str(model_path), dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    # A padded example row, so the trace keeps the masking path instead of skipping it.
    input_ids = torch.full((2, 8), 100, dtype=torch.long)
    attention_mask = torch.ones((2, 8), dtype=torch.long)
    attention_mask[1, 5:] = 0
    axes = {0: "batch", 1: "sequence"}

    def build(scratch: Path) -> None:
        # The tracer warns about shape checks it freezes; tests check the graph on real padding.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LastHiddenState(model),
                (input_ids, attention_mask),
                str(scratch),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                opset_version=OPSET,
                dynamo=False,
            )

    logger.info("exporting %s to %s", model_path, target)
    write_atomically(target, build)


def make_session(path: Path, threads: int | None = None) -> "onnxruntime.InferenceSession":
    """An ORT CPU session using every core, with all graph optimisations on."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
