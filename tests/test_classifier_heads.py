import numpy as np
import pytest
from sklearn.base import clone

from classifier import (
    InvalidParameterError,
    LogisticHead,
    MLPHead,
    SingleClassError,
    train_head,
)
from classifier.resampling import resample_indices

FAST_MLP = {"hidden_sizes": (32,), "max_epochs": 40, "learning_rate": 3e-3, "dropout": 0.2}


def blobs(n: int = 300, dim: int = 24, classes: int = 2, seed: int = 0):
    """Gaussian clusters, one per class, with some overlap."""
    generator = np.random.default_rng(seed)
    centres = generator.normal(scale=1.5, size=(classes, dim))
    y = generator.integers(0, classes, size=n)
    X = (centres[y] + generator.normal(size=(n, dim))).astype(np.float32)
    return X, np.array([f"class{label}" for label in y])


@pytest.mark.parametrize(
    "head",
    [
        LogisticHead(C=0.5, loss="focal", gamma=1.0, alpha=0.3, resample="over"),
        MLPHead(hidden_sizes=(16, 8), dropout=0.1, class_weight="balanced", random_state=3),
    ],
)
def test_heads_follow_scikit_learn_conventions(head):
    params = head.get_params()
    copy = clone(head)
    assert copy.get_params() == params and copy is not head
    assert not any(name.endswith("_") for name in vars(copy))  # __init__ only stores
    X, y = blobs(120, 8)
    fitted = copy.set_params(max_epochs=30, learning_rate=1e-2).fit(X, y)
    assert fitted is copy
    probabilities = fitted.predict_proba(X)
    assert probabilities.shape == (120, 2) and probabilities.dtype == np.float32
    assert list(fitted.classes_) == ["class0", "class1"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    # Column j is the probability of classes_[j].
    assert np.mean(fitted.classes_[probabilities.argmax(axis=1)] == y) > 0.8


@pytest.mark.parametrize(
    ("head", "options"),
    [("logreg", {}), ("logreg", {"loss": "focal"}), ("mlp", {"loss": "focal", **FAST_MLP})],
)
def test_binary_and_multiclass_train_and_predict(head, options):
    for classes in (2, 4):
        X, y = blobs(400, 16, classes, seed=classes)
        trained = train_head(X, y, head=head, test_size=0.25, **options)
        assert trained.spec.task == ("binary" if classes == 2 else "multiclass")
        assert trained.metrics["n_rows"] == 100 and trained.n_train == 300
        assert trained.metrics["accuracy"] > 1.5 / classes
        assert trained.metrics["roc_auc"] > 0.8
        assert set(trained.metrics["per_class"]) == set(trained.spec.labels)
        assert np.asarray(trained.metrics["confusion_matrix"]).sum() == 100
        assert trained.thresholds is None


@pytest.mark.parametrize("head", ["logreg", "mlp"])
def test_multilabel_trains_tunes_thresholds_and_predicts(head):
    generator = np.random.default_rng(5)
    X = generator.normal(size=(500, 12)).astype(np.float32)
    Y = np.column_stack([X[:, 0] > 0.8, X[:, 1] > 1.5, X[:, 2] + X[:, 3] > 0]).astype(int)
    options = FAST_MLP if head == "mlp" else {}
    trained = train_head(X, Y, label_names=["a", "b", "c"], head=head, **options)
    assert trained.spec.task == "multilabel" and trained.spec.labels == ("a", "b", "c")
    assert len(trained.thresholds) == 3 and all(0 < cut < 1 for cut in trained.thresholds)
    assert trained.metrics["roc_auc"] > 0.9
    assert trained.metrics["per_class"]["b"]["threshold"] == trained.thresholds[1]
    assert trained.predict_indices(X[:5]).shape == (5, 3)
    # Label lists are the same task as the 0/1 matrix.
    lists = [[name for name, on in zip("abc", row, strict=True) if on] for row in Y]
    again = train_head(X, lists, label_names=["a", "b", "c"], head=head, **options)
    assert again.metrics["roc_auc"] == pytest.approx(trained.metrics["roc_auc"])


def test_resampling_changes_training_rows_only():
    X, y = blobs(400, 8, 2, seed=1)
    y = np.where(np.arange(400) % 5 == 0, "rare", "common")  # 80 rare, 320 common
    test_X, test_y = X[:100], y[:100]
    for method in ("none", "over", "under"):
        trained = train_head(
            X[100:], y[100:], test_vectors=test_X, test_labels=test_y, resample=method
        )
        support = {name: scores["support"] for name, scores in trained.metrics["per_class"].items()}
        assert support == {"common": 80, "rare": 20}
        assert trained.metrics["n_rows"] == 100
    targets = (y[100:] == "rare").astype(int)
    over = resample_indices(targets, "over", seed=0)
    under = resample_indices(targets, "under", seed=0)
    assert np.bincount(targets[over]).tolist() == [240, 240]
    assert np.bincount(targets[under]).tolist() == [60, 60]
    assert over.max() < 300 and set(under) <= set(range(300))  # indices of training rows only
    # Inside the MLP the early-stopping split happens before resampling.
    head = MLPHead(resample="over", max_epochs=5, hidden_sizes=(8,)).fit(X[100:], y[100:])
    assert head.loss_history_["validation"]


def test_class_weight_and_focal_alpha_help_the_rare_class():
    X, y = blobs(1200, 16, 2, seed=7)
    keep = (y == "class0") | (np.arange(1200) % 10 == 0)
    X, y = X[keep], y[keep]
    plain = train_head(X, y, test_size=0.3, C=0.01)
    weighted = train_head(X, y, test_size=0.3, C=0.01, class_weight="balanced")
    rare = "class1"
    assert (
        weighted.metrics["per_class"][rare]["recall"] >= plain.metrics["per_class"][rare]["recall"]
    )


def test_bad_options_and_data_are_named_errors():
    X, y = blobs(60, 4)
    with pytest.raises(InvalidParameterError, match="head"):
        train_head(X, y, head="forest")
    with pytest.raises(InvalidParameterError, match="resample"):
        train_head(X, y, resample="smote")
    with pytest.raises(InvalidParameterError, match="alpha"):
        train_head(X, y, alpha=0.25)  # alpha only with focal
    with pytest.raises(InvalidParameterError, match="unknown parameters"):
        train_head(X, y, hidden_layers=3)
    with pytest.raises(SingleClassError, match="one class"):
        train_head(X, ["same"] * 60)
