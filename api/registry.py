"""Live heads: loaded from the head store, swapped atomically, shared across replicas.

One lock (`_lock`) guards the head state; the dicts it guards are replaced, never changed
in place, so a request takes one reference and finishes on the head it found, and
nobody sees a half-loaded head. Rules:

* a version that fails to load (checksum, signature, legacy format, another encoder, an
  unreadable pointer) never replaces the one serving; the reason is in `problems`, in
  GET /heads/{name} and in the log;
* train, rollback and delete commit under the store's cross-replica lock
  (classifier.stores); when it cannot be had the request fails (409), never commits
  locally; a rollback loads and checks its target before pinning it;
* replicas poll the store's change stamp every `poll_seconds` (one small read) and
  rescan everything every `rescan_seconds`, so a change made by any replica (or the
  CLI) serves everywhere within a poll.
"""

import contextlib
import inspect
import logging
import threading
import time
from pathlib import Path
from typing import Any

from api.errors import ConflictError, NoHeadError, NotFoundError
from api.metrics import Metrics
from bertheads.cancel import CancelToken, check
from bertheads.settings import REPO_ROOT, Settings
from classifier import artifacts, headfile
from classifier.errors import (
    ClassifierError,
    HeadStoreError,
    LivePointerError,
    TooManyHeadsError,
)
from classifier.loaded import LoadedHead
from classifier.stores import HeadStore, check_name
from embedder import EmbeddingService

logger = logging.getLogger(__name__)
DEMO_DATA = REPO_ROOT / "data" / "demo_support.csv"
DEMO_HEAD = "demo"
DEMO_OPTIONS: dict[str, Any] = {"head": "logreg"}
# What the train answer repeats from the saved metadata (/work/brief/METADATA.md).
REPORT_FIELDS: tuple[str, ...] = (
    "selection_metric",
    "chosen",
    "features",
    "leaderboard",
    "search",
    "baseline",
    "calibration",
)


def _accepts(function: Any, keyword: str) -> bool:
    try:
        return keyword in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


class HeadRegistry:
    """The heads this process serves.

    Args:
        store: Where heads live (classifier.stores), shared by replicas.
        service: The embedding service; its fingerprint decides which heads fit.
        metrics: Where head versions and train times are recorded.
        default_head: Head used when a request names none.
        poll_seconds: How often to read the store's change stamp.
        rescan_seconds: How often to rescan every head even without a stamp change
            (catches files copied in by hand, and a missed stamp).
        signing_key: HEADS_SIGNING_KEY: heads must carry its HMAC, new ones get it.
        versions_kept: HEAD_VERSIONS_KEPT (None keeps every version).
        max_heads: MAX_HEADS (None: no cap).
        lock_wait_seconds: How long a change waits for the head's store lock.
        demo_data: A CSV to train `demo` from (in the background) when the store is empty.

    """

    def __init__(
        self,
        store: HeadStore,
        service: EmbeddingService,
        metrics: Metrics,
        *,
        default_head: str = DEMO_HEAD,
        poll_seconds: float = 0.5,
        rescan_seconds: float = 10.0,
        signing_key: bytes | None = None,
        versions_kept: int | None = None,
        max_heads: int | None = None,
        lock_wait_seconds: float = 30.0,
        demo_data: Path | None = None,
    ) -> None:
        self.store = store
        self.service = service
        self.metrics = metrics
        self.default_head = default_head
        self.poll_seconds = poll_seconds
        self.rescan_seconds = rescan_seconds
        self.signing_key = signing_key
        self.versions_kept = versions_kept
        self.max_heads = max_heads
        self.lock_wait_seconds = lock_wait_seconds
        self.demo_data = demo_data
        self._lock = threading.RLock()
        self._heads: dict[str, LoadedHead] = {}
        self._problems: dict[str, str] = {}
        self._store_error: str | None = None
        self._stamp: str | None = None
        self._last_rescan = 0.0
        self._train_locks: dict[str, threading.Lock] = {}
        self._demo_training = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, service: EmbeddingService, metrics: Metrics
    ) -> "HeadRegistry":
        """Build the registry the API uses (HEAD_STORE, or the MODELS_DIR folder)."""
        from bertheads.connections import head_store

        store = head_store(settings)
        key = settings.heads_signing_key.get_secret_value() if settings.heads_signing_key else ""
        return cls(
            store,
            service,
            metrics,
            default_head=settings.default_head,
            poll_seconds=settings.head_poll_seconds,
            signing_key=key.encode() or None,
            versions_kept=settings.head_versions_kept,
            max_heads=settings.max_heads,
            demo_data=DEMO_DATA if settings.demo_head_on_start else None,
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Load every head (nothing is trained here), then poll for changes."""
        self.refresh(force=True)
        self._thread = threading.Thread(target=self._poll, name="head-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and close the store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.close()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the poller must outlive any one bad head or store hiccup
                logger.exception("head refresh failed")

    def start_demo_training(self) -> threading.Thread | None:
        """Train `demo` in a background thread when the store holds no head at all.

        /predict for `demo` answers 503 "being trained" meanwhile. A store that already
        holds heads is left alone (a deleted demo head stays deleted).
        """
        if self.demo_data is None or not self.demo_data.is_file():
            return None
        try:
            if self.store.names():
                return None
        except HeadStoreError as error:
            logger.warning("demo head not trained: %s", error)
            return None
        self._demo_training.set()
        thread = threading.Thread(target=self._train_demo, name="demo-head", daemon=True)
        thread.start()
        return thread

    def _train_demo(self) -> None:
        from classifier.data import file_sha256, read_labelled

        assert self.demo_data is not None
        logger.info("no head found: training %r in the background", DEMO_HEAD)
        try:
            texts, labels = read_labelled(self.demo_data)
            self._train(
                DEMO_HEAD,
                texts,
                labels,
                DEMO_OPTIONS,
                data_hashes={self.demo_data.name: file_sha256(self.demo_data)},
                only_if_absent=True,
            )
        except Exception as error:  # a background thread has nobody else to tell
            logger.error("the demo head could not be trained: %s", error)
        finally:
            self._demo_training.clear()

    @property
    def demo_training(self) -> bool:
        """True while the background demo training runs."""
        return self._demo_training.is_set()

    # -- reading the store ----------------------------------------------------------------

    def _load_version(self, name: str, version: int) -> LoadedHead:
        return artifacts.load_head(
            self.store,
            name,
            version,
            expected_fingerprint=self.service.fingerprint,
            signing_key=self.signing_key,
        )

    def refresh(self, force: bool = False) -> None:
        """Bring the served heads in line with the store (a no-op when nothing changed)."""
        with self._lock:
            try:
                stamp = self.store.change_stamp()
                now = time.monotonic()
                due = now - self._last_rescan >= self.rescan_seconds
                if not (force or due or stamp != self._stamp):
                    return
                names = set(self.store.names())
                heads, problems = dict(self._heads), dict(self._problems)
                for name in (set(heads) | set(problems)) - names:
                    self._forget(name, heads, problems)
                    logger.info("head %r removed", name)
                for name in sorted(names):
                    self._refresh_head(name, heads, problems)
                if force or due:
                    self.store.purge_trash()
            except HeadStoreError as error:
                if self._store_error != str(error):
                    logger.error("head store unavailable, serving the heads loaded: %s", error)
                self._store_error = str(error)
                return
            if self._store_error is not None:
                logger.info("head store is back")
            self._store_error = None
            self._heads, self._problems = heads, problems
            self._stamp, self._last_rescan = stamp, now

    def _refresh_head(
        self, name: str, heads: dict[str, LoadedHead], problems: dict[str, str]
    ) -> None:
        current = heads.get(name)
        still = f"; still serving v{current.version}" if current else ""
        try:
            version = self.store.live_version(name)
            if version is None or (current is not None and current.version == version):
                problems.pop(name, None)
                return
            head = self._load_version(name, version)
        except HeadStoreError:
            raise
        except ClassifierError as error:
            message = f"{error}{still}"
            if problems.get(name) != message:
                logger.warning("%s", message)
            problems[name] = message
            return
        self._install(head, heads, problems)

    def _install(
        self, head: LoadedHead, heads: dict[str, LoadedHead], problems: dict[str, str]
    ) -> None:
        previous = heads.get(head.name)
        heads[head.name] = head
        problems.pop(head.name, None)
        self.metrics.head_version.labels(head.name).set(head.version)
        if previous is None or previous.version != head.version:
            logger.info("head %r now serves version %d", head.name, head.version)

    def _forget(self, name: str, heads: dict[str, LoadedHead], problems: dict[str, str]) -> None:
        heads.pop(name, None)
        problems.pop(name, None)
        for metric in (self.metrics.head_version, self.metrics.train_seconds):
            with contextlib.suppress(KeyError):
                metric.remove(name)

    def _swap(self, head: LoadedHead | None, forget: str | None = None) -> None:
        """Install `head` (or forget a name) under the state lock."""
        with self._lock:
            heads, problems = dict(self._heads), dict(self._problems)
            if forget is not None:
                self._forget(forget, heads, problems)
            if head is not None:
                self._install(head, heads, problems)
            self._heads, self._problems = heads, problems

    # -- what requests read ---------------------------------------------------------------

    @property
    def problems(self) -> dict[str, str]:
        """Head name -> why it (or its newest live version) cannot serve."""
        return dict(self._problems)

    @property
    def store_error(self) -> str | None:
        """Why the head store cannot be read, or None while it answers."""
        return self._store_error

    def live(self, name: str) -> LoadedHead | None:
        """The live head `name`, or None."""
        return self._heads.get(name)

    def names(self) -> list[str]:
        """Names of the heads that serve."""
        return sorted(self._heads)

    def get(self, name: str | None) -> LoadedHead:
        """The live head `name` (default head if None).

        Raises:
            NoHeadError: No head is loaded at all, or the demo head is being trained (503).
            NotFoundError: No head of that name; the message lists the available ones (404).

        """
        heads, problems = self._heads, self._problems
        wanted = name or self.default_head
        if wanted not in heads and wanted == DEMO_HEAD and self._demo_training.is_set():
            raise NoHeadError("the demo head is being trained; try again in a few seconds")
        if not heads:
            reasons = "; ".join(f"{key}: {why}" for key, why in problems.items())
            raise NoHeadError(
                "no head is loaded: train one with POST /heads/{name}/train or "
                "python classifier/train.py" + (f" (unavailable: {reasons})" if reasons else "")
            )
        head = heads.get(wanted)
        if head is None:
            where = "head" if name else "default head (DEFAULT_HEAD)"
            extra = f"; it is unavailable: {problems[wanted]}" if wanted in problems else ""
            raise NotFoundError(
                f"{where}: no head named {wanted!r}{extra}; available heads: "
                f"{', '.join(sorted(heads))}",
                "head",
            )
        return head

    def _not_found(self, name: str) -> NotFoundError:
        available = ", ".join(self.names()) or "none"
        return NotFoundError(f"head: no head named {name!r}; available heads: {available}", "head")

    def _summary(self, name: str, versions: list[int]) -> dict[str, Any]:
        served = self._heads.get(name)
        summary: dict[str, Any] = {
            "name": name,
            "live_version": served.version if served else None,
            "available": served is not None,
            "problem": self._problems.get(name),
            "version_count": len(versions),
        }
        if served is not None:
            meta = served.metadata
            summary.update(
                task=served.spec.task,
                labels=list(served.spec.labels),
                thresholds=served.thresholds,
                metrics=meta.get("metrics"),
                created=meta.get("created"),
            )
        return summary

    def summaries(self) -> list[dict[str, Any]]:
        """Every head in the store, live or not, from memory plus one version listing each.

        While the store is down: the heads this process serves (version_count None).
        Blocking (store reads): call it from a thread pool, not the event loop.
        """
        try:
            return [self._summary(name, versions) for name, versions in self.store.iter_heads()]
        except HeadStoreError:
            served = [self._summary(name, []) for name in self.names()]
            for summary in served:
                summary["version_count"] = None
            return served

    def describe(self, name: str) -> dict[str, Any]:
        """Live version and every saved version's metadata (blocking: use a thread pool)."""
        check_name(name)
        versions = self.store.versions(name)
        if not versions:
            raise self._not_found(name)
        listed = []
        for version in versions:
            try:
                listed.append(self.store.read_metadata(name, version))
            except HeadStoreError:
                raise
            except ClassifierError as error:
                listed.append({"version": version, "error": str(error)})
        summary = self._summary(name, versions)
        summary.pop("version_count")
        summary["versions"] = listed
        return summary

    # -- changing ---------------------------------------------------------------------

    def _lock_for(self, name: str) -> threading.Lock:
        with self._lock:
            return self._train_locks.setdefault(name, threading.Lock())

    def _check_head_cap(self, name: str) -> None:
        if self.max_heads is None:
            return
        names = self.store.names()
        if name not in names and len(names) >= self.max_heads:
            raise TooManyHeadsError(
                f"head {name!r}: {len(names)} heads exist and MAX_HEADS is {self.max_heads}; "
                "delete one (DELETE /heads/{name}) or raise MAX_HEADS"
            )

    def train(
        self,
        name: str,
        texts: list[str],
        labels: Any,
        options: dict[str, Any],
        *,
        data_hashes: dict[str, str] | None = None,
        cancel: CancelToken | None = None,
    ) -> dict[str, Any]:
        """Embed, fit, save a new version and make it live; trains of one head queue up.

        `cancel` is checked between steps and last before anything is written, so a
        cancelled or timed-out train leaves no version behind.

        Raises:
            TooManyHeadsError: A new head beyond MAX_HEADS (checked before any work).
            HeadBusyError: The head's store lock was not had in time; nothing committed.
            CancelledError: `cancel` fired; nothing committed.

        """
        return self._train(name, texts, labels, options, data_hashes=data_hashes, cancel=cancel)

    def _train(
        self,
        name: str,
        texts: list[str],
        labels: Any,
        options: dict[str, Any],
        *,
        data_hashes: dict[str, str] | None = None,
        cancel: CancelToken | None = None,
        only_if_absent: bool = False,
    ) -> dict[str, Any]:
        from classifier.reporting import train_reported

        check_name(name)
        self._check_head_cap(name)
        with self._lock_for(name):
            check(cancel)
            started = time.perf_counter()
            vectors = None
            if options.get("features", "embedding") != "lexical":  # lexical reads texts only
                embed_options: dict[str, Any] = {"count_truncated": False}
                if cancel is not None and _accepts(self.service.embed, "cancel"):
                    embed_options["cancel"] = cancel
                vectors = self.service.embed(texts, **embed_options).vectors
            check(cancel)
            embedded = time.perf_counter()
            options = dict(options)
            label_names = options.pop("label_names", None)
            trained = train_reported(
                vectors, labels, label_names=label_names, texts=texts, cancel=cancel, **options
            )
            check(cancel)
            encoder_info = self.service.encoder.describe()
            if hasattr(self.service, "describe_long_texts"):  # how its long texts were read
                encoder_info["long_texts"] = self.service.describe_long_texts()
            metadata = artifacts.build_metadata(trained, encoder_info, data_hashes or {})
            artifact = headfile.encode_head(
                trained.estimator, trained.spec, trained.thresholds, encoder_info
            )
            with self.store.lock(name, self.lock_wait_seconds):
                published = artifacts.publish(
                    self.store,
                    name,
                    artifact,
                    metadata,
                    signing_key=self.signing_key,
                    versions_kept=self.versions_kept,
                    max_heads=self.max_heads,
                    only_if_absent=only_if_absent,
                    hold_lock=False,
                )
                if published is None:
                    logger.info("head %r exists already; this train is not saved", name)
                    return {"name": name, "saved": False}
                record, head = published
                self._swap(head)
            finished = time.perf_counter()
        self.metrics.train_seconds.labels(name).observe(finished - started)
        return {
            "name": name,
            "version": record.version,
            "metrics": record.metadata.get("metrics", {}),
            "n_train": trained.n_train,
            "embed_seconds": round(embedded - started, 3),
            "fit_seconds": round(trained.fit_seconds, 3),
            "total_seconds": round(finished - started, 3),
            **{key: record.metadata[key] for key in REPORT_FIELDS if key in record.metadata},
        }

    def rollback(self, name: str, version: int | None) -> dict[str, Any]:
        """Make `version` (default: the one before the live one) live, once it loads here."""
        check_name(name)
        with self.store.lock(name, self.lock_wait_seconds):
            versions = self.store.versions(name)
            if not versions:
                raise NotFoundError(f"head: no head named {name!r}", "head")
            served = self._heads.get(name)
            try:
                pinned = self.store.live_version(name)
            except LivePointerError:
                pinned = None
            current = served.version if served else (pinned or versions[-1])
            if version is None:
                older = [number for number in versions if number < current]
                if not older:
                    raise NotFoundError(
                        f"version: head {name!r} has no version before {current}; "
                        f"versions: {versions}",
                        "version",
                    )
                version = older[-1]
            elif version not in versions:
                raise NotFoundError(
                    f"version: head {name!r} has no version {version}; versions: {versions}",
                    "version",
                )
            try:
                head = self._load_version(name, version)
            except HeadStoreError:
                raise
            except ClassifierError as error:
                raise ConflictError(
                    f"version: v{version} of {name!r} cannot serve ({error}); "
                    f"v{current} stays live",
                    "version",
                ) from None
            self.store.set_live(name, version, "rollback")
            self._swap(head)
        return {"name": name, "version": version, "previous_version": current}

    def delete(self, name: str) -> dict[str, Any]:
        """Take a head out of service; it moves to the store's trash, nothing is destroyed."""
        check_name(name)
        with self.store.lock(name, self.lock_wait_seconds):
            if not self.store.versions(name):
                raise self._not_found(name)
            entry = self.store.delete(name)
            self._swap(None, forget=name)
        return {"name": name, "deleted": True, "moved_to": entry}
