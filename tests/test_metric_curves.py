"""ROC and precision-recall points in evaluate()'s metrics, for the page to draw."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from classifier.metrics import CURVE_POINTS, evaluate
from classifier.tasks import TaskSpec


def scored(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """0/1 truth and overlapping scores: many distinct thresholds, an AUC well below 1."""
    generator = np.random.default_rng(seed)
    truth = generator.integers(0, 2, size=n)
    score = 1 / (1 + np.exp(-(1.2 * truth - 0.6 + generator.normal(size=n))))
    return truth, score


def area(curve: dict[str, list[float]]) -> float:
    x, y = np.asarray(curve["x"]), np.asarray(curve["y"])
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def test_binary_curves_are_thinned_but_keep_their_shape():
    truth, score = scored(3000)
    probabilities = np.column_stack([1 - score, score])
    metrics = evaluate(TaskSpec("binary", ("no", "yes")), truth, probabilities)
    curves = metrics["curves"]
    json.dumps(curves, allow_nan=False)  # JSON-ready: plain floats, no NaN
    assert set(curves) == {"roc", "pr"}
    assert list(curves["roc"]) == ["yes"] and list(curves["pr"]) == ["yes"]
    assert len(roc_curve(truth, score)[0]) > 10 * CURVE_POINTS  # so thinning had work to do
    for kind in ("roc", "pr"):
        x, y = curves[kind]["yes"]["x"], curves[kind]["yes"]["y"]
        assert 10 <= len(x) == len(y) <= CURVE_POINTS
        assert all(isinstance(value, float) for value in x + y)
        assert np.all(np.diff(x) >= 0), "x runs left to right"
        assert x[0] == 0 and x[-1] == 1
    roc = curves["roc"]["yes"]
    assert (roc["y"][0], roc["y"][-1]) == (0, 1)
    assert np.all(np.diff(roc["y"]) >= 0)
    assert area(roc) == pytest.approx(roc_auc_score(truth, score), abs=0.01)
    assert area(roc) == pytest.approx(metrics["roc_auc"], abs=0.01)
    pr = curves["pr"]["yes"]
    assert pr["y"][-1] == pytest.approx(truth.mean(), abs=1e-3), "precision at recall 1"


def test_short_curves_are_kept_point_for_point():
    truth, score = scored(40, seed=1)
    probabilities = np.column_stack([1 - score, score])
    roc = evaluate(TaskSpec("binary", (0, 1)), truth, probabilities)["curves"]["roc"]["1"]
    false_positive, true_positive, _ = roc_curve(truth, score)
    assert roc["x"] == pytest.approx(false_positive.tolist(), abs=1e-4)
    assert roc["y"] == pytest.approx(true_positive.tolist(), abs=1e-4)


def test_each_class_or_label_with_both_outcomes_gets_a_curve():
    generator = np.random.default_rng(2)
    probabilities = generator.dirichlet(np.ones(3), size=200)
    targets = generator.integers(0, 2, size=200)  # class "c" never occurs
    multiclass = evaluate(TaskSpec("multiclass", ("a", "b", "c")), targets, probabilities)
    assert list(multiclass["curves"]["roc"]) == ["a", "b"]
    assert list(multiclass["curves"]["pr"]) == ["a", "b"]

    matrix = generator.integers(0, 2, size=(200, 3))
    matrix[:, 1] = 0  # label "b" is never on
    scores = generator.random((200, 3))
    multilabel = evaluate(TaskSpec("multilabel", ("a", "b", "c")), matrix, scores, [0.5] * 3)
    assert list(multilabel["curves"]["roc"]) == ["a", "c"]
    for curve in multilabel["curves"]["pr"].values():
        assert len(curve["x"]) <= CURVE_POINTS
