"""The frozen encoder, its Redis cache, and the service that joins them."""

from embedder.cache import EmbeddingCache, cache_key, connect
from embedder.encoder import Encoder, load_encoder
from embedder.errors import (
    EmbedderError,
    InvalidConfigError,
    ModelIntegrityError,
    ModelNotFoundError,
    QueueFullError,
    UnfaithfulBackendError,
)
from embedder.service import EmbeddingService, EmbedResult

__all__ = [
    "EmbedResult",
    "EmbedderError",
    "EmbeddingCache",
    "EmbeddingService",
    "Encoder",
    "InvalidConfigError",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "QueueFullError",
    "UnfaithfulBackendError",
    "cache_key",
    "connect",
    "load_encoder",
]
