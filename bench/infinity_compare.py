"""bertheads against infinity-emb on the same local model, same max length, same load.

    python bench/infinity_compare.py                                 # default backend, 1,16 clients
    python bench/infinity_compare.py --backend onnx --engines optimum,optimum-int8
    python bench/infinity_compare.py --clients 1,16,64 --texts 256

infinity runs from its own venv (`--venv`, default /work/infinity-venv), never the project's:

    python -m venv /work/infinity-venv
    /work/infinity-venv/bin/pip install torch==2.13.0          # the CPU build, first
    /work/infinity-venv/bin/pip install -c <(echo torch==2.13.0) \\
        "infinity-emb[server,torch,optimum]==0.0.78"

Engines (`--engines`): `torch` (fp32 SentenceTransformer), `torch-int8` (its `--dtype int8`:
torch dynamic quantisation of the Linear layers), `optimum` (ONNX Runtime, fp32) and
`optimum-int8` (ONNX Runtime, int8). infinity cannot export or quantise by itself: its
optimum engine loads `*.onnx` files from the model directory (preferring one named
`*quantize*` on CPU) and then optimises the graph with ORTOptimizer. So this script builds
them once, offline, with infinity's own optimum in its venv (`main_export`, then
`ORTQuantizer` with optimum's AVX2 dynamic preset: what a user of infinity would do) into
`<venv>/bertheads-models/`. Same max length (128 tokens) on both sides: infinity's torch
engine reads `max_seq_length` from sentence_bert_config.json, its optimum engine truncates at
config.json's `max_position_embeddings`; each engine gets a copy of the model directory (links
to the weights) with that one value set to 128. Both servers: batch 32, mean pooling, every
core, no disk cache; they run one after the other, never together.

Both serve single-text requests: fresh texts (uncached), then the same texts again (repeat:
a Redis hit for bertheads, a new forward pass for infinity). Each engine's vectors for 32 of
the texts are compared with bertheads' (cosine; bertheads' torch/onnx backends are fp32), so
a fast but unfaithful engine shows as such. Prints the command, load averages, tables, and
writes bench/results/<name>.json; an engine that cannot start is recorded with its log.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import numpy as np
from common import (
    RESULTS,
    command_line,
    fast_event_loop,
    free_port,
    load_average,
    stop_process,
    use_private_redis,
    wait_for_health,
    write_result,
)
from http_load import (
    MPNET,
    base_texts,
    checked_phase,
    chunks,
    fresh,
    header,
    local_model_path,
    phases_hold,
    print_row,
    run_phase,
    start_server,
)

INFINITY_VENV = Path("/work/infinity-venv")
MAX_LENGTH = 128
ENGINES = ("torch", "torch-int8", "optimum", "optimum-int8")
FIDELITY_TEXTS = 32

# Run by the infinity venv's python: export with optimum, then quantise (AVX2 preset).
BUILD_ONNX = """
import sys
from pathlib import Path
from optimum.exporters.onnx import main_export
from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig

source, fp32, int8 = (Path(part) for part in sys.argv[1:4])
if not (fp32 / "model.onnx").is_file():
    # As a transformers model: its graph outputs last_hidden_state, which infinity pools.
    main_export(
        str(source), output=str(fp32), task="feature-extraction", device="cpu",
        library_name="transformers",
    )
if not (int8 / "model_quantized.onnx").is_file():
    quantizer = ORTQuantizer.from_pretrained(str(fp32), file_name="model.onnx")
    config = AutoQuantizationConfig.avx2(is_static=False, per_channel=True)
    quantizer.quantize(save_dir=str(int8), quantization_config=config)
print("built", flush=True)
"""


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MPNET)
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx", "onnx-int8"],
        help="bertheads backend (default: the server's default)",
    )
    parser.add_argument("--engines", default="torch,optimum,optimum-int8", help=", ".join(ENGINES))
    parser.add_argument("--texts", type=int, default=128, help="uncached texts per level")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--repeat-requests", type=int, default=300, help="bertheads, 1 client")
    parser.add_argument("--infinity-repeat-requests", type=int, default=32)
    parser.add_argument("--venv", type=Path, default=INFINITY_VENV)
    parser.add_argument(
        "--redis-url",
        help="a Redis DB to use, flushed first (default: a private redis-server of this run; "
        "other people's benches flush shared DBs mid-run)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env", action="append", default=[], help="extra bertheads KEY=VALUE")
    parser.add_argument("--name", default="infinity_compare")
    parser.add_argument("--skip-bertheads", action="store_true", help="infinity engines only")
    arguments = parser.parse_args()
    arguments.per_request = "1"
    return arguments


def versions(venv: Path) -> dict[str, str]:
    """Versions of the packages that decide infinity's speed, from its venv."""
    names = ["infinity-emb", "torch", "onnxruntime", "optimum", "optimum-onnx", "transformers"]
    names += ["sentence-transformers"]
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: out[name] = None\n"
        "print(json.dumps(out))"
    )
    completed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code, *names], capture_output=True, text=True
    )
    return json.loads(completed.stdout) if completed.returncode == 0 else {}


def linked_copy(source: Path, target: Path) -> None:
    """`target` holds a symlink to every file of `source` (copies are made of edited files)."""
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        link = target / item.name
        if not link.exists():
            link.symlink_to(item.resolve())


def set_json_value(path: Path, key: str, value: int) -> None:
    """Replace a link to a JSON file by a copy with `key` set to `value`."""
    data = json.loads(path.read_text())
    data[key] = value
    path.unlink()
    path.write_text(json.dumps(data, indent=2))


def prepare_models(venv: Path, model_path: Path) -> dict[str, Path]:
    """Model directories for each engine, built once under `<venv>/bertheads-models/`."""
    root = venv / "bertheads-models" / model_path.name
    fp32, int8 = root / "onnx-fp32-export", root / "onnx-int8-export"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if not (fp32 / "model.onnx").is_file() or not (int8 / "model_quantized.onnx").is_file():
        print(f"building infinity's ONNX files under {root} (once)", flush=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", BUILD_ONNX, str(model_path), str(fp32), str(int8)],
            check=True,
            env=environment,
        )
    views = {}
    torch_view = root / f"view-torch-{MAX_LENGTH}"
    if not torch_view.is_dir():
        linked_copy(model_path, torch_view)
        set_json_value(torch_view / "sentence_bert_config.json", "max_seq_length", MAX_LENGTH)
    views["torch"] = views["torch-int8"] = torch_view
    for engine, export in (("optimum", fp32), ("optimum-int8", int8)):
        view = root / f"view-{engine}-{MAX_LENGTH}"
        if not view.is_dir():
            linked_copy(export, view)
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
                if not (view / name).exists() and (fp32 / name).exists():
                    (view / name).symlink_to((fp32 / name).resolve())
            set_json_value(view / "config.json", "max_position_embeddings", MAX_LENGTH)
        views[engine] = view
    return views


def infinity_command(venv: Path, engine: str, model_dir: Path, port: int) -> list[str]:
    """The infinity CLI call for `engine` on CPU."""
    # The optimum engine gets "." and runs in the model directory: infinity 0.0.78 passes
    # optimum the ONNX file's path as globbed, and optimum 2.x wants it relative to the model.
    model_id = "." if engine.startswith("optimum") else str(model_dir)
    command = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", model_id]
    command += ["--served-model-name", "bench", "--device", "cpu", "--pooling-method", "mean"]
    command += ["--batch-size", "32", "--no-vector-disk-cache", "--no-bettertransformer"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if engine.startswith("torch"):
        dtype = "int8" if engine == "torch-int8" else "float32"
        command += ["--engine", "torch", "--dtype", dtype, "--no-compile"]
    else:
        command += ["--engine", "optimum"]
        if engine == "optimum":
            command += ["--onnx-do-not-prefer-quantized"]
    return command


def levels(
    url: str,
    path: str,
    body,
    texts: list[str],
    tag: str,
    arguments,
    repeats: int,
    ours: bool = False,
) -> list:
    """Uncached single-text phases at each client count, then repeats at 1 client.

    On our server (`ours`) each phase is checked to be what it says (all encoded, then all
    from the cache); infinity keeps no such counts.
    """

    def phase(kind: str, groups: list[list[str]], clients: int, total: int) -> dict:
        if ours:
            return checked_phase(url, kind, path, body, groups, clients, total)
        return run_phase(url, path, body, groups, clients, total)

    rows = []
    for clients in [int(part) for part in arguments.clients.split(",")]:
        groups = chunks(fresh(texts, f"{tag}c{clients}n"), 1)
        uncached = phase("uncached", groups, clients, len(groups))
        rows.append({"kind": "uncached", "texts_per_request": 1, **uncached})
        print_row(rows[-1])
        if clients == 1:
            repeat = phase("cached", groups, 1, repeats)
            rows.append({"kind": "repeat", "texts_per_request": 1, **repeat})
            print_row(rows[-1])
    return rows


def vectors_of(url: str, path: str, texts: list[str]) -> np.ndarray:
    """Vectors of `texts` from either server (one request)."""
    if path == "/embed":
        response = httpx.post(f"{url}/embed", json={"texts": texts}, timeout=600)
        response.raise_for_status()
        return np.asarray(response.json()["embeddings"], dtype=np.float32)
    response = httpx.post(f"{url}{path}", json={"input": texts, "model": "bench"}, timeout=600)
    response.raise_for_status()
    return np.asarray([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def cosines(left: np.ndarray, right: np.ndarray) -> dict[str, float]:
    """Mean and min cosine of matching rows."""
    left = left / np.linalg.norm(left, axis=1, keepdims=True)
    right = right / np.linalg.norm(right, axis=1, keepdims=True)
    values = (left * right).sum(axis=1)
    return {
        "cosine_mean": round(float(values.mean()), 5),
        "cosine_min": round(float(values.min()), 5),
    }


def run_engine(
    arguments, engine: str, model_dir: Path, texts: list[str], probe: list[str], workdir: Path
) -> dict:
    """Start one infinity engine, load it, stop it; rows and vectors, or the error."""
    port = free_port()
    command = infinity_command(arguments.venv, engine, model_dir, port)
    # One hub cache per engine: infinity keeps its optimised graph there under the model id.
    hub_cache = arguments.venv / "bertheads-models" / "hf-cache" / engine
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache / "hub"),
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
    }
    log_path = workdir / f"infinity-{engine}.log"
    shown = f"(cd {model_dir} && " + " ".join(command) + ")"
    print(f"\ninfinity {engine}: {shown}", flush=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=model_dir
        )
    try:
        wait_for_health(f"http://127.0.0.1:{port}", 900, process)
        url = f"http://127.0.0.1:{port}"
        body = lambda group: {"input": group, "model": "bench"}  # noqa: E731
        warm = chunks(fresh(texts[:32], f"{engine}w"), 1)
        run_phase(url, "/embeddings", body, warm, 8, len(warm))
        tag = f"{uuid.uuid4().hex[:6]}{engine}"
        rows = levels(
            url, "/embeddings", body, texts, tag, arguments, arguments.infinity_repeat_requests
        )
        return {"command": shown, "rows": rows, "vectors": vectors_of(url, "/embeddings", probe)}
    except Exception as error:  # report any failure as data: one engine failing is a result
        tail = log_path.read_text(errors="replace")[-3000:]
        print(f"infinity {engine}: NOT RUN ({type(error).__name__}: {error})\n{tail}")
        return {"command": shown, "error": f"{type(error).__name__}: {error}", "log_tail": tail}
    finally:
        stop_process(process)


def find(rows: list[dict], kind: str, clients: int) -> dict | None:
    """The row of one phase."""
    return next((row for row in rows if (row["kind"], row["clients"]) == (kind, clients)), None)


def main() -> int:
    arguments = parse_arguments()
    fast_event_loop()
    use_private_redis(arguments)
    print(f"command: {command_line()}")
    loads = {"start": load_average()}
    print(f"load average at start: {loads['start']}")
    run_id = uuid.uuid4().hex[:6]
    texts = base_texts(arguments.texts, arguments.seed)
    # The fidelity probe: the longest texts (truncation shows) and some short ones.
    probe = sorted(texts, key=len)[-FIDELITY_TEXTS // 2 :] + texts[: FIDELITY_TEXTS // 2]
    engines = [engine.strip() for engine in arguments.engines.split(",") if engine.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise SystemExit(f"--engines: unknown {unknown}; valid choices: {', '.join(ENGINES)}")
    if not (arguments.venv / "bin" / "infinity_emb").is_file():
        raise SystemExit(f"{arguments.venv}/bin/infinity_emb not found: install it (see --help)")
    model_path = local_model_path(arguments.model)
    views = prepare_models(arguments.venv, model_path)
    summary: dict = {
        "command": command_line(),
        "model": arguments.model,
        "max_length": MAX_LENGTH,
        "texts_per_level": arguments.texts,
        "infinity_versions": versions(arguments.venv),
        "infinity_model_dirs": {engine: str(views[engine]) for engine in engines},
    }
    header()
    with tempfile.TemporaryDirectory() as models:
        ours_rows, reference = [], None
        if not arguments.skip_bertheads:
            server = start_server(arguments, models)
            try:
                summary["bertheads_health"] = httpx.get(f"{server.url}/health").json()
                body = lambda group: {"texts": group}  # noqa: E731
                warm = chunks(fresh(texts[:32], f"{run_id}w"), 1)
                run_phase(server.url, "/embed", body, warm, 8, len(warm))
                ours_rows = levels(
                    server.url,
                    "/embed",
                    body,
                    texts,
                    f"{run_id}b",
                    arguments,
                    arguments.repeat_requests,
                    ours=True,
                )
                reference = vectors_of(server.url, "/embed", probe)
            finally:
                server.stop()
        summary["bertheads"] = ours_rows
        theirs = {}
        for engine in engines:
            result = run_engine(arguments, engine, views[engine], texts, probe, Path(models))
            vectors = result.pop("vectors", None)
            if vectors is not None and reference is not None:
                result["fidelity_to_bertheads"] = cosines(vectors, reference)
            theirs[engine] = result
            log = Path(models) / f"infinity-{engine}.log"
            if log.is_file():  # kept beside the results (not committed: *.log)
                shutil.copy(log, RESULTS / f"{arguments.name}-{engine}.log")
        summary["infinity"] = theirs
    loads["end"] = load_average()
    summary["load_average"] = loads
    summary["ratios"] = ratios(ours_rows, theirs, arguments)
    print(f"load averages: {loads}")
    print(f"wrote {write_result(arguments.name, summary)}")
    # Ratios over failed requests or mislabelled phases would compare nothing.
    theirs_ok = not any(
        row["errors"] for result in theirs.values() for row in result.get("rows", [])
    )
    return 0 if summary["ratios"] and phases_hold(ours_rows) and theirs_ok else 1


def ratios(ours: list[dict], theirs: dict, arguments) -> list[dict]:
    """bertheads / each infinity engine, per phase; prints the table."""
    out = []
    print(
        f"\n{'engine':<14}{'kind':<10}{'clients':>8}{'ours t/s':>10}{'theirs t/s':>11}"
        f"{'t/s ratio':>10}{'p50 ours':>10}{'p50 theirs':>11}{'cos mean':>9}{'cos min':>9}"
    )
    for engine, result in theirs.items():
        fidelity = result.get("fidelity_to_bertheads", {})
        for row in ours:
            match = find(result.get("rows", []), row["kind"], row["clients"])
            if match is None:
                continue
            entry = {
                "engine": engine,
                "kind": row["kind"],
                "clients": row["clients"],
                "bertheads_texts_per_s": row["texts_per_s"],
                "infinity_texts_per_s": match["texts_per_s"],
                "throughput_ratio": round(row["texts_per_s"] / match["texts_per_s"], 3),
                "bertheads_p50_ms": row["p50_ms"],
                "infinity_p50_ms": match["p50_ms"],
                **fidelity,
            }
            out.append(entry)
            print(
                f"{engine:<14}{row['kind']:<10}{row['clients']:>8}{row['texts_per_s']:>10.1f}"
                f"{match['texts_per_s']:>11.1f}{entry['throughput_ratio']:>10.2f}"
                f"{row['p50_ms']:>10.1f}{match['p50_ms']:>11.1f}"
                f"{fidelity.get('cosine_mean', float('nan')):>9.4f}"
                f"{fidelity.get('cosine_min', float('nan')):>9.4f}"
            )
    return out


if __name__ == "__main__":
    sys.exit(main())
