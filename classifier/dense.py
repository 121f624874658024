"""A fitted dense network predicting with numpy alone: what LogisticHead and MLPHead serve as.

Standardise the inputs, apply the layers (ReLU between them; one layer is a linear
model), then the output activation: `binary` (one sigmoid logit -> two columns),
`softmax` (one column per class) or `sigmoid` (independent labels).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

OUTPUTS: tuple[str, ...] = ("binary", "softmax", "sigmoid")


def forward(
    features: np.ndarray, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]
) -> np.ndarray:
    """Logits of a trained network, computed with numpy (ReLU between layers)."""
    hidden = features
    for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        hidden = hidden @ weight + bias
        if layer < len(weights) - 1:
            hidden = np.maximum(hidden, 0)
    return hidden


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow warnings."""
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum for stability."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class DenseClassifier:
    """Probabilities from vectors: (X - mean) / scale, then the layers, then `output`.

    Args:
        mean, scale: Standardisation of the inputs (dim,).
        weights: Layer matrices (in, out); biases: (out,).
        output: "binary", "softmax" or "sigmoid".
        classes: The fitted head's `classes_` (JSON values).

    """

    persist_kind = "dense_classifier"
    inputs_: tuple[str, ...] = ("vectors",)

    def __init__(
        self,
        mean: np.ndarray,
        scale: np.ndarray,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        output: str,
        classes: Sequence[Any],
    ) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output: {output!r} is not one of {list(OUTPUTS)}")
        if len(weights) != len(biases) or not weights:
            raise ValueError("weights and biases: need the same number (>= 1) of layers")
        width = len(mean)
        for weight, bias in zip(weights, biases, strict=True):
            if weight.ndim != 2 or weight.shape[0] != width or bias.shape != weight.shape[1:]:
                raise ValueError(f"layer shapes do not chain: {weight.shape} after width {width}")
            width = weight.shape[1]
        expected = 1 if output == "binary" else len(classes)
        if width != expected or scale.shape != mean.shape:
            raise ValueError(f"output width {width} does not fit {len(classes)} classes")
        self.mean_ = np.asarray(mean, dtype=np.float32)
        self.scale_ = np.asarray(scale, dtype=np.float32)
        self.weights_ = [np.asarray(weight, dtype=np.float32) for weight in weights]
        self.biases_ = [np.asarray(bias, dtype=np.float32) for bias in biases]
        self.output_ = output
        self.classes_ = np.asarray(list(classes))
        self.n_features_in_ = len(mean)

    def predict_proba(self, X: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities (n, len(classes_)), float32; `texts` is unused (vectors only)."""
        features = (np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_
        logits = forward(features, self.weights_, self.biases_)
        if self.output_ == "binary":
            positive = sigmoid(logits[:, 0])
            return np.column_stack([1 - positive, positive]).astype(np.float32)
        if self.output_ == "softmax":
            return softmax(logits).astype(np.float32)
        return sigmoid(logits).astype(np.float32)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class labels (n,), or a 0/1 matrix (n, L) at 0.5 for independent labels."""
        probabilities = self.predict_proba(X)
        if self.output_ == "sigmoid":
            return (probabilities >= 0.5).astype(np.int64)
        return self.classes_[probabilities.argmax(axis=1)]

    def to_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Plain arrays and JSON (see classifier.persist)."""
        parts: dict[str, Any] = {"mean": self.mean_, "scale": self.scale_}
        for layer, (weight, bias) in enumerate(zip(self.weights_, self.biases_, strict=True)):
            parts[f"weight{layer}"], parts[f"bias{layer}"] = weight, bias
        config = {
            "output": self.output_,
            "layers": len(self.weights_),
            "classes": self.classes_.tolist(),
        }
        return config, parts

    @classmethod
    def from_state(cls, config: dict[str, Any], parts: dict[str, Any]) -> "DenseClassifier":
        """Rebuild from `to_state`'s output."""
        layers = int(config["layers"])
        return cls(
            parts["mean"],
            parts["scale"],
            [parts[f"weight{layer}"] for layer in range(layers)],
            [parts[f"bias{layer}"] for layer in range(layers)],
            config["output"],
            config["classes"],
        )
