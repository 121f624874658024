"""The int8 variant of an exported model (recipe v2); the fidelity gate decides if it serves.

Dynamic quantization gives each MatMul input one range for the whole batch, so a few huge
activation channels flatten all the others. SmoothQuant-style scaling moves range from the
activations into the weights of the attention and FFN-input projections; the handful of
outlier channels feeding the FFN output projections go through a small fp32 side MatMul.

Recipe v2 quantizes weights to 7 bits (int8 with `reduce_range`). x86 CPUs without VNNI
multiply uint8 activations by int8 weights with vpmaddubsw, which adds two products into a
saturating int16: 255 * 127 * 2 overflows it, and v1 (8-bit weights) lost up to 0.05 of
cosine there. With 7-bit weights 255 * 63 * 2 fits, so every x86 kernel (AVX2, AVX-512,
VNNI) computes the exact integer result, and the vectors no longer depend on the CPU.
"""

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedder.fidelity import CALIBRATION_MAX_TOKENS, CALIBRATION_TEXTS
from embedder.files import write_atomically
from embedder.tokenization import BatchTokenizer

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

# The recipe's version is in the file name: changing the recipe must never reuse an old file.
INT8_FILE = "model-int8-v2.onnx"
LAYER_PATTERN = re.compile(r"/layer\.\d+/")
FFN_OUTPUT_PATTERN = re.compile(r"/layer\.\d+/output/dense/")
OUTLIER_FACTOR = 8.0
MAX_OUTLIERS = 16


def _quantizer_chatter(record: logging.LogRecord) -> bool:
    return "onnxruntime" not in record.pathname


def _calibration_feed(model_path: Path) -> dict[str, np.ndarray]:
    ids, mask = BatchTokenizer(model_path, CALIBRATION_MAX_TOKENS)(list(CALIBRATION_TEXTS))
    return {"input_ids": ids, "attention_mask": mask}


def _channel_maxima(
    model: "onnx.ModelProto", tensors: list[str], model_path: Path
) -> dict[str, np.ndarray]:
    """Largest |value| of each channel of `tensors` over the calibration texts' real tokens."""
    import onnx
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in tensors:
        probe.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    session = onnxruntime.InferenceSession(
        probe.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feed = _calibration_feed(model_path)
    mask = feed["attention_mask"]
    values = session.run(tensors, feed)
    return {
        name: np.abs(value[mask.astype(bool)]).max(axis=0)
        for name, value in zip(tensors, values, strict=True)
    }


def _split_outliers(
    graph: "onnx.GraphProto", node: "onnx.NodeProto", weight: np.ndarray, channels: np.ndarray
) -> list["onnx.NodeProto"]:
    """Route `channels` of the node's input through a small fp32 MatMul beside the int8 one.

    Returns the nodes to insert before `node`; the sum node is appended after it by the caller.
    """
    from onnx import helper, numpy_helper

    source, base = node.input[0], node.name
    keep = np.ones(weight.shape[0], dtype=np.float32)
    keep[channels] = 0.0
    graph.initializer.extend(
        [
            numpy_helper.from_array(keep, f"{base}_keep"),
            numpy_helper.from_array(channels.astype(np.int64), f"{base}_outlier_index"),
            numpy_helper.from_array(weight[channels], f"{base}_outlier_weight"),
        ]
    )
    before = [
        helper.make_node("Mul", [source, f"{base}_keep"], [f"{base}_inliers"], name=f"{base}_keep"),
        helper.make_node(
            "Gather",
            [source, f"{base}_outlier_index"],
            [f"{base}_outliers"],
            axis=-1,
            name=f"{base}_gather",
        ),
        helper.make_node(
            "MatMul",
            [f"{base}_outliers", f"{base}_outlier_weight"],
            [f"{base}_outlier_out"],
            name=f"{base}_outlier_matmul",
        ),
    ]
    node.input[0] = f"{base}_inliers"
    return before


def _rewrite_for_int8(model: "onnx.ModelProto", model_path: Path) -> list[str]:
    """Make the fp32 graph quantization-friendly in place; return the MatMuls to quantize.

    Every weight MatMul inside the encoder layers is quantized. Their activations are
    quantized per tensor, so a few huge channels would flatten every other channel to zero:
    FFN output projections get those channels split off into an fp32 side MatMul, and the
    other projections get SmoothQuant scaling (activation / s, weight rows * s).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {item.name: item for item in graph.initializer}
    targets = [
        node
        for node in graph.node
        if node.op_type == "MatMul" and node.input[1] in weights and LAYER_PATTERN.search(node.name)
    ]
    maxima = _channel_maxima(model, sorted({node.input[0] for node in targets}), model_path)
    before: dict[str, list] = {}
    after: dict[str, list] = {}
    for node in targets:
        weight = numpy_helper.to_array(weights[node.input[1]])
        activation = maxima[node.input[0]]
        if FFN_OUTPUT_PATTERN.search(node.name):
            limit = OUTLIER_FACTOR * float(np.median(activation))
            largest = np.argsort(activation)[::-1][:MAX_OUTLIERS]
            channels = np.sort(largest[activation[largest] > limit])
            if channels.size:
                before[node.name] = _split_outliers(graph, node, weight, channels)
                output = node.output[0]
                node.output[0] = f"{node.name}_inliers_out"
                after[node.name] = [
                    helper.make_node(
                        "Add",
                        [node.output[0], f"{node.name}_outlier_out"],
                        [output],
                        name=f"{node.name}_sum",
                    )
                ]
            continue
        # SmoothQuant with alpha 0.5: activation and weight ranges meet in the middle.
        scale = np.sqrt(np.maximum(activation, 1e-5) / np.maximum(np.abs(weight).max(axis=1), 1e-5))
        scale = scale.astype(np.float32)
        weights[node.input[1]].CopyFrom(
            numpy_helper.from_array(weight * scale[:, None], node.input[1])
        )
        # One scaling per consumer: q, k and v share an input but not weights.
        inverse, smoothed = f"{node.name}_smooth_inverse", f"{node.name}_smoothed"
        graph.initializer.append(numpy_helper.from_array(1.0 / scale, inverse))
        before[node.name] = [
            helper.make_node(
                "Mul", [node.input[0], inverse], [smoothed], name=f"{node.name}_smooth"
            )
        ]
        node.input[0] = smoothed
    ordered = []
    for node in graph.node:
        ordered += [*before.get(node.name, []), node, *after.get(node.name, [])]
    del graph.node[:]
    graph.node.extend(ordered)
    return [node.name for node in targets]


def quantize_onnx(source: Path, target: Path, model_path: Path) -> None:
    """Write `target`: `source` with 7-bit int8 weights and dynamically quantized activations."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    nodes = _rewrite_for_int8(model, model_path)

    def build(scratch: Path) -> None:
        # The quantizer logs a line per tensor on the root logger; keep the build log readable.
        root = logging.getLogger()
        root.addFilter(_quantizer_chatter)
        try:
            _quantize(scratch)
        finally:
            root.removeFilter(_quantizer_chatter)

    def _quantize(scratch: Path) -> None:
        quantize_dynamic(
            model,
            str(scratch),
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            nodes_to_quantize=nodes,
        )

    logger.info("quantizing %s to %s (%d MatMuls)", source, target, len(nodes))
    write_atomically(target, build)
