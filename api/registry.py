"""Live heads: loaded from the models directory, swapped atomically, shared across replicas.

Each head directory holds numbered versions and a `live.json` pointer. A swap is one
assignment of an immutable loaded head into a dict, so a request that already took the
old head finishes on it and nobody sees a half-loaded one. Replicas poll the pointers
(a few tiny files) every `poll_seconds`, so a train, rollback or delete on one process
is served by all within a second, with or without Redis.
"""

import contextlib
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import redis

from api.errors import NoHeadError, NotFoundError
from api.metrics import Metrics
from bertheads.cancel import CancelToken, check
from bertheads.settings import REPO_ROOT, Settings
from classifier import artifacts
from classifier import live as pointers
from classifier.data import file_sha256
from classifier.errors import ClassifierError
from embedder import EmbeddingService

logger = logging.getLogger(__name__)
DEMO_DATA = REPO_ROOT / "data" / "demo_support.csv"
DEMO_HEAD = "demo"


class HeadRegistry:
    """The heads this process serves.

    Args:
        models_dir: Where heads are saved (shared by replicas).
        service: The embedding service; its fingerprint decides which heads fit.
        metrics: Where head versions and train times are recorded.
        default_head: Head used when a request names none.
        poll_seconds: How often to look for other replicas' changes.
        lock_client: Redis client for the cross-replica train lock (None: local lock only).
        demo_data: A CSV to train `demo` from when the directory holds no head.

    """

    def __init__(
        self,
        models_dir: Path,
        service: EmbeddingService,
        metrics: Metrics,
        *,
        default_head: str = DEMO_HEAD,
        poll_seconds: float = 0.5,
        lock_client: redis.Redis | None = None,
        demo_data: Path | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.service = service
        self.metrics = metrics
        self.default_head = default_head
        self.poll_seconds = poll_seconds
        self.lock_client = lock_client
        self.demo_data = demo_data
        self._heads: dict[str, Any] = {}
        self.problems: dict[str, str] = {}
        self._seen: dict[str, tuple[int, float] | None] = {}
        self._train_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, service: EmbeddingService, metrics: Metrics
    ) -> "HeadRegistry":
        """Build the registry the API uses."""
        return cls(
            settings.models_dir,
            service,
            metrics,
            default_head=settings.default_head,
            poll_seconds=settings.head_poll_seconds,
            lock_client=service.cache.client if service.cache else None,
            demo_data=DEMO_DATA if settings.demo_head_on_start else None,
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Load every head, train the demo head if there is none, start polling."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.refresh()
        if not self._heads and self.demo_data is not None and self.demo_data.is_file():
            self._train_demo()
        self._thread = threading.Thread(target=self._poll, name="head-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the poller must outlive any one bad directory
                logger.exception("head refresh failed")

    def _train_demo(self) -> None:
        from classifier.data import read_labelled

        logger.info("no head found: training %r from %s", DEMO_HEAD, self.demo_data)
        try:
            texts, labels = read_labelled(self.demo_data)
            self.train(
                DEMO_HEAD,
                texts,
                labels,
                {"head": "logreg"},
                data_hashes={self.demo_data.name: file_sha256(self.demo_data)},
            )
        except ClassifierError as error:
            logger.error("demo head could not be trained: %s", error)

    # -- reading ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the loaded heads in line with the models directory."""
        on_disk = set(pointers.head_names(self.models_dir))
        for name in set(self._heads) - on_disk:
            self._forget(name)
            logger.info("head %r removed", name)
        for name in set(self.problems) - on_disk:
            self.problems.pop(name)
            self._seen.pop(name, None)
        for name in on_disk:
            stamp = pointers.live_stamp(self.models_dir, name)
            if stamp is not None and self._seen.get(name) == stamp:
                continue
            self._load(name, stamp)

    def _load(self, name: str, stamp: tuple[int, float] | None) -> None:
        self._seen[name] = stamp
        try:
            head = artifacts.load_head(
                self.models_dir,
                name,
                version=stamp[0] if stamp else None,
                expected_fingerprint=self.service.fingerprint,
            )
        except ClassifierError as error:
            self._heads.pop(name, None)
            self.problems[name] = str(error)
            logger.warning("head %r is unavailable: %s", name, error)
            return
        self.problems.pop(name, None)
        previous = self._heads.get(name)
        self._heads[name] = head
        self.metrics.head_version.labels(name).set(head.version)
        if previous is None or previous.version != head.version:
            logger.info("head %r now serves version %d", name, head.version)

    def _forget(self, name: str) -> None:
        self._heads.pop(name, None)
        self._seen.pop(name, None)
        with contextlib.suppress(KeyError):
            self.metrics.head_version.remove(name)

    def live(self, name: str) -> Any:
        """The live head `name`, or None."""
        return self._heads.get(name)

    def names(self) -> list[str]:
        """Names of the heads that serve."""
        return sorted(self._heads)

    def get(self, name: str | None) -> Any:
        """The live head `name` (default head if None).

        Raises:
            NoHeadError: No head is loaded at all (503).
            NotFoundError: No head of that name; the message lists the available ones (404).

        """
        heads = self._heads
        if not heads:
            reasons = "; ".join(f"{key}: {why}" for key, why in self.problems.items())
            raise NoHeadError(
                "no head is loaded: train one with POST /heads/{name}/train or "
                "python classifier/train.py" + (f" (unavailable: {reasons})" if reasons else "")
            )
        wanted = name or self.default_head
        head = heads.get(wanted)
        if head is None:
            where = "head" if name else "default head (DEFAULT_HEAD)"
            extra = (
                f"; it is unavailable: {self.problems[wanted]}" if wanted in self.problems else ""
            )
            raise NotFoundError(
                f"{where}: no head named {wanted!r}{extra}; available heads: "
                f"{', '.join(sorted(heads))}",
                "head",
            )
        return head

    def _not_found(self, name: str) -> NotFoundError:
        available = ", ".join(self.names()) or "none"
        return NotFoundError(f"head: no head named {name!r}; available heads: {available}", "head")

    def describe(self, name: str) -> dict[str, Any]:
        """Live version, every saved version and its metadata."""
        if name not in pointers.head_names(self.models_dir):
            raise self._not_found(name)
        live = self._heads.get(name)
        versions = []
        for version in pointers.list_versions(self.models_dir, name):
            try:
                versions.append(artifacts.read_metadata(self.models_dir, name, version))
            except ClassifierError as error:
                versions.append({"version": version, "error": str(error)})
        summary = {
            "name": name,
            "live_version": live.version if live else None,
            "available": live is not None,
            "problem": self.problems.get(name),
            "versions": versions,
        }
        if live is not None:
            meta = live.metadata
            summary.update(
                task=meta["task"],
                labels=meta["labels"],
                thresholds=meta.get("thresholds"),
                metrics=meta.get("metrics"),
                created=meta.get("created"),
            )
        return summary

    # -- changing --------------------------------------------------------------------

    def _lock_for(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._train_locks.setdefault(name, threading.Lock())

    def _replica_lock(self, name: str) -> Any:
        if self.lock_client is None:
            return None
        return self.lock_client.lock(
            f"bertheads:train-lock:{name}", timeout=600, blocking_timeout=600
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
        """Embed, fit, save a new version and make it live. Trains of one head queue up.

        `cancel` is checked between steps and last before anything is written, so a
        cancelled or timed-out train leaves no version behind.
        """
        from classifier.training import train_head

        with self._lock_for(name):
            replica_lock = self._replica_lock(name)
            acquired = False
            if replica_lock is not None:
                try:
                    acquired = bool(replica_lock.acquire())
                except redis.RedisError as error:
                    logger.warning(
                        "train lock unavailable (%s); serialising in this process only", error
                    )
            try:
                check(cancel)
                started = time.perf_counter()
                vectors = self.service.embed(texts, count_truncated=False).vectors
                check(cancel)
                embedded = time.perf_counter()
                options = dict(options)
                label_names = options.pop("label_names", None)
                trained = train_head(vectors, labels, label_names=label_names, **options)
                check(cancel)
                record = artifacts.save_head(
                    trained,
                    self.models_dir,
                    name,
                    encoder_info=self.service.encoder.describe(),
                    data_hashes=data_hashes or {},
                )
                self._load(name, pointers.live_stamp(self.models_dir, name))
                finished = time.perf_counter()
            finally:
                if acquired:
                    with contextlib.suppress(redis.RedisError):
                        replica_lock.release()
        self.metrics.train_seconds.labels(name).observe(finished - started)
        return {
            "name": name,
            "version": record.version,
            "metrics": record.metadata.get("metrics", {}),
            "n_train": trained.n_train,
            "embed_seconds": round(embedded - started, 3),
            "fit_seconds": round(trained.fit_seconds, 3),
            "total_seconds": round(finished - started, 3),
        }

    def rollback(self, name: str, version: int | None) -> dict[str, Any]:
        """Make `version` (default: the one before the live one) live again."""
        versions = pointers.list_versions(self.models_dir, name)
        if not versions:
            raise NotFoundError(f"head: no head named {name!r}", "head")
        live = self._heads.get(name)
        current = live.version if live else versions[-1]
        if version is None:
            older = [number for number in versions if number < current]
            if not older:
                raise NotFoundError(
                    f"version: head {name!r} has no version before {current}; versions: {versions}",
                    "version",
                )
            version = older[-1]
        elif version not in versions:
            raise NotFoundError(
                f"version: head {name!r} has no version {version}; versions: {versions}", "version"
            )
        with self._lock_for(name):
            pointers.set_live_version(self.models_dir, name, version)
            self._load(name, pointers.live_stamp(self.models_dir, name))
        if name in self.problems:
            raise NotFoundError(
                f"version: {version} of {name!r} cannot serve: {self.problems[name]}", "version"
            )
        return {"name": name, "version": version, "previous_version": current}

    def delete(self, name: str) -> dict[str, Any]:
        """Take a head out of service; its files move to `.trash/`, nothing is destroyed."""
        directory = self.models_dir / name
        if name not in pointers.head_names(self.models_dir):
            raise self._not_found(name)
        trash = self.models_dir / ".trash" / f"{name}-{int(time.time() * 1000)}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_for(name):
            shutil.move(str(directory), str(trash))
            self._forget(name)
        return {"name": name, "deleted": True, "moved_to": str(trash.relative_to(self.models_dir))}
