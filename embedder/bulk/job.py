"""The bulk job's driver: read and check the corpus, drop what is cached, encode the rest.

Phase one streams the corpus (read by Ray Data tasks) through the driver, which counts bad
rows and duplicates and asks Redis, in pipelined chunks, which texts are already cached.
Phase two sends only the missing texts, in blocks of one batch, to a pool of actors
(`EncodeActor`), each with its own encoder, that write the vectors to the cache.
Every finished batch is in Redis, so a killed job resumes where it stopped.
"""

import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import redis
from tqdm.auto import tqdm

from embedder.bulk.output import VectorsFile
from embedder.bulk.redis_client import redis_client
from embedder.bulk.retry import RedisUnavailableError, with_redis_retries
from embedder.bulk.rows import text_hash
from embedder.cache import EmbeddingCache
from embedder.encoder import load_encoder
from embedder.pooling import l2_normalize
from embedder.service import EmbeddingService

logger = logging.getLogger(__name__)
CHECK_CHUNK = 10_000  # texts per cache check: many pipelined EXISTS, one round trip each 1000


@dataclass
class BulkOptions:
    """Everything a bulk job needs; the CLI fills it from Settings and flags."""

    data: Path
    model: str
    encoder_options: dict[str, Any]
    redis_url: str
    # EmbeddingService's long-text options (Settings.long_text_options()): the same as the
    # server's, so a long text's windows land under the keys a server reads.
    long_text_options: dict[str, Any] = field(default_factory=dict)
    redis_cluster: bool = False
    ttl_seconds: int | None = None
    text_column: str = "text"
    max_chars: int = 20_000
    ray_address: str | None = None
    actors: int | None = None  # None: one per GPU, else one per `cpus_per_actor` cores
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    batch_size: int = 256
    output: Path | None = None
    patience_seconds: float = 60.0
    progress: bool = True


@dataclass
class BadRow:
    """A row that could not be embedded, and why."""

    path: str
    row: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path} row {self.row}: {self.problem}"


@dataclass
class BulkReport:
    """What a job did; `lines()` is its summary, one `name: value` per line."""

    rows_read: int = 0
    duplicates: int = 0
    already_cached: int = 0
    encoded: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    failed: list[BadRow] = field(default_factory=list)
    wall_seconds: float = 0.0
    actor_texts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    actor_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    output_rows: int | None = None
    redis_retries: int = 0
    actors: int | None = None
    gpus_per_actor: float | None = None
    # When the first batch started and the last one ended, on the actors' clocks: the
    # pool's span once the actors were loaded, with Ray's hand-offs between batches but
    # without start-up (which a long job amortises).
    first_batch_started: float | None = None
    last_batch_ended: float | None = None

    def pool_rate(self) -> float:
        """Texts encoded per second between the first batch's start and the last one's end."""
        if self.first_batch_started is None or self.last_batch_ended is None:
            return 0.0
        span = self.last_batch_ended - self.first_batch_started
        return self.encoded / span if span > 0 else 0.0

    def actor_rates(self) -> dict[str, float]:
        """Texts encoded per busy second, per actor."""
        return {
            name: self.actor_texts[name] / seconds
            for name, seconds in sorted(self.actor_seconds.items())
            if seconds > 0
        }

    def lines(self) -> list[str]:
        """The final summary."""
        rates = self.actor_rates()
        lines = [
            f"texts read: {self.rows_read}",
            f"bad rows: {len(self.bad_rows)}",
            f"duplicates: {self.duplicates}",
            f"already cached: {self.already_cached}",
            f"encoded: {self.encoded}",
            f"failures: {len(self.failed)}",
            f"redis retries: {self.redis_retries}",
            f"actors: {self.actors} ({self.gpus_per_actor or 0:g} GPU each)",
            f"wall time: {self.wall_seconds:.1f} s",
            "texts/s per actor: "
            + (", ".join(f"{rate:.1f}" for rate in rates.values()) if rates else "none ran"),
            f"texts/s overall: {self.encoded / self.wall_seconds if self.wall_seconds else 0:.1f}",
            "texts/s once loaded: " + (f"{self.pool_rate():.1f}" if self.encoded else "none ran"),
        ]
        if self.output_rows is not None:
            lines.append(f"output rows: {self.output_rows}")
        return lines


class BulkJobError(RuntimeError):
    """The job stopped; the message says why and what to do. What finished stays cached."""


def run_bulk(options: BulkOptions) -> BulkReport:
    """Run a bulk embedding job; raises BulkJobError (or BulkInputError) when it cannot finish."""
    import ray

    from embedder.bulk.source import corpus_files

    started = time.perf_counter()
    files, file_format = corpus_files(options.data)
    started_ray = _start_ray(options.ray_address)
    output: VectorsFile | None = None
    try:
        # The driver's encoder only names the vector space (the fingerprint ignores backend
        # and device), so it stays on the CPU and leaves any GPU to the actors.
        encoder = load_encoder(options.model, **{**options.encoder_options, "device": "cpu"})
        cache = EmbeddingCache(
            redis_client(options.redis_url, options.redis_cluster), options.ttl_seconds
        )
        service = EmbeddingService(encoder, cache, **options.long_text_options)
        if options.output:
            output = VectorsFile(options.output, encoder.dim)
        report = BulkReport()
        options = _sized_for_cluster(options, ray.cluster_resources())
        report.actors, report.gpus_per_actor = options.actors, options.gpus_per_actor
        scan = _Scan(service, options, report, output)
        missing = scan.run(files, file_format)
        if missing:
            _encode(missing, scan.where, options, report, output, encoder.normalize)
        else:
            logger.info("nothing to encode: every text is already in the cache")
        if output:
            output.commit()
            report.output_rows = output.rows
            output = None
    except Exception as error:
        if output:
            output.abort()
        explained = _explained(error)
        if explained is error:
            raise
        raise explained from error
    finally:
        if started_ray:
            ray.shutdown()
    report.wall_seconds = time.perf_counter() - started
    return report


def _sized_for_cluster(options: BulkOptions, resources: dict[str, float]) -> BulkOptions:
    """Fill in the pool's size and GPUs from what the cluster has."""
    gpus = resources.get("GPU", 0.0)
    gpus_per_actor = options.gpus_per_actor
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus >= 1 else 0.0
    actors = options.actors
    if actors is None:
        if gpus_per_actor:
            actors = max(1, int(gpus // gpus_per_actor))
        else:
            actors = max(1, int(resources.get("CPU", 1.0) // options.cpus_per_actor))
    return replace(options, actors=actors, gpus_per_actor=gpus_per_actor)


def _check_reachable(address: str) -> None:
    """Fail fast on a host:port nobody listens on: Ray itself retries for minutes."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise BulkJobError(f"--ray-address {address}: nothing answers there ({error})") from error


def _start_ray(address: str | None) -> bool:
    """Join the cluster at `address`, or start Ray on this machine; True if started here."""
    import ray
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the job draws its own bar
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Its only warning is that its bars are off: they are, for the job's own.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
    # Ray's metrics thread (opencensus) crashed workers here under heavy load and the job
    # keeps its own counts; a cluster it joins keeps its own configuration.
    local = {} if address else {"_system_config": {"enable_metrics_collection": False}}
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
            configure_logging=False,
            **local,
        )
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = address or "this machine"
        raise BulkJobError(f"cannot start or reach Ray at {where}: {error}") from error
    return True


class _Scan:
    """Phase one: count rows, bad rows and duplicates; keep the texts the cache lacks."""

    def __init__(
        self,
        service: EmbeddingService,
        options: BulkOptions,
        report: BulkReport,
        output: VectorsFile | None,
    ) -> None:
        self.service = service
        self.options = options
        self.report = report
        self.output = output
        self.seen: set[bytes] = set()
        self.pending: list[str] = []
        self.pending_where: list[str] = []
        self.missing: list[str] = []
        self.where: list[str] = []  # "path row N" of each missing text, for failures

    def run(self, files: list[str], file_format: str) -> list[str]:
        import ray.data

        from embedder.bulk.source import CorpusDatasource

        source = CorpusDatasource(
            files,
            file_format=file_format,
            text_column=self.options.text_column,
            max_chars=self.options.max_chars,
        )
        dataset = ray.data.read_datasource(source)
        bar = tqdm(desc="reading", unit=" rows", disable=not self.options.progress)
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            self._add(batch)
            bar.update(batch.num_rows)
            bar.set_postfix(cached=self.report.already_cached, missing=len(self.missing))
        self._check_pending()
        bar.close()
        return self.missing

    def _add(self, batch: Any) -> None:
        paths = batch.column("path").to_pylist()
        rows = batch.column("row").to_pylist()
        texts = batch.column("text").to_pylist()
        problems = batch.column("problem").to_pylist()
        self.report.rows_read += len(rows)
        for path, row, text, problem in zip(paths, rows, texts, problems, strict=True):
            if problem is not None:
                self.report.bad_rows.append(BadRow(path, row, problem))
                continue
            digest = hashlib.sha256(text.encode("utf-8")).digest()
            if digest in self.seen:
                self.report.duplicates += 1
                continue
            self.seen.add(digest)
            self.pending.append(text)
            self.pending_where.append(f"{path} row {row}")
        if len(self.pending) >= CHECK_CHUNK:
            self._check_pending()

    def _check_pending(self) -> None:
        """Ask Redis which pending texts it holds (values too when writing --output)."""
        texts, where = self.pending, self.pending_where
        self.pending, self.pending_where = [], []
        if not texts:
            return
        if self.output is None:
            present = self._retrying(lambda: self.service.cached_mask(texts))
        else:
            found = self._retrying(lambda: self._vectors(texts))
            present = np.array([vector is not None for vector in found], dtype=bool)
            hits = [vector for vector in found if vector is not None]
            if hits:
                vectors = np.stack(hits)
                if self.service.encoder.normalize:
                    vectors = l2_normalize(vectors)
                self.output.write(
                    [text_hash(t) for t, p in zip(texts, present, strict=True) if p], vectors
                )
        self.report.already_cached += int(present.sum())
        for index in np.flatnonzero(~present):
            self.missing.append(texts[index])
            self.where.append(where[index])

    def _vectors(self, texts: list[str]) -> list[np.ndarray | None]:
        cache = self.service.cache
        assert cache is not None
        found = cache.get_many(
            self.service.encoder.fingerprint(normalize=False), texts, self.service.dim
        )
        if not cache.up:  # get_many answers "all missing" while Redis is down
            raise redis.ConnectionError("reading cached vectors failed")
        return found

    def _retrying(self, call: Any) -> Any:
        return with_redis_retries(
            call,
            what="checking which texts are cached",
            url=self.options.redis_url,
            patience_seconds=self.options.patience_seconds,
            on_retry=self._count_retry,
        )

    def _count_retry(self) -> None:
        self.report.redis_retries += 1


def _encode(
    missing: list[str],
    where: list[str],
    options: BulkOptions,
    report: BulkReport,
    output: VectorsFile | None,
    normalize: bool,
) -> None:
    """Phase two: the missing texts through the actor pool, one block per batch."""
    import ray.data

    from embedder.bulk.actor import CACHED, ENCODED, FAILED, EncodeActor

    # Longest first: batches pad evenly, and the bar's first ETA errs on the long side.
    order = sorted(range(len(missing)), key=lambda index: -len(missing[index]))
    texts = [missing[index] for index in order]
    # One block per batch, so idle actors take the next batch; built in the driver (from_arrow
    # would start a remote task per block just to read its metadata).
    dataset = ray.data.from_items(
        [{"text": text} for text in texts],
        override_num_blocks=-(-len(texts) // options.batch_size),
    )
    remote_args: dict[str, Any] = {"num_cpus": options.cpus_per_actor}
    if options.gpus_per_actor:
        remote_args["num_gpus"] = options.gpus_per_actor
    encoded = dataset.map_batches(
        EncodeActor,
        fn_constructor_kwargs={
            "model": options.model,
            "encoder_options": options.encoder_options,
            "long_text_options": options.long_text_options,
            "redis_url": options.redis_url,
            "redis_cluster": options.redis_cluster,
            "ttl_seconds": options.ttl_seconds,
            "patience_seconds": options.patience_seconds,
            "return_vectors": output is not None,
        },
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        **remote_args,
    )
    total = report.already_cached + len(texts)
    bar = tqdm(
        total=total,
        initial=report.already_cached,
        desc="embedding",
        unit=" texts",
        disable=not options.progress,
    )
    failed_hashes: dict[str, str] = {}
    for batch in encoded.iter_batches(batch_format="numpy", batch_size=None):
        status = batch["status"]
        started_at, ended_at = float(batch["started_at"].min()), float(batch["ended_at"].max())
        report.first_batch_started = min(report.first_batch_started or started_at, started_at)
        report.last_batch_ended = max(report.last_batch_ended or ended_at, ended_at)
        done = status == ENCODED
        report.encoded += int(done.sum())
        report.already_cached += int((status == CACHED).sum())
        report.redis_retries += int(batch["redis_retries"].sum())
        for name, seconds, is_done in zip(batch["actor"], batch["seconds"], done, strict=True):
            report.actor_seconds[name] += float(seconds)
            report.actor_texts[name] += int(is_done)
        for digest, error in zip(batch["hash"], batch["error"], strict=True):
            if error:
                failed_hashes[digest] = str(error)
        if output is not None:
            keep = status != FAILED
            vectors = batch["vector"][keep]
            if normalize and len(vectors):
                vectors = l2_normalize(vectors)
            output.write(list(batch["hash"][keep]), vectors)
        bar.update(len(status))
        bar.set_postfix(
            cached=report.already_cached, encoded=report.encoded, failed=len(failed_hashes)
        )
    bar.close()
    if failed_hashes:
        for text, place in zip(texts, (where[index] for index in order), strict=True):
            error = failed_hashes.get(text_hash(text))
            if error is not None:
                path, _, row = place.rpartition(" row ")
                report.failed.append(BadRow(path, int(row), error))


def _explained(error: Exception) -> Exception:
    """The cause a user can act on, from under Ray's wrappers."""
    from embedder.bulk.source import BulkInputError

    seen: BaseException | None = error
    while seen is not None:
        cause = getattr(seen, "cause", None)  # a RayTaskError carries the task's own exception
        if isinstance(cause, BaseException) and cause is not seen:
            seen = cause
            continue
        if isinstance(seen, RedisUnavailableError | BulkInputError | BulkJobError):
            return BulkJobError(str(seen))
        seen = seen.__cause__ or seen.__context__
    return error
