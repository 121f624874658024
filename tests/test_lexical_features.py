"""Lexical features: numpy TF-IDF equals scikit-learn's, heads fit / save / load / predict.

Real texts from the shared datasets (unicode, accents, emoji, markup) where they exist;
no mocks. The hate_speech checks train on a slice and bound the test accuracy loosely.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from classifier import persist
from classifier.artifacts import load_head, save_head
from classifier.errors import (
    CorruptHeadError,
    InputShapeError,
    InvalidParameterError,
    SingleClassError,
    TrainingDataError,
)
from classifier.features import LinearTextModel, TfidfTransform, make_hybrid_head, make_lexical_head
from classifier.features.fitting import _block
from classifier.features.text import char_wb_ngrams, word_ngrams
from classifier.training import build_head, cross_validate_head, train_head
from tests.conftest import DATASETS, run_python_json

needs_datasets = pytest.mark.skipif(
    not DATASETS.is_dir(), reason=f"the shared datasets are not at {DATASETS}"
)
ENCODER = {"fingerprint": "f" * 16, "dim": 8, "model": "test"}
# Hand-made texts that exercise every branch of the analyzers: accents, combining marks,
# ligatures, CJK, emoji, tabs and runs of whitespace, one-letter words, empty texts.
ODD_TEXTS = [
    "Café crème, naïve façade — déjà vu!",
    "e\u0301le\u0300ve  \t  Ångström ﬁnance ½",
    "東京 タワー is tall 🗼🗼 and ÉNORME",
    "a b c d e f",
    "   ",
    "",
    "!!! ??? ...",
    "Straße STRASSE strasse İstanbul ǅ",
    "line one\nline two\r\nline three",
    "x" * 300,
]


def read(path: Path, rows: int | None = None) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        data = list(csv.DictReader(handle))[:rows]
    return [row["text"] for row in data], [row["label"] for row in data]


def corpus() -> list[str]:
    texts = list(ODD_TEXTS)
    if DATASETS.is_dir():
        texts += read(DATASETS / "hate_speech" / "train.csv", 400)[0]
        toxic = DATASETS / "toxic" / "train.csv"
        with toxic.open(encoding="utf-8", newline="") as handle:
            texts += [row["text"] for row in list(csv.DictReader(handle))[:300]]
        texts += read(DATASETS / "sst2" / "train.csv", 300)[0]
    return texts


# -- the numpy transform is scikit-learn's -----------------------------------------------


@pytest.mark.parametrize("strip_accents", [None, "unicode"])
@pytest.mark.parametrize(
    ("analyzer", "ngram_range"), [("word", (1, 2)), ("word", (2, 3)), ("char_wb", (2, 5))]
)
def test_analyzers_produce_scikit_learns_ngrams(analyzer, ngram_range, strip_accents):
    vectorizer = TfidfVectorizer(
        analyzer=analyzer, ngram_range=ngram_range, strip_accents=strip_accents
    )
    analyze = vectorizer.build_analyzer()
    ours = word_ngrams if analyzer == "word" else char_wb_ngrams
    block, _ = _block(corpus(), analyzer, ngram_range, 1, None, strip_accents)
    for text in corpus():
        assert block.analyze(text) == analyze(text), text
    # The module functions on preprocessed text: the same list, in the same order.
    assert ours("ab cd", *ngram_range) == analyze("ab cd")


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"needs the shared datasets at {DATASETS}")
@pytest.mark.parametrize("strip_accents", [None, "unicode"])
def test_numpy_transform_equals_scikit_learn_on_real_texts(strip_accents):
    texts = corpus()
    fit_texts, new_texts = texts[::2], texts[1::2] + ODD_TEXTS
    blocks, expected = [], []
    for analyzer, ngram_range, cap in (("word", (1, 2), 5000), ("char_wb", (2, 5), 20000)):
        block, _ = _block(fit_texts, analyzer, ngram_range, 2, cap, strip_accents)
        blocks.append(block)
        reference = TfidfVectorizer(
            analyzer=analyzer,
            ngram_range=ngram_range,
            min_df=2,
            max_features=cap,
            strip_accents=strip_accents,
            sublinear_tf=True,
        ).fit(fit_texts)
        assert list(reference.get_feature_names_out()) == block.vocabulary
        expected.append(reference.transform(new_texts).toarray())
    rows = TfidfTransform(blocks).transform(new_texts)
    np.testing.assert_allclose(rows.dense(), np.hstack(expected), atol=1e-6, rtol=0)
    assert rows.dense().any(axis=1).sum() > len(new_texts) // 2  # not trivially all zero
    # Texts with nothing in the vocabulary are the empty rows.
    empty = set(rows.empty_rows().tolist())
    assert empty == {i for i, row in enumerate(np.hstack(expected)) if not row.any()}
    assert {new_texts.index(""), new_texts.index("   ")} <= empty


# -- heads: fit, predict, save, load ----------------------------------------------------------


def small_data(rows: int = 90) -> tuple[np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(0)
    good = ["great café, lovely staff", "really good food", "superb naïve charm", "loved it"]
    bad = ["awful service", "terrible cold food", "worst café ever", "hated it"]
    texts, labels = [], []
    for index in range(rows):
        positive = index % 2 == 0
        texts.append((good if positive else bad)[index % 4] + f" visit {index}")
        labels.append("pos" if positive else "neg")
    X = rng.normal(size=(rows, ENCODER["dim"])).astype(np.float32)
    X[:, 0] += np.where(np.array(labels) == "pos", 2.0, -2.0)
    return X, texts, labels


HEADS = {
    "lexical-logreg": lambda: make_lexical_head(),
    "lexical-svm": lambda: make_lexical_head(model="svm"),
    "hybrid-logreg": lambda: make_hybrid_head(0.5),
    "hybrid-svm": lambda: make_hybrid_head(2.0, model="svm", class_weight="balanced"),
}


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_heads_fit_predict_and_round_trip_byte_equal(name, task):
    X, texts, labels = small_data()
    y: object = labels
    if task == "multiclass":
        y = [f"phrase{index % 4}" for index in range(len(labels))]
    if task == "multilabel":
        y = np.array([[label == "pos", index % 4 == 1] for index, label in enumerate(labels)], int)
    head = HEADS[name]().fit(X, y, texts=texts)
    probabilities = head.predict_proba(X, texts=texts)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(texts), len(head.classes_))
    if task != "multilabel":
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
        assert (head.predict(X, texts) == np.asarray(y)).mean() > 0.9
    else:
        assert ((probabilities[:, 0] > 0.5) == (np.asarray(y)[:, 0] == 1)).mean() > 0.9
    tree, arrays = persist.dump(head)
    json.dumps(tree)  # JSON all the way
    loaded = persist.load(tree, arrays)
    assert isinstance(loaded, LinearTextModel)
    assert loaded.inputs_ == head.inputs_
    assert loaded.predict_proba(X, texts=texts).tobytes() == probabilities.tobytes()


def test_a_lexical_head_reads_no_vectors_and_a_hybrid_needs_both():
    X, texts, labels = small_data()
    lexical = make_lexical_head().fit(None, labels, texts=texts)
    assert lexical.inputs_ == ("texts",)
    assert lexical.predict_proba(None, texts[:3]).shape == (3, 2)
    hybrid = make_hybrid_head().fit(X, labels, texts=texts)
    assert hybrid.inputs_ == ("vectors", "texts")
    with pytest.raises(InputShapeError, match="vectors"):
        make_hybrid_head().fit(None, labels, texts=texts)
    with pytest.raises(InputShapeError, match="texts"):
        make_lexical_head().fit(X, labels)
    with pytest.raises(InputShapeError, match="texts: 3 texts for 90 rows"):
        make_lexical_head().fit(None, labels, texts=texts[:3])
    with pytest.raises(InputShapeError, match="X"):
        hybrid.predict_proba(X[:2], texts[:3])
    with pytest.raises(InputShapeError, match="texts"):
        hybrid.predict_proba(X[:2], None)


def test_the_vector_weight_moves_the_hybrid_toward_the_vector():
    """Labels the texts cannot tell apart: only the vector block can carry them."""
    X, _, labels = small_data(200)
    texts = ["same words every time"] * len(labels)
    weak = make_hybrid_head(0.05).fit(X, labels, texts=texts)
    strong = make_hybrid_head(4.0).fit(X, labels, texts=texts)
    truth = np.asarray(labels)
    assert (strong.predict(X, texts) == truth).mean() > 0.9
    assert (strong.predict(X, texts) == truth).mean() > (weak.predict(X, texts) == truth).mean()
    lexical = make_lexical_head().fit(None, labels, texts=texts)
    assert (lexical.predict(None, texts) == truth).mean() == pytest.approx(0.5)


def test_bad_parameters_and_data_are_refused_by_name():
    X, texts, labels = small_data()
    for params, field in (
        ({"model": "tree"}, "model"),
        ({"C": 0}, "C"),
        ({"class_weight": "auto"}, "class_weight"),
        ({"word_ngrams": None, "char_ngrams": None}, "word_ngrams"),
        ({"min_df": 0}, "min_df"),
        ({"strip_accents": "ascii"}, "strip_accents"),
    ):
        with pytest.raises(InvalidParameterError, match=field):
            make_lexical_head(**params).fit(None, labels, texts=texts)
    with pytest.raises(InvalidParameterError, match="unknown parameters"):
        make_lexical_head(hidden_sizes=(3,))
    with pytest.raises(InvalidParameterError, match="vector_weight"):
        make_hybrid_head(0).fit(X, labels, texts=texts)
    with pytest.raises(SingleClassError):
        make_lexical_head().fit(None, ["a"] * len(texts), texts=texts)
    with pytest.raises(TrainingDataError, match="no text has a usable token"):
        make_lexical_head().fit(None, ["a", "b"] * 3, texts=["", " ", "\t", "\n", "  ", ""])
    with pytest.raises(InvalidParameterError, match=r"mlp.*reads only vectors"):
        build_head("mlp", features="lexical")
    with pytest.raises(InvalidParameterError, match="features: 'bag' is not one of"):
        build_head("logreg", features="bag")
    with pytest.raises(InvalidParameterError, match="loss"):
        build_head("logreg", features="hybrid", loss="focal")
    with pytest.raises(InvalidParameterError, match="resample"):
        build_head("svm", features="lexical", resample="over")


def test_texts_without_tokens_are_counted_and_still_trained_on_through_the_vector():
    X, texts, labels = small_data()
    blank = [3, 10, 41]
    for row in blank:
        texts[row] = "" if row != 10 else " \t\n "
    trained = train_head(X, labels, texts=texts, features="hybrid", test_size=0, vector_weight=2.0)
    report = trained.metrics["lexical"]
    assert report["texts_without_tokens"] == 3 and report["rows_without_tokens"] == blank
    assert report["texts_without_tokens_by_block"] == {"word": 3, "char_wb": 3}
    texts[20] = "( b ) "  # a real sst2 text: no word token, but character n-grams
    again = train_head(X, labels, texts=texts, features="hybrid", test_size=0)
    assert again.metrics["lexical"]["texts_without_tokens_by_block"] == {"word": 4, "char_wb": 3}
    assert again.metrics["lexical"]["texts_without_tokens"] == 3
    assert trained.n_train == len(labels)
    # Their prediction comes from the vector, not a constant prior.
    probabilities = trained.predict_proba(X[blank], [texts[row] for row in blank])
    predicted = np.asarray(trained.spec.labels)[probabilities.argmax(axis=1)]
    assert list(predicted) == [labels[row] for row in blank]
    split = train_head(X, labels, texts=texts, features="lexical")
    assert "test_texts_without_tokens" in split.metrics["lexical"]
    assert split.params["features"] == "lexical"


def test_cross_validation_and_thresholds_pass_the_texts_along():
    X, texts, labels = small_data(120)
    trained, summary = cross_validate_head(None, labels, 3, texts=texts, features="lexical")
    assert summary["accuracy"]["mean"] > 0.9 and len(summary["folds"]) == 3
    assert trained.evaluation[1].shape == (120, 2)
    tuned = train_head(X, labels, texts=texts, features="hybrid", tune_threshold=True)
    assert tuned.thresholds is not None and len(tuned.thresholds) == 1


def test_a_saved_lexical_head_loads_back_byte_equal_and_refuses_a_corrupt_vocabulary(tmp_path):
    X, texts, labels = small_data()
    trained = train_head(X, labels, texts=texts, features="hybrid", test_size=0)
    record = save_head(trained, tmp_path / "models", "h", ENCODER)
    loaded = load_head(tmp_path / "models", "h")
    assert loaded.inputs == ("vectors", "texts") and loaded.needs_texts
    assert record.metadata["features"] == "hybrid"
    expected = trained.predict_proba(X, texts)
    assert loaded.predict_proba(X, texts).tobytes() == expected.tobytes()
    assert [p["label"] for p in loaded.predict(X[:2], texts[:2])] == labels[:2]
    # A vocabulary whose offsets run past its bytes: refused, never half-loaded.
    tree, arrays = persist.dump(trained.estimator)
    key = next(name for name in arrays if name.endswith(".offsets"))
    arrays[key] = arrays[key].copy()
    arrays[key][-1] += 5
    with pytest.raises(CorruptHeadError):
        persist.load(tree, arrays)


def test_the_saved_head_stays_small():
    if not DATASETS.is_dir():
        pytest.skip("needs the shared datasets")
    texts, labels = read(DATASETS / "sst2" / "train.csv", 6000)
    head = make_lexical_head().fit(None, labels, texts=texts)
    _, arrays = persist.dump(head)
    size = sum(array.nbytes for array in arrays.values())
    assert size < 4_000_000, size


# -- serving imports neither scikit-learn nor torch ----------------------------------------

LOAD_AND_PREDICT = """
import json, sys
import numpy as np
from classifier.artifacts import load_head
head = load_head(sys.argv[1], "h")
texts = json.loads(sys.argv[3])
vectors = np.load(sys.argv[2]) if head.needs_vectors else None
probabilities = head.predict_proba(vectors, texts)
print(json.dumps({
    "torch": "torch" in sys.modules,
    "sklearn": "sklearn" in sys.modules,
    "scipy": "scipy" in sys.modules,
    "probabilities": probabilities.tolist(),
}))
"""


@pytest.mark.parametrize("features", ["lexical", "hybrid"])
def test_loading_and_predicting_a_text_head_imports_neither_torch_nor_sklearn(tmp_path, features):
    X, texts, labels = small_data()
    trained = train_head(X, labels, texts=texts, features=features, head="svm", test_size=0)
    save_head(trained, tmp_path / "models", "h", ENCODER)
    np.save(tmp_path / "x.npy", X[:20])
    arguments = [str(tmp_path / "models"), str(tmp_path / "x.npy"), json.dumps(texts[:20])]
    report = run_python_json(LOAD_AND_PREDICT, *arguments)
    assert report["torch"] is False and report["sklearn"] is False, report
    assert report["scipy"] is False, report
    np.testing.assert_array_equal(
        np.asarray(report["probabilities"], np.float32), trained.predict_proba(X[:20], texts[:20])
    )


# -- they learn on real data ------------------------------------------------------------------


@needs_datasets
@pytest.mark.parametrize("features", ["lexical", "hybrid"])
def test_text_heads_learn_hate_speech(features, minilm):
    """500 training rows, 239 test rows (balanced): chance is 0.5; TF-IDF alone gets ~0.67."""
    train_texts, train_labels = read(DATASETS / "hate_speech" / "train.csv", 500)
    test_texts, test_labels = read(DATASETS / "hate_speech" / "test.csv")
    test_texts, test_labels = test_texts[::2], test_labels[::2]
    X = test_X = None
    if features == "hybrid":
        X, test_X = minilm.encode(train_texts), minilm.encode(test_texts)
    trained = train_head(
        X,
        train_labels,
        texts=train_texts,
        test_vectors=test_X,
        test_labels=test_labels,
        test_texts=test_texts,
        features=features,
    )
    assert trained.metrics["accuracy"] > (0.62 if features == "lexical" else 0.70)
    assert trained.metrics["lexical"]["vocabulary"] > 1000


def test_a_lexical_head_serves_under_any_encoder_a_hybrid_only_under_its_own(tmp_path):
    from classifier.errors import FingerprintMismatchError

    X, texts, labels = small_data()
    for features in ("lexical", "hybrid"):
        trained = train_head(X, labels, texts=texts, features=features, test_size=0)
        save_head(trained, tmp_path / "models", features, ENCODER)
    lexical = load_head(tmp_path / "models", "lexical", expected_fingerprint="another")
    assert not lexical.needs_vectors
    assert [p["label"] for p in lexical.predict(None, texts[:2])] == labels[:2]
    with pytest.raises(FingerprintMismatchError):
        load_head(tmp_path / "models", "hybrid", expected_fingerprint="another")
