"""The PyTorch backend: fp32 on CPU (the reference), fp16 on CUDA.

This is the only embedder module that imports torch and transformers at run time, and only
when the backend is built: the ONNX path never loads them.
"""

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedder.pooling import POOLINGS

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def torch_pool(tokens: "torch.Tensor", mask: "torch.Tensor", mode: str) -> "torch.Tensor":
    """`embedder.pooling.pool` on the device: (batch, tokens, dim) -> (batch, dim) float32.

    Pooling where the tokens are avoids copying every token vector off the GPU.
    """
    tokens = tokens.float()  # fp16 sums over hundreds of tokens lose digits; pool in fp32
    if mode == "cls":
        return tokens[:, 0]
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    if mode == "mean":
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if mode == "max":
        return tokens.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    raise ValueError(f"unknown pooling {mode!r}; valid choices: {', '.join(POOLINGS)}")


def cuda_batch_size(device_index: int = 0) -> int:
    """Texts per forward pass for a CUDA device, from its memory (fp16, 512 tokens at most).

    A 768-d base model at 512 tokens needs ~40 MB of activations per text in fp16, so 8 GiB
    holds 128 of them with room for the weights; larger cards get larger batches, to 512.
    """
    import torch

    gibibytes = torch.cuda.get_device_properties(device_index).total_memory / 2**30
    return int(min(512, max(32, 2 ** int(np.log2(max(gibibytes, 1) * 16)))))


class TorchBackend:
    """The model in PyTorch: fp32 on CPU as the weights were trained, fp16 on CUDA."""

    def __init__(
        self, model_path: Path, device: str = "cpu", half: bool = False, threads: int | None = None
    ) -> None:
        import torch
        from transformers import AutoModel

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.dtype = torch.float16 if half else torch.float32
        model = AutoModel.from_pretrained(str(model_path), dtype=torch.float32)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.on_cuda = self.device.type == "cuda"
        self.precision = "fp16" if half else "fp32"

    def _to_device(self, array: np.ndarray) -> "torch.Tensor":
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
        if self.on_cuda:
            # Pinned host memory lets the copy run asynchronously beside the previous batch.
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, pooling: str
    ) -> np.ndarray:
        """Pooled float32 vectors (batch, dim) for one padded batch."""
        import torch

        ids, mask = self._to_device(input_ids), self._to_device(attention_mask)
        with torch.inference_mode():
            tokens = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = torch_pool(tokens, mask, pooling)
        return pooled.cpu().numpy().astype(np.float32, copy=False)
