"""Long texts: a logreg head on truncated vectors against one on windowed vectors.

Two sets, both read from /work/shared/datasets (never copied):

(a) toxic's long comments: the rows of toxic/train.csv and toxic/test.csv longer than
    max_seq_len tokens (special tokens included) under the served model's tokenizer;
    six 0/1 labels; mean ROC-AUC over the labels with a positive in the test rows.
(b) documents built from sst2, so that the evidence is spread through the text: sentences
    of at least MIN_WORDS words, DOC_SENTENCES (low, high) of them drawn without
    replacement from one label's pool and joined with a space, the label the document's.
    Train documents from sst2/train.csv, test documents from sst2/test.csv (GLUE's dev
    set: no sentence in it appears in train, while validation.csv is a split of GLUE's
    train and shares phrases with it). Seeded.

Each set is embedded twice through EmbeddingService, LONG_TEXTS=truncate and =windows (the
Settings' max windows and overlap), on the model and backend of the Settings (the
default: mpnet) with the Redis of REDIS_URL as cache (the machine's db 0 holds the shared
mpnet cache; the windows land beside it under their own keys). The same logreg head
(classifier.training.train_head, head="logreg", its defaults) is fitted on each.
From the windows already cached, two more poolings cost nothing: the windows' plain mean
and the first window alone (token for token the truncated input: a check).
Differences come with a paired bootstrap 95% interval over the test rows.

    python bench/long_texts.py                        # mpnet (Settings default), onnx-int8
    EMBEDDER_MODEL=sentence-transformers/all-MiniLM-L6-v2 python bench/long_texts.py
"""

import sys
from pathlib import Path

# Runnable as a script from a checkout: this checkout's packages, not an installed copy.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from bertheads.settings import Settings  # noqa: E402
from classifier.training import train_head  # noqa: E402
from embedder import EmbeddingCache, EmbeddingService, connect, load_encoder  # noqa: E402
from embedder.windows import pool_windows, window_space  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
RESULTS = REPO / "bench" / "results" / "long_texts.json"
TOXIC_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
MIN_WORDS = 8
DOC_SENTENCES = (10, 16)
BOOTSTRAP = 2000
CV_MIN_POSITIVES = 20


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def sst2_documents(
    rows: list[dict[str, str]], count: int, generator: np.random.Generator
) -> tuple[list[str], np.ndarray]:
    """`count` documents, half of each label, of DOC_SENTENCES same-label sentences."""
    pools = {
        label: [row["text"].strip() for row in rows if row["label"] == label]
        for label in ("negative", "positive")
    }
    pools = {
        label: [text for text in texts if len(text.split()) >= MIN_WORDS]
        for label, texts in pools.items()
    }
    documents, labels = [], []
    for index in range(count):
        label = ("negative", "positive")[index % 2]
        size = int(generator.integers(DOC_SENTENCES[0], DOC_SENTENCES[1] + 1))
        chosen = generator.choice(len(pools[label]), size=size, replace=False)
        documents.append(" ".join(pools[label][position] for position in chosen))
        labels.append(label)
    order = generator.permutation(count)
    return [documents[position] for position in order], np.array(labels)[order]


def bootstrap_interval(
    score: Callable[[np.ndarray], float], rows: int, generator: np.random.Generator
) -> tuple[float, float]:
    """95% interval of `score(resampled row indices)` (a paired difference) over the rows."""
    values = [score(generator.integers(0, rows, rows)) for _ in range(BOOTSTRAP)]
    values = [value for value in values if np.isfinite(value)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def mean_auc(targets: np.ndarray, probabilities: np.ndarray, rows: np.ndarray) -> float:
    """Mean ROC-AUC over the labels with both classes among `rows`."""
    scores = [
        roc_auc_score(targets[rows, label], probabilities[rows, label])
        for label in range(targets.shape[1])
        if 0 < targets[rows, label].sum() < len(rows)
    ]
    return float(np.mean(scores)) if scores else float("nan")


def window_variants(
    service: EmbeddingService, cache: EmbeddingCache, texts: list[str]
) -> dict[str, np.ndarray]:
    """Plain-mean and first-window vectors of `texts`, from their cached windows."""
    space = window_space(service.encoder.fingerprint(normalize=False))
    dim = service.encoder.dim
    plain, first = [], []
    for plan in service.plan(texts):
        found = cache.get_many(space, [window.cache_text() for window in plan.windows], dim)
        if any(vector is None for vector in found):
            raise RuntimeError("a window is missing from the cache after the windows run")
        vectors = np.stack(found)
        plain.append(pool_windows(vectors, np.ones(len(vectors)), "mean"))
        first.append(vectors[0])
    return {"windows, plain mean": np.stack(plain), "first window only": np.stack(first)}


def embed_both(
    services: dict[str, EmbeddingService], texts: list[str], name: str
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    vectors, seconds = {}, {}
    for mode, service in services.items():
        started = time.perf_counter()
        result = service.embed(texts, progress=True)
        seconds[mode] = time.perf_counter() - started
        vectors[mode] = result.vectors
        print(
            f"{name} {mode}: {len(texts)} texts, {result.cached} cached, "
            f"{result.truncated} truncated, {seconds[mode]:.0f} s",
            flush=True,
        )
    return vectors, seconds


def run_toxic(services, cache, generator, limit: int | None, cv_repeats: int) -> dict:
    encoder = services["truncate"].encoder
    splits = {}
    for split in ("train", "test"):
        rows = read_rows(DATASETS / "toxic" / f"{split}.csv")
        texts = [row["text"] for row in rows]
        long_rows = np.flatnonzero(encoder.token_lengths(texts) > encoder.max_seq_len)[:limit]
        splits[split] = (
            [texts[row] for row in long_rows],
            np.array([[int(rows[row][label]) for label in TOXIC_LABELS] for row in long_rows]),
        )
    (train_texts, train_targets), (test_texts, test_targets) = splits["train"], splits["test"]
    describe_lengths("toxic long train", encoder, train_texts, services["windows"])
    describe_lengths("toxic long test", encoder, test_texts, services["windows"])
    train_vectors, _ = embed_both(services, train_texts, "toxic train")
    test_vectors, seconds = embed_both(services, test_texts, "toxic test")
    for store, texts in ((train_vectors, train_texts), (test_vectors, test_texts)):
        store.update(window_variants(services["windows"], cache, texts))
    # A label with no positive among the long training rows cannot be learnt (threat has
    # none): the head gets the others, and the mean runs over those with a test positive.
    kept = [index for index in range(len(TOXIC_LABELS)) if train_targets[:, index].any()]
    labels = [TOXIC_LABELS[index] for index in kept]
    train_targets, test_targets = train_targets[:, kept], test_targets[:, kept]
    probabilities = {}
    for variant in train_vectors:
        head = train_head(
            train_vectors[variant], train_targets, label_names=labels, head="logreg", test_size=0
        )
        probabilities[variant] = head.predict_proba(test_vectors[variant])
    everything = np.arange(len(test_texts))
    result = {
        "train_rows": len(train_texts),
        "test_rows": len(test_texts),
        "labels_learnt": labels,
        "test_positives": dict(zip(labels, test_targets.sum(axis=0).tolist(), strict=True)),
        "mean_roc_auc": {
            variant: mean_auc(test_targets, probabilities[variant], everything)
            for variant in probabilities
        },
        "toxic_roc_auc": {
            variant: float(roc_auc_score(test_targets[:, 0], probabilities[variant][:, 0]))
            for variant in probabilities
        },
        "embed_seconds_test": seconds,
    }
    result["windows_minus_truncate_interval"] = bootstrap_interval(
        lambda rows: (
            mean_auc(test_targets, probabilities["windows"], rows)
            - mean_auc(test_targets, probabilities["truncate"], rows)
        ),
        len(test_texts),
        generator,
    )
    vectors = {
        variant: np.concatenate([train_vectors[variant], test_vectors[variant]])
        for variant in train_vectors
    }
    targets = np.concatenate([train_targets, test_targets])
    result["cross_validation"] = toxic_cross_validation(vectors, targets, labels, cv_repeats)
    return result


def toxic_cross_validation(
    vectors: dict[str, np.ndarray], targets: np.ndarray, labels: list[str], repeats: int
) -> dict:
    """Repeated stratified 5-fold CV over every long row (train and test pooled).

    The test split holds 16 toxic positives, so one split is noisy; the folds use the labels
    with at least CV_MIN_POSITIVES positives (so each fold's training rows have some), and
    stratify on the first (toxic). Scores: mean ROC-AUC over those labels per fold.
    """
    from sklearn.model_selection import StratifiedKFold

    frequent = [
        index for index in range(len(labels)) if targets[:, index].sum() >= CV_MIN_POSITIVES
    ]
    targets = targets[:, frequent]
    scores: dict[str, list[float]] = {variant: [] for variant in vectors}
    for repeat in range(repeats):
        folds = StratifiedKFold(5, shuffle=True, random_state=repeat)
        for train_rows, test_rows in folds.split(targets, targets[:, 0]):
            for variant, matrix in vectors.items():
                head = train_head(
                    matrix[train_rows],
                    targets[train_rows],
                    label_names=[labels[index] for index in frequent],
                    head="logreg",
                    test_size=0,
                )
                probabilities = head.predict_proba(matrix[test_rows])
                scores[variant].append(
                    mean_auc(targets[test_rows], probabilities, np.arange(len(test_rows)))
                )
    differences = np.array(scores["windows"]) - np.array(scores["truncate"])
    return {
        "labels": [labels[index] for index in frequent],
        "folds": len(differences),
        "mean_roc_auc": {variant: float(np.mean(values)) for variant, values in scores.items()},
        "windows_minus_truncate": {
            "mean": float(differences.mean()),
            "std_over_folds": float(differences.std(ddof=1)),
            "folds_windows_better": int((differences > 0).sum()),
        },
    }


def run_sst2(services, cache, generator, train_docs: int, test_docs: int) -> dict:
    train_texts, train_labels = sst2_documents(
        read_rows(DATASETS / "sst2" / "train.csv"), train_docs, generator
    )
    test_texts, test_labels = sst2_documents(
        read_rows(DATASETS / "sst2" / "test.csv"), test_docs, generator
    )
    encoder = services["truncate"].encoder
    describe_lengths("sst2 docs train", encoder, train_texts, services["windows"])
    describe_lengths("sst2 docs test", encoder, test_texts, services["windows"])
    train_vectors, _ = embed_both(services, train_texts, "sst2 docs train")
    test_vectors, seconds = embed_both(services, test_texts, "sst2 docs test")
    for store, texts in ((train_vectors, train_texts), (test_vectors, test_texts)):
        long_rows = [row for row, plan in enumerate(services["windows"].plan(texts)) if plan.long]
        variants = window_variants(services["windows"], cache, [texts[row] for row in long_rows])
        for variant, vectors in variants.items():
            store[variant] = store["windows"].copy()
            store[variant][long_rows] = vectors
    correct, scores = {}, {}
    for variant in train_vectors:
        head = train_head(train_vectors[variant], train_labels, head="logreg", test_size=0)
        probabilities = head.predict_proba(test_vectors[variant])
        positive = list(head.spec.labels).index("positive")
        scores[variant] = probabilities[:, positive]
        correct[variant] = (scores[variant] >= 0.5) == (test_labels == "positive")
    result = {
        "train_docs": train_docs,
        "test_docs": test_docs,
        "accuracy": {variant: float(correct[variant].mean()) for variant in correct},
        "roc_auc": {
            variant: float(roc_auc_score(test_labels == "positive", scores[variant]))
            for variant in scores
        },
        "embed_seconds_test": seconds,
    }
    result["windows_minus_truncate_interval"] = bootstrap_interval(
        lambda rows: float(correct["windows"][rows].mean() - correct["truncate"][rows].mean()),
        test_docs,
        generator,
    )
    return result


def run_overhead(services, repeats: int = 30) -> dict:
    """What windows mode costs a cached request of short texts: it tokenises every text to
    know which are long. Medians of `repeats` calls, each mode in turn, in the same run:
    as /predict calls it (count_truncated=False) and as /embed does (counting truncated
    texts, which tokenises every text in truncate mode too)."""
    texts = [row["text"] for row in read_rows(DATASETS / "sst2" / "test.csv")]
    result = {}
    for size in (1, 32, 256):
        batch = texts[:size]
        for service in services.values():
            service.embed(batch, count_truncated=False)  # fills the cache if needed
        for count in (False, True):
            seconds: dict[str, list[float]] = {mode: [] for mode in services}
            for _ in range(repeats):
                for mode, service in services.items():
                    started = time.perf_counter()
                    answer = service.embed(batch, count_truncated=count)
                    seconds[mode].append(time.perf_counter() - started)
                    assert answer.cached == size
            medians = {mode: float(np.median(values)) for mode, values in seconds.items()}
            caller = "/embed (counting truncated)" if count else "/predict (not counting)"
            result[f"{size} cached texts, as {caller}"] = {
                "median_ms": {mode: 1000 * value for mode, value in medians.items()},
                "windows_over_truncate": medians["windows"] / medians["truncate"],
            }
    return result


def describe_lengths(name: str, encoder, texts: list[str], windows: EmbeddingService) -> None:
    lengths = encoder.token_lengths(texts)
    plans = windows.plan(texts)
    counts = np.array([max(1, len(plan.windows)) for plan in plans])
    print(
        f"{name}: {len(texts)} texts, tokens median {np.median(lengths):.0f} "
        f"p90 {np.percentile(lengths, 90):.0f} max {lengths.max()}, "
        f"over {encoder.max_seq_len}: {(lengths > encoder.max_seq_len).mean():.0%}, "
        f"windows mean {counts.mean():.2f}, cut at max windows: "
        f"{sum(plan.truncated for plan in plans)}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="toxic,sst2,overhead")
    parser.add_argument("--train-docs", type=int, default=800)
    parser.add_argument("--test-docs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cv-repeats", type=int, default=3, help="toxic: repeats of 5-fold CV")
    parser.add_argument("--toxic-limit", type=int, help="first N long rows per split (smoke runs)")
    arguments = parser.parse_args()
    settings = Settings()
    encoder = load_encoder(settings.embedder_model, **settings.encoder_options())
    cache = EmbeddingCache(connect(settings.redis_url), settings.cache_ttl_seconds)
    options = settings.long_text_options()
    services = {
        mode: EmbeddingService(encoder, cache, **(options | {"long_texts": mode}))
        for mode in ("truncate", "windows")
    }
    print("encoder:", json.dumps(encoder.describe()), flush=True)
    print("windows:", json.dumps(services["windows"].describe_long_texts()), flush=True)
    results: dict[str, object] = {
        "encoder": encoder.describe(),
        "windows": services["windows"].describe_long_texts(),
        "seed": arguments.seed,
    }
    sets = arguments.sets.split(",")
    if "toxic" in sets:
        results["toxic_long"] = run_toxic(
            services,
            cache,
            np.random.default_rng(arguments.seed),
            arguments.toxic_limit,
            arguments.cv_repeats,
        )
        print(json.dumps(results["toxic_long"], indent=2), flush=True)
    if "sst2" in sets:
        results["sst2_docs"] = run_sst2(
            services,
            cache,
            np.random.default_rng(arguments.seed),
            arguments.train_docs,
            arguments.test_docs,
        )
        print(json.dumps(results["sst2_docs"], indent=2), flush=True)
    if "overhead" in sets:
        results["cached_overhead"] = run_overhead(services)
        print(json.dumps(results["cached_overhead"], indent=2), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    name = RESULTS.with_name(f"long_texts_{encoder.model_id.split('/')[-1]}.json")
    # Runs of some of the sets update their part of the model's file and keep the rest.
    earlier = json.loads(name.read_text()) if name.exists() else {}
    name.write_text(json.dumps(earlier | results, indent=2) + "\n")
    print("written:", name)


if __name__ == "__main__":
    main()
