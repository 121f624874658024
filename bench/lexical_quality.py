"""Lexical and hybrid heads against the embedding logreg: CV and test scores on real sets.

    python bench/lexical_quality.py
    python bench/lexical_quality.py --sets sst2 --max-train 8000 --folds 3

Vectors: all-mpnet-base-v2 (the default Settings' encoder) read through EmbeddingService
from the machine's Redis cache (db 0, read only: only rows the cache already holds are
used, nothing is encoded). Per set: stratified K-fold CV on the training rows (accuracy,
macro-F1), then a fit on all training rows scored on the set's test file. Prints a table
and writes bench/results/lexical_quality.json.
"""

import argparse
import csv
import statistics
import sys
import time
from typing import Any

import numpy as np
from common import DATASETS, write_result
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

from classifier.training import build_head, fit_estimator, predict_estimator

CANDIDATES: dict[str, dict[str, Any]] = {
    "embedding logreg": {"head": "logreg"},
    "lexical logreg": {"head": "logreg", "features": "lexical"},
    "lexical svm": {"head": "svm", "features": "lexical"},
    "hybrid logreg w=0.5": {"head": "logreg", "features": "hybrid", "vector_weight": 0.5},
    "hybrid logreg w=1": {"head": "logreg", "features": "hybrid", "vector_weight": 1.0},
    "hybrid logreg w=2": {"head": "logreg", "features": "hybrid", "vector_weight": 2.0},
    "hybrid logreg w=1 C=10": {
        "head": "logreg",
        "features": "hybrid",
        "vector_weight": 1.0,
        "C": 10.0,
    },
    "hybrid svm w=1": {"head": "svm", "features": "hybrid", "vector_weight": 1.0},
}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="hate_speech,sst2")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-train", type=int, default=16_000, help="cached rows used, at most")
    parser.add_argument("--candidates", help="comma-separated names (default: all)")
    parser.add_argument("--result", default="lexical_quality", help="bench/results/<name>.json")
    return parser.parse_args()


def read(path: Any) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row["text"] for row in rows], [row["label"] for row in rows]


def service() -> Any:
    from bertheads.settings import Settings
    from embedder import EmbeddingCache, EmbeddingService, connect, load_encoder

    settings = Settings()
    encoder = load_encoder(settings.embedder_model, **settings.encoder_options())
    cache = EmbeddingCache(connect(settings.redis_url), ttl_seconds=settings.cache_ttl_seconds)
    return EmbeddingService(encoder, cache)


def cached_rows(embedding: Any, texts: list[str], labels: list[str], limit: int) -> tuple:
    """The first `limit` rows whose vectors the cache holds, with those vectors."""
    raw = embedding.encoder.fingerprint(normalize=False)
    held = np.flatnonzero(embedding.cache.exists_many(raw, texts))[:limit]
    chosen_texts = [texts[row] for row in held]
    vectors = embedding.embed(chosen_texts).vectors
    return chosen_texts, [labels[row] for row in held], vectors


def score(truth: list[str], probabilities: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    predicted = classes[probabilities.argmax(axis=1)]
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
    }


def evaluate(options: dict[str, Any], data: dict[str, Any], folds: int) -> dict[str, Any]:
    texts, labels, X = data["texts"], np.asarray(data["labels"]), data["vectors"]
    classes = np.unique(labels)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=0)
    fold_scores, fit_seconds = [], []
    for train_rows, test_rows in splitter.split(X, labels):
        started = time.perf_counter()
        head = fit_estimator(
            build_head(**options), X[train_rows], labels[train_rows], [texts[i] for i in train_rows]
        )
        fit_seconds.append(time.perf_counter() - started)
        probabilities = predict_estimator(head, X[test_rows], [texts[i] for i in test_rows])
        fold_scores.append(score(list(labels[test_rows]), probabilities, classes))
    head = fit_estimator(build_head(**options), X, labels, texts)
    test = score(
        data["test_labels"],
        predict_estimator(head, data["test_vectors"], data["test_texts"]),
        classes,
    )
    result = {
        "cv_accuracy": statistics.mean(s["accuracy"] for s in fold_scores),
        "cv_accuracy_std": statistics.pstdev(s["accuracy"] for s in fold_scores),
        "cv_macro_f1": statistics.mean(s["macro_f1"] for s in fold_scores),
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "fit_seconds_median": statistics.median(fit_seconds),
    }
    report = getattr(head, "lexical_report_", None)
    if report is not None:
        result["vocabulary"] = report["vocabulary"]
        result["train_texts_without_tokens"] = report["texts_without_tokens"]
        rows = head.to_serving().transform.transform(data["test_texts"])
        result["test_texts_without_tokens"] = len(rows.empty_rows())
    return result


def main() -> int:
    arguments = parse_arguments()
    names = arguments.candidates.split(",") if arguments.candidates else list(CANDIDATES)
    embedding = service()
    results: dict[str, Any] = {"folds": arguments.folds, "sets": {}}
    for name in arguments.sets.split(","):
        texts, labels = read(DATASETS / name / "train.csv")
        test_texts, test_labels = read(DATASETS / name / "test.csv")
        texts, labels, vectors = cached_rows(embedding, texts, labels, arguments.max_train)
        data = {
            "texts": texts,
            "labels": labels,
            "vectors": vectors,
            "test_texts": test_texts,
            "test_labels": test_labels,
            "test_vectors": embedding.embed(test_texts).vectors,
        }
        print(f"{name}: {len(texts)} cached training rows, {len(test_texts)} test rows", flush=True)
        per_set: dict[str, Any] = {"train_rows": len(texts), "test_rows": len(test_texts)}
        for candidate in names:
            row = evaluate(CANDIDATES[candidate], data, arguments.folds)
            per_set[candidate] = row
            print(
                f"  {candidate:22s} CV acc {row['cv_accuracy']:.4f}±{row['cv_accuracy_std']:.4f} "
                f"CV F1 {row['cv_macro_f1']:.4f}  test acc {row['test_accuracy']:.4f} "
                f"F1 {row['test_macro_f1']:.4f}  fit {row['fit_seconds_median']:.1f} s"
                + (
                    f"  (texts without tokens: train {row['train_texts_without_tokens']}, "
                    f"test {row['test_texts_without_tokens']})"
                    if "vocabulary" in row
                    else ""
                ),
                flush=True,
            )
        results["sets"][name] = per_set
    write_result(arguments.result, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
