"""HTTP load at several client counts, uncached and cached, against plain encode in the same run.

    python bench/http_load.py                                   # mpnet, torch, 1/4/16/64 clients
    python bench/http_load.py --model sentence-transformers/all-MiniLM-L6-v2 --texts 128
    python bench/http_load.py --per-request 1,8 --env BATCH_WAIT_MS=0

Uncached phases send hate_speech texts with a run-specific suffix (never seen before);
cached phases repeat them. The baseline is `SentenceTransformer.encode` (fp32, batch 32,
max_seq_length 128) on the same kind of texts, measured before and after the server runs.
Prints a table and writes bench/results/http_load[_<backend>].json.
"""

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from common import (
    ApiServer,
    dataset_texts,
    flush_private_redis,
    metric_value,
    percentiles,
    run_load,
    write_result,
)

MPNET = "sentence-transformers/all-mpnet-base-v2"
BodyMaker = Callable[[list[str]], dict]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MPNET)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--texts", type=int, default=256, help="uncached texts per phase")
    parser.add_argument("--clients", default="1,4,16,64", help="comma-separated client counts")
    parser.add_argument("--per-request", default="1", help="texts per request, e.g. 1,8")
    parser.add_argument("--cached-requests", type=int, default=600, help="per cached phase")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9", help="flushed first")
    parser.add_argument("--env", action="append", default=[], help="extra server KEY=VALUE")
    parser.add_argument("--url", help="use this running server instead of starting one")
    parser.add_argument("--name", help="result file name (default http_load[_<backend>])")
    parser.add_argument("--seed", type=int, default=0)
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


def plain_encode_rate(model: str, text_sets: list[list[str]]) -> list[float]:
    """Texts/s of `SentenceTransformer.encode` (fp32, batch 32, 128 tokens), one per text set."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(local_model_path(model)), device="cpu")
    encoder.max_seq_length = 128
    encoder.encode(text_sets[0][:32], batch_size=32)  # first-call allocations
    rates = []
    for texts in text_sets:
        started = time.perf_counter()
        encoder.encode(texts, batch_size=32)
        rates.append(len(texts) / (time.perf_counter() - started))
    return rates


def chunks(texts: list[str], size: int) -> list[list[str]]:
    """Consecutive groups of `size` texts."""
    return [texts[start : start + size] for start in range(0, len(texts), size)]


def run_phase(
    url: str, path: str, body: BodyMaker, groups: list[list[str]], clients: int, total: int
) -> dict:
    """POST `total` requests (cycling through `groups`) from `clients` clients; summary dict."""

    def make_request(index: int) -> tuple[str, dict]:
        return path, body(groups[index % len(groups)])

    result = asyncio.run(run_load(url, make_request, total=total, concurrency=clients))
    texts = sum(len(groups[index % len(groups)]) for index in range(len(result.latencies)))
    latency = percentiles(result.latencies)
    return {
        "path": path,
        "clients": clients,
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
            uncached = checked_phase(
                url, "uncached", "/embed", embed_body, groups, clients, len(groups)
            )
            after = mean_batch(httpx.get(f"{url}/metrics").text)
            batches = after[1] - before[1]
            uncached["mean_encode_batch"] = round((after[0] - before[0]) / max(batches, 1), 1)
            total = max(arguments.cached_requests, 4 * clients)
            cached = checked_phase(url, "cached", "/embed", embed_body, groups, clients, total)
            predict = checked_phase(url, "cached", "/predict", embed_body, groups, clients, total)
            for kind, row in (("uncached", uncached), ("cached", cached), ("cached", predict)):
                rows.append({"kind": kind, "texts_per_request": size, **row})
                print_row(rows[-1])
    return rows


def print_row(row: dict) -> None:
    """One table line, as the phase finishes."""
    batch = row.get("mean_encode_batch", "")
    print(
        f"{row['path']:<12}{row['kind']:<9}{row['texts_per_request']:>4}{row['clients']:>5}"
        f"{row['texts_per_s']:>10.1f}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}"
        f"{row['p99_ms']:>9.1f}{row['errors']:>6}{batch!s:>7}",
        flush=True,
    )


def header() -> None:
    """Column names of `print_row`."""
    print(
        f"{'path':<12}{'kind':<9}{'n/rq':>4}{'cli':>5}{'texts/s':>10}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'p99 ms':>9}{'errs':>6}{'batch':>7}"
    )


def start_server(arguments: argparse.Namespace, models: str) -> ApiServer:
    """The API on a spare port with a private Redis DB and a demo head."""
    env = {
        "EMBEDDER_MODEL": arguments.model,
        "EMBEDDER_BACKEND": arguments.backend,
        "REDIS_URL": arguments.redis_url,
        "MODELS_DIR": models,
        "DEMO_HEAD_ON_START": "true",
    }
    env.update(dict(item.split("=", 1) for item in arguments.env))
    server = ApiServer(env, Path(models) / "server.log")
    server.start(timeout=600)
    return server


def main() -> int:
    arguments = parse_arguments()
    flush_private_redis(arguments.redis_url)
    run_id = uuid.uuid4().hex[:6]
    texts = base_texts(arguments.texts, arguments.seed)
    print(f"baseline: SentenceTransformer.encode on {len(texts)} texts (before the server)")
    before = plain_encode_rate(arguments.model, [fresh(texts, f"{run_id}b")])[0]
    header()
    with tempfile.TemporaryDirectory() as models:
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
    after = plain_encode_rate(arguments.model, [fresh(texts, f"{run_id}a")])[0]
    baseline = statistics.mean([before, after])
    summary = summarise(arguments, health, rows, [before, after], baseline)
    name = arguments.name or (
        "http_load" if arguments.backend == "torch" else f"http_load_{arguments.backend}"
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
    arguments: argparse.Namespace, health: dict, rows: list, rates: list[float], baseline: float
) -> dict:
    """Headline ratios and targets; prints them."""

    def find(kind: str, path: str, clients: int, size: int = 1) -> dict | None:
        matches = [
            row
            for row in rows
            if (row["kind"], row["path"], row["clients"], row["texts_per_request"])
            == (kind, path, clients, size)
        ]
        return matches[0] if matches else None

    sixteen = find("uncached", "/embed", 16)
    cached_embed, cached_predict = find("cached", "/embed", 1), find("cached", "/predict", 1)
    headline = {
        "plain_encode_texts_per_s": [round(rate, 1) for rate in rates],
        "plain_encode_drift": round(max(rates) / min(rates), 3),
        "uncached_16_clients_over_plain": round(sixteen["texts_per_s"] / baseline, 3)
        if sixteen
        else None,
        "cached_embed_p50_ms_1_client": cached_embed["p50_ms"] if cached_embed else None,
        "cached_predict_p50_ms_1_client": cached_predict["p50_ms"] if cached_predict else None,
    }
    headline["targets_met"] = {
        "uncached_16_ratio>=0.9": (headline["uncached_16_clients_over_plain"] or 0) >= 0.9,
        "cached_embed_p50<=3ms": (headline["cached_embed_p50_ms_1_client"] or 99) <= 3,
        "cached_predict_p50<=5ms": (headline["cached_predict_p50_ms_1_client"] or 99) <= 5,
    }
    for key, value in headline.items():
        print(f"{key:<34} {value}")
    return {
        "model": arguments.model,
        "backend": health.get("backend", arguments.backend),
        "texts_per_phase": arguments.texts,
        "server_env": arguments.env,
        "headline": headline,
        "levels": rows,
    }


if __name__ == "__main__":
    sys.exit(main())
