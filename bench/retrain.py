"""Head retrain time on cached embeddings: logreg and mlp at 2k, 10k and 50k rows, median of 3.

    python bench/retrain.py
    python bench/retrain.py --sizes 2000,10000 --heads logreg --repeats 1

Vectors: real all-mpnet-base-v2 vectors of hate_speech/all.csv read from the shared Redis
cache (db 0, read only), tiled with small gaussian noise up to each size, binary labels
(hate vs the rest). When the cache holds too few of them the bench stops (exit 2) unless
`--allow-synthetic` asks for gaussian clusters of dim 768 instead, and says so.
Times the whole `train_head` call (split, fit, evaluation) and the final fit alone.
Prints a table and writes bench/results/retrain.json; exits 1 when a target is missed.
"""

import argparse
import statistics
import sys
import time

import numpy as np
from common import DATASETS, write_result

from classifier.training import train_head

MPNET = "sentence-transformers/all-mpnet-base-v2"
TARGETS = {("logreg", 10_000): 2.0, ("mlp", 10_000): 10.0}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000,50000")
    parser.add_argument("--heads", default="logreg,mlp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="read only")
    parser.add_argument("--min-real", type=int, default=1000, help="fewer cached: stop")
    parser.add_argument(
        "--allow-synthetic", action="store_true", help="gaussian clusters when the cache is short"
    )
    return parser.parse_args()


def cached_mpnet_vectors(redis_url: str) -> tuple[np.ndarray, np.ndarray]:
    """Vectors and binary labels of the hate_speech texts the cache already holds."""
    import csv

    from bertheads.settings import Settings
    from embedder import EmbeddingCache, connect, load_encoder

    with (DATASETS / "hate_speech" / "all.csv").open(encoding="utf-8", newline="") as handle:
        rows = [(row["text"], row["label"]) for row in csv.DictReader(handle) if row["text"]]
    texts = list(dict.fromkeys(text for text, _ in rows))
    label_of = dict(rows)
    # The default server's raw-space fingerprint (backend-free: every faithful backend shares it).
    settings = Settings(embedder_model=MPNET)
    fingerprint = load_encoder(MPNET, **settings.encoder_options()).fingerprint(normalize=False)
    found = EmbeddingCache(connect(redis_url)).get_many(fingerprint, texts, 768)
    pairs = [
        (vector, label_of[text] == "hate")
        for text, vector in zip(texts, found, strict=True)
        if vector is not None
    ]
    if not pairs:
        return np.zeros((0, 768), np.float32), np.zeros(0, bool)
    return np.stack([vector for vector, _ in pairs]).astype(np.float32), np.array(
        [hit for _, hit in pairs]
    )


def gaussian_clusters(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping gaussian classes in 768 dims, 11% positive (like hate_speech)."""
    generator = np.random.default_rng(seed)
    labels = generator.random(rows) < 0.11
    centres = generator.normal(0, 0.3, (2, 768)).astype(np.float32)
    vectors = centres[labels.astype(int)] + generator.normal(0, 1, (rows, 768)).astype(np.float32)
    return vectors.astype(np.float32), labels


def tiled(
    vectors: np.ndarray, labels: np.ndarray, rows: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`rows` rows: the real vectors repeated, each jittered by 5% of each dimension's spread."""
    generator = np.random.default_rng(seed)
    chosen = np.resize(np.arange(len(vectors)), rows)
    generator.shuffle(chosen)
    noise = generator.normal(0, 1, (rows, vectors.shape[1])).astype(np.float32)
    return vectors[chosen] + 0.05 * vectors.std(axis=0) * noise, labels[chosen]


def main() -> int:
    arguments = parse_arguments()
    real_vectors, real_labels = cached_mpnet_vectors(arguments.redis_url)
    source = f"real mpnet vectors ({len(real_vectors)} cached hate_speech texts) tiled + 5% noise"
    if len(real_vectors) < arguments.min_real:
        if not arguments.allow_synthetic:
            print(
                f"the cache holds {len(real_vectors)} mpnet vectors of hate_speech/all.csv, fewer "
                f"than --min-real {arguments.min_real}: embed it first, or pass --allow-synthetic",
                file=sys.stderr,
            )
            return 2
        source = f"SYNTHETIC gaussian clusters (cache held only {len(real_vectors)} vectors)"
    print(f"data: {source}")
    print(
        f"{'head':<8}{'rows':>7}{'median s':>10}{'fit s':>8}{'epochs':>8}"
        f"{'runs s':>24}{'target':>8}"
    )
    rows_out = []
    for head in arguments.heads.split(","):
        for size in [int(part) for part in arguments.sizes.split(",")]:
            if len(real_vectors) >= arguments.min_real:
                vectors, labels = tiled(real_vectors, real_labels, size, seed=size)
            else:
                vectors, labels = gaussian_clusters(size)
            labels = np.where(labels, "hate", "other")
            walls, fits, epochs = [], [], []
            for repeat in range(arguments.repeats):
                started = time.perf_counter()
                trained = train_head(vectors, labels, head=head, seed=repeat)
                walls.append(time.perf_counter() - started)
                fits.append(trained.fit_seconds)
                history = trained.loss_history or {}
                epochs.append(len(history.get("train", [])))
            target = TARGETS.get((head, size))
            row = {
                "head": head,
                "rows": size,
                "median_seconds": round(statistics.median(walls), 3),
                "median_fit_seconds": round(statistics.median(fits), 3),
                "runs_seconds": [round(value, 3) for value in walls],
                "epochs": epochs,
                "target_seconds": target,
                "target_met": None if target is None else statistics.median(walls) <= target,
            }
            rows_out.append(row)
            runs = " ".join(f"{value:.2f}" for value in walls)
            print(
                f"{head:<8}{size:>7}{row['median_seconds']:>10.2f}{row['median_fit_seconds']:>8.2f}"
                f"{statistics.median(epochs) if epochs[0] else '-':>8}{runs:>24}"
                f"{'' if target is None else ('met' if row['target_met'] else 'MISSED'):>8}",
                flush=True,
            )
    path = write_result("retrain", {"data": source, "repeats": arguments.repeats, "rows": rows_out})
    print(f"wrote {path}")
    missed = [row for row in rows_out if row["target_met"] is False]
    for row in missed:
        print(
            f"MISSED: {row['head']} at {row['rows']} rows took {row['median_seconds']} s "
            f"(target {row['target_seconds']} s)",
            file=sys.stderr,
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
