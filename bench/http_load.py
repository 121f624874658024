"""HTTP load at several client counts, uncached and cached, against offline encode in the same run.

    python bench/http_load.py                                   # mpnet, torch, 1/4/16/64 clients
    python bench/http_load.py --backend onnx --clients 1,16,64 --texts 256
    python bench/http_load.py --model sentence-transformers/all-MiniLM-L6-v2 --texts 128
    python bench/http_load.py --per-request 1,8 --env BATCH_WAIT_MS=0 --client httpx

Uncached phases send hate_speech texts with a run-specific suffix (never seen before);
cached phases repeat them. Baselines, each in a fresh process before and after the server
(`bench/offline_rate.py`): `Encoder.encode_raw` of the same backend on every core (the
server's settings without EMBEDDER_THREADS/OMP_NUM_THREADS), same batch size, and with
--plain `SentenceTransformer.encode` (fp32, batch 32, 128 tokens), on the same texts.
The load generator is a raw keep-alive HTTP client on uvloop (`--client httpx` for the old
one); its own floor (round trip to a server that answers at once) is measured and reported.
Prints the command, load averages, a table, and writes bench/results/<name>.json.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from common import (
    REPO,
    ApiServer,
    client_floor,
    command_line,
    dataset_texts,
    fast_event_loop,
    load_average,
    metric_value,
    percentiles,
    run_load,
    use_private_redis,
    write_result,
)

MPNET = "sentence-transformers/all-mpnet-base-v2"
BodyMaker = Callable[[list[str]], dict]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MPNET)
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx", "onnx-int8"],
        help="EMBEDDER_BACKEND of the server (default: the server's own default)",
    )
    parser.add_argument("--texts", type=int, default=256, help="uncached texts per phase")
    parser.add_argument("--clients", default="1,4,16,64", help="comma-separated client counts")
    parser.add_argument("--per-request", default="1", help="texts per request, e.g. 1,8")
    parser.add_argument("--cached-requests", type=int, default=600, help="per cached phase")
    parser.add_argument(
        "--redis-url",
        help="a Redis DB to use, flushed first (default: a private redis-server of this run; "
        "other people's benches flush shared DBs mid-run)",
    )
    parser.add_argument("--env", action="append", default=[], help="extra server KEY=VALUE")
    parser.add_argument("--url", help="use this running server instead of starting one")
    parser.add_argument("--name", help="result file name (default http_load[_<backend>])")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--client", default="raw", choices=["raw", "httpx"])
    parser.add_argument(
        "--compare-clients", action="store_true", help="cached 1-client phase with both clients"
    )
    parser.add_argument(
        "--plain", action="store_true", help="also plain SentenceTransformer.encode baselines"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip offline baselines")
    return parser.parse_args()


def csv_ints(text: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16]."""
    return [int(part) for part in text.split(",") if part.strip()]


def base_texts(count: int, seed: int) -> list[str]:
    """`count` distinct hate_speech texts, shuffled reproducibly."""
    texts = list(dict.fromkeys(dataset_texts("hate_speech/all.csv")))
    random.Random(seed).shuffle(texts)
    return texts[:count]


def fresh(texts: list[str], tag: str) -> list[str]:
    """The same texts made unseen by a short tag (a few extra tokens each)."""
    return [f"{text} {tag}{index}" for index, text in enumerate(texts)]


def local_model_path(model: str) -> Path:
    """The model's directory as the server resolves it (local, package or reassembled)."""
    from embedder.resolve import resolve_model

    return resolve_model(model, None).path


SERVER_ONLY = ("EMBEDDER_THREADS", "OMP_NUM_THREADS")


def offline_rates(env: dict[str, str], texts: list[str], plain: bool, workdir: str) -> dict:
    """`bench/offline_rate.py` in a fresh process with the server's settings on every core."""
    texts_file = Path(workdir) / f"offline-{uuid.uuid4().hex[:6]}.json"
    texts_file.write_text(json.dumps(texts))
    child_env = {key: value for key, value in os.environ.items() if key not in SERVER_ONLY}
    child_env.update({key: value for key, value in env.items() if key not in SERVER_ONLY})
    child_env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, str(REPO / "bench" / "offline_rate.py"), "--texts-file"]
    command += [str(texts_file), "--model", env["EMBEDDER_MODEL"]] + (["--plain"] if plain else [])
    completed = subprocess.run(
        command, cwd=REPO, env=child_env, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"offline baseline failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def chunks(texts: list[str], size: int) -> list[list[str]]:
    """Consecutive groups of `size` texts."""
    return [texts[start : start + size] for start in range(0, len(texts), size)]


def run_phase(
    url: str,
    path: str,
    body: BodyMaker,
    groups: list[list[str]],
    clients: int,
    total: int,
    client: str = "raw",
) -> dict:
    """POST `total` requests (cycling through `groups`) from `clients` clients; summary dict."""

    def make_request(index: int) -> tuple[str, dict]:
        return path, body(groups[index % len(groups)])

    result = asyncio.run(
        run_load(url, make_request, total=total, concurrency=clients, client=client)
    )
    texts = sum(len(groups[index % len(groups)]) for index in range(len(result.latencies)))
    latency = percentiles(result.latencies)
    return {
        "path": path,
        "clients": clients,
        "client": client,
        "requests": result.count,
        "errors": len(result.failures),
        "first_errors": result.failures[:3],
        "seconds": round(result.seconds, 3),
        "requests_per_s": round(len(result.latencies) / result.seconds, 1),
        "texts_per_s": round(texts / result.seconds, 1),
        **{f"{key}_ms": round(value * 1000, 2) for key, value in latency.items()},
    }


def text_sources(url: str) -> tuple[float, float]:
    """(texts served from the cache, texts encoded) by the server so far, from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    return (
        metric_value(text, "bertheads_texts_total", source="cache"),
        metric_value(text, "bertheads_texts_total", source="encoder"),
    )


def checked_phase(url: str, kind: str, *phase: object) -> dict:
    """`run_phase`, recording where its texts came from and whether that matches `kind`.

    An "uncached" phase that hit the cache, or a "cached" one that encoded (Redis down,
    evicted keys), would measure the other thing under this one's name.
    """
    before = text_sources(url)
    row = run_phase(url, *phase)
    after = text_sources(url)
    row["texts_from_cache"] = int(after[0] - before[0])
    row["texts_encoded"] = int(after[1] - before[1])
    wrong = row["texts_from_cache"] if kind == "uncached" else row["texts_encoded"]
    row["kind_verified"] = wrong == 0 and row["texts_from_cache"] + row["texts_encoded"] > 0
    return row


def mean_batch(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of the server's coalesced encode batch sizes so far."""
    name = "bertheads_encode_batch_texts"
    return metric_value(metrics_text, f"{name}_sum"), metric_value(metrics_text, f"{name}_count")


def load_levels(url: str, arguments: argparse.Namespace, texts: list[str], run_id: str) -> list:
    """Every (texts per request, clients) level: uncached /embed, cached /embed and /predict."""
    rows = []
    embed_body: BodyMaker = lambda group: {"texts": group}  # noqa: E731
    for size in csv_ints(arguments.per_request):
        for clients in csv_ints(arguments.clients):
            unseen = fresh(texts, f"{run_id}s{size}c{clients}n")
            groups = chunks(unseen, size)
            if len(groups) < 2 * clients:
                print(f"skip {size} texts x {clients} clients: only {len(groups)} requests")
                continue
            before = mean_batch(httpx.get(f"{url}/metrics").text)
            client = arguments.client
            uncached = checked_phase(
                url, "uncached", "/embed", embed_body, groups, clients, len(groups), client
            )
            after = mean_batch(httpx.get(f"{url}/metrics").text)
            batches = after[1] - before[1]
            uncached["mean_encode_batch"] = round((after[0] - before[0]) / max(batches, 1), 1)
            total = max(arguments.cached_requests, 4 * clients)
            cached = checked_phase(
                url, "cached", "/embed", embed_body, groups, clients, total, client
            )
            predict = checked_phase(
                url, "cached", "/predict", embed_body, groups, clients, total, client
            )
            phases = [("uncached", uncached), ("cached", cached), ("cached", predict)]
            if arguments.compare_clients and clients == 1:
                other = "httpx" if client == "raw" else "raw"
                for path in ("/embed", "/predict"):
                    row = checked_phase(url, "cached", path, embed_body, groups, 1, total, other)
                    phases.append(("cached", row))
            for kind, row in phases:
                rows.append({"kind": kind, "texts_per_request": size, **row})
                print_row(rows[-1])
    return rows


def print_row(row: dict) -> None:
    """One table line, as the phase finishes."""
    batch = row.get("mean_encode_batch", "")
    print(
        f"{row['path']:<10}{row['kind']:<9}{row['client']:<6}{row['texts_per_request']:>4}"
        f"{row['clients']:>5}"
        f"{row['texts_per_s']:>10.1f}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}"
        f"{row['p99_ms']:>9.1f}{row['errors']:>6}{batch!s:>7}",
        flush=True,
    )


def header() -> None:
    """Column names of `print_row`."""
    print(
        f"{'path':<10}{'kind':<9}{'client':<6}{'n/rq':>4}{'cli':>5}{'texts/s':>10}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'p99 ms':>9}{'errs':>6}{'batch':>7}"
    )


def server_env(arguments: argparse.Namespace, models: str) -> dict[str, str]:
    """The server's settings: model, backend, private Redis DB, demo head, then --env."""
    env = {
        "EMBEDDER_MODEL": arguments.model,
        "REDIS_URL": arguments.redis_url,
        "MODELS_DIR": models,
        "DEMO_HEAD_ON_START": "true",
    }
    if arguments.backend:
        env["EMBEDDER_BACKEND"] = arguments.backend
    env.update(dict(item.split("=", 1) for item in arguments.env))
    return env


def start_server(arguments: argparse.Namespace, models: str) -> ApiServer:
    """The API on a spare port with a private Redis DB and a demo head."""
    server = ApiServer(server_env(arguments, models), Path(models) / "server.log")
    server.start(timeout=600)
    return server


def main() -> int:
    arguments = parse_arguments()
    fast_event_loop()
    use_private_redis(arguments)
    run_id = uuid.uuid4().hex[:6]
    texts = base_texts(arguments.texts, arguments.seed)
    print(f"command: {command_line()}")
    loads = {"start": load_average()}
    print(f"load average at start: {loads['start']}")
    floor = client_floor(len(json.dumps({"embeddings": [[0.123456789] * 768]})), client="raw")
    print(f"client floor (raw client, canned server, 1 client): {floor}")
    with tempfile.TemporaryDirectory() as models:
        env = server_env(arguments, models)
        baselines = []
        if not arguments.no_baseline:
            print(f"baseline: offline encode of {len(texts)} texts (before the server)")
            baselines.append(
                offline_rates(env, fresh(texts, f"{run_id}b"), arguments.plain, models)
            )
            print(f"  {baselines[-1]}")
        header()
        server = None if arguments.url else start_server(arguments, models)
        url = arguments.url or server.url
        try:
            health = httpx.get(f"{url}/health").json()
            warm = fresh(texts[:64], f"{run_id}w")
            run_phase(url, "/embed", lambda group: {"texts": group}, chunks(warm, 1), 8, 64)
            rows = load_levels(url, arguments, texts, run_id)
        finally:
            if server is not None:
                server.stop()
        loads["server_done"] = load_average()
        if not arguments.no_baseline:
            print("baseline: offline encode (after the server)")
            baselines.append(
                offline_rates(env, fresh(texts, f"{run_id}a"), arguments.plain, models)
            )
            print(f"  {baselines[-1]}")
    loads["end"] = load_average()
    print(f"load averages: {loads}")
    summary = summarise(arguments, health, rows, baselines)
    summary.update({"command": command_line(), "load_average": loads, "client_floor": floor})
    name = arguments.name or (
        f"http_load_{arguments.backend}" if arguments.backend else "http_load"
    )
    print(f"wrote {write_result(name, summary)}")
    return 0 if phases_hold(rows) else 1


def phases_hold(rows: list[dict]) -> bool:
    """False (and says why) when a phase failed requests, measured the wrong thing, or none ran."""
    problems = [f"{row['kind']} {row['path']} x{row['clients']}" for row in rows if row["errors"]]
    problems += [
        f"{row['kind']} {row['path']} x{row['clients']}: {row['texts_from_cache']} cached, "
        f"{row['texts_encoded']} encoded"
        for row in rows
        if not row.get("kind_verified", True)
    ]
    if not rows:
        problems.append("no phase ran (every level was skipped: raise --texts)")
    for problem in problems:
        print(f"FAIL {problem}")
    return not problems


def summarise(
    arguments: argparse.Namespace, health: dict, rows: list, baselines: list[dict]
) -> dict:
    """Headline ratios against the offline baselines; prints them."""

    def find(kind: str, path: str, clients: int, size: int = 1) -> dict | None:
        matches = [
            row
            for row in rows
            if (row["kind"], row["path"], row["clients"], row["texts_per_request"], row["client"])
            == (kind, path, clients, size, arguments.client)
        ]
        return matches[0] if matches else None

    def mean_of(key: str) -> float | None:
        values = [baseline[key] for baseline in baselines if key in baseline]
        return statistics.mean(values) if values else None

    offline, plain = mean_of("encode_raw_texts_per_s"), mean_of("plain_texts_per_s")
    headline: dict[str, object] = {
        "offline_encode_raw_texts_per_s": [b["encode_raw_texts_per_s"] for b in baselines],
        "plain_encode_texts_per_s": [
            b["plain_texts_per_s"] for b in baselines if "plain_texts_per_s" in b
        ],
    }
    for clients in csv_ints(arguments.clients):
        row = find("uncached", "/embed", clients)
        if row is None:
            continue
        if offline:
            headline[f"uncached_{clients}_clients_over_offline"] = round(
                row["texts_per_s"] / offline, 3
            )
        if plain:
            headline[f"uncached_{clients}_clients_over_plain"] = round(
                row["texts_per_s"] / plain, 3
            )
    cached_embed, cached_predict = find("cached", "/embed", 1), find("cached", "/predict", 1)
    headline["cached_embed_p50_ms_1_client"] = cached_embed["p50_ms"] if cached_embed else None
    headline["cached_predict_p50_ms_1_client"] = (
        cached_predict["p50_ms"] if cached_predict else None
    )
    headline["targets_met"] = {
        f"{key}>=0.9": value >= 0.9
        for key, value in headline.items()
        if key.endswith("_over_offline") and key.split("_")[1] in ("16", "64")
    } | {
        "cached_embed_p50<=1.5ms": (headline["cached_embed_p50_ms_1_client"] or 99) <= 1.5,
        "cached_predict_p50<=1.5ms": (headline["cached_predict_p50_ms_1_client"] or 99) <= 1.5,
    }
    for key, value in headline.items():
        print(f"{key:<40} {value}")
    return {
        "model": arguments.model,
        "backend": health.get("backend", arguments.backend),
        "requested_backend": arguments.backend or "server default",
        "health": health,
        "texts_per_phase": arguments.texts,
        "server_env": arguments.env,
        "client": arguments.client,
        "baselines": baselines,
        "headline": headline,
        "levels": rows,
    }


if __name__ == "__main__":
    sys.exit(main())
