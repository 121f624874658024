"""Long texts as overlapping token windows: split, cache key, and pool back into one vector.

A text longer than the encoder's `max_seq_len` tokens (special tokens included) is split
into windows: its tokens (without special tokens) in slices of `max_seq_len - specials`,
consecutive slices sharing `overlap` tokens, each slice wrapped in the model's special
tokens again, so every window is exactly what the model would read for a text of that
length. The first window is therefore token for token what truncation keeps.

Cache keys: a window is cached under its token ids (special tokens included), in a space
of its own beside the text space (`window_space`). Keying by ids rather than by (text,
window index) means an entry always names exactly what was encoded: a different overlap,
or a text whose windows happen to be shared with another, can never read a wrong vector,
and no setting needs to be folded into the key. The separate space means no client text,
whatever it holds, can ever collide with (or poison) a window's entry.

Pooling the windows back into one vector follows the encoder's own pooling, so a long
text's vector means what a short text's does: mean pooling weights each window's mean by
its token count (the result is the mean over every token position the model read, as if
one pass had read them all), max pooling takes the maximum over windows, and cls pooling
averages the windows' first-token vectors (each window has one).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from embedder.errors import InvalidConfigError

LONG_TEXT_MODES = ("truncate", "windows")
# A window's length in characters, for code that buckets encode work by characters:
# English WordPiece / BPE text averages 4-5 characters per token.
CHARS_PER_TOKEN = 5
PROBE_TEXT = "a"


@dataclass(frozen=True)
class TokenWindow:
    """A piece of a long text as token ids, special tokens included; encoded as a text is."""

    ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def cache_text(self) -> str:
        """The string whose `cache_key` (in `window_space`) holds this window's vector."""
        return "ids:" + ",".join(map(str, self.ids))


EncodeItem = str | TokenWindow


def window_space(raw_space: str) -> str:
    """The cache space of windows beside the raw text space `raw_space` (same model, pooling)."""
    return f"{raw_space}.windows"


def estimated_chars(item: EncodeItem) -> int:
    """An item's length in characters (a window's estimated from its tokens), for bucketing."""
    return len(item) if isinstance(item, str) else len(item.ids) * CHARS_PER_TOKEN


def special_affixes(tokenizer: Tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special token ids the model puts before and after a single text.

    Raises:
        InvalidConfigError: The tokenizer's template is not a plain prefix and suffix.

    """
    with_special = list(tokenizer.encode(PROBE_TEXT, add_special_tokens=True).ids)
    content = list(tokenizer.encode(PROBE_TEXT, add_special_tokens=False).ids)
    for start in range(len(with_special) - len(content) + 1):
        if with_special[start : start + len(content)] == content:
            return tuple(with_special[:start]), tuple(with_special[start + len(content) :])
    raise InvalidConfigError(
        "LONG_TEXTS=windows: this model's tokenizer does not add its special tokens as a plain "
        "prefix and suffix, so texts cannot be split into windows; valid choices here: truncate"
    )


@dataclass(frozen=True)
class WindowPlan:
    """How one text is read: whole (no windows) or as windows, and whether any was cut off."""

    windows: tuple[TokenWindow, ...]  # empty: the text fits in one pass and is read whole
    truncated: bool  # tokens beyond the last window (or beyond max_seq_len) are not read

    @property
    def long(self) -> bool:
        """True when the text is read as windows."""
        return bool(self.windows)


WHOLE = WindowPlan((), False)  # the plan of every text that fits in one pass


class WindowSplitter:
    """Splits texts longer than `max_seq_len` tokens into overlapping windows.

    Args:
        tokenizer: The model's plain tokenizer (no truncation, no padding).
        max_seq_len: Tokens per window, special tokens included.
        overlap_tokens: Tokens consecutive windows share; capped at half a window's
            content, so every window moves on by at least half a window.
        max_windows: Most windows per text; the rest of a longer text is not read and
            the text counts as truncated.

    """

    def __init__(
        self, tokenizer: Tokenizer, max_seq_len: int, overlap_tokens: int, max_windows: int
    ) -> None:
        if max_windows < 1:
            raise InvalidConfigError(f"LONG_TEXT_MAX_WINDOWS={max_windows} must be >= 1")
        if overlap_tokens < 0:
            raise InvalidConfigError(f"LONG_TEXT_OVERLAP_TOKENS={overlap_tokens} must be >= 0")
        self.tokenizer = tokenizer
        self.prefix, self.suffix = special_affixes(tokenizer)
        self.content = max_seq_len - len(self.prefix) - len(self.suffix)
        if self.content < 1:
            raise InvalidConfigError(
                f"EMBEDDER_MAX_SEQ_LEN={max_seq_len} leaves no room for text beside the "
                f"model's {len(self.prefix) + len(self.suffix)} special tokens"
            )
        self.max_seq_len = max_seq_len
        self.overlap = min(overlap_tokens, self.content // 2)
        self.stride = self.content - self.overlap
        self.max_windows = max_windows

    def describe(self) -> dict[str, object]:
        """The settings in force (the overlap after its cap), for /health and head metadata."""
        return {
            "mode": "windows",
            "max_windows": self.max_windows,
            "overlap_tokens": self.overlap,
            "window_tokens": self.max_seq_len,
        }

    def tokens_read(self) -> int:
        """Most tokens of one text its windows read (special tokens once, overlaps once)."""
        specials = len(self.prefix) + len(self.suffix)
        return specials + self.content + (self.max_windows - 1) * self.stride

    def windows_needed(self, token_count: int) -> int:
        """Windows that cover `token_count` content tokens (1 when they fit in one pass)."""
        if token_count <= self.content:
            return 1
        return 1 + -(-(token_count - self.content) // self.stride)

    def split_ids(self, content_ids: Sequence[int]) -> WindowPlan:
        """The plan for a text given its token ids without special tokens."""
        needed = self.windows_needed(len(content_ids))
        if needed == 1:
            return WHOLE
        kept = min(needed, self.max_windows)
        windows = tuple(
            TokenWindow(
                (
                    *self.prefix,
                    *content_ids[index * self.stride : index * self.stride + self.content],
                    *self.suffix,
                )
            )
            for index in range(kept)
        )
        return WindowPlan(windows, needed > kept)

    def plan(self, texts: Sequence[str]) -> list[WindowPlan]:
        """One plan per text (one batched tokenizer call)."""
        if not texts:
            return []
        # Every text of a call is tokenised, cached or not, to know which are long: the fast
        # form skips the character offsets nobody reads here (a third less time).
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        encodings = encode(list(texts), add_special_tokens=False)
        # len() of an encoding costs nothing; its ids become a Python list only when needed.
        return [
            WHOLE if len(encoding) <= self.content else self.split_ids(encoding.ids)
            for encoding in encodings
        ]


def pool_windows(vectors: np.ndarray, token_counts: np.ndarray, pooling: str) -> np.ndarray:
    """One text's vector from its windows' vectors (k, dim), pooled as the encoder pools tokens.

    mean: token-count-weighted mean (the mean over every token position read); max: the
    maximum over windows; cls: the plain mean of the windows' first-token vectors.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if pooling == "max":
        return vectors.max(axis=0)
    if pooling == "mean":
        weights = np.asarray(token_counts, dtype=np.float64)
        return (weights @ vectors / weights.sum()).astype(np.float32)
    if pooling == "cls":
        return vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
    raise ValueError(f"unknown pooling {pooling!r}; valid choices: cls, max, mean")
