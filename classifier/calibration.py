"""Probabilities that mean something: calibration maps, calibrated heads, ECE and reliability.

A calibrator is fitted on OUT-OF-FOLD scores (the search's cross-validation predictions,
never the rows a model was fitted on) and maps each score column to a probability:

* Platt: p = sigmoid(slope * logit(s) + offset), two numbers per column; for few rows.
* isotonic: a monotone step function fitted by scikit-learn, served by linear
  interpolation between its knots; for 1,000 rows or more, where it stops over-fitting.

Columns are calibrated one against the rest; single-label rows are then renormalised to
sum to 1. Fitting imports scikit-learn inside the functions; the serving classes
(`Calibrator`, `CalibratedClassifier`) are numpy alone.

Reliability: single-label heads are binned by top-label confidence (accuracy = share of
rows whose top class is right); multi-label heads by each (row, label) probability
(accuracy = share of those cells that are positive). ECE is the row-weighted mean gap.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from classifier.dense import sigmoid

METHODS: tuple[str, ...] = ("platt", "isotonic")
# scikit-learn's guidance (and ours): isotonic regression over-fits below ~1,000 rows.
ISOTONIC_MIN_ROWS = 1000
RELIABILITY_BINS = 10
EPSILON = 1e-6


def _logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(scores, EPSILON, 1 - EPSILON)
    return np.log(clipped) - np.log1p(-clipped)


def predict_with(model: Any, X: np.ndarray | None, texts: Sequence[str] | None) -> np.ndarray:
    """`model.predict_proba` called the way its inputs ask (texts only to models reading them)."""
    if "texts" in tuple(getattr(model, "inputs_", ("vectors",))):
        return np.asarray(model.predict_proba(X, texts=texts), dtype=np.float32)
    return np.asarray(model.predict_proba(X), dtype=np.float32)


class Calibrator:
    """Per-column score -> probability maps (numpy only).

    Args:
        method: "platt" or "isotonic".
        output: "binary" (calibrate column 1, return [1 - p, p]), "softmax" (each column,
            then rows renormalised) or "sigmoid" (independent columns).
        parameters: Platt: (columns, 2) slopes and offsets. Isotonic: (columns, knots, 2)
            x and y of each column's knots (padded by repeating the last knot).

    """

    persist_kind = "calibrator"

    def __init__(self, method: str, output: str, parameters: np.ndarray) -> None:
        if method not in METHODS:
            raise ValueError(f"method: {method!r} is not one of {list(METHODS)}")
        if output not in ("binary", "softmax", "sigmoid"):
            raise ValueError(f"output: {output!r} is not binary, softmax or sigmoid")
        parameters = np.asarray(parameters, dtype=np.float64)
        if (method == "platt" and (parameters.ndim != 2 or parameters.shape[1] != 2)) or (
            method == "isotonic" and (parameters.ndim != 3 or parameters.shape[2] != 2)
        ):
            raise ValueError(f"parameters: shape {parameters.shape} does not fit {method}")
        self.method_ = method
        self.output_ = output
        self.parameters_ = parameters

    def _column(self, index: int, scores: np.ndarray) -> np.ndarray:
        if self.method_ == "platt":
            slope, offset = self.parameters_[index]
            return sigmoid(slope * _logit(scores) + offset)
        knots = self.parameters_[index]
        return np.interp(scores, knots[:, 0], knots[:, 1])

    def transform(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, same shape as `scores`, float32."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.output_ == "binary":
            positive = np.clip(self._column(0, scores[:, 1]), 0.0, 1.0)
            return np.column_stack([1 - positive, positive]).astype(np.float32)
        columns = np.column_stack(
            [self._column(index, scores[:, index]) for index in range(scores.shape[1])]
        )
        columns = np.clip(columns, 0.0, 1.0)
        if self.output_ == "softmax":
            totals = columns.sum(axis=1, keepdims=True)
            # A row every map sends to 0 keeps its uncalibrated scores rather than 0/0.
            columns = np.where(totals > EPSILON, columns / np.maximum(totals, EPSILON), scores)
        return columns.astype(np.float32)

    def to_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """JSON and one array (see classifier.persist)."""
        return {"method": self.method_, "output": self.output_}, {"parameters": self.parameters_}

    @classmethod
    def from_state(cls, config: dict[str, Any], parts: dict[str, Any]) -> "Calibrator":
        """Rebuild from `to_state`'s output."""
        return cls(config["method"], config["output"], parts["parameters"])


class CalibratedClassifier:
    """A fitted model whose probabilities go through a `Calibrator` (numpy only when served).

    Args:
        base: A fitted persistable model (a head, a lexical or stacked model).
        calibrator: Fitted on the base model's out-of-fold probabilities.

    """

    persist_kind = "calibrated_classifier"

    def __init__(self, base: Any, calibrator: Calibrator) -> None:
        self.base_ = base
        self.calibrator_ = calibrator
        self.inputs_ = tuple(getattr(base, "inputs_", ("vectors",)))
        self.classes_ = getattr(base, "classes_", None)

    def predict_proba(self, X: np.ndarray | None, texts: Sequence[str] | None = None) -> np.ndarray:
        """Calibrated probabilities (n, columns), float32."""
        return self.calibrator_.transform(predict_with(self.base_, X, texts))

    def to_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Two components (see classifier.persist)."""
        return {}, {"base": self.base_, "calibrator": self.calibrator_}

    @classmethod
    def from_state(cls, config: dict[str, Any], parts: dict[str, Any]) -> "CalibratedClassifier":
        """Rebuild from `to_state`'s output."""
        return cls(parts["base"], parts["calibrator"])


def output_of(task: str) -> str:
    """The Calibrator output for a task name."""
    return {"binary": "binary", "multiclass": "softmax", "multilabel": "sigmoid"}[task]


def choose_method(n_rows: int) -> str:
    """Isotonic from ISOTONIC_MIN_ROWS rows on, Platt below."""
    return "isotonic" if n_rows >= ISOTONIC_MIN_ROWS else "platt"


def _truth_columns(task: str, targets: np.ndarray, n_columns: int) -> np.ndarray:
    if task == "multilabel":
        return np.asarray(targets, dtype=np.int64)
    return np.eye(n_columns, dtype=np.int64)[np.asarray(targets, dtype=np.int64)]


def fit_calibrator(
    task: str, targets: np.ndarray, scores: np.ndarray, method: str | None = None
) -> Calibrator:
    """Fit a Calibrator on out-of-fold `scores` (n, columns) of rows with `targets`.

    Args:
        task: "binary", "multiclass" or "multilabel".
        targets: Class indices (n,) or a 0/1 matrix (n, L).
        scores: Out-of-fold probabilities (or any scores in [0, 1]) of the same rows.
        method: "platt", "isotonic", or None to choose by row count.

    """
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    method = method or choose_method(len(scores))
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {list(METHODS)}")
    scores = np.asarray(scores, dtype=np.float64)
    truth = _truth_columns(task, targets, scores.shape[1])
    columns = [1] if task == "binary" else list(range(scores.shape[1]))
    fitted: list[np.ndarray] = []
    for column in columns:
        score, positive = scores[:, column], truth[:, column]
        if positive.min() == positive.max():
            # Nothing to learn from: identity (Platt slope 1, offset 0; isotonic diagonal).
            fitted.append(
                np.array([1.0, 0.0]) if method == "platt" else np.array([[0.0, 0.0], [1.0, 1.0]])
            )
            continue
        if method == "platt":
            # Weak L2 (C=100 on one feature) only keeps separable columns finite.
            model = LogisticRegression(C=100.0).fit(_logit(score)[:, None], positive)
            fitted.append(np.array([model.coef_[0, 0], model.intercept_[0]]))
        else:
            model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            model.fit(score, positive)
            knots = np.column_stack([model.X_thresholds_, model.y_thresholds_])
            fitted.append(knots if len(knots) > 1 else np.vstack([knots, knots]))
    if method == "platt":
        parameters = np.vstack(fitted)
    else:
        longest = max(len(knots) for knots in fitted)
        parameters = np.stack(
            [
                np.vstack([knots, np.repeat(knots[-1:], longest - len(knots), axis=0)])
                for knots in fitted
            ]
        )
    return Calibrator(method, output_of(task), parameters)


def reliability(
    task: str, targets: np.ndarray, probabilities: np.ndarray, bins: int = RELIABILITY_BINS
) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error and equal-width reliability bins (see the module doc).

    Returns:
        (ece, [{"low", "high", "confidence", "accuracy", "count"}]); empty bins have
        count 0 and confidence / accuracy None.

    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if task == "multilabel":
        confidence = probabilities.ravel()
        correct = np.asarray(targets, dtype=np.float64).ravel()
        low_edge = 0.0
    else:
        confidence = probabilities.max(axis=1)
        correct = (probabilities.argmax(axis=1) == np.asarray(targets)).astype(np.float64)
        # Top-label confidence is at least 1 / classes: bin only the range it can take.
        low_edge = 1.0 / probabilities.shape[1]
    edges = np.linspace(low_edge, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    table: list[dict[str, Any]] = []
    gap = 0.0
    for index in range(bins):
        inside = which == index
        count = int(inside.sum())
        row: dict[str, Any] = {
            "low": round(float(edges[index]), 4),
            "high": round(float(edges[index + 1]), 4),
            "confidence": None,
            "accuracy": None,
            "count": count,
        }
        if count:
            mean_confidence = float(confidence[inside].mean())
            accuracy = float(correct[inside].mean())
            row["confidence"], row["accuracy"] = mean_confidence, accuracy
            gap += count * abs(mean_confidence - accuracy)
        table.append(row)
    return gap / max(len(confidence), 1), table


def calibration_report(
    task: str, targets: np.ndarray, probabilities: np.ndarray, method: str
) -> dict[str, Any]:
    """The `calibration` metadata block: method, ECE and the reliability bins."""
    ece, bins = reliability(task, targets, probabilities)
    return {"method": method, "ece": ece, "reliability": bins}
