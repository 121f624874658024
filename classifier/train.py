"""Train a classifier head from a labelled file: `python classifier/train.py --data FILE ...`.

Embeds through the cached embedding service, fits and evaluates a head, writes
metrics.json and plots to --out, and saves the head as the next live version in the head
store (HEAD_STORE: a folder, by default MODELS_DIR, or a Redis URL).
Bad input exits with code 2 and a one-line message.
"""

import sys
from pathlib import Path

# Runnable as a script from a checkout without installation.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="training file (.csv/.tsv/.jsonl)")
    evaluation = parser.add_mutually_exclusive_group()
    evaluation.add_argument("--test", type=Path, help="evaluation file")
    evaluation.add_argument("--test-size", type=float, help="stratified held-out share (0.2)")
    evaluation.add_argument("--cv", type=int, metavar="K", help="K stratified folds")
    parser.add_argument("--text-col", default="text")
    parser.add_argument("--label-col", default="label")
    parser.add_argument("--label-cols", help="comma-separated 0/1 columns (multi-label)")
    parser.add_argument(
        "--head",
        choices=["auto", "logreg", "mlp", "svm"],
        help="auto (the default): search head families by CV within --budget-seconds; "
        "embedding: logreg or mlp; lexical / hybrid: logreg or svm. Unset with an option "
        "of a named head (--loss, --C, --features, ...): logreg",
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        help="auto: seconds the search may start candidates in (TRAIN_BUDGET_SECONDS, 60)",
    )
    add_feature_arguments(parser)
    parser.add_argument("--loss", choices=["ce", "focal"], default="ce")
    parser.add_argument("--gamma", type=float, default=2.0)
    parser.add_argument("--alpha", help="focal alpha: a number, comma-separated list or 'balanced'")
    parser.add_argument("--class-weight", choices=["balanced"])
    parser.add_argument("--resample", choices=["none", "over", "under"], default="none")
    parser.add_argument("--C", type=float, help="logreg inverse regularisation strength")
    parser.add_argument("--hidden-sizes", help="mlp hidden widths, comma-separated (256)")
    parser.add_argument("--tune-threshold", action="store_true", help="tune binary threshold too")
    parser.add_argument("--name", help="head name (default: the data file's folder name)")
    parser.add_argument("--out", type=Path, help="output dir for metrics and plots (runs/<name>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="encoder (default: EMBEDDER_MODEL)")
    stores = parser.add_mutually_exclusive_group()
    stores.add_argument(
        "--head-store", help="where heads live: a folder or redis://... (default: HEAD_STORE)"
    )
    stores.add_argument("--models-dir", type=Path, help="a folder of heads (same as --head-store)")
    parser.add_argument("--redis-url", help="embedding cache (default: REDIS_URL)")
    parser.add_argument(
        "--embed-url", help="embed through a running bertheads server, e.g. http://gpu-box:8000"
    )
    parser.add_argument(
        "--long-texts",
        choices=["truncate", "windows"],
        help="texts over max_seq_len tokens: cut, or read as overlapping windows pooled into "
        "one vector (default: LONG_TEXTS; with --embed-url the server's setting applies)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not save the head")
    parser.add_argument("--mlflow", action="store_true", help="log the run to MLflow")
    parser.add_argument(
        "--mlflow-dir",
        type=Path,
        default=REPO_ROOT / "mlruns",
        help="local MLflow store (SQLite database + artifacts) when --mlflow-uri is not given",
    )
    parser.add_argument("--mlflow-uri", help="an MLflow tracking URI (server or database)")
    parser.add_argument("--mlflow-experiment", default="bertheads")
    return parser.parse_args(argv)


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    """--features and --vector-weight (lexical and hybrid heads, classifier.features)."""
    parser.add_argument(
        "--features",
        choices=["embedding", "lexical", "hybrid"],
        default="embedding",
        help="what the head reads: the encoder's vectors, TF-IDF of the texts (lexical), "
        "or both in one linear model (hybrid)",
    )
    parser.add_argument(
        "--vector-weight", type=float, help="hybrid: weight of the vector block (1.0)"
    )


def feature_options(arguments: argparse.Namespace) -> dict[str, Any]:
    """Head options for --features / --vector-weight; mismatches exit 2 naming the flag."""
    if arguments.vector_weight is not None and arguments.features != "hybrid":
        raise _invalid("--vector-weight: only with --features hybrid")
    if arguments.features == "embedding":
        if arguments.head == "svm":
            raise _invalid("--head svm: needs --features lexical or hybrid")
        return {}
    options: dict[str, Any] = {"features": arguments.features}
    if arguments.vector_weight is not None:
        if not arguments.vector_weight > 0:
            raise _invalid(f"--vector-weight: must be > 0, got {arguments.vector_weight}")
        options["vector_weight"] = arguments.vector_weight
    return options


def _alpha(text: str | None) -> float | str | list[float] | None:
    if text is None or text == "balanced":
        return text
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        raise _invalid(
            f"--alpha: {text!r} is not a number, a comma-separated list or 'balanced'"
        ) from None
    return values[0] if len(values) == 1 else values


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(size) for size in text.split(","))
    except ValueError:
        raise _invalid(f"--hidden-sizes: {text!r} is not a list of integers") from None
    if not sizes or min(sizes) < 1:
        raise _invalid(f"--hidden-sizes: widths must be >= 1, got {text!r}")
    return sizes


def _invalid(message: str) -> Exception:
    from classifier.errors import InvalidParameterError

    return InvalidParameterError(message)


def _embedding_service(arguments: argparse.Namespace, settings: Any) -> tuple[Any, dict[str, Any]]:
    """The local encoder behind Redis, or a remote server (which caches in its own Redis)."""
    if arguments.embed_url:
        from embedder.remote import RemoteEmbeddingService

        if arguments.long_texts:
            raise _invalid(
                "--long-texts: cannot be combined with --embed-url; the server reads long "
                "texts as its LONG_TEXTS setting says"
            )

        key = settings.api_key.get_secret_value() if settings.api_key else None
        remote = RemoteEmbeddingService(arguments.embed_url, api_key=key)
        info = remote.describe()
        if arguments.model and arguments.model != info["model"]:
            raise _invalid(
                f"--model {arguments.model!r} differs from the server's model {info['model']!r}"
            )
        return remote, info
    from bertheads.connections import embedding_cache
    from embedder import EmbeddingService, load_encoder

    encoder = load_encoder(arguments.model or settings.embedder_model, **settings.encoder_options())
    cache = embedding_cache(settings, arguments.redis_url)
    long_texts = settings.long_text_options()
    if arguments.long_texts:
        long_texts["long_texts"] = arguments.long_texts
    service = EmbeddingService(encoder, cache, **long_texts)
    return service, {**encoder.describe(), "long_texts": service.describe_long_texts()}


def _save(
    arguments: argparse.Namespace,
    settings: Any,
    trained: Any,
    name: str,
    encoder_info: dict[str, Any],
    data_hashes: dict[str, str],
    metrics: dict[str, Any],
    out_dir: Path,
) -> Any:
    """Publish the head as the next live version, with the API's signing, pruning and cap.

    A copy of the saved files (artifact and sidecar, plain arrays and JSON) goes to
    `<out>/head/`, so --mlflow logs the head as it is served.
    """
    from bertheads.connections import head_store
    from classifier.artifacts import save_head

    store = head_store(settings, arguments.head_store or arguments.models_dir)
    key = settings.heads_signing_key.get_secret_value() if settings.heads_signing_key else ""
    try:
        record = save_head(
            trained,
            store,
            name,
            encoder_info,
            data_hashes,
            extra={
                "evaluation_metrics": {
                    k: metrics.get(k) for k in ("accuracy", "macro_f1", "roc_auc")
                }
            },
            signing_key=key.encode() or None,
            versions_kept=settings.head_versions_kept,
            max_heads=settings.max_heads,
        )
        copy = out_dir / "head"
        copy.mkdir(parents=True, exist_ok=True)
        stem = f"{name}-v{record.version}"
        (copy / f"{stem}.safetensors").write_bytes(store.read_artifact(name, record.version))
        (copy / f"{stem}.json").write_text(json.dumps(record.metadata, indent=2), encoding="utf-8")
        return record
    finally:
        store.close()


def _embed(
    service: Any, options: dict[str, Any], texts: list[str], test_texts: list[str] | None
) -> tuple[Any, Any]:
    """Embedded train and test texts; (None, None) for a lexical head, which reads only texts."""
    if options.get("features", "embedding") == "lexical":
        return None, None
    embedded = service.embed(texts, progress=True)
    test_embedded = service.embed(test_texts, progress=True) if test_texts is not None else None
    return embedded, test_embedded


def _embedding_summary(
    encoder_info: dict[str, Any], service: Any, embedded: Any, test_embedded: Any, rows: int
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "model": encoder_info["model"],
        "fingerprint": service.fingerprint,
        "rows": rows,
    }
    if embedded is None:
        summary["embedded"] = False  # a lexical head: nothing was embedded
        return summary
    parts = [part for part in (embedded, test_embedded) if part is not None]
    summary["cached"] = sum(part.cached for part in parts)
    summary["truncated"] = sum(part.truncated for part in parts)
    return summary


HEAD_ONLY_FLAGS: dict[str, Any] = {
    "loss": "ce",
    "gamma": 2.0,
    "alpha": None,
    "class_weight": None,
    "resample": "none",
    "C": None,
    "hidden_sizes": None,
    "features": "embedding",
    "vector_weight": None,
}


def resolve_head(arguments: argparse.Namespace) -> None:
    """Set `arguments.head`: auto unless a named head's flag is given (then logreg, as before).

    `--head auto` chooses those options itself: one given with it exits 2 rather than
    being ignored.
    """
    given = [
        "--" + name.replace("_", "-")
        for name, default in HEAD_ONLY_FLAGS.items()
        if getattr(arguments, name, default) != default
    ]
    if arguments.head is None:
        arguments.head = "logreg" if given else "auto"
    if arguments.head == "auto" and given:
        raise _invalid(
            f"{', '.join(given)}: only with a named head (--head logreg, mlp or svm); "
            "--head auto searches the families and their options itself"
        )


def auto_options(
    arguments: argparse.Namespace, settings: Any, label_columns: list[str] | None
) -> dict[str, Any]:
    """classifier.reporting.train_reported's options for --head auto."""
    budget = arguments.budget_seconds
    if budget is None:
        budget = settings.train_budget_seconds
    if not budget > 0:
        raise _invalid(f"--budget-seconds: must be > 0, got {budget}")
    options: dict[str, Any] = {
        "label_names": label_columns,
        "head": "auto",
        "seed": arguments.seed,
        "budget_seconds": budget,
    }
    if arguments.tune_threshold:
        options["tune_threshold"] = True
    return options


def cv_baseline(trained: Any, texts: list[str], arguments: argparse.Namespace) -> dict[str, Any]:
    """The baseline on the folds of --cv, against the head's out-of-fold metrics."""
    from classifier.baseline import compare, cross_validated_baseline
    from classifier.metrics import evaluate

    targets = trained.evaluation[0]
    baseline = cross_validated_baseline(
        texts, targets, trained.spec, arguments.cv, seed=arguments.seed
    )
    head = evaluate(trained.spec, *trained.evaluation, trained.thresholds)
    return compare(head, baseline)


def print_report(metrics: dict[str, Any], shown_rows: int = 8) -> None:
    """The leaderboard, the chosen head against the baseline, and its calibration."""
    board = metrics.get("leaderboard")
    if board:
        search = metrics.get("search", {})
        cut = " (cut by the budget)" if search.get("cut_by_budget") else ""
        print(
            f"auto search: {search.get('candidates_tried')} candidates, "
            f"{search.get('folds')}-fold CV {metrics.get('selection_metric')}, "
            f"{search.get('seconds', 0):.1f} s of a {search.get('budget_seconds')} s budget{cut}"
        )
        chosen = metrics.get("chosen", {}).get("candidate")
        for row in board[:shown_rows]:
            mark = "*" if row["candidate"] == chosen else " "
            value = "   -  " if row["cv_score"] is None else f"{row['cv_score']:.4f}"
            print(
                f" {mark} {value}  {row['fit_seconds']:6.2f} s  {row['candidate']}"
                + ("" if row["status"] == "ok" else f"  [{row['status']}]")
            )
        if len(board) > shown_rows:
            print(f"   ... {len(board) - shown_rows} more in metrics.json")
    baseline = metrics.get("baseline") or {}
    differences = baseline.get("head_minus_baseline") or {}
    if differences:
        print(f"against the baseline {baseline['name']} (same rows):")
        for key, difference in differences.items():
            print(
                f"   {key:<12} head {metrics[key]:.4f}  baseline "
                f"{baseline['metrics'][key]:.4f}  difference {difference:+.4f}"
            )
    elif baseline.get("skipped"):
        print(f"baseline: not fitted ({baseline['skipped']})")
    calibration = metrics.get("calibration") or {}
    if calibration.get("ece") is not None:
        print(
            f"calibration: method {calibration['method']}, ECE {calibration['ece']:.4f} "
            f"on the {calibration.get('measured_on', 'held-out rows')}"
        )


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate, plot and save; returns the metrics written to metrics.json."""
    from bertheads.settings import Settings
    from classifier.data import file_sha256, read_labelled
    from classifier.plots import save_plots
    from classifier.reporting import train_reported
    from classifier.tasks import encode_labels
    from classifier.training import build_head, cross_validate_head

    started = time.perf_counter()
    settings = Settings()
    if arguments.mlflow:
        from classifier.tracking import require_mlflow

        require_mlflow()
    label_columns = arguments.label_cols.split(",") if arguments.label_cols else None
    columns = {"text_column": arguments.text_col, "label_column": arguments.label_col}
    texts, labels = read_labelled(arguments.data, label_columns=label_columns, **columns)
    test_texts, test_labels = None, None
    if arguments.test:
        test_texts, test_labels = read_labelled(
            arguments.test, label_columns=label_columns, **columns
        )
    train_labels: Any = labels
    if label_columns:
        train_labels = np.asarray(labels)
        test_labels = None if test_labels is None else np.asarray(test_labels)
    encode_labels(train_labels, label_columns)  # refuse one-class data before loading a model
    name = arguments.name or re.sub(r"[^A-Za-z0-9_.-]", "_", arguments.data.resolve().parent.name)
    out_dir = arguments.out or REPO_ROOT / "runs" / name

    resolve_head(arguments)
    options: dict[str, Any] = {
        "label_names": label_columns,
        "head": arguments.head,
        "loss": arguments.loss,
        "gamma": arguments.gamma,
        "alpha": _alpha(arguments.alpha),
        "class_weight": arguments.class_weight,
        "resample": arguments.resample,
        "seed": arguments.seed,
    }
    if arguments.tune_threshold:
        options["tune_threshold"] = True
    if arguments.C is not None:
        options["C"] = arguments.C
    if arguments.hidden_sizes:
        options["hidden_sizes"] = _sizes(arguments.hidden_sizes)
    options.update(feature_options(arguments))
    head_options = {
        key: value
        for key, value in options.items()
        if key not in ("head", "seed", "label_names", "tune_threshold")
    }
    if arguments.head == "auto":
        options = auto_options(arguments, settings, label_columns)
    else:
        build_head(arguments.head, random_state=arguments.seed, **head_options)  # fail fast

    service, encoder_info = _embedding_service(arguments, settings)
    loaded_at = time.perf_counter()
    embedded, test_embedded = _embed(service, options, texts, test_texts)
    train_vectors = None if embedded is None else embedded.vectors
    embedded_at = time.perf_counter()

    summary = None
    if arguments.head == "auto" or not arguments.cv:
        trained = train_reported(
            train_vectors,
            train_labels,
            texts=texts,
            test_vectors=None if test_embedded is None else test_embedded.vectors,
            test_texts=test_texts,
            test_labels=test_labels,
            test_size=(
                0.0 if arguments.cv else 0.2 if arguments.test_size is None else arguments.test_size
            ),
            folds=arguments.cv,
            progress=True,
            **options,
        )
    else:
        trained, summary = cross_validate_head(
            train_vectors, train_labels, arguments.cv, texts=texts, **options
        )
        trained.report["baseline"] = cv_baseline(trained, texts, arguments)
    trained_at = time.perf_counter()

    metrics = dict(trained.metrics)
    if summary is not None:
        from classifier.metrics import evaluate

        metrics = evaluate(trained.spec, *trained.evaluation, trained.thresholds)
        metrics["evaluated_on"] = f"{arguments.cv}-fold out-of-fold predictions"
        for key, value in summary.items():
            if isinstance(value, dict):
                metrics[key], metrics[f"{key}_std"] = value["mean"], value["std"]
        metrics["cv_folds"] = summary["folds"]
        metrics["fit_seconds"] = trained.fit_seconds
    # File names, not paths: the metadata is served by GET /heads/{name}.
    data_hashes = {arguments.data.name: file_sha256(arguments.data)}
    if arguments.test:
        data_hashes[arguments.test.name] = file_sha256(arguments.test)
    metrics["timings"] = {
        "load_encoder_seconds": loaded_at - started,
        "embed_seconds": embedded_at - loaded_at,
        "train_and_evaluate_seconds": trained_at - embedded_at,
        "head_fit_seconds": trained.fit_seconds,
    }
    metrics["embedding"] = _embedding_summary(
        encoder_info, service, embedded, test_embedded, len(texts) + len(test_texts or [])
    )
    if "long_texts" in encoder_info:
        metrics["embedding"]["long_texts"] = encoder_info["long_texts"]
    metrics.update(trained.report)
    if summary is not None and metrics.get("baseline"):
        from classifier.baseline import compare

        # Against the scores the report shows (the folds' means), not the pooled ones.
        metrics["baseline"] = compare(metrics, metrics["baseline"])
    metrics["params"] = trained.params
    metrics.setdefault("features", trained.params.get("features", "embedding"))
    metrics["thresholds"] = trained.thresholds
    plots = save_plots(out_dir, trained.spec, metrics, trained.evaluation, trained.loss_history)
    if not arguments.no_save:
        record = _save(
            arguments, settings, trained, name, encoder_info, data_hashes, metrics, out_dir
        )
        metrics["saved"] = {"name": name, "version": record.version, "store": record.location}
    metrics["timings"]["total_seconds"] = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(
        json.dumps(metrics, indent=2, default=str), encoding="utf-8"
    )
    if arguments.mlflow:
        from classifier.tracking import local_tracking_uri, log_to_mlflow

        tags = {"head": name, "fingerprint": str(service.fingerprint)}
        if "saved" in metrics:
            tags["version"] = str(metrics["saved"]["version"])
        metrics["mlflow_run_id"] = log_to_mlflow(
            arguments.mlflow_uri or local_tracking_uri(arguments.mlflow_dir),
            arguments.mlflow_experiment,
            name,
            trained.params,
            metrics,
            out_dir,
            tags,
        )
    metrics["plots"] = [str(path) for path in plots]
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    arguments = parse_arguments(argv)
    from bertheads.client import BertheadsError
    from classifier.errors import ClassifierError
    from embedder.errors import EmbedderError

    try:
        metrics = run(arguments)
    except (ClassifierError, EmbedderError, BertheadsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    scores = {key: metrics.get(key) for key in ("accuracy", "macro_f1", "weighted_f1", "roc_auc")}
    shown = ", ".join(f"{key}={value:.4f}" for key, value in scores.items() if value is not None)
    print(
        f"{metrics['task']} {shown}; head fit {metrics['timings']['head_fit_seconds']:.2f} s, "
        f"total {metrics['timings']['total_seconds']:.1f} s"
    )
    if "lexical" in metrics:
        lexical = metrics["lexical"]
        test = lexical.get("test_texts_without_tokens")
        print(
            f"lexical features: {lexical['vocabulary']} n-grams; "
            f"{lexical['texts_without_tokens']} training text(s)"
            + ("" if test is None else f" and {test} evaluation text(s)")
            + " without a usable token (empty TF-IDF row"
            + (", predicted from the vector)" if metrics.get("features") == "hybrid" else ")")
            + "".join(
                f"; {count} without a {block} n-gram"
                for block, count in lexical.get("texts_without_tokens_by_block", {}).items()
                if count
            )
        )
    print_report(metrics)
    if "saved" in metrics:
        saved = metrics["saved"]
        print(f"saved {saved['name']} v{saved['version']} in {saved['store']}")
    if "mlflow_run_id" in metrics:
        print(f"mlflow run {metrics['mlflow_run_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
