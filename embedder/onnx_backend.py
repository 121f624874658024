"""ONNX Runtime backends: the model exported once to ONNX, optionally with int8 weights.

Exports are cached under `cache_dir/onnx/<weights_sha256[:16]>/`.
"""

from pathlib import Path

import numpy as np
import torch

from embedder.errors import InvalidConfigError
from embedder.onnx_export import export_onnx, locked, make_session
from embedder.onnx_int8 import INT8_FILE, REJECTED_FILE, quantize_onnx

FP32_FILE = "model.onnx"


def ensure_files(model_path: Path, weights_sha256: str, cache_dir: Path, quantized: bool) -> Path:
    """Return the cached ONNX file for this model and variant, building it if missing."""
    directory = cache_dir / "onnx" / weights_sha256[:16]
    fp32 = directory / FP32_FILE
    int8 = directory / INT8_FILE
    wanted = int8 if quantized else fp32
    if wanted.is_file():
        return wanted
    if quantized and (directory / REJECTED_FILE).is_file():
        raise InvalidConfigError((directory / REJECTED_FILE).read_text())
    with locked(directory):
        if not fp32.is_file():
            export_onnx(model_path, fp32)
        if quantized and not int8.is_file():
            quantize_onnx(fp32, int8, model_path)
    return wanted


class OnnxBackend:
    """The model run by ONNX Runtime on CPU, in fp32 or with int8 weights."""

    def __init__(
        self, model_path: Path, weights_sha256: str, cache_dir: Path, quantized: bool = False
    ) -> None:
        self.path = ensure_files(model_path, weights_sha256, cache_dir, quantized)
        self.session = make_session(self.path)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> torch.Tensor:
        """Return the last hidden state for one padded batch."""
        (tokens,) = self.session.run(
            ["last_hidden_state"],
            {
                "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            },
        )
        return torch.from_numpy(tokens)
