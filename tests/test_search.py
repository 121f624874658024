"""The auto head search, calibration, stacking and the baseline, on real texts and vectors.

Vectors come from the real small model (MiniLM) on data/demo_support.csv and on a slice of
the toxic set in ../shared; nothing of our own code is mocked.
"""

import csv
import json
import time

import numpy as np
import pytest

from bertheads.cancel import CancelledError, CancelToken
from classifier import persist
from classifier.artifacts import save_head
from classifier.calibration import (
    CalibratedClassifier,
    Calibrator,
    fit_calibrator,
    reliability,
)
from classifier.reporting import train_reported
from classifier.search import plan_folds, search_heads
from classifier.stacking import StackedClassifier, fit_meta, meta_features
from classifier.tasks import encode_labels
from tests.conftest import DATASETS, REPO, run_python_json

TOXIC = ["toxic", "obscene", "insult"]


@pytest.fixture(scope="module")
def support(minilm):
    with (REPO / "data" / "demo_support.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    texts = [row["text"] for row in rows]
    return texts, [row["label"] for row in rows], minilm.encode(texts)


@pytest.fixture(scope="module")
def toxic(minilm):
    with (DATASETS / "toxic" / "train.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    flagged = [row for row in rows if any(row[label] == "1" for label in TOXIC)][:120]
    clean = [row for row in rows if not any(row[label] == "1" for label in TOXIC)][:180]
    chosen = flagged + clean
    texts = [row["text"][:600] for row in chosen]
    matrix = np.array([[int(row[label]) for label in TOXIC] for row in chosen])
    return texts, matrix, minilm.encode(texts)


# -- calibration -------------------------------------------------------------------------


def test_reliability_bins_and_ece_by_hand():
    # Two bins used: 0.6-confident rows right 1 time in 2, 0.9-confident rows right 2 in 2.
    probabilities = np.array([[0.6, 0.4], [0.6, 0.4], [0.1, 0.9], [0.1, 0.9]])
    targets = np.array([0, 1, 1, 1])
    ece, bins = reliability("binary", targets, probabilities, bins=5)
    assert ece == pytest.approx((2 * abs(0.6 - 0.5) + 2 * abs(0.9 - 1.0)) / 4)
    used = [b for b in bins if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in used] == [(2, 0.5), (2, 1.0)]
    assert sum(b["count"] for b in bins) == 4 and bins[0]["low"] == 0.5


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_a_calibrator_fixes_over_confident_scores_and_survives_persist(method):
    rng = np.random.default_rng(0)
    truth_probability = rng.uniform(0.05, 0.95, 4000)
    targets = (rng.uniform(size=4000) < truth_probability).astype(np.int64)
    # Over-confident scores: the true probability pushed towards 0 and 1.
    logit = np.log(truth_probability / (1 - truth_probability)) * 3
    positive = 1 / (1 + np.exp(-logit))
    scores = np.column_stack([1 - positive, positive])
    before, _ = reliability("binary", targets, scores)
    calibrator = fit_calibrator("binary", targets[:3000], scores[:3000], method)
    mapped = calibrator.transform(scores[3000:])
    after, _ = reliability("binary", targets[3000:], mapped)
    assert after < before / 3, (before, after)
    np.testing.assert_allclose(mapped.sum(axis=1), 1, atol=1e-6)
    tree, arrays = persist.dump(calibrator)
    loaded = persist.load(tree, arrays)
    assert isinstance(loaded, Calibrator)
    np.testing.assert_array_equal(loaded.transform(scores[3000:]), mapped)


def test_multiclass_calibration_keeps_rows_summing_to_one():
    rng = np.random.default_rng(1)
    raw = rng.dirichlet([0.3, 0.3, 0.3], size=600)
    targets = rng.integers(0, 3, 600)
    mapped = fit_calibrator("multiclass", targets, raw, "platt").transform(raw)
    np.testing.assert_allclose(mapped.sum(axis=1), 1, atol=1e-5)
    assert mapped.shape == raw.shape and mapped.dtype == np.float32


# -- folds -------------------------------------------------------------------------------


def test_a_class_rarer_than_the_folds_gives_fewer_folds_and_is_named():
    labels = ["a"] * 30 + ["b"] * 30 + ["c"] * 3
    spec, y = encode_labels(labels)
    folds, rare = plan_folds(spec, y, seed=0)
    assert len(folds) == 3 and rare == []
    labels = ["a"] * 30 + ["b"] * 30 + ["c"]
    spec, y = encode_labels(labels)
    folds, rare = plan_folds(spec, y, seed=0)
    assert len(folds) == 2 and rare == ["c"]
    assert sorted(np.concatenate([held for _, held in folds]).tolist()) == list(range(61))


def test_auto_trains_when_one_class_has_a_single_example(support):
    texts, labels, vectors = support
    labels = list(labels)
    labels[0] = "rare"
    trained = train_reported(vectors, labels, texts=texts, test_size=0, budget_seconds=0.01, seed=0)
    assert trained.report["search"]["rare_classes"] == ["rare"]
    assert trained.predict_proba(vectors[:3], texts[:3]).shape == (3, 5)


# -- the search --------------------------------------------------------------------------


def test_round_one_scores_every_family_even_past_the_budget(support):
    texts, labels, vectors = support
    spec, y = encode_labels(labels)
    result = search_heads(spec, vectors, y, texts, budget_seconds=0.001, seed=0)
    board = result.leaderboard()
    scored = {row["family"] for row in board if row["status"] == "ok"}
    assert {"lexical", "logreg", "hybrid", "mlp", "stacked"} <= scored
    assert result.cut_by_budget is True
    skipped = [row for row in board if row["status"] == "skipped: budget"]
    assert skipped and all(row["cv_score"] is None for row in skipped)
    values = [row["cv_score"] for row in board if row["status"] == "ok"]
    assert values == sorted(values, reverse=True)
    assert board[0]["candidate"] == result.chosen.candidate.name


def test_a_larger_budget_tries_more_candidates(support):
    texts, labels, vectors = support
    spec, y = encode_labels(labels)
    started = time.monotonic()
    result = search_heads(spec, vectors, y, texts, budget_seconds=600, seed=0)
    assert result.cut_by_budget is False
    assert all(item.status == "ok" for item in result.scored), [
        (item.candidate.name, item.status) for item in result.scored
    ]
    assert result.summary()["candidates_tried"] == len(result.scored)
    assert time.monotonic() - started < 600


def test_cancelling_stops_the_search(support):
    texts, labels, vectors = support
    spec, y = encode_labels(labels)
    token = CancelToken()
    token.cancel("client went away")
    with pytest.raises(CancelledError, match="client went away"):
        search_heads(spec, vectors, y, texts, budget_seconds=60, cancel=token)


def test_auto_refuses_options_of_a_named_head(support):
    texts, labels, vectors = support
    from classifier.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="C"):
        train_reported(vectors, labels, texts=texts, C=0.1)


# -- what is saved and served ---------------------------------------------------------------

LOAD_AND_PREDICT = """
import json, sys
import numpy as np
from classifier.artifacts import load_head
head = load_head(sys.argv[1], "h")
texts = json.loads(open(sys.argv[3]).read())
probabilities = head.predict_proba(np.load(sys.argv[2]), texts)
print(json.dumps({
    "sklearn": "sklearn" in sys.modules, "scipy": "scipy" in sys.modules,
    "torch": "torch" in sys.modules, "inputs": list(head.inputs),
    "probabilities": probabilities.tolist(),
}))
"""


def _served(tmp_path, trained, vectors, texts):
    save_head(trained, tmp_path / "models", "h", {"fingerprint": "f" * 16, "dim": vectors.shape[1]})
    np.save(tmp_path / "x.npy", vectors)
    (tmp_path / "t.json").write_text(json.dumps(texts), encoding="utf-8")
    arguments = [str(tmp_path / "models"), str(tmp_path / "x.npy"), str(tmp_path / "t.json")]
    return run_python_json(LOAD_AND_PREDICT, *arguments)


def test_the_auto_head_reports_and_serves_what_it_was_evaluated_with(tmp_path, support):
    texts, labels, vectors = support
    trained = train_reported(vectors, labels, texts=texts, test_size=0.25, budget_seconds=5)
    report = trained.report
    assert report["selection_metric"] == "macro_f1"
    assert report["chosen"]["candidate"] == report["leaderboard"][0]["candidate"]
    baseline = report["baseline"]
    assert baseline["metrics"]["n_rows"] == trained.metrics["n_rows"] == 80
    for key, difference in baseline["head_minus_baseline"].items():
        assert difference == pytest.approx(trained.metrics[key] - baseline["metrics"][key])
    calibration = report["calibration"]
    assert calibration["method"] in ("platt", "isotonic", "none")
    assert sum(b["count"] for b in calibration["reliability"]) == 80
    test_y, probabilities = trained.evaluation
    assert calibration["ece"] == pytest.approx(reliability("multiclass", test_y, probabilities)[0])
    served = _served(tmp_path, trained, vectors[:30], texts[:30])
    assert served["sklearn"] is False and served["torch"] is False and served["scipy"] is False
    np.testing.assert_allclose(
        served["probabilities"], trained.predict_proba(vectors[:30], texts[:30]), atol=1e-5
    )


def test_stack_and_calibrated_models_serve_with_numpy_alone(tmp_path, support):
    """A stack of a lexical and an embedding head, calibrated: saved, loaded in a fresh
    process without scikit-learn, and predicting what it predicted at train time."""
    from classifier.features import make_lexical_head
    from classifier.heads import LogisticHead

    texts, labels, vectors = support
    spec, y = encode_labels(labels)
    members = [
        make_lexical_head(model="svm").fit(None, y, texts=texts),
        LogisticHead().fit(vectors, y),
    ]
    opinions = [
        members[0].predict_proba(None, texts=texts),
        members[1].predict_proba(vectors),
    ]
    weights, bias = fit_meta(spec.task, meta_features(spec.task, opinions), y)
    stack = StackedClassifier(members, spec.task, weights, bias)
    calibrated = CalibratedClassifier(
        stack, fit_calibrator(spec.task, y, stack.predict_proba(vectors, texts), "platt")
    )
    assert calibrated.inputs_ == ("vectors", "texts")
    from classifier.training import TrainedHead

    trained = TrainedHead(calibrated, spec, None, {}, {"head": "test"}, 0.0, len(y))
    served = _served(tmp_path, trained, vectors[:25], texts[:25])
    assert served["inputs"] == ["vectors", "texts"]
    assert served["sklearn"] is False and served["scipy"] is False
    np.testing.assert_allclose(
        served["probabilities"], calibrated.predict_proba(vectors[:25], texts[:25]), atol=1e-5
    )


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"needs the shared datasets at {DATASETS}")
def test_multilabel_auto_selects_by_mean_roc_auc_and_tunes_thresholds(toxic):
    texts, matrix, vectors = toxic
    trained = train_reported(
        vectors, matrix, texts=texts, label_names=TOXIC, test_size=0.3, budget_seconds=5
    )
    assert trained.report["selection_metric"] == "roc_auc_mean"
    assert len(trained.thresholds) == 3
    assert trained.metrics["roc_auc"] > 0.7
    assert "micro_f1" in trained.report["baseline"]["head_minus_baseline"]
    cells = sum(b["count"] for b in trained.report["calibration"]["reliability"])
    assert cells == trained.metrics["n_rows"] * 3


def test_a_named_head_gets_the_baseline_on_its_own_split(support):
    texts, labels, vectors = support
    trained = train_reported(vectors, labels, texts=texts, head="logreg", test_size=0.25, seed=3)
    assert "leaderboard" not in trained.report
    baseline = trained.report["baseline"]
    assert baseline["metrics"]["n_rows"] == trained.metrics["n_rows"]
    assert set(baseline["head_minus_baseline"]) >= {"accuracy", "macro_f1"}
    assert trained.report["calibration"]["method"] == "none"


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["a", "b", "a", "b"], "test_size"),
        (["a", "a", "a", "a"], "only one class"),
    ],
)
def test_data_too_small_or_of_one_class_is_a_training_data_error(support, labels, message):
    from classifier.errors import TrainingDataError

    texts, _, vectors = support
    with pytest.raises(TrainingDataError, match=message):
        train_reported(vectors[:4], labels, texts=texts[:4], test_size=0.2, budget_seconds=1)
