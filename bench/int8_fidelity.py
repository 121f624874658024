"""int8 recipes on this CPU: fidelity to fp32 and speed, recipe by recipe, in one run.

    python bench/int8_fidelity.py                                   # MiniLM and mpnet
    python bench/int8_fidelity.py --models sentence-transformers/all-MiniLM-L6-v2

Recipes (all SmoothQuant + fp32 outlier side-MatMuls + dynamic per-channel quantization):
  v1        8-bit int8 weights: u8 x s8 products; on AVX2 without VNNI vpmaddubsw adds pairs
            of them into a saturating int16
  v1-exact  the v1 file with weights shifted to uint8 (zero point 128): ONNX Runtime then runs
            its u8 x u8 kernel, which never saturates, so this is what v1 computes on a CPU
            with VNNI (vpdpbusd sums in int32); it stands in for a VNNI machine
  v2        7-bit int8 weights (reduce_range): no pair of products can saturate; shipped
  u8u8      8-bit uint8 weights: u8 x u8 kernel, exact but slower on AVX2
Fidelity: cosine to the fp32 ONNX export (itself within 1e-4 of torch fp32) of the gate's
calibration texts (one batch, then one text at a time, worst of both) and of hate_speech
test.csv. Speed: the same texts through fp32 and each recipe, round-robin, batch 32, median
of --repeats, as a ratio to fp32 in the same run. Writes bench/results/int8_fidelity.json.

`--gate-only` measures only the gate figures of recipe files already built (no torch, no
building), for running under an emulator that presents another instruction set:

    qemu-x86_64 -cpu Nehalem .venv/bin/python bench/int8_fidelity.py --gate-only \
        --models sentence-transformers/all-MiniLM-L6-v2
"""

import argparse
import csv
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import DATASETS, write_result

from embedder.fidelity import CALIBRATION_TEXTS, cosine, cpu_features
from embedder.files import write_atomically
from embedder.onnx_backend import FP32_FILE, OnnxBackend, ensure_files, model_directory
from embedder.onnx_int8 import INT8_FILE
from embedder.resolve import default_cache_dir, resolve_model
from embedder.tokenization import BatchTokenizer

MODELS = ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-mpnet-base-v2")
RECIPES = ("v1", "v1-exact", "v2", "u8u8")
BATCH = 32


def build_recipe(name: str, directory: Path, model_path: Path, target: Path) -> None:
    """Write recipe `name`'s int8 model of `directory`'s fp32 export to `target`."""
    import onnx
    from onnx import TensorProto, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from embedder.onnx_int8 import _rewrite_for_int8

    if name == "v2":
        shutil.copy(directory / INT8_FILE, target)
        return
    if name == "v1-exact":
        model = onnx.load(str(target.with_name("v1.onnx")))
        for index, tensor in enumerate(model.graph.initializer):
            if tensor.data_type == TensorProto.INT8:  # weights and their zero points
                shifted = numpy_helper.to_array(tensor).astype(np.int16) + 128
                model.graph.initializer[index].CopyFrom(
                    numpy_helper.from_array(shifted.astype(np.uint8), tensor.name)
                )
        onnx.save(model, str(target))
        return
    model = onnx.load(str(directory / FP32_FILE))
    nodes = _rewrite_for_int8(model, model_path)
    quantize_dynamic(
        model,
        str(target),
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QUInt8 if name == "u8u8" else QuantType.QInt8,
        per_channel=True,
        reduce_range=False,
        nodes_to_quantize=nodes,
    )


def vectors(backend: OnnxBackend, batches: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.vstack([backend(ids, mask, "mean") for ids, mask in batches])


def measure_model(
    model: str, test_texts: list[str], repeats: int, speed_texts: int, recipes: list[str]
) -> dict:
    resolved = resolve_model(model)
    directory = model_directory(default_cache_dir(), resolved.weights_sha256)
    ensure_files(resolved.path, directory, "onnx-int8")
    scratch = directory / "recipes"
    scratch.mkdir(exist_ok=True)
    tokenize = BatchTokenizer(resolved.path, 128)
    calibration = list(CALIBRATION_TEXTS)
    # Sorted by length, as the encoder batches them.
    ordered = sorted(test_texts, key=len)
    test_batches = [tokenize(ordered[i : i + BATCH]) for i in range(0, len(ordered), BATCH)]
    timed = sorted(test_texts[:speed_texts], key=len)
    speed_batches = [tokenize(timed[i : i + BATCH]) for i in range(0, len(timed), BATCH)]
    calibration_batches = [tokenize(calibration)]
    single_batches = [tokenize([text]) for text in calibration]
    backends = {"fp32": OnnxBackend(directory / FP32_FILE, optimize=False)}
    for name in recipes:
        target = scratch / f"{name}.onnx"
        if not target.is_file():
            print(f"{model}: building recipe {name}", flush=True)
            write_atomically(
                target,
                lambda scratch_file, name=name: build_recipe(
                    name, directory, resolved.path, scratch_file
                ),
            )
        backends[name] = OnnxBackend(target, optimize=False)
    reference = {
        "calibration": vectors(backends["fp32"], calibration_batches),
        "single": vectors(backends["fp32"], single_batches),
        "test": vectors(backends["fp32"], test_batches),
    }
    rows: dict[str, dict] = {}
    for name in recipes:
        gate = np.concatenate(
            [
                cosine(vectors(backends[name], calibration_batches), reference["calibration"]),
                cosine(vectors(backends[name], single_batches), reference["single"]),
            ]
        )
        test = cosine(vectors(backends[name], test_batches), reference["test"])
        rows[name] = {
            "gate_cosine_mean": round(float(gate.mean()), 4),
            "gate_cosine_min": round(float(gate.min()), 4),
            "test_cosine_mean": round(float(test.mean()), 4),
            "test_cosine_min": round(float(test.min()), 4),
        }
        print(f"{model} {name}: {rows[name]}", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(repeats):  # round-robin, so drifting load hits every recipe alike
        for name, backend in backends.items():
            started = time.perf_counter()
            vectors(backend, speed_batches)
            seconds[name].append(time.perf_counter() - started)
    base = statistics.median(seconds["fp32"])
    for name in recipes:
        rows[name]["speed_vs_fp32"] = round(base / statistics.median(seconds[name]), 2)
    rows["fp32"] = {"seconds_median": round(base, 2)}
    return rows


def gate_only(model: str) -> dict:
    """Gate figures of every built recipe of `model` on whatever CPU this process sees."""
    resolved = resolve_model(model)
    directory = model_directory(default_cache_dir(), resolved.weights_sha256)
    tokenize = BatchTokenizer(resolved.path, 128)
    calibration = [tokenize(list(CALIBRATION_TEXTS))]
    single = [tokenize([text]) for text in CALIBRATION_TEXTS]
    fp32 = OnnxBackend(directory / FP32_FILE, optimize=False)
    reference = vectors(fp32, calibration), vectors(fp32, single)
    rows = {}
    for name in RECIPES:
        if not (directory / "recipes" / f"{name}.onnx").is_file():
            continue
        backend = OnnxBackend(directory / "recipes" / f"{name}.onnx", optimize=False)
        gate = np.concatenate(
            [
                cosine(vectors(backend, calibration), reference[0]),
                cosine(vectors(backend, single), reference[1]),
            ]
        )
        rows[name] = {
            "gate_cosine_mean": round(float(gate.mean()), 4),
            "gate_cosine_min": round(float(gate.min()), 4),
        }
        print(f"{model} {name}: {rows[name]}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--texts", type=int, default=None, help="test.csv texts for fidelity")
    parser.add_argument("--speed-texts", type=int, default=None, help="of those, timed")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--gate-only", action="store_true", help="gate figures of built recipes")
    arguments = parser.parse_args()
    if arguments.gate_only:
        # CPUID as numpy reads it: under an emulator /proc/cpuinfo still shows the host.
        from numpy._core._multiarray_umath import __cpu_features__

        features = [name for name, present in __cpu_features__.items() if present]
        print(f"CPU features as this process sees them: {' '.join(features)}")
        results = {model: gate_only(model) for model in arguments.models}
        levels = [feature for feature in features if feature.startswith("X86_V")]
        name = "int8_gate_" + (levels[-1].lower() if levels else "unknown")
        print(f"wrote {write_result(name, {'cpu_features': features, 'results': results})}")
        return 0
    with (DATASETS / "hate_speech" / "test.csv").open(newline="") as handle:
        test_texts = [row["text"] for row in csv.DictReader(handle)][: arguments.texts]
    speed_texts = arguments.speed_texts or len(test_texts)
    results = {
        model: measure_model(
            model, test_texts, arguments.repeats, speed_texts, arguments.recipes.split(",")
        )
        for model in arguments.models
    }
    print(f"\nCPU features: {' '.join(cpu_features())}")
    header = f"{'model':<18}{'recipe':<10}{'gate mean':>10}{'gate min':>10}"
    print(header + f"{'test mean':>10}{'test min':>10}{'speed':>7}")
    for model, rows in results.items():
        for name in arguments.recipes.split(","):
            row = rows[name]
            print(
                f"{model.split('/')[-1][:17]:<18}{name:<10}{row['gate_cosine_mean']:>10.4f}"
                f"{row['gate_cosine_min']:>10.4f}{row['test_cosine_mean']:>10.4f}"
                f"{row['test_cosine_min']:>10.4f}{row['speed_vs_fp32']:>7.2f}"
            )
    summary = {
        "cpu_features": cpu_features(),
        "test_texts": len(test_texts),
        "speed_texts": speed_texts,
        "batch_size": BATCH,
        "repeats": arguments.repeats,
        "load_average_at_end": list(os.getloadavg()),
        "results": results,
    }
    name = "int8_fidelity_" + "_".join(model.split("/")[-1] for model in arguments.models)
    print(f"wrote {write_result(name, summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
