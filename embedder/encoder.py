"""The frozen encoder: texts in, float32 vectors (n, dim) out."""

import copy
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from embedder.backends import BACKENDS, DEVICES, default_batch_size, load_backend
from embedder.errors import InvalidConfigError
from embedder.pooling import POOLINGS, l2_normalize
from embedder.resolve import ResolvedModel, default_cache_dir, resolve_model
from embedder.tokenization import BatchTokenizer, load_plain_tokenizer, model_max_length
from embedder.windows import EncodeItem, TokenWindow, estimated_chars

logger = logging.getLogger(__name__)


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

    Build it with `load_encoder`; call `encode` for vectors. Thread-safe: nothing it holds
    changes after construction. What it serves, for logs and /health:

    Attributes:
        tokenizer: The model's `tokenizers.Tokenizer`, without truncation or padding; shared,
            so never change its settings (build your own from tokenizer.json for that).
        backend_name: The backend serving: torch, onnx or onnx-int8.
        requested_backend: The backend configured; differs after a fallback.
        fallback_reason: Why the configured backend is not serving, or None.
        device: cpu or cuda.
        precision: fp32, fp16 or int8.
        fidelity: The gate's cosine figures for this pooling (None for the reference).

    """

    def __init__(
        self,
        resolved: ResolvedModel,
        *,
        pooling: str = "mean",
        max_seq_len: int = 128,
        normalize: bool = False,
        backend: str = "torch",
        device: str = "cpu",
        batch_size: int | None = 32,
        threads: int | None = None,
        cache_dir: Path | None = None,
        fallback: bool = True,
    ) -> None:
        if pooling not in POOLINGS:
            raise InvalidConfigError(
                f"EMBEDDER_POOLING={pooling!r} is not valid; valid choices: {', '.join(POOLINGS)}"
            )
        if backend not in BACKENDS:
            raise InvalidConfigError(
                f"EMBEDDER_BACKEND={backend!r} is not valid; valid choices: {', '.join(BACKENDS)}"
            )
        if device not in DEVICES:
            raise InvalidConfigError(
                f"EMBEDDER_DEVICE={device!r} is not valid; valid choices: {', '.join(DEVICES)}"
            )
        self.resolved = resolved
        # The plain Rust tokenizer (no truncation, no padding), shared with callers that
        # split long texts; nothing changes its settings, so threads may use it at once.
        self.tokenizer = load_plain_tokenizer(resolved.path)
        self.model_max_seq_len = model_max_length(resolved.path)
        if not 2 <= max_seq_len <= self.model_max_seq_len:
            raise InvalidConfigError(
                f"EMBEDDER_MAX_SEQ_LEN={max_seq_len} is out of range: this model accepts "
                f"2 to {self.model_max_seq_len} tokens"
            )
        self._batch_tokenizer = BatchTokenizer(resolved.path, max_seq_len)
        self.pooling = pooling
        self.max_seq_len = max_seq_len
        self.normalize = normalize
        loaded = load_backend(
            backend,
            model_path=resolved.path,
            model_id=resolved.model_id,
            weights_sha256=resolved.weights_sha256,
            cache_dir=cache_dir or default_cache_dir(),
            pooling=pooling,
            device=device,
            threads=threads,
            fallback=fallback,
        )
        self.backend = loaded.run
        self.backend_name = loaded.name  # the backend serving, after any fallback
        self.requested_backend = loaded.requested
        self.fallback_reason = loaded.fallback_reason
        self.device = loaded.device
        self.precision = loaded.precision
        self.fidelity = loaded.fidelity
        self.batch_size = batch_size or default_batch_size(self.device)
        self.dim = int(self._encode_batch(["dimension probe"]).shape[1])

    def with_threads(self, threads: int) -> "Encoder":
        """A twin whose ONNX session runs on `threads` threads, all else shared.

        Same model file, tokenizers and fidelity verdict, so the same vector space: the
        gate is not run again. For the ONNX backends only (torch's thread count is one per
        process, so a torch twin could not differ).
        """
        from embedder.onnx_backend import OnnxBackend

        if not isinstance(self.backend, OnnxBackend):
            raise InvalidConfigError(
                f"threads per encoder need an ONNX backend; this one runs {self.backend_name}"
            )
        twin = copy.copy(self)
        twin.backend = OnnxBackend(self.backend.path, threads)
        return twin

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
            "requested_backend": self.requested_backend,
            "fallback_reason": self.fallback_reason,
            "device": self.device,
            "precision": self.precision,
            "dim": self.dim,
            "fingerprint": self.fingerprint(),
        }

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Token count of each text before truncation, special tokens included."""
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        encodings = encode(list(texts), add_special_tokens=True)  # no offsets: faster
        return np.fromiter((len(item.ids) for item in encodings), dtype=np.int64, count=len(texts))

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many of `texts` are longer than `max_seq_len` tokens."""
        if not texts:
            return 0
        return int((self.token_lengths(texts) > self.max_seq_len).sum())

    def _token_batch(self, items: list[EncodeItem]) -> tuple[np.ndarray, np.ndarray]:
        """Padded (ids, mask) for texts (tokenised and cut here) and token windows alike."""
        windows = [item for item in items if isinstance(item, TokenWindow)]
        if not windows:
            return self._batch_tokenizer(items)  # type: ignore[arg-type]
        texts = [item for item in items if isinstance(item, str)]
        text_ids, text_mask = self._batch_tokenizer(texts) if texts else (None, None)
        width = max(
            [len(window) for window in windows] + [0 if text_ids is None else text_ids.shape[1]]
        )
        ids = np.full((len(items), width), self._batch_tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((len(items), width), dtype=np.int64)
        next_text = 0
        for row, item in enumerate(items):
            if isinstance(item, TokenWindow):
                ids[row, : len(item)] = item.ids
                mask[row, : len(item)] = 1
            else:
                ids[row, : text_ids.shape[1]] = text_ids[next_text]
                mask[row, : text_ids.shape[1]] = text_mask[next_text]
                next_text += 1
        return ids, mask

    def _encode_batch(self, items: list[EncodeItem]) -> np.ndarray:
        ids, mask = self._token_batch(items)
        return self.backend(ids, mask, self.pooling)

    def encode_raw(
        self,
        items: Sequence[EncodeItem],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Encode without normalisation: the form the cache stores.

        Items are texts (cut to max_seq_len tokens) or `TokenWindow`s (token ids, read as
        they are), mixed freely: windows of many texts share forward passes with texts.
        Items are sorted by length so each batch pads little, then put back in order.
        """
        size = batch_size or self.batch_size
        items = list(items)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Character length orders as well as token length here and costs nothing.
        lengths = [estimated_chars(item) for item in items]
        order = np.argsort([-length for length in lengths], kind="stable")
        output = np.empty((len(items), self.dim), dtype=np.float32)
        bar = tqdm(total=len(items), desc="encoding", unit="text", disable=not progress)
        for chosen in _length_groups(order, lengths, size):
            output[chosen] = self._encode_batch([items[i] for i in chosen])
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
    device: str = "cpu",
    batch_size: int | None = 32,
    threads: int | None = None,
    cache_dir: Path | str | None = None,
    fallback: bool = True,
) -> Encoder:
    """Resolve `model` (local dir, carrying package, or hub) and build its encoder.

    Args:
        model: A local directory or a sentence-transformers / Hugging Face model id.
        pooling: One of mean, cls, max.
        max_seq_len: Texts are cut to this many tokens.
        normalize: L2-normalise vectors by default.
        backend: torch, onnx or onnx-int8; any but CPU torch must pass the fidelity gate.
        device: auto, cpu or cuda (see `embedder.backends`).
        batch_size: Texts per forward pass; None: chosen for the device.
        threads: CPU threads of the backend; default: every core.
        cache_dir: Where reassembled models, exports and verdicts are kept.
        fallback: Serve torch fp32 when `backend` fails the gate (else raise
            `UnfaithfulBackendError`); `fallback_reason` then says why.

    """
    cache_dir = Path(cache_dir) if cache_dir else None
    resolved = resolve_model(model, cache_dir)
    logger.info("model %s from %s (%s)", resolved.model_id, resolved.source, resolved.path)
    return Encoder(
        resolved,
        pooling=pooling,
        max_seq_len=max_seq_len,
        normalize=normalize,
        backend=backend,
        device=device,
        batch_size=batch_size,
        threads=threads,
        cache_dir=cache_dir,
        fallback=fallback,
    )
