"""The one Settings object; only entry points (the API factory, the CLI) read it."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Service configuration, read from environment variables (names in upper case)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    embedder_model: str = "sentence-transformers/all-mpnet-base-v2"
    embedder_pooling: Literal["mean", "cls", "max"] = "mean"
    embedder_max_seq_len: int = Field(128, ge=8, le=8192)
    embedder_normalize: bool = False
    embedder_backend: Literal["torch", "onnx", "onnx-int8"] = "torch"
    embedder_batch_size: int = Field(32, ge=1, le=1024)
    embedder_threads: int | None = Field(None, ge=1, le=256)
    embedder_cache_dir: Path | None = None

    redis_url: str = "redis://127.0.0.1:6379/0"
    cache_ttl_seconds: int | None = Field(None, ge=1)

    max_batch: int = Field(256, ge=1)
    max_text_chars: int = Field(20_000, ge=1)
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    queue_max_texts: int = Field(4096, ge=1)
    batch_wait_ms: float = Field(4.0, ge=0)

    models_dir: Path = REPO_ROOT / "models"
    train_data_dir: Path | None = None
    default_head: str = "demo"
    demo_head_on_start: bool = True
    api_key: str | None = None
    protect_reads: bool = False
    log_level: str = "INFO"
    head_poll_seconds: float = Field(0.5, gt=0)

    def encoder_options(self) -> dict[str, object]:
        """Keyword arguments of `embedder.load_encoder` besides the model name."""
        return {
            "pooling": self.embedder_pooling,
            "max_seq_len": self.embedder_max_seq_len,
            "normalize": self.embedder_normalize,
            "backend": self.embedder_backend,
            "batch_size": self.embedder_batch_size,
            "cache_dir": self.embedder_cache_dir,
        }
