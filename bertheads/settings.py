"""The one Settings object; only entry points (the API factory, the CLIs) read it."""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class Settings(BaseSettings):
    """Service configuration, read from environment variables (names in upper case)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    # -- the encoder ------------------------------------------------------------------
    embedder_model: str = "sentence-transformers/all-mpnet-base-v2"
    embedder_pooling: Literal["mean", "cls", "max"] = "mean"
    embedder_max_seq_len: int = Field(128, ge=8, le=8192)
    embedder_normalize: bool = False
    # onnx-int8 serves where it passes the fidelity gate on this CPU; otherwise the
    # service falls back to torch and says why (log and /health).
    embedder_backend: Literal["torch", "onnx", "onnx-int8"] = "onnx-int8"
    embedder_device: Literal["auto", "cpu", "cuda"] = "auto"
    embedder_batch_size: int = Field(32, ge=1, le=4096)
    # Threads per encode call. None: the server runs one single-threaded call per core
    # (embedder.batcher.serving_layout); offline encodes (train.py, bulk) use every core.
    embedder_threads: int | None = Field(None, ge=1, le=256)
    embedder_cache_dir: Path | None = None
    # Texts over max_seq_len tokens: cut ("truncate") or split into overlapping token
    # windows that are encoded, cached and mean-pooled into one vector ("windows").
    long_texts: Literal["truncate", "windows"] = "windows"
    long_text_max_windows: int = Field(16, ge=1, le=256)
    long_text_overlap_tokens: int = Field(32, ge=0, le=512)

    # -- Redis: the embedding cache (evicting) ---------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    # REDIS_URL names any node of a Redis Cluster (database 0); keys spread over every master.
    redis_cluster: bool = False
    cache_ttl_seconds: int | None = Field(None, ge=1)

    # -- heads ----------------------------------------------------------------------------
    # Where heads live: a folder path (default: MODELS_DIR) or a Redis URL
    # (redis://host:6379/2) of a NON-evicting instance shared by replicas on many machines.
    head_store: str | None = None
    # HEAD_STORE (a redis:// URL) names any node of a non-evicting Redis Cluster.
    head_store_cluster: bool = False
    models_dir: Path = REPO_ROOT / "models"
    head_poll_seconds: float = Field(0.5, gt=0)
    heads_signing_key: SecretStr | None = None
    head_versions_kept: int = Field(10, ge=1)
    max_heads: int = Field(100, ge=1)
    trash_retention_seconds: int = Field(7 * 24 * 3600, ge=0)
    default_head: str = "demo"
    demo_head_on_start: bool = True
    train_data_dir: Path | None = None

    # -- limits on costly requests ----------------------------------------------------------
    max_batch: int = Field(256, ge=1)
    max_text_chars: int = Field(20_000, ge=1)
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    queue_max_texts: int = Field(4096, ge=1)
    batch_wait_ms: float = Field(4.0, ge=0)
    max_labels: int = Field(1000, ge=2)
    max_train_examples: int = Field(200_000, ge=2)
    max_concurrent_trains: int = Field(1, ge=1)
    train_timeout_seconds: float = Field(600.0, gt=0)
    train_budget_seconds: float = Field(60.0, gt=0)

    # -- access ---------------------------------------------------------------------------
    # The address the server binds; `python -m api` passes it to uvicorn. A non-loopback
    # bind without API_KEY refuses writes unless ALLOW_UNAUTHENTICATED_WRITES is set.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = None
    protect_reads: bool = False
    allow_unauthenticated_writes: bool = False
    log_level: str = "INFO"

    def encoder_options(self) -> dict[str, object]:
        """Keyword arguments of `embedder.load_encoder` besides the model name."""
        return {
            "pooling": self.embedder_pooling,
            "max_seq_len": self.embedder_max_seq_len,
            "normalize": self.embedder_normalize,
            "backend": self.embedder_backend,
            "device": self.embedder_device,
            # Unset: the encoder picks one for its device (32 on CPU, more on a GPU).
            "batch_size": (
                self.embedder_batch_size if "embedder_batch_size" in self.model_fields_set else None
            ),
            "threads": self.embedder_threads,
            "cache_dir": self.embedder_cache_dir,
        }

    def long_text_options(self) -> dict[str, object]:
        """Keyword arguments of `embedder.EmbeddingService` for texts over max_seq_len tokens."""
        return {
            "long_texts": self.long_texts,
            "max_windows": self.long_text_max_windows,
            "overlap_tokens": self.long_text_overlap_tokens,
        }

    @property
    def binds_loopback(self) -> bool:
        """True when the configured bind address is reachable from this machine only."""
        return self.host.strip().lower() in LOOPBACK_HOSTS or self.host.startswith("127.")

    @property
    def head_store_location(self) -> str:
        """HEAD_STORE, or MODELS_DIR when it is unset (a folder on one machine)."""
        return self.head_store or str(self.models_dir)
