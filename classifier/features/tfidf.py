"""TF-IDF features computed with numpy and the stdlib: what a lexical head serves with.

`TfidfTransform` holds one or more blocks (e.g. word 1-2-grams and char_wb 2-5-grams),
each a vocabulary (list of n-grams in column order) and its idf weights, as fitted by
scikit-learn's TfidfVectorizer (classifier.features.fitting). Each block is
`(1 + log(count)) * idf` (sublinear tf) or `count * idf`, then L2-normalised per row, as
scikit-learn does; the blocks sit side by side in one sparse row.

Rows come out as `SparseRows` (CSR arrays): a batch of texts never becomes a dense
(n, vocabulary) matrix on the serving path.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from classifier.features.text import char_wb_ngrams, preprocessor, word_ngrams

ANALYZERS: tuple[str, ...] = ("word", "char_wb")


@dataclass(frozen=True)
class SparseRows:
    """CSR rows: row i's columns are indices[indptr[i]:indptr[i+1]] with values in data."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    width: int

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def dense(self) -> np.ndarray:
        """The rows as a dense float64 matrix (n, width); for tests and small batches."""
        matrix = np.zeros((len(self), self.width), dtype=np.float64)
        rows = np.repeat(np.arange(len(self)), np.diff(self.indptr))
        matrix[rows, self.indices] = self.data
        return matrix

    def empty_rows(self) -> np.ndarray:
        """Indices of rows with no feature at all (no n-gram of the text is in the vocabulary)."""
        return np.flatnonzero(np.diff(self.indptr) == 0)

    def matmul(self, weight: np.ndarray) -> np.ndarray:
        """The product rows @ weight (width, k) -> (n, k) float64, rows never made dense."""
        out = np.zeros((len(self), weight.shape[1]), dtype=np.float64)
        if len(self.data):
            rows = np.repeat(np.arange(len(self)), np.diff(self.indptr))
            contributions = weight[self.indices].astype(np.float64) * self.data[:, None]
            if weight.shape[1] <= 32:
                # bincount per output column beats the unbuffered np.add.at for few columns.
                for column in range(weight.shape[1]):
                    out[:, column] = np.bincount(
                        rows, weights=contributions[:, column], minlength=len(self)
                    )
            else:
                np.add.at(out, rows, contributions)
        return out


class TfidfBlock:
    """One analyzer's vocabulary and idf; `rows(texts)` gives its L2-normalised tf-idf rows."""

    def __init__(
        self,
        analyzer: str,
        ngram_range: tuple[int, int],
        vocabulary: Sequence[str],
        idf: np.ndarray,
        *,
        lowercase: bool = True,
        strip_accents: str | None = None,
        sublinear_tf: bool = True,
    ) -> None:
        if analyzer not in ANALYZERS:
            raise ValueError(f"analyzer: {analyzer!r} is not one of {list(ANALYZERS)}")
        low, high = int(ngram_range[0]), int(ngram_range[1])
        if not 1 <= low <= high:
            raise ValueError(f"ngram_range: {ngram_range} is not 1 <= low <= high")
        # Saved as float32 (half the bytes); computed in float64 like scikit-learn.
        idf = np.asarray(idf, dtype=np.float32)
        if idf.shape != (len(vocabulary),):
            raise ValueError(f"idf: shape {idf.shape} does not fit {len(vocabulary)} n-grams")
        self.analyzer = analyzer
        self.ngram_range = (low, high)
        self.vocabulary = list(vocabulary)
        self.idf = idf
        self.lowercase = bool(lowercase)
        self.strip_accents = strip_accents
        self.sublinear_tf = bool(sublinear_tf)
        self._preprocess = preprocessor(self.lowercase, strip_accents)
        self._ngrams = word_ngrams if analyzer == "word" else char_wb_ngrams
        # One dict lookup per n-gram is the whole cost of serving a text.
        self._index = {gram: column for column, gram in enumerate(self.vocabulary)}
        if len(self._index) != len(self.vocabulary):
            raise ValueError("vocabulary: holds duplicate n-grams")

    def analyze(self, text: str) -> list[str]:
        """The n-grams of one text (scikit-learn's analyzer)."""
        low, high = self.ngram_range
        return self._ngrams(self._preprocess(text), low, high)

    def entries(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, columns, L2-normalised tf-idf values) of a batch, sorted by row then column.

        One numpy pass over the whole batch: per-text numpy calls would cost more than
        the n-gram lookups themselves on short texts.
        """
        grams: list[str] = []
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            analyzed = self.analyze(text)
            grams.extend(analyzed)
            lengths[row] = len(analyzed)
        # One C-level pass of dict lookups for the whole batch; -1 marks unknown n-grams.
        columns = np.fromiter(
            map(self._index.get, grams, repeat(-1)), dtype=np.int64, count=len(grams)
        )
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        known = columns >= 0
        width = max(len(self.vocabulary), 1)
        keys = rows[known] * width + columns[known]
        if not len(keys):
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.float64)
        unique, counts = np.unique(keys, return_counts=True)
        rows, columns = np.divmod(unique, width)
        values = counts.astype(np.float64)
        if self.sublinear_tf:
            values = np.log(values) + 1.0
        values *= self.idf[columns].astype(np.float64)
        norms = np.sqrt(np.bincount(rows, weights=values * values, minlength=len(texts)))
        return rows, columns, values / norms[rows]

    def config(self) -> dict[str, Any]:
        """JSON settings (the arrays go to parts)."""
        return {
            "analyzer": self.analyzer,
            "ngram_range": list(self.ngram_range),
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
            "sublinear_tf": self.sublinear_tf,
        }


class TfidfTransform:
    """Texts -> tf-idf rows of every block side by side; numpy and the stdlib only.

    Args:
        blocks: The fitted blocks (see TfidfBlock), in column order.

    """

    persist_kind = "tfidf_transform"

    def __init__(self, blocks: Sequence[TfidfBlock]) -> None:
        if not blocks:
            raise ValueError("blocks: need at least one")
        self.blocks = list(blocks)
        self.offsets_ = np.cumsum([0] + [len(block.vocabulary) for block in self.blocks])
        self.n_features_ = int(self.offsets_[-1])

    def transform(self, texts: Sequence[str]) -> SparseRows:
        """CSR tf-idf rows (n, n_features_), float64, each block L2-normalised."""
        parts = [
            (rows, columns + offset, values)
            for offset, block in zip(self.offsets_, self.blocks, strict=False)
            for rows, columns, values in [block.entries(texts)]
        ]
        rows = np.concatenate([part[0] for part in parts])
        columns = np.concatenate([part[1] for part in parts])
        values = np.concatenate([part[2] for part in parts])
        if len(parts) > 1:
            order = np.lexsort((columns, rows))
            rows, columns, values = rows[order], columns[order], values[order]
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(texts)), out=indptr[1:])
        return SparseRows(indptr, columns.astype(np.int64), values, self.n_features_)

    def to_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Vocabularies as string lists, idf as float32 arrays (see classifier.persist)."""
        parts: dict[str, Any] = {}
        for number, block in enumerate(self.blocks):
            parts[f"vocabulary{number}"] = block.vocabulary
            parts[f"idf{number}"] = block.idf
        return {"blocks": [block.config() for block in self.blocks]}, parts

    @classmethod
    def from_state(cls, config: dict[str, Any], parts: dict[str, Any]) -> "TfidfTransform":
        """Rebuild from `to_state`'s output."""
        blocks = []
        for number, settings in enumerate(config["blocks"]):
            blocks.append(
                TfidfBlock(
                    str(settings["analyzer"]),
                    tuple(settings["ngram_range"]),
                    parts[f"vocabulary{number}"],
                    parts[f"idf{number}"],
                    lowercase=bool(settings["lowercase"]),
                    strip_accents=settings["strip_accents"],
                    sublinear_tf=bool(settings["sublinear_tf"]),
                )
            )
        return cls(blocks)
