"""Cached embedding: look up Redis, encode only the misses, store them back.

Texts longer than the encoder's max_seq_len tokens are either cut ("truncate") or read as
overlapping token windows ("windows", see `embedder.windows`): each window is looked up,
encoded and cached like a text would be, and the windows' vectors are pooled into the
text's one. Texts that fit are read whole in both modes, under the same cache keys.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from embedder.cache import EmbeddingCache
from embedder.encoder import Encoder
from embedder.errors import InvalidConfigError
from embedder.pooling import l2_normalize
from embedder.windows import (
    LONG_TEXT_MODES,
    WHOLE,
    EncodeItem,
    TokenWindow,
    WindowPlan,
    WindowSplitter,
    estimated_chars,
    pool_windows,
    window_space,
)

EncodeFunction = Callable[[list[EncodeItem]], np.ndarray]
STORE_EVERY = 256  # items (texts or windows) encoded between cache writes
DEFAULT_LONG_TEXTS = "windows"
DEFAULT_MAX_WINDOWS = 16
DEFAULT_OVERLAP_TOKENS = 32


@dataclass
class EmbedResult:
    """Vectors (n, dim) in request order, with how many came from the cache and were truncated."""

    vectors: np.ndarray
    cached: int
    truncated: int


@dataclass
class _Lookup:
    """What the unique texts of one call need: their plans and the cache's answers."""

    plans: dict[str, WindowPlan]
    whole: list[str]  # texts read in one pass, keyed by their text
    windows: list[TokenWindow]  # the distinct windows of the long texts
    vectors: dict[EncodeItem, np.ndarray]  # found in the cache
    truncated: set[str]


class EmbeddingService:
    """The encoder behind its cache; the one way the API and the CLI get vectors.

    The cache always holds raw (unnormalised) vectors under the raw-space fingerprint;
    normalisation is a deterministic step applied after, so both forms come from one entry.

    Args:
        encoder: The frozen encoder.
        cache: The Redis cache, or None to run uncached.
        encode_raw: What encodes cache misses (texts and `TokenWindow`s, mixed); default:
            the encoder directly. The API passes its micro-batcher here so concurrent
            requests share forward passes.
        long_texts: "truncate" (cut at max_seq_len tokens) or "windows".
        max_windows: Most windows per text in "windows" mode; the rest is cut.
        overlap_tokens: Tokens consecutive windows share (capped at half a window).

    """

    def __init__(
        self,
        encoder: Encoder,
        cache: EmbeddingCache | None,
        encode_raw: EncodeFunction | None = None,
        *,
        long_texts: str = DEFAULT_LONG_TEXTS,
        max_windows: int = DEFAULT_MAX_WINDOWS,
        overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    ) -> None:
        if long_texts not in LONG_TEXT_MODES:
            raise InvalidConfigError(
                f"LONG_TEXTS={long_texts!r} is not valid; valid choices: "
                f"{', '.join(LONG_TEXT_MODES)}"
            )
        self.encoder = encoder
        self.cache = cache
        self._encode_raw = encode_raw or encoder.encode_raw
        self.long_texts = long_texts
        self.splitter = (
            WindowSplitter(encoder.tokenizer, encoder.max_seq_len, overlap_tokens, max_windows)
            if long_texts == "windows"
            else None
        )
        self.texts_encoded = 0
        self.texts_cached = 0

    @property
    def dim(self) -> int:
        """Vector width."""
        return self.encoder.dim

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the vectors this service returns by default."""
        return self.encoder.fingerprint()

    def describe_long_texts(self) -> dict[str, object]:
        """How texts over max_seq_len tokens are read, for /health and head metadata."""
        if self.splitter is None:
            return {"mode": "truncate", "max_seq_len": self.encoder.max_seq_len}
        return self.splitter.describe()

    def tokens_read(self) -> int:
        """Most tokens of one text that reach the model (overlaps counted once)."""
        if self.splitter is None:
            return self.encoder.max_seq_len
        return self.splitter.tokens_read()

    def plan(self, texts: Sequence[str]) -> list[WindowPlan]:
        """How each text is read: whole, or as windows (always whole in truncate mode)."""
        if self.splitter is not None:
            return self.splitter.plan(texts)
        return [WHOLE] * len(texts)

    def _lookup(self, unique: list[str], *, count_truncated: bool) -> _Lookup:
        plans = dict(zip(unique, self.plan(unique), strict=True))
        whole = [text for text in unique if not plans[text].long]
        windows = list(dict.fromkeys(window for text in unique for window in plans[text].windows))
        if self.splitter is not None:
            truncated = {text for text in unique if plans[text].truncated}
        elif count_truncated and unique:
            lengths = self.encoder.token_lengths(unique)
            truncated = {
                text
                for text, length in zip(unique, lengths, strict=True)
                if length > self.encoder.max_seq_len
            }
        else:
            truncated = set()
        vectors: dict[EncodeItem, np.ndarray] = {}
        if self.cache is not None:
            raw_space = self.encoder.fingerprint(normalize=False)
            dim = self.encoder.dim
            found = self.cache.get_many(raw_space, whole, dim)
            vectors.update(
                (text, vector)
                for text, vector in zip(whole, found, strict=True)
                if vector is not None
            )
            if windows:
                found = self.cache.get_many(
                    window_space(raw_space), [window.cache_text() for window in windows], dim
                )
                vectors.update(
                    (window, vector)
                    for window, vector in zip(windows, found, strict=True)
                    if vector is not None
                )
        return _Lookup(plans, whole, windows, vectors, truncated)

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        progress: bool = False,
        count_truncated: bool = True,
    ) -> EmbedResult:
        """Vectors for `texts`, from the cache where possible.

        Duplicates (texts, and windows shared between texts) are encoded once, and the
        misses of every text, windows included, are encoded together in length-sorted
        batches. Returns float32 (len(texts), dim). `cached` counts the texts served from
        the cache alone (a long text: all its windows were); `truncated` the texts not read
        to the end (in windows mode: those needing more than max_windows windows).
        """
        texts = list(texts)
        unique = list(dict.fromkeys(texts))
        lookup = self._lookup(unique, count_truncated=count_truncated)
        missing: list[EncodeItem] = [
            item for item in (*lookup.whole, *lookup.windows) if item not in lookup.vectors
        ]
        hit_texts = {
            text
            for text in unique
            if all(item in lookup.vectors for item in self._items_of(text, lookup.plans[text]))
        }
        vectors_by_item = dict(lookup.vectors)
        if missing:
            vectors_by_item.update(self._encode_and_store(missing, progress))
        by_text: dict[str, np.ndarray] = {}
        for text in unique:
            plan = lookup.plans[text]
            if plan.long:
                window_vectors = np.stack([vectors_by_item[window] for window in plan.windows])
                counts = np.array([len(window) for window in plan.windows])
                by_text[text] = pool_windows(window_vectors, counts, self.encoder.pooling)
            else:
                by_text[text] = vectors_by_item[text]
        vectors = np.empty((len(texts), self.encoder.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            vectors[row] = by_text[text]
        normalize = self.encoder.normalize if normalize is None else normalize
        if normalize:
            vectors = l2_normalize(vectors)
        cached = sum(text in hit_texts for text in texts)
        self.texts_encoded += len(unique) - len(hit_texts)
        self.texts_cached += cached
        truncated = sum(text in lookup.truncated for text in texts) if count_truncated else 0
        return EmbedResult(vectors=vectors, cached=cached, truncated=truncated)

    @staticmethod
    def _items_of(text: str, plan: WindowPlan) -> tuple[EncodeItem, ...]:
        return plan.windows if plan.long else (text,)

    def cached_mask(self, texts: Sequence[str]) -> np.ndarray:
        """Which texts `embed` would serve from the cache alone (bool per text).

        A long text read as windows counts as cached only when every one of its windows is.
        Raises redis.RedisError when the cache cannot answer; without a cache nothing is cached.
        """
        texts = list(texts)
        if self.cache is None:
            return np.zeros(len(texts), dtype=bool)
        raw_space = self.encoder.fingerprint(normalize=False)
        plans = self.plan(texts)
        whole_rows = [row for row, plan in enumerate(plans) if not plan.long]
        mask = np.zeros(len(texts), dtype=bool)
        if whole_rows:
            mask[whole_rows] = self.cache.exists_many(raw_space, [texts[row] for row in whole_rows])
        long_rows = [row for row, plan in enumerate(plans) if plan.long]
        if long_rows:
            windows = list(
                dict.fromkeys(window for row in long_rows for window in plans[row].windows)
            )
            present = self.cache.exists_many(
                window_space(raw_space), [window.cache_text() for window in windows]
            )
            found = {window for window, there in zip(windows, present, strict=True) if there}
            mask[long_rows] = [
                all(window in found for window in plans[row].windows) for row in long_rows
            ]
        return mask

    def forget(self, texts: Sequence[str]) -> None:
        """Delete the cached entries `embed` would read for `texts` (their windows too).

        For entries found to be bad (e.g. not finite); best effort like every cache write.
        """
        if self.cache is None or not texts:
            return
        raw_space = self.encoder.fingerprint(normalize=False)
        by_space: dict[str, list[str]] = {}
        for text, plan in zip(texts, self.plan(texts), strict=True):
            if plan.long:
                by_space.setdefault(window_space(raw_space), []).extend(
                    window.cache_text() for window in plan.windows
                )
            else:
                by_space.setdefault(raw_space, []).append(text)
        # Best effort, per node on a cluster: the cache decides how to reach each key.
        for space, cache_texts in by_space.items():
            self.cache.delete_many(space, cache_texts)

    def _store(self, items: list[EncodeItem], vectors: np.ndarray) -> None:
        """Write texts under their text key and windows under their ids, each in its space."""
        if self.cache is None:
            return
        raw_space = self.encoder.fingerprint(normalize=False)
        text_rows = [row for row, item in enumerate(items) if isinstance(item, str)]
        window_rows = [row for row, item in enumerate(items) if isinstance(item, TokenWindow)]
        if text_rows:
            self.cache.set_many(raw_space, [items[row] for row in text_rows], vectors[text_rows])
        if window_rows:
            self.cache.set_many(
                window_space(raw_space),
                [items[row].cache_text() for row in window_rows],  # type: ignore[union-attr]
                vectors[window_rows],
            )

    def _encode_and_store(
        self, missing: list[EncodeItem], progress: bool
    ) -> dict[EncodeItem, np.ndarray]:
        """Encode in chunks, writing each to the cache as soon as it is done.

        A long run that is interrupted keeps what it finished: the next run resumes there.
        Sorting by length first keeps each chunk's batches evenly padded.
        """
        ordered = sorted(missing, key=estimated_chars, reverse=True)
        encoded: dict[EncodeItem, np.ndarray] = {}
        windows = sum(isinstance(item, TokenWindow) for item in ordered)
        description = f"encoding ({windows} windows of long texts)" if windows else "encoding"
        bar = tqdm(total=len(ordered), desc=description, unit="input", disable=not progress)
        for start in range(0, len(ordered), STORE_EVERY):
            chunk = ordered[start : start + STORE_EVERY]
            vectors = self._encode_raw(chunk)
            self._store(chunk, vectors)
            encoded.update(zip(chunk, vectors, strict=True))
            bar.update(len(chunk))
        bar.close()
        return encoded
