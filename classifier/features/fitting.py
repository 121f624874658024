"""Lexical and hybrid heads, fitted with scikit-learn, served by numpy (LinearTextModel).

`LexicalHead`: word 1-2-gram and char_wb 2-5-gram TF-IDF of the texts, one linear model
(logistic regression, or a linear SVM whose decision values get a Platt mapping fitted
on out-of-fold decisions). `HybridHead`: the same, plus the encoder's vector (standardised, rows
scaled to length about `vector_weight`) as more columns of the same linear model.

Both follow the estimator contract of /work/brief/QUALITY-CONTRACT.md:
`fit(X, y, texts=...)`, `predict_proba(X, texts=...)` with columns following `classes_`,
`inputs_`, and `to_state()` giving the numpy serving model (classifier.features.linear).
Predictions at train time already go through that serving model, so what is evaluated
is exactly what /predict serves.
"""

import hashlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sparse
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from classifier.errors import (
    InputShapeError,
    InvalidParameterError,
    PersistError,
    SingleClassError,
    TrainingDataError,
)
from classifier.features.linear import LinearTextModel, vector_block
from classifier.features.text import STRIP_ACCENTS
from classifier.features.tfidf import TfidfBlock, TfidfTransform

MODELS: tuple[str, ...] = ("logreg", "svm")
# C on L2-normalised tf-idf rows: weak regularisation is what text classification needs.
DEFAULT_C: dict[str, float] = {"logreg": 10.0, "svm": 0.5}
# With the vector block beside them, stronger: as good on sst2 (test 0.900 at C=1 against
# 0.894 at C=10, 8k rows, mpnet) and half the solver time.
HYBRID_DEFAULT_C: dict[str, float] = {"logreg": 1.0, "svm": 0.5}
# Below this many texts an n-gram seen once is kept: min_df=2 would leave almost nothing.
SMALL_CORPUS = 200


def check_texts(texts: Sequence[str] | None, rows: int, field: str = "texts") -> list[str]:
    """`texts` as a list of str with one text per row, or InputShapeError naming the field."""
    if texts is None:
        raise InputShapeError(f"{field}: this head reads the texts; none were given")
    texts = list(texts)
    if len(texts) != rows:
        raise InputShapeError(f"{field}: {len(texts)} texts for {rows} rows")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputShapeError(f"{field}[{index}]: {type(text).__name__} is not a string")
    return texts


def _block(
    texts: list[str],
    analyzer: str,
    ngram_range: tuple[int, int],
    min_df: int,
    max_features: int | None,
    strip_accents: str | None,
) -> tuple[TfidfBlock, sparse.csr_matrix]:
    """Fit one scikit-learn vectorizer; its vocabulary and idf become a numpy TfidfBlock."""
    vectorizer = TfidfVectorizer(
        analyzer=analyzer,
        ngram_range=ngram_range,
        min_df=min_df,
        max_features=max_features,
        strip_accents=strip_accents,
        lowercase=True,
        sublinear_tf=True,
        dtype=np.float64,
    )
    try:
        matrix = vectorizer.fit_transform(texts)
    except ValueError:
        # "empty vocabulary": no text has a usable n-gram; the block contributes nothing.
        empty = TfidfBlock(analyzer, ngram_range, [], np.zeros(0), strip_accents=strip_accents)
        return empty, sparse.csr_matrix((len(texts), 0), dtype=np.float64)
    vocabulary = [str(gram) for gram in vectorizer.get_feature_names_out()]
    block = TfidfBlock(
        analyzer, ngram_range, vocabulary, vectorizer.idf_, strip_accents=strip_accents
    )
    return block, sparse.csr_matrix(matrix)


class TfidfMemory:
    """Fitted TF-IDF blocks kept by (texts, settings), like scikit-learn Pipeline's `memory`.

    The head search (classifier.search) fits many lexical and hybrid candidates on the
    same fold's texts; their TF-IDF depends only on the texts and the n-gram settings,
    never on C, the class weights or the vector weight, so one fit per fold serves them
    all. Thread-safe; the key hashes the texts, so a memory is never fooled by a list
    changed in place.
    """

    def __init__(self) -> None:
        self._blocks: dict[tuple[Any, ...], tuple[TfidfBlock, sparse.csr_matrix]] = {}
        self._lock = threading.Lock()

    def block(self, texts: list[str], *settings: Any) -> tuple[TfidfBlock, sparse.csr_matrix]:
        """`_block(texts, *settings)`, fitted once per distinct (texts, settings)."""
        digest = hashlib.blake2b(digest_size=16)
        for text in texts:
            digest.update(text.encode("utf-8", "surrogatepass"))
            digest.update(b"\x00")
        key = (digest.hexdigest(), len(texts), *settings)
        with self._lock:
            found = self._blocks.get(key)
        if found is None:
            found = _block(texts, *settings)
            with self._lock:
                self._blocks[key] = found
        return found


def _platt(decisions: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of a sigmoid fitted to one column of decision values."""
    if len(np.unique(targets)) < 2:
        return 1.0, 0.0
    model = LogisticRegression(C=1e4, max_iter=1000).fit(decisions[:, None], targets)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


class LexicalHead(ClassifierMixin, BaseEstimator):
    """TF-IDF of the texts (word + char_wb n-grams) and a linear model.

    Args:
        model: "logreg" (probabilities as fitted) or "svm" (linear SVM, Platt-mapped on
            out-of-fold decision values).
        C: Inverse regularisation; None: 10 for logreg, 0.5 for svm (hybrid: 1 and 0.5).
        class_weight: None or "balanced".
        word_ngrams: Word n-gram range, or None for no word block.
        char_ngrams: char_wb n-gram range, or None for no character block.
        min_df: Documents an n-gram must appear in (1 for fewer than 200 texts).
        max_word_features, max_char_features: Vocabulary caps (most frequent kept), which
            bound the saved head: about 8 bytes per n-gram plus 4 per n-gram and column.
        strip_accents: None or "unicode".
        calibration_folds: Folds of the out-of-fold decisions the SVM's Platt map is fit on.
        max_iter: Solver iterations.
        random_state: Seed.
        memory: A TfidfMemory shared by heads fitted on the same texts (the search's
            folds), or None to fit the TF-IDF every time.

    """

    inputs_: tuple[str, ...] = ("texts",)
    persist_kind = LinearTextModel.persist_kind

    def __init__(
        self,
        model: str = "logreg",
        C: float | None = None,
        class_weight: str | None = None,
        word_ngrams: tuple[int, int] | None = (1, 2),
        char_ngrams: tuple[int, int] | None = (2, 5),
        min_df: int = 2,
        max_word_features: int | None = 50_000,
        max_char_features: int | None = 100_000,
        strip_accents: str | None = "unicode",
        calibration_folds: int = 3,
        max_iter: int = 2000,
        random_state: int = 0,
        memory: TfidfMemory | None = None,
    ) -> None:
        self.model = model
        self.C = C
        self.class_weight = class_weight
        self.word_ngrams = word_ngrams
        self.char_ngrams = char_ngrams
        self.min_df = min_df
        self.max_word_features = max_word_features
        self.max_char_features = max_char_features
        self.strip_accents = strip_accents
        self.calibration_folds = calibration_folds
        self.max_iter = max_iter
        self.random_state = random_state
        self.memory = memory

    # -- checks ----------------------------------------------------------------------

    def _check_options(self) -> None:
        if self.model not in MODELS:
            raise InvalidParameterError(f"model: {self.model!r} is not one of {list(MODELS)}")
        if self.C is not None and not self.C > 0:
            raise InvalidParameterError(f"C: must be > 0, got {self.C}")
        if self.class_weight not in (None, "balanced"):
            raise InvalidParameterError(
                f"class_weight: {self.class_weight!r} is not None or 'balanced'"
            )
        if self.word_ngrams is None and self.char_ngrams is None:
            raise InvalidParameterError("word_ngrams, char_ngrams: at least one must be set")
        for name in ("word_ngrams", "char_ngrams"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or not 1 <= value[0] <= value[1] <= 8):
                raise InvalidParameterError(
                    f"{name}: {value!r} is not (low, high), 1<=low<=high<=8"
                )
        if self.min_df < 1:
            raise InvalidParameterError(f"min_df: must be >= 1, got {self.min_df}")
        if self.strip_accents not in STRIP_ACCENTS:
            raise InvalidParameterError(
                f"strip_accents: {self.strip_accents!r} is not one of {list(STRIP_ACCENTS)}"
            )
        if self.calibration_folds < 2:
            raise InvalidParameterError(
                f"calibration_folds: need at least 2, got {self.calibration_folds}"
            )

    def _targets(self, y: Any) -> np.ndarray:
        y = np.asarray(y)
        self.multilabel_ = y.ndim == 2
        if self.multilabel_:
            self.classes_ = np.arange(y.shape[1])
            self.task_ = "multilabel"
            return y.astype(np.int64)
        self.classes_, targets = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise SingleClassError(f"y: only one class ({self.classes_[0]!r}); need at least 2")
        self.task_ = "binary" if len(self.classes_) == 2 else "multiclass"
        return targets

    # -- fitting ---------------------------------------------------------------------

    def _vector_block(self, X: np.ndarray | None, rows: int) -> sparse.csr_matrix | None:
        return None

    def fit(
        self, X: np.ndarray | None, y: Any, texts: Sequence[str] | None = None
    ) -> "LexicalHead":
        """Fit the TF-IDF vocabulary and the linear model; returns self."""
        started = time.perf_counter()
        self._check_options()
        targets = self._targets(y)
        texts = check_texts(texts, len(targets))
        vectors_part = self._vector_block(X, len(targets))
        min_df = self.min_df if len(texts) >= SMALL_CORPUS else 1
        blocks, matrices = [], []
        for analyzer, ngrams, cap in (
            ("word", self.word_ngrams, self.max_word_features),
            ("char_wb", self.char_ngrams, self.max_char_features),
        ):
            if ngrams is not None:
                fit_block = _block if self.memory is None else self.memory.block
                block, matrix = fit_block(
                    texts, analyzer, tuple(ngrams), min_df, cap, self.strip_accents
                )
                blocks.append(block)
                matrices.append(matrix)
        lexical = sparse.hstack(matrices, format="csr")
        empty = np.flatnonzero(lexical.getnnz(axis=1) == 0)
        if lexical.shape[1] == 0 and vectors_part is None:
            raise TrainingDataError(
                "texts: no text has a usable token (no word or character n-gram is in enough "
                "texts); a lexical head needs some"
            )
        features = (
            lexical if vectors_part is None else sparse.hstack([vectors_part, lexical], "csr")
        )
        weight, bias, slope, intercept, output = self._fit_linear(features, targets)
        dim = 0 if vectors_part is None else vectors_part.shape[1]
        self.serving_ = LinearTextModel(
            TfidfTransform(blocks),
            weight[dim:],
            bias,
            output,
            self.classes_.tolist(),
            slope,
            intercept,
            vector_weight=self._vector_weight(),
            vector_matrix=weight[:dim] if vectors_part is not None else None,
            vector_mean=getattr(self, "vector_mean_", None),
            vector_scale=getattr(self, "vector_scale_", None),
        )
        self.n_features_in_ = dim or None
        self.lexical_report_ = {
            "vocabulary": int(lexical.shape[1]),
            "min_df": min_df,
            "texts_without_tokens": len(empty),
            "rows_without_tokens": empty[:20].tolist(),
            # Per block: a text of punctuation or one-letter words has no word n-gram
            # but may still have character n-grams.
            "texts_without_tokens_by_block": {
                block.analyzer: int((matrix.getnnz(axis=1) == 0).sum())
                for block, matrix in zip(blocks, matrices, strict=True)
            },
        }
        self.texts_without_tokens_ = len(empty)
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def _vector_weight(self) -> float:
        return 0.0

    def _default_C(self) -> float:
        return DEFAULT_C[self.model]

    def _linear(self) -> Any:
        C = self.C if self.C is not None else self._default_C()
        if self.model == "svm":
            return LinearSVC(
                C=C,
                class_weight=self.class_weight,
                max_iter=self.max_iter,
                random_state=self.random_state,
            )
        return LogisticRegression(
            C=C,
            class_weight=self.class_weight,
            max_iter=self.max_iter,
            random_state=self.random_state,
            # Dual liblinear: 3.5x faster than the primal on tf-idf (more columns than rows).
            solver="liblinear" if self.task_ != "multiclass" else "lbfgs",
            dual=self.task_ != "multiclass",
        )

    def _fit_linear(
        self, features: sparse.csr_matrix, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
        """(weight (d, scores), bias, slope, intercept, output) of the fitted linear model."""
        if self.multilabel_:
            columns = [
                self._fit_binary(features, targets[:, label]) for label in range(targets.shape[1])
            ]
            weight = np.concatenate([column[0] for column in columns], axis=1)
            stacked = [np.concatenate([column[k] for column in columns]) for k in (1, 2, 3)]
            return weight, *stacked, "sigmoid"
        if self.task_ == "binary":
            return (*self._fit_binary(features, targets), "binary")
        if self.model == "logreg":
            fitted = self._linear().fit(features, targets)
            ones = np.ones(len(self.classes_), np.float32)
            return (
                np.asarray(fitted.coef_, np.float32).T.copy(),
                np.asarray(fitted.intercept_, np.float32),
                ones,
                np.zeros_like(ones),
                "softmax",
            )
        # One-vs-rest SVM: per class, its own decision column and Platt map.
        columns = [
            self._fit_binary(features, (targets == index).astype(np.int64))
            for index in range(len(self.classes_))
        ]
        weight = np.concatenate([column[0] for column in columns], axis=1)
        stacked = [np.concatenate([column[k] for column in columns]) for k in (1, 2, 3)]
        return weight, *stacked, "normalized_sigmoid"

    def _fit_binary(
        self, features: sparse.csr_matrix, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One score column: (weight (d, 1), bias (1,), slope (1,), intercept (1,))."""
        width = features.shape[1]
        positives = int(targets.sum())
        if positives in (0, len(targets)):
            # A label always on or off in these rows (a CV fold): a constant probability.
            rate = min(max(positives / len(targets), 1e-4), 1 - 1e-4)
            bias = np.array([np.log(rate / (1 - rate))], np.float32)
            return (
                np.zeros((width, 1), np.float32),
                bias,
                np.ones(1, np.float32),
                np.zeros(1, np.float32),
            )
        fitted = self._linear().fit(features, targets)
        weight = np.asarray(fitted.coef_, np.float32).reshape(width, 1)
        bias = np.asarray(fitted.intercept_, np.float32).reshape(1)
        slope, intercept = 1.0, 0.0
        if self.model == "svm":
            slope, intercept = _platt(self._out_of_fold(features, targets), targets)
        return weight, bias, np.array([slope], np.float32), np.array([intercept], np.float32)

    def _out_of_fold(self, features: sparse.csr_matrix, targets: np.ndarray) -> np.ndarray:
        """Decision values of each row from a model that did not see it."""
        smallest = int(np.bincount(targets).min())
        folds = min(self.calibration_folds, smallest)
        if folds < 2:
            # Too few of one class to hold any out: the in-sample decisions.
            return self._linear().fit(features, targets).decision_function(features)
        decisions = np.zeros(len(targets), dtype=np.float64)
        splitter = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
        for train_rows, test_rows in splitter.split(np.zeros(len(targets)), targets):
            model = self._linear().fit(features[train_rows], targets[train_rows])
            decisions[test_rows] = model.decision_function(features[test_rows])
        return decisions

    # -- predicting (through the numpy serving model) -----------------------------------

    def _serving(self) -> LinearTextModel:
        if not hasattr(self, "serving_"):
            raise PersistError(f"{type(self).__name__}: fit it first")
        return self.serving_

    def decision_function(
        self, X: np.ndarray | None, texts: Sequence[str] | None = None
    ) -> np.ndarray:
        """Raw linear scores (n, n_scores), before the probability mapping."""
        serving = self._serving()
        rows = len(texts) if texts is not None else 0
        return serving.decision_function(X, check_texts(texts, rows))

    def predict_proba(self, X: np.ndarray | None, texts: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities (n, len(classes_)), float32; the numpy serving model computes them."""
        serving = self._serving()
        rows = len(texts) if texts is not None else 0
        return serving.predict_proba(X, check_texts(texts, rows))

    def predict(self, X: np.ndarray | None, texts: Sequence[str] | None = None) -> np.ndarray:
        """Class labels (n,), or a 0/1 matrix (n, L) at 0.5 for multi-label."""
        probabilities = self.predict_proba(X, texts)
        if self.multilabel_:
            return (probabilities >= 0.5).astype(np.int64)
        return self.classes_[probabilities.argmax(axis=1)]

    def score(self, X: np.ndarray | None, y: Any, texts: Sequence[str] | None = None) -> float:
        """Accuracy (exact match for multi-label)."""
        predicted = self.predict(X, texts)
        truth = np.asarray(y)
        if self.multilabel_:
            return float((predicted == truth).all(axis=1).mean())
        return float((predicted == truth).mean())

    # -- persistence -----------------------------------------------------------------

    def to_serving(self) -> LinearTextModel:
        """The numpy-only model /predict serves."""
        return self._serving()

    def to_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The serving model's state (see classifier.persist)."""
        return self._serving().to_state()


class HybridHead(LexicalHead):
    """LexicalHead plus the encoder's vector as more columns of the same linear model.

    Args:
        vector_weight: Length of the standardised vector block's rows against the tf-idf
            blocks (each of unit length); one C for all, so a larger weight regularises
            the vector's coefficients less and trusts the encoder more.
        **others: As LexicalHead.

    """

    inputs_: tuple[str, ...] = ("vectors", "texts")

    def __init__(
        self,
        vector_weight: float = 1.0,
        model: str = "logreg",
        C: float | None = None,
        class_weight: str | None = None,
        word_ngrams: tuple[int, int] | None = (1, 2),
        char_ngrams: tuple[int, int] | None = (2, 5),
        min_df: int = 2,
        max_word_features: int | None = 50_000,
        max_char_features: int | None = 100_000,
        strip_accents: str | None = "unicode",
        calibration_folds: int = 3,
        max_iter: int = 2000,
        random_state: int = 0,
        memory: TfidfMemory | None = None,
    ) -> None:
        super().__init__(
            model=model,
            C=C,
            class_weight=class_weight,
            word_ngrams=word_ngrams,
            char_ngrams=char_ngrams,
            min_df=min_df,
            max_word_features=max_word_features,
            max_char_features=max_char_features,
            strip_accents=strip_accents,
            calibration_folds=calibration_folds,
            max_iter=max_iter,
            random_state=random_state,
            memory=memory,
        )
        self.vector_weight = vector_weight

    def _check_options(self) -> None:
        super()._check_options()
        if not self.vector_weight > 0:
            raise InvalidParameterError(f"vector_weight: must be > 0, got {self.vector_weight}")

    def _vector_weight(self) -> float:
        return float(self.vector_weight)

    def _default_C(self) -> float:
        return HYBRID_DEFAULT_C[self.model]

    def _vector_block(self, X: np.ndarray | None, rows: int) -> sparse.csr_matrix:
        if X is None:
            raise InputShapeError("X: a hybrid head reads the encoder's vectors; none were given")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) != rows:
            raise InputShapeError(f"X: need ({rows}, dim) vectors, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise InputShapeError("X: vectors hold NaN or Inf")
        self.vector_mean_ = X.mean(axis=0)
        self.vector_scale_ = X.std(axis=0) + 1e-6
        block = vector_block(X, self.vector_mean_, self.vector_scale_, float(self.vector_weight))
        return sparse.csr_matrix(block)


def make_lexical_head(**params: Any) -> LexicalHead:
    """An unfitted LexicalHead (parameters as its constructor; unknown ones refused)."""
    return LexicalHead(**_known(LexicalHead, params))


def make_hybrid_head(vector_weight: float = 1.0, **params: Any) -> HybridHead:
    """An unfitted HybridHead with the vector block scaled by `vector_weight`."""
    return HybridHead(vector_weight=vector_weight, **_known(HybridHead, params))


def _known(estimator_class: type, params: dict[str, Any]) -> dict[str, Any]:
    valid = estimator_class().get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise InvalidParameterError(
            f"{estimator_class.__name__}: unknown parameters {unknown}; valid: {sorted(valid)}"
        )
    return params


TEXT_MODELS: tuple[str, ...] = MODELS


def build_text_head(
    features: str,
    head: str = "logreg",
    *,
    loss: str = "ce",
    gamma: float | None = None,
    alpha: Any = None,
    resample: str = "none",
    **params: Any,
) -> LexicalHead:
    """A lexical or hybrid head from train_head's options (classifier.training.build_head).

    `head` names the linear model ("logreg" or "svm"); the options only embedding heads
    have (focal loss, alpha, resampling) are refused by name rather than ignored.
    """
    del gamma  # only read with loss="focal", which is refused below
    if head not in TEXT_MODELS:
        raise InvalidParameterError(
            f"head: {head!r} reads only vectors; with features={features!r} use one of "
            f"{list(TEXT_MODELS)}"
        )
    if loss != "ce":
        raise InvalidParameterError(
            f"loss: {loss!r} is for embedding heads; {features} heads use 'ce'"
        )
    if alpha is not None:
        raise InvalidParameterError(f"alpha: only for focal loss, not for {features} heads")
    if resample != "none":
        raise InvalidParameterError(
            f"resample: {resample!r} is for embedding heads; use class_weight='balanced' "
            f"with {features} heads"
        )
    if features == "lexical":
        return make_lexical_head(model=head, **params)
    if features == "hybrid":
        return make_hybrid_head(model=head, **params)
    raise InvalidParameterError(f"features: {features!r} is not 'lexical' or 'hybrid'")
