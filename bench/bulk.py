"""Bulk job throughput against plain `encode` in the same run, and a fully cached re-run.

    python bench/bulk.py --texts 2000 --repeats 3 --backends onnx-int8,torch --cached 100000

For each backend, interleaved `--repeats` times: plain `Encoder.encode_raw` in this process
(2 threads = both cores, and 1 thread), then `run_bulk` with 1 actor and 2 actors of 1 core
(1 thread) each on a local Ray of 2 CPUs, the cache emptied before each job. Bulk rates are
given three ways: end to end (the job's wall time, with the driver's and actors' model
loads), steady (texts encoded between the first batch's start and the last batch's end
on the actors' clocks: the pool's rate once loaded, Ray's hand-offs included) and busy
(each actor's texts per second spent in its batches, summed over actors).
Then `--cached` short texts are planted in the cache directly (random vectors under the
real keys, not encoded) and the whole job is timed over them: it must encode nothing.
Medians over repeats; ratios against plain encode measured in the same run.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    MINILM,
    command_line,
    dataset_texts,
    load_average,
    print_table,
    use_private_redis,
    write_result,
)

from embedder import EmbeddingCache, connect, load_encoder
from embedder.bulk.job import BulkOptions, run_bulk


def write_corpus(path: Path, texts: list[str]) -> None:
    with path.open("w") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")


SERVED: dict[str, str] = {}


def plain_rate(model: str, backend: str, threads: int, texts: list[str]) -> float:
    encoder = load_encoder(model, backend=backend, threads=threads)
    SERVED[backend] = encoder.backend_name  # after any fidelity-gate fallback
    encoder.encode_raw(texts[:64])
    started = time.perf_counter()
    encoder.encode_raw(texts)
    return len(texts) / (time.perf_counter() - started)


def bulk_rates(arguments, backend: str, data: Path, actors: int, count: int) -> dict:
    import redis

    redis.Redis.from_url(arguments.redis_url).flushdb()
    report = run_bulk(
        BulkOptions(
            data=data,
            model=arguments.model,
            encoder_options={"backend": backend, "threads": 1},
            redis_url=arguments.redis_url,
            actors=actors,
            cpus_per_actor=1.0,
            batch_size=arguments.batch_size,
            progress=False,
        )
    )
    assert report.encoded == count, report.lines()
    return {
        "end_to_end": report.encoded / report.wall_seconds,
        "steady": report.pool_rate(),
        "busy": sum(report.actor_rates().values()),
        "per_actor": list(report.actor_rates().values()),
        "wall_seconds": report.wall_seconds,
    }


def cached_rerun(arguments, directory: Path) -> dict:
    count = arguments.cached
    texts = [f"planted text number {index} about nothing much" for index in range(count)]
    encoder = load_encoder(arguments.model, backend="torch", threads=1)
    cache = EmbeddingCache(connect(arguments.redis_url))
    cache.client.flushdb()
    fingerprint = encoder.fingerprint(normalize=False)
    generator = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, count, 10_000):
        chunk = texts[start : start + 10_000]
        vectors = generator.standard_normal((len(chunk), encoder.dim)).astype(np.float32)
        cache.set_many(fingerprint, chunk, vectors)
    planting = time.perf_counter() - started
    data = directory / "cached.jsonl"
    write_corpus(data, texts)
    report = run_bulk(
        BulkOptions(
            data=data,
            model=arguments.model,
            encoder_options={"backend": "torch", "threads": 1},
            redis_url=arguments.redis_url,
            actors=2,
            progress=False,
        )
    )
    assert report.encoded == 0 and report.already_cached == count, report.lines()
    return {
        "texts": count,
        "planting_seconds": planting,
        "rerun_wall_seconds": report.wall_seconds,
        "summary": report.lines(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="onnx-int8,torch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cached", type=int, default=100_000)
    parser.add_argument("--redis-url", default=None, help="a private db; default: own server")
    arguments = parser.parse_args()
    use_private_redis(arguments)

    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        _system_config={"enable_metrics_collection": False},
    )
    texts = list(dict.fromkeys(dataset_texts("sst2/train.csv")))[: arguments.texts]
    result: dict = {"command": command_line(), "load_before": load_average(), "backends": {}}
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        data = directory / "corpus.jsonl"
        write_corpus(data, texts)
        for backend in arguments.backends.split(","):
            runs: dict[str, list] = {key: [] for key in ("plain_2", "plain_1", "bulk_1", "bulk_2")}
            for _ in range(arguments.repeats):
                runs["plain_2"].append(plain_rate(arguments.model, backend, 2, texts))
                runs["plain_1"].append(plain_rate(arguments.model, backend, 1, texts))
                for actors in (1, 2):
                    runs[f"bulk_{actors}"].append(
                        bulk_rates(arguments, backend, data, actors, len(texts))
                    )
            median = {
                "plain_2_threads": statistics.median(runs["plain_2"]),
                "plain_1_thread": statistics.median(runs["plain_1"]),
            }
            for actors in (1, 2):
                for kind in ("steady", "end_to_end", "busy"):
                    values = [run[kind] for run in runs[f"bulk_{actors}"]]
                    median[f"bulk_{actors}_actor_{kind}"] = statistics.median(values)
            base = median["plain_2_threads"]
            median["ratio_bulk_2_steady_vs_plain_2"] = median["bulk_2_actor_steady"] / base
            median["ratio_bulk_2_end_to_end_vs_plain_2"] = median["bulk_2_actor_end_to_end"] / base
            median["scaling_2_vs_1_actor_steady"] = (
                median["bulk_2_actor_steady"] / median["bulk_1_actor_steady"]
            )
            result["backends"][backend] = {
                "served_by": SERVED[backend],
                "median": median,
                "runs": runs,
            }
            print(f"\n{backend} (served by {SERVED[backend]}): {len(texts)} sst2 texts, ", end="")
            print(f"medians of {arguments.repeats}")
            print_table([(name, value) for name, value in median.items()])
        if arguments.cached:
            result["cached_rerun"] = cached_rerun(arguments, directory)
            print(f"\nre-run over {arguments.cached} planted cache entries:")
            print_table(
                [
                    (name, value)
                    for name, value in result["cached_rerun"].items()
                    if name != "summary"
                ]
            )
    result["load_after"] = load_average()
    ray.shutdown()
    print("\nload average before/after:", result["load_before"], result["load_after"])
    print("wrote", write_result("bulk", result))


if __name__ == "__main__":
    main()
