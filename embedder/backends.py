"""Backends turn padded token ids into token vectors; pooling happens outside them."""

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

BACKENDS = ("torch", "onnx", "onnx-int8")


class Backend(Protocol):
    """Runs the transformer: (ids, mask) int64 arrays -> (batch, tokens, dim) float32 tensor."""

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> torch.Tensor:
        """Return the last hidden state."""
        ...


class TorchBackend:
    """The model in fp32 PyTorch, as the weights were trained."""

    def __init__(self, model_path: Path) -> None:
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(str(model_path), dtype=torch.float32)
        self.model.eval()

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> torch.Tensor:
        """Return the last hidden state for one padded batch."""
        with torch.inference_mode():
            output = self.model(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=torch.from_numpy(attention_mask),
            )
        return output.last_hidden_state


def load_backend(name: str, model_path: Path, weights_sha256: str, cache_dir: Path) -> Backend:
    """Build the backend called `name` for the model at `model_path`."""
    if name == "torch":
        return TorchBackend(model_path)
    if name in ("onnx", "onnx-int8"):
        from embedder.onnx_backend import OnnxBackend

        return OnnxBackend(model_path, weights_sha256, cache_dir, quantized=name == "onnx-int8")
    raise ValueError(f"unknown backend {name!r}; valid choices: {', '.join(BACKENDS)}")
