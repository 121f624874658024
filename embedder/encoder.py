"""The frozen encoder: texts in, float32 vectors (n, dim) out."""

import copy
import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from embedder.backends import BACKENDS, load_backend
from embedder.errors import InvalidConfigError
from embedder.pooling import POOLINGS, l2_normalize, pool
from embedder.resolve import ResolvedModel, default_cache_dir, resolve_model

logger = logging.getLogger(__name__)


def _model_max_length(path: Path, tokenizer_limit: int) -> int:
    """The longest input the model accepts: its own sentence-transformers limit if it has one."""
    limits = [tokenizer_limit] if 0 < tokenizer_limit < 100_000 else []
    config = path / "sentence_bert_config.json"
    if config.is_file():
        limit = json.loads(config.read_text()).get("max_seq_length")
        if limit:
            limits.append(int(limit))
    return min(limits) if limits else 512


# A batch is cut when the next text is shorter than this share of the batch's longest: a
# mixed batch pads every text to the longest, and micro-batched requests arrive mixed.
PADDING_CUT = 0.6
MIN_CUT_CHARS = 64


def _length_groups(order: np.ndarray, lengths: list[int], size: int) -> list[np.ndarray]:
    """Split indices sorted by falling length into batches of at most `size` similar lengths."""
    groups: list[np.ndarray] = []
    start = 0
    for position in range(1, len(order) + 1):
        if position < len(order) and position - start < size:
            longest = lengths[order[start]]
            # Short texts pad cheaply; cutting their batches would only add forward passes.
            if longest <= MIN_CUT_CHARS or lengths[order[position]] >= PADDING_CUT * longest:
                continue
        groups.append(order[start:position])
        start = position
    return groups


class Encoder:
    """A frozen sentence encoder with fixed pooling, truncation and backend.

    Build it with `load_encoder`; call `encode` for vectors.
    """

    def __init__(
        self,
        resolved: ResolvedModel,
        *,
        pooling: str = "mean",
        max_seq_len: int = 128,
        normalize: bool = False,
        backend: str = "torch",
        batch_size: int = 32,
        cache_dir: Path | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        if pooling not in POOLINGS:
            raise InvalidConfigError(
                f"EMBEDDER_POOLING={pooling!r} is not valid; valid choices: {', '.join(POOLINGS)}"
            )
        if backend not in BACKENDS:
            raise InvalidConfigError(
                f"EMBEDDER_BACKEND={backend!r} is not valid; valid choices: {', '.join(BACKENDS)}"
            )
        self.resolved = resolved
        self.tokenizer = AutoTokenizer.from_pretrained(str(resolved.path))
        # A fast tokenizer keeps its padding/truncation settings as shared state, so two
        # threads calling it with different settings corrupt each other's batches. Request
        # threads count lengths on their own copy; each copy has a lock.
        self._length_tokenizer = copy.deepcopy(self.tokenizer)
        self._encode_lock = threading.Lock()
        self._length_lock = threading.Lock()
        self.model_max_seq_len = _model_max_length(resolved.path, self.tokenizer.model_max_length)
        if not 2 <= max_seq_len <= self.model_max_seq_len:
            raise InvalidConfigError(
                f"EMBEDDER_MAX_SEQ_LEN={max_seq_len} is out of range: this model accepts "
                f"2 to {self.model_max_seq_len} tokens"
            )
        self.pooling = pooling
        self.max_seq_len = max_seq_len
        self.normalize = normalize
        self.backend_name = backend
        self.batch_size = batch_size
        self.backend = load_backend(
            backend, resolved.path, resolved.weights_sha256, cache_dir or default_cache_dir()
        )
        self.dim = int(self._encode_batch(["dimension probe"]).shape[1])

    @property
    def model_id(self) -> str:
        """The model's name as configured (hub id or local path)."""
        return self.resolved.model_id

    def fingerprint(self, normalize: bool | None = None) -> str:
        """A short id of the vector space; different vectors never share one.

        Args:
            normalize: Fingerprint of the normalised (True) or raw (False) space;
                default: this encoder's own setting.

        """
        normalize = self.normalize if normalize is None else normalize
        # The backend is not part of it: every backend that serves has passed the fidelity
        # gate against fp32, so all of them share one space, one cache and the same heads.
        # Neither is the model's name or path: the weights identify the model everywhere.
        parts = [
            "space-v2",
            self.resolved.weights_sha256,
            self.pooling,
            str(self.max_seq_len),
            "norm" if normalize else "raw",
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]

    def describe(self) -> dict[str, object]:
        """The settings that define the vector space, for /health and head metadata."""
        return {
            "model": self.model_id,
            "source": self.resolved.source,
            "weights_sha256": self.resolved.weights_sha256,
            "pooling": self.pooling,
            "max_seq_len": self.max_seq_len,
            "normalize": self.normalize,
            "backend": self.backend_name,
            "dim": self.dim,
            "fingerprint": self.fingerprint(),
        }

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Token count of each text before truncation, special tokens included."""
        with self._length_lock:
            encoded = self._length_tokenizer(list(texts), add_special_tokens=True, truncation=False)
        return np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64)

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many of `texts` are longer than `max_seq_len` tokens."""
        if not texts:
            return 0
        return int((self.token_lengths(texts) > self.max_seq_len).sum())

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        with self._encode_lock:
            batch = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_seq_len,
                return_tensors="np",
            )
        ids = batch["input_ids"].astype(np.int64)
        mask = batch["attention_mask"].astype(np.int64)
        tokens = self.backend(ids, mask)
        vectors = pool(tokens, torch.from_numpy(mask).to(tokens.device), self.pooling)
        return vectors.float().cpu().numpy()

    def encode_raw(
        self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """Encode without normalisation: the form the cache stores.

        Texts are sorted by length so each batch pads little, then put back in order.
        """
        size = batch_size or self.batch_size
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Character length orders as well as token length here and costs nothing.
        order = np.argsort([-len(text) for text in texts], kind="stable")
        output = np.empty((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc="encoding", unit="text", disable=not progress)
        for chosen in _length_groups(order, [len(text) for text in texts], size):
            output[chosen] = self._encode_batch([texts[i] for i in chosen])
            bar.update(len(chosen))
        bar.close()
        return output

    def encode(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Encode `texts` into a float32 array of shape (len(texts), dim), uncached.

        Args:
            texts: The texts, in the order the rows are wanted.
            normalize: L2-normalise rows; default: this encoder's setting.
            batch_size: Texts per forward pass; default: the encoder's.
            progress: Show a progress bar.

        """
        vectors = self.encode_raw(texts, batch_size=batch_size, progress=progress)
        normalize = self.normalize if normalize is None else normalize
        return l2_normalize(vectors) if normalize else vectors


def load_encoder(
    model: str,
    *,
    pooling: str = "mean",
    max_seq_len: int = 128,
    normalize: bool = False,
    backend: str = "torch",
    batch_size: int = 32,
    cache_dir: Path | None = None,
) -> Encoder:
    """Resolve `model` (local dir, carrying package, or hub) and build its encoder."""
    resolved = resolve_model(model, cache_dir)
    logger.info("model %s from %s (%s)", resolved.model_id, resolved.source, resolved.path)
    return Encoder(
        resolved,
        pooling=pooling,
        max_seq_len=max_seq_len,
        normalize=normalize,
        backend=backend,
        batch_size=batch_size,
        cache_dir=cache_dir,
    )
