"""Export a transformers model to ONNX once (needs torch; run by `python -m embedder.prepare`)."""

import logging
import warnings
from pathlib import Path

from embedder.files import write_atomically

logger = logging.getLogger(__name__)

OPSET = 17


def export_onnx(model_path: Path, target: Path) -> None:
    """Export the model at `model_path` to an ONNX file with dynamic batch and sequence axes.

    The graph has inputs `input_ids`, `attention_mask` (int64) and one output,
    `last_hidden_state`: the token vectors.
    """
    import torch
    from transformers import AutoModel

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

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
                LastHiddenState(model),
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
