"""GPU throughput: our encoder (torch fp16 on CUDA) against plain SentenceTransformer.encode.

    python bench/gpu.py                                   # mpnet, CUDA device 0
    python bench/gpu.py --model sentence-transformers/all-MiniLM-L6-v2 --texts 2048

For each batch size (32, 128, 512) and max length (128, 512) it encodes the same texts with
`load_encoder(device="cuda")` (fp16, pinned transfers, its fidelity gate against fp32) and
with plain `SentenceTransformer(device="cuda").encode` in fp32 (its default) and fp16,
round-robin, median of --repeats, and prints texts/s and the ratio to plain fp32 encode in
the same run. Texts: hate_speech/all.csv, repeated to --texts; long texts exercise 512.
Exits 2 with a message where no CUDA device is usable. Writes bench/results/gpu.json.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

from common import DATASETS, write_result

BATCH_SIZES = (32, 128, 512)
MAX_LENGTHS = (128, 512)


def read_texts(count: int) -> list[str]:
    import csv

    with (DATASETS / "hate_speech" / "all.csv").open(newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    # Some long texts, so max length 512 has tokens to spend: pairs of texts joined.
    texts += [f"{left} {right}" for left, right in zip(texts[::2], texts[1::2], strict=False)]
    return (texts * (count // len(texts) + 1))[:count]


def timed(run: Callable[[], object], synchronize: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    synchronize()
    return time.perf_counter() - started


def encode_runs(models: dict, texts: list[str], batch: int) -> dict[str, Callable[[], object]]:
    """One closure per encoder, each encoding every text at batch size `batch`."""
    return {
        label: lambda model=model: model.encode(texts, batch_size=batch)
        for label, model in models.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-mpnet-base-v2")
    parser.add_argument("--texts", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device is usable here (torch.cuda.is_available() is False)")
        return 2
    from sentence_transformers import SentenceTransformer

    from embedder import load_encoder

    texts = read_texts(arguments.texts)
    name = torch.cuda.get_device_name(0)
    print(f"{name}; {len(texts)} texts; model {arguments.model}")
    rows = []
    for max_length in MAX_LENGTHS:
        ours = load_encoder(arguments.model, device="cuda", max_seq_len=max_length, batch_size=None)
        print(f"max length {max_length}: ours {ours.precision}, chosen batch {ours.batch_size}")
        plain = SentenceTransformer(str(ours.resolved.path), device="cuda")
        plain.max_seq_length = max_length
        plain_half = SentenceTransformer(str(ours.resolved.path), device="cuda").half()
        plain_half.max_seq_length = max_length
        for batch in BATCH_SIZES:
            models = {"plain fp32": plain, "plain fp16": plain_half, "bertheads": ours}
            runs = encode_runs(models, texts, batch)
            for run in runs.values():  # warm-up: kernels, allocator, cuDNN choices
                run()
            seconds: dict[str, list[float]] = {label: [] for label in runs}
            for _ in range(arguments.repeats):
                for label, run in runs.items():
                    seconds[label].append(timed(run, torch.cuda.synchronize))
            base = statistics.median(seconds["plain fp32"])
            for label, values in seconds.items():
                median = statistics.median(values)
                rows.append(
                    {
                        "max_length": max_length,
                        "batch_size": batch,
                        "encoder": label,
                        "texts_per_second": round(len(texts) / median, 1),
                        "ratio_to_plain_fp32": round(base / median, 2),
                        "seconds": [round(value, 3) for value in values],
                    }
                )
        del ours, plain, plain_half, models, runs
        torch.cuda.empty_cache()
    print(f"\n{'max len':>7}{'batch':>7}  {'encoder':<12}{'texts/s':>10}{'/ plain':>9}")
    for row in rows:
        print(
            f"{row['max_length']:>7}{row['batch_size']:>7}  {row['encoder']:<12}"
            f"{row['texts_per_second']:>10.1f}{row['ratio_to_plain_fp32']:>9.2f}"
        )
    summary = {
        "device": name,
        "model": arguments.model,
        "texts": len(texts),
        "repeats": arguments.repeats,
        "load_average_at_end": list(os.getloadavg()),
        "rows": rows,
    }
    print(f"wrote {write_result('gpu', summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
