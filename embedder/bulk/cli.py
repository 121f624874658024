"""`python -m embedder.bulk`: embed a corpus into the cache the API and train.py read."""

import argparse
import json
import logging
import sys
from pathlib import Path

from bertheads.settings import Settings

MAX_BAD_ROWS_SHOWN = 20
EXIT_FAILURES, EXIT_INPUT, EXIT_STOPPED, EXIT_NO_RAY = 1, 2, 3, 4


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """Flags; every default that defines the vector space comes from Settings."""
    parser = argparse.ArgumentParser(
        prog="python -m embedder.bulk",
        description="Embed a whole corpus into the Redis cache with a pool of Ray actors. "
        "Texts already cached are skipped, so a run can be stopped and started again.",
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="CSV/TSV/JSONL/Parquet, a file or a folder"
    )
    parser.add_argument("--text-col", default="text", help="the texts' column (default: text)")
    parser.add_argument("--model", default=settings.embedder_model)
    parser.add_argument(
        "--backend", choices=["torch", "onnx", "onnx-int8"], default=settings.embedder_backend
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="auto, host:6379 or ray://host:10001 (default: start Ray on this machine)",
    )
    parser.add_argument(
        "--actors",
        type=int,
        default=None,
        help="encoder actors (default: one per GPU, else one per --cpus-per-actor cores)",
    )
    parser.add_argument(
        "--cpus-per-actor", type=float, default=1.0, help="CPU cores (and threads) per actor"
    )
    parser.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="texts per actor call")
    parser.add_argument("--output", type=Path, default=None, help="also write vectors.parquet")
    parser.add_argument("--redis-url", default=settings.redis_url)
    parser.add_argument(
        "--redis-patience",
        type=float,
        default=60.0,
        help="seconds a Redis outage may last before the job stops (default: 60)",
    )
    parser.add_argument("--bad-rows", type=Path, default=None, help="write every bad row as JSONL")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the job; exit 0 when done, 1 when texts failed, 2 on bad input, 3 when stopped."""
    settings = Settings()
    arguments = build_parser(settings).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (arguments.actors is not None and arguments.actors < 1) or arguments.batch_size < 1:
        print("--actors and --batch-size must be at least 1", file=sys.stderr)
        return EXIT_INPUT
    if arguments.cpus_per_actor <= 0 or (arguments.gpus_per_actor or 0) < 0:
        print("--cpus-per-actor must be positive, --gpus-per-actor not negative", file=sys.stderr)
        return EXIT_INPUT
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        print("the bulk job needs Ray: pip install 'bertheads[ray]'", file=sys.stderr)
        return EXIT_NO_RAY

    from embedder.bulk.job import BulkJobError, BulkOptions, run_bulk
    from embedder.bulk.source import BulkInputError

    encoder_options = settings.encoder_options()
    encoder_options["backend"] = arguments.backend
    if encoder_options["threads"] is None:
        # One thread per reserved core: actors sharing a machine must not oversubscribe it.
        encoder_options["threads"] = max(1, int(arguments.cpus_per_actor))
    options = BulkOptions(
        data=arguments.data,
        model=arguments.model,
        encoder_options=encoder_options,
        long_text_options=settings.long_text_options(),
        redis_url=arguments.redis_url,
        redis_cluster=settings.redis_cluster,
        ttl_seconds=settings.cache_ttl_seconds,
        text_column=arguments.text_col,
        max_chars=settings.max_text_chars,
        ray_address=arguments.ray_address,
        actors=arguments.actors,
        cpus_per_actor=arguments.cpus_per_actor,
        gpus_per_actor=arguments.gpus_per_actor,
        batch_size=arguments.batch_size,
        output=arguments.output,
        patience_seconds=arguments.redis_patience,
        progress=not arguments.no_progress,
    )
    try:
        report = run_bulk(options)
    except BulkInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except BulkJobError as error:
        print(f"stopped: {error}", file=sys.stderr)
        return EXIT_STOPPED
    for bad in report.bad_rows[:MAX_BAD_ROWS_SHOWN]:
        print(f"bad row: {bad}", file=sys.stderr)
    if len(report.bad_rows) > MAX_BAD_ROWS_SHOWN:
        more = len(report.bad_rows) - MAX_BAD_ROWS_SHOWN
        hint = f"all in {arguments.bad_rows}" if arguments.bad_rows else "--bad-rows FILE lists all"
        print(f"bad row: ... and {more} more ({hint})", file=sys.stderr)
    for failed in report.failed:
        print(f"failed: {failed}", file=sys.stderr)
    if arguments.bad_rows:
        with arguments.bad_rows.open("w") as handle:
            for bad in report.bad_rows:
                handle.write(json.dumps({"path": bad.path, "row": bad.row, "problem": bad.problem}))
                handle.write("\n")
    if report.encoded == 0 and not report.failed:
        print("nothing to encode: every text is already in the cache")
    for line in report.lines():
        print(line)
    return EXIT_FAILURES if report.failed else 0
