"""bertheads against infinity-emb serving the same local model, same machine, same load.

    python bench/infinity_compare.py                    # mpnet, clients 1,4,16,64
    python bench/infinity_compare.py --model sentence-transformers/all-MiniLM-L6-v2 --texts 128

infinity runs from its own venv (default /tmp/infinity-venv: torch==2.13.0 installed first,
then `pip install -c constraints "infinity-emb[server,torch]"`), engine torch, fp32, mean
pooling, batch 32, no torch.compile, no BetterTransformer, no disk cache. Both servers get
single-text requests: fresh texts (uncached) and then the same texts again (repeat). The
servers run one after the other, never together. Prints a table and writes
bench/results/infinity_compare.json; when infinity cannot start, says why and records it.
"""

import argparse
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from common import flush_private_redis, free_port, stop_process, wait_for_health, write_result
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

INFINITY_VENV = Path("/tmp/infinity-venv")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MPNET)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--texts", type=int, default=256, help="uncached texts per level")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--repeat-requests", type=int, default=400)
    parser.add_argument("--venv", type=Path, default=INFINITY_VENV)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9", help="flushed first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env", action="append", default=[], help="extra bertheads KEY=VALUE")
    return parser.parse_args()


def infinity_command(venv: Path, model_path: Path, port: int) -> list[str]:
    """The infinity CLI call for a like-for-like CPU comparison."""
    command = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model_path)]
    command += ["--served-model-name", "bench", "--engine", "torch", "--device", "cpu"]
    command += ["--dtype", "float32", "--pooling-method", "mean", "--batch-size", "32"]
    command += ["--no-compile", "--no-bettertransformer", "--no-vector-disk-cache"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return command


def levels(
    url: str, path: str, body, texts: list[str], tag: str, arguments, ours: bool = False
) -> list[dict]:
    """Uncached then repeated single-text phases at each client count.

    On our server (`ours`) each phase is checked to be what it says (all encoded, then all
    from the cache); infinity keeps no such counts.
    """
    rows = []
    for clients in [int(part) for part in arguments.clients.split(",")]:
        groups = chunks(fresh(texts, f"{tag}c{clients}n"), 1)
        total = max(arguments.repeat_requests, 4 * clients)
        if ours:
            uncached = checked_phase(url, "uncached", path, body, groups, clients, len(groups))
            repeat = checked_phase(url, "cached", path, body, groups, clients, total)
        else:
            uncached = run_phase(url, path, body, groups, clients, len(groups))
            repeat = run_phase(url, path, body, groups, clients, total)
        for kind, row in (("uncached", uncached), ("repeat", repeat)):
            rows.append({"kind": kind, "texts_per_request": 1, **row})
            print_row(rows[-1])
    return rows


def run_infinity(arguments, texts: list[str], tag: str, workdir: Path) -> dict:
    """Start infinity, load it, stop it; {"rows": ...} or {"error": ..., "command": ...}."""
    port = free_port()
    command = infinity_command(arguments.venv, local_model_path(arguments.model), port)
    shown = " ".join(command)
    if not (arguments.venv / "bin" / "infinity_emb").is_file():
        return {"error": f"{arguments.venv}/bin/infinity_emb not found (not installed)"}
    log_path = workdir / "infinity.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", 600, process)
        body = lambda group: {"input": group, "model": "bench"}  # noqa: E731
        url = f"http://127.0.0.1:{port}"
        warm = chunks(fresh(texts[:32], f"{tag}w"), 1)
        run_phase(url, "/embeddings", body, warm, 8, len(warm))
        return {"command": shown, "rows": levels(url, "/embeddings", body, texts, tag, arguments)}
    except Exception as error:  # report any failure as data: the comparison is optional
        tail = log_path.read_text(errors="replace")[-2000:]
        return {"command": shown, "error": f"{type(error).__name__}: {error}", "log_tail": tail}
    finally:
        stop_process(process)


def main() -> int:
    arguments = parse_arguments()
    flush_private_redis(arguments.redis_url)
    run_id = uuid.uuid4().hex[:6]
    texts = base_texts(arguments.texts, arguments.seed)
    header()
    with tempfile.TemporaryDirectory() as models:
        server = start_server(arguments, models)
        try:
            body = lambda group: {"texts": group}  # noqa: E731
            warm = chunks(fresh(texts[:32], f"{run_id}w"), 1)
            run_phase(server.url, "/embed", body, warm, 8, len(warm))
            ours = levels(server.url, "/embed", body, texts, f"{run_id}b", arguments, ours=True)
        finally:
            server.stop()
        theirs = run_infinity(arguments, texts, f"{run_id}i", Path(models))
    if "error" in theirs:
        print("\ninfinity: NOT RUN")
        print(f"  command: {theirs.get('command', '-')}")
        print(f"  error:   {theirs['error']}")
        print(theirs.get("log_tail", ""))
    ratios = []
    for row in ours:
        match = [
            other
            for other in theirs.get("rows", [])
            if (other["kind"], other["clients"]) == (row["kind"], row["clients"])
        ]
        if match:
            ratios.append(
                {
                    "kind": row["kind"],
                    "clients": row["clients"],
                    "throughput_ratio_bertheads_over_infinity": round(
                        row["texts_per_s"] / match[0]["texts_per_s"], 3
                    ),
                    "p50_ratio_bertheads_over_infinity": round(
                        row["p50_ms"] / match[0]["p50_ms"], 3
                    ),
                }
            )
    if ratios:
        print(
            f"\n{'kind':<10}{'clients':>8}{'texts/s ratio':>15}{'p50 ratio':>11}"
            "  (bertheads / infinity)"
        )
        for ratio in ratios:
            print(
                f"{ratio['kind']:<10}{ratio['clients']:>8}"
                f"{ratio['throughput_ratio_bertheads_over_infinity']:>15.2f}"
                f"{ratio['p50_ratio_bertheads_over_infinity']:>11.2f}"
            )
    summary = {
        "model": arguments.model,
        "backend": arguments.backend,
        "texts_per_level": arguments.texts,
        "bertheads": ours,
        "infinity": theirs,
        "ratios": ratios,
    }
    print(f"wrote {write_result('infinity_compare', summary)}")
    # Ratios over failed requests or mislabelled phases would compare nothing.
    theirs_ok = not any(row["errors"] for row in theirs.get("rows", []))
    return 0 if ratios and phases_hold(ours) and theirs_ok else 1


if __name__ == "__main__":
    sys.exit(main())
