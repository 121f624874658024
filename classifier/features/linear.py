"""A linear model on tf-idf rows (and optionally the encoder's vectors), numpy only.

What `LexicalHead` and `HybridHead` serve as. Scores are

    tfidf(texts) @ lexical_weight + standardised(vectors) * scale @ vector_matrix + bias

where standardised(vectors) = (vectors - vector_mean) / vector_scale (the training rows'
mean and spread) and scale = vector_weight / sqrt(dim), so the vector block's rows have
length about `vector_weight`, against 1 for each L2-normalised tf-idf block.

then mapped to probabilities by `output`:

* "binary": one score, sigmoid -> two columns;
* "softmax": one score per class (multinomial logistic regression);
* "sigmoid": independent labels (one-vs-rest, multi-label);
* "normalized_sigmoid": one-vs-rest classes, each a sigmoid, rows scaled to sum to 1.

`slope` and `intercept` (one per score) map a decision value to a logit: 1 and 0 for a
logistic regression, a Platt fit for a linear SVM.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from classifier.dense import sigmoid, softmax
from classifier.errors import InputShapeError
from classifier.features.tfidf import TfidfTransform

OUTPUTS: tuple[str, ...] = ("binary", "softmax", "sigmoid", "normalized_sigmoid")


def vector_block(
    vectors: np.ndarray, mean: np.ndarray, scale: np.ndarray, weight: float
) -> np.ndarray:
    """Standardised vectors times weight / sqrt(dim): rows of length about `weight`, float64."""
    standardised = (np.asarray(vectors, dtype=np.float32) - mean) / scale
    return standardised.astype(np.float64) * (weight / np.sqrt(len(mean)))


class LinearTextModel:
    """Probabilities from texts (tf-idf) and, for a hybrid, the encoder's vectors.

    Args:
        transform: The fitted tf-idf transform.
        lexical_weight: (n_tfidf_features, n_scores) weights of the tf-idf columns.
        bias: (n_scores,).
        output: One of OUTPUTS.
        classes: The head's `classes_` (JSON values), in column order.
        slope, intercept: (n_scores,) decision -> logit mapping.
        vector_weight: Length of the vector block's rows (0 for lexical-only).
        vector_matrix: (dim, n_scores) weights of the vector block, or None.
        vector_mean, vector_scale: (dim,) standardisation of the vectors (with vector_matrix).

    """

    persist_kind = "linear_text_model"

    def __init__(
        self,
        transform: TfidfTransform,
        lexical_weight: np.ndarray,
        bias: np.ndarray,
        output: str,
        classes: Sequence[Any],
        slope: np.ndarray | None = None,
        intercept: np.ndarray | None = None,
        vector_weight: float = 0.0,
        vector_matrix: np.ndarray | None = None,
        vector_mean: np.ndarray | None = None,
        vector_scale: np.ndarray | None = None,
    ) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output: {output!r} is not one of {list(OUTPUTS)}")
        lexical_weight = np.asarray(lexical_weight, dtype=np.float32)
        scores = lexical_weight.shape[1] if lexical_weight.ndim == 2 else -1
        expected = 1 if output == "binary" else len(classes)
        if lexical_weight.shape != (transform.n_features_, expected) or scores != expected:
            raise ValueError(
                f"lexical_weight: shape {lexical_weight.shape} does not fit "
                f"{transform.n_features_} features and {expected} scores"
            )
        if np.shape(bias) != (expected,):
            raise ValueError(f"bias: shape {np.shape(bias)} is not ({expected},)")
        self.transform = transform
        self.lexical_weight_ = lexical_weight
        self.bias_ = np.asarray(bias, dtype=np.float32)
        self.output_ = output
        self.classes_ = np.asarray(list(classes))
        self.slope_ = (
            np.ones(expected, np.float32) if slope is None else np.asarray(slope, np.float32)
        )
        self.intercept_ = (
            np.zeros(expected, np.float32)
            if intercept is None
            else np.asarray(intercept, np.float32)
        )
        if self.slope_.shape != (expected,) or self.intercept_.shape != (expected,):
            raise ValueError(f"slope and intercept: need shape ({expected},)")
        self.vector_weight_ = float(vector_weight)
        self.vector_matrix_ = self.vector_mean_ = self.vector_scale_ = None
        if vector_matrix is not None:
            self.vector_matrix_ = np.asarray(vector_matrix, dtype=np.float32)
            if self.vector_matrix_.ndim != 2 or self.vector_matrix_.shape[1] != expected:
                raise ValueError(
                    f"vector_matrix: shape {self.vector_matrix_.shape} is not (dim, {expected})"
                )
            dim = self.vector_matrix_.shape[0]
            self.vector_mean_ = np.asarray(vector_mean, dtype=np.float32)
            self.vector_scale_ = np.asarray(vector_scale, dtype=np.float32)
            if self.vector_mean_.shape != (dim,) or self.vector_scale_.shape != (dim,):
                raise ValueError(f"vector_mean and vector_scale: need shape ({dim},)")
        self.inputs_: tuple[str, ...] = (
            ("vectors", "texts") if self.vector_matrix_ is not None else ("texts",)
        )

    @property
    def n_features_in_(self) -> int | None:
        """Vector width read (None for a lexical-only model)."""
        return None if self.vector_matrix_ is None else int(self.vector_matrix_.shape[0])

    def decision_function(
        self, X: np.ndarray | None, texts: Sequence[str] | None = None
    ) -> np.ndarray:
        """Raw scores (n, n_scores) float64, before the decision -> logit mapping."""
        if texts is None:
            raise InputShapeError("texts: this model reads the texts; none were given")
        rows = self.transform.transform(texts)
        scores = rows.matmul(self.lexical_weight_)
        if self.vector_matrix_ is not None:
            if X is None:
                raise InputShapeError(
                    "X: this hybrid model reads the encoder's vectors; none were given"
                )
            X = np.asarray(X, dtype=np.float32)
            if X.shape != (len(rows), self.vector_matrix_.shape[0]):
                raise InputShapeError(
                    f"X: shape {X.shape} is not ({len(rows)}, {self.vector_matrix_.shape[0]})"
                )
            block = vector_block(X, self.vector_mean_, self.vector_scale_, self.vector_weight_)
            scores += block @ self.vector_matrix_.astype(np.float64)
        return scores + self.bias_.astype(np.float64)

    def predict_proba(self, X: np.ndarray | None, texts: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities (n, len(classes_)), float32."""
        logits = self.decision_function(X, texts) * self.slope_ + self.intercept_
        if self.output_ == "binary":
            positive = sigmoid(logits[:, 0])
            return np.column_stack([1 - positive, positive]).astype(np.float32)
        if self.output_ == "softmax":
            return softmax(logits).astype(np.float32)
        probabilities = sigmoid(logits)
        if self.output_ == "normalized_sigmoid":
            totals = probabilities.sum(axis=1, keepdims=True)
            probabilities = probabilities / np.where(totals > 0, totals, 1.0)
        return probabilities.astype(np.float32)

    def predict(self, X: np.ndarray | None, texts: Sequence[str] | None = None) -> np.ndarray:
        """Class labels (n,), or a 0/1 matrix (n, L) at 0.5 for independent labels."""
        probabilities = self.predict_proba(X, texts)
        if self.output_ == "sigmoid":
            return (probabilities >= 0.5).astype(np.int64)
        return self.classes_[probabilities.argmax(axis=1)]

    def to_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """JSON settings and plain arrays (see classifier.persist)."""
        parts: dict[str, Any] = {
            "transform": self.transform,
            "lexical_weight": self.lexical_weight_,
            "bias": self.bias_,
            "slope": self.slope_,
            "intercept": self.intercept_,
        }
        if self.vector_matrix_ is not None:
            parts["vector_matrix"] = self.vector_matrix_
            parts["vector_mean"] = self.vector_mean_
            parts["vector_scale"] = self.vector_scale_
        config = {
            "output": self.output_,
            "classes": self.classes_.tolist(),
            "vector_weight": self.vector_weight_,
        }
        return config, parts

    @classmethod
    def from_state(cls, config: dict[str, Any], parts: dict[str, Any]) -> "LinearTextModel":
        """Rebuild from `to_state`'s output."""
        transform = parts["transform"]
        if not isinstance(transform, TfidfTransform):
            raise TypeError("transform: not a tfidf_transform component")
        return cls(
            transform,
            parts["lexical_weight"],
            parts["bias"],
            str(config["output"]),
            config["classes"],
            parts["slope"],
            parts["intercept"],
            float(config["vector_weight"]),
            parts.get("vector_matrix"),
            parts.get("vector_mean"),
            parts.get("vector_scale"),
        )
