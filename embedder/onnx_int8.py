"""A faithful int8 variant of an exported model, or a refusal to build one.

Dynamic quantization gives each MatMul input one range for the whole batch, so a few huge
activation channels flatten all the others. SmoothQuant-style scaling moves range from the
activations into the weights of the attention and FFN-input projections; the handful of
outlier channels feeding the FFN output projections go through a small fp32 side MatMul.
The result is checked against fp32 before it is written.
"""

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedder.errors import InvalidConfigError
from embedder.onnx_export import make_session, write_atomically

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

# The recipe's version is in the file name: changing the recipe must never reuse an old file.
INT8_FILE = "model-int8-v1.onnx"
REJECTED_FILE = "model-int8-v1.rejected"
# Below this cosine to fp32 on the calibration texts the int8 model is refused, not served.
INT8_COSINE_FLOOR = 0.98
FAITHFUL_BACKENDS = ("torch", "onnx")
LAYER_PATTERN = re.compile(r"/layer\.\d+/")
FFN_OUTPUT_PATTERN = re.compile(r"/layer\.\d+/output/dense/")
OUTLIER_FACTOR = 8.0
MAX_OUTLIERS = 16
# Written for calibration: mixed length, register and punctuation. Only per-channel activation
# ranges are taken from them, and those are a property of the model more than of the text.
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


def _calibration_feed(model_path: Path) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    batch = tokenizer(list(CALIBRATION_TEXTS), padding=True, truncation=True, return_tensors="np")
    return {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")}


def _int8_cosine(source: Path, quantized: Path, model_path: Path) -> float:
    """Lowest cosine between fp32 and int8 mean-pooled vectors of the calibration texts."""
    feed = _calibration_feed(model_path)
    weights = feed["attention_mask"][:, :, None].astype(np.float32)
    pooled = []
    for path in (source, quantized):
        (tokens,) = make_session(path).run(["last_hidden_state"], feed)
        pooled.append((tokens * weights).sum(1) / weights.sum(1))
    left, right = pooled
    cosines = (left * right).sum(1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1))
    return float(cosines.min())


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
    """Write `target`: `source` with int8 weights and dynamically quantized activations.

    Raises:
        InvalidConfigError: The result strays from fp32; a marker beside `target` remembers it.

    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    nodes = _rewrite_for_int8(model, model_path)

    def build(scratch: Path) -> None:
        quantize_dynamic(
            model,
            str(scratch),
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=nodes,
        )
        lowest = _int8_cosine(source, scratch, model_path)
        if lowest < INT8_COSINE_FLOOR:
            message = (
                f"EMBEDDER_BACKEND='onnx-int8' is not faithful for {model_path.name}: its vectors "
                f"reach cosine {lowest:.3f} to fp32 (floor {INT8_COSINE_FLOOR}); "
                f"valid faithful choices: {', '.join(FAITHFUL_BACKENDS)}"
            )
            target.with_name(REJECTED_FILE).write_text(message)
            raise InvalidConfigError(message)

    logger.info("quantizing %s to %s (%d MatMuls)", source, target, len(nodes))
    write_atomically(target, build)
