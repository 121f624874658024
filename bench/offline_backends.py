"""Offline encode speed and fidelity of every backend against plain SentenceTransformer fp32.

Speed: the first N texts of hate_speech/all.csv, batch 32, max_seq_len 128, each backend and
the baseline timed in turn in the same run, median of `--repeats`, reported as ratios.
Fidelity: cosine of each backend's vectors to torch fp32 on hate_speech/test.csv, and the test
accuracy of a LogisticRegression head trained on train.csv vectors from the same backend.

    python bench/offline_backends.py                      # mpnet, 1,000 texts
    python bench/offline_backends.py --model sentence-transformers/all-MiniLM-L6-v2 --texts 200
"""

import argparse
import csv
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from embedder import EmbedderError, cache_key, connect, load_encoder
from embedder.backends import BACKENDS
from embedder.encoder import Encoder
from embedder.fidelity import cpu_features

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO.parent / "shared" / "datasets" / "hate_speech"
RESULTS = REPO / "bench" / "results" / "offline_backends.json"
BATCH_SIZE = 32
MAX_SEQ_LEN = 128


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row["text"] for row in rows], np.array([row["label"] for row in rows])


def time_runs(run: Callable[[], object], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def cosine(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return (left * right).sum(1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1))


def torch_vectors(encoder: Encoder, texts: list[str], redis_url: str | None) -> np.ndarray:
    """Torch fp32 vectors, read from the warm Redis cache when it has them (read only)."""
    if redis_url:
        fingerprint = encoder.fingerprint(normalize=False)
        try:
            stored = connect(redis_url).mget([cache_key(fingerprint, text) for text in texts])
        except Exception as error:  # an unreachable cache only costs time here
            print(f"redis unavailable ({type(error).__name__}); encoding instead")
            stored = [None]
        if all(item is not None for item in stored):
            print(f"torch vectors of {len(texts)} texts read from {redis_url}")
            return np.stack([np.frombuffer(item, dtype=np.float32) for item in stored])
    return encoder.encode_raw(texts, progress=True)


def measure_speed(
    encoders: dict[str, Encoder], model_path: Path, texts: list[str], repeats: int
) -> dict[str, dict[str, float]]:
    from sentence_transformers import SentenceTransformer

    baseline = SentenceTransformer(str(model_path), device="cpu")
    baseline.max_seq_length = MAX_SEQ_LEN

    def runs_on(chosen: list[str]) -> dict[str, Callable[[], object]]:
        runs: dict[str, Callable[[], object]] = {
            "sentence-transformers": lambda: baseline.encode(chosen, batch_size=BATCH_SIZE)
        }
        for name, encoder in encoders.items():
            runs[name] = lambda encoder=encoder: encoder.encode_raw(chosen, batch_size=BATCH_SIZE)
        return runs

    for run in runs_on(texts[:BATCH_SIZE]).values():  # warm-up: first calls allocate and tune
        run()
    runs = runs_on(texts)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    # Round-robin, so drifting load from other users hits every backend alike.
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name] += time_runs(run, 1)
    base = statistics.median(seconds["sentence-transformers"])
    return {
        name: {
            "texts_per_second": len(texts) / statistics.median(values),
            "ratio_to_sentence_transformers": base / statistics.median(values),
            "seconds": values,
        }
        for name, values in seconds.items()
    }


def accuracy(train: np.ndarray, train_labels, test: np.ndarray, test_labels) -> float:
    head = LogisticRegression(max_iter=2000).fit(train, train_labels)
    return float((head.predict(test) == test_labels).mean())


def measure_fidelity(
    encoders: dict[str, Encoder], redis_url: str | None, with_accuracy: bool, train_texts: int
) -> dict[str, dict[str, float]]:
    """Cosine to torch fp32 on test.csv and, with accuracy, heads across backends.

    For each backend B: a logreg head trained on train.csv vectors of one backend and scored
    on test.csv vectors of another, in all four pairings of torch and B. The deltas are what
    a head trained on one backend's vectors loses when served on the other's.
    """
    test_texts, test_labels = read_csv(DATASET / "test.csv")
    train_all, train_labels_all = read_csv(DATASET / "train.csv")
    train_texts, train_labels = train_all[:train_texts], train_labels_all[:train_texts]
    reference = encoders["torch"].encode_raw(test_texts)
    reference_train = (
        torch_vectors(encoders["torch"], train_texts, redis_url) if with_accuracy else None
    )
    base = accuracy(reference_train, train_labels, reference, test_labels) if with_accuracy else 0
    results = {}
    for name, encoder in encoders.items():
        test = reference if name == "torch" else encoder.encode_raw(test_texts, progress=True)
        similarity = cosine(test, reference)
        row = {"cosine_mean": float(similarity.mean()), "cosine_min": float(similarity.min())}
        if with_accuracy:
            train = (
                reference_train
                if name == "torch"
                else encoder.encode_raw(train_texts, progress=True)
            )
            row["test_accuracy"] = accuracy(train, train_labels, test, test_labels)
            row["train_torch_serve_this"] = accuracy(
                reference_train, train_labels, test, test_labels
            )
            row["train_this_serve_torch"] = accuracy(train, train_labels, reference, test_labels)
            row["torch_to_torch_accuracy"] = base
            for key in ("test_accuracy", "train_torch_serve_this", "train_this_serve_torch"):
                row[f"{key}_delta_points"] = round(100 * (row[key] - base), 2)
        results[name] = row
    return results


def print_table(speed: dict, fidelity: dict) -> None:
    print(
        f"{'backend':<22}{'texts/s':>9}{'ratio':>7}{'cos mean':>10}{'cos min':>9}{'test acc':>10}"
        f"{'torch->this':>12}{'this->torch':>12}"
    )
    missing = {"texts_per_second": float("nan"), "ratio_to_sentence_transformers": float("nan")}
    for name in speed or fidelity:
        timing = speed.get(name, missing)
        quality = fidelity.get(name, {})
        accuracy = quality.get("test_accuracy")
        print(
            f"{name:<22}{timing['texts_per_second']:>9.1f}"
            f"{timing['ratio_to_sentence_transformers']:>7.2f}"
            f"{quality.get('cosine_mean', float('nan')):>10.4f}"
            f"{quality.get('cosine_min', float('nan')):>9.4f}"
            f"{'' if accuracy is None else f'{accuracy:.4f}':>10}"
            f"{quality.get('train_torch_serve_this', float('nan')):>12.4f}"
            f"{quality.get('train_this_serve_torch', float('nan')):>12.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-mpnet-base-v2")
    parser.add_argument("--texts", type=int, default=1000, help="texts of all.csv to time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--no-accuracy", action="store_true", help="skip the train.csv encodes")
    parser.add_argument("--train-texts", type=int, default=None, help="first N of train.csv")
    parser.add_argument("--no-speed", action="store_true", help="skip the throughput runs")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="read-only source of warm torch vectors; '' to always encode",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    names = ["torch"] + [name for name in args.backends if name != "torch"]
    encoders: dict[str, Encoder] = {}
    refused: dict[str, str] = {}
    for name in names:
        try:
            encoders[name] = load_encoder(
                args.model,
                max_seq_len=MAX_SEQ_LEN,
                backend=name,
                batch_size=BATCH_SIZE,
                fallback=False,  # a backend refused on this CPU is reported, not replaced
            )
        except EmbedderError as error:
            refused[name] = str(error)
            print(f"{name}: refused: {error}")
    texts = read_csv(DATASET / "all.csv")[0][: args.texts]
    model_path = encoders["torch"].resolved.path
    speed = {} if args.no_speed else measure_speed(encoders, model_path, texts, args.repeats)
    fidelity = measure_fidelity(
        encoders, args.redis_url or None, not args.no_accuracy, args.train_texts or 10**9
    )
    print_table(speed, fidelity)
    report = {
        "model": args.model,
        "texts_timed": 0 if args.no_speed else len(texts),
        "train_texts": args.train_texts,
        "batch_size": BATCH_SIZE,
        "max_seq_len": MAX_SEQ_LEN,
        "repeats": args.repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "cpu_features": cpu_features(),
        },
        "load_average_at_end": list(os.getloadavg()),
        "speed": speed,
        "fidelity": fidelity,
        "refused": refused,
        "fingerprints": {name: encoder.fingerprint() for name, encoder in encoders.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
