"""`--head auto`: search head families by cross-validation under a time budget, keep the best.

Candidates, in the order they are tried (so a budget cut never drops a whole family):

1. one cheap candidate of EVERY family: a linear SVM on TF-IDF of the texts (lexical),
   logistic regression on the vectors (logreg), the hybrid (the vector beside the
   TF-IDF in one linear SVM) and the mlp (cross-entropy). This round always runs: the
   budget is only checked after it (a CancelToken still stops it);
2. the mlp with focal loss;
3. the grids, interleaved across families so a cut shortens every grid rather than
   dropping the last: the hybrid's vector weight, logreg's C, the lexical C and linear
   model, class-weighted variants when the classes are imbalanced;
4. stacking: a logistic meta-model over the out-of-fold log-odds of the best candidate
   of each family (classifier.stacking), scored by the same folds.

Scoring: stratified k-fold CV on the training rows (k = 5, or 3 from 2,000 rows on when
each held-out fold keeps 50+ rows of the rarest class or label: hundreds of held-out rows
per fold rank candidates as well, at 40 % less cost; fewer when
a class has fewer rows than folds, and such classes are reported). The score is computed
on the pooled out-of-fold probabilities: macro-F1 at the argmax for single-label tasks,
mean ROC-AUC over labels for multi-label ones (per-label thresholds are then tuned on
the winner's out-of-fold probabilities). Each candidate's TF-IDF is fitted inside each
fold (never on held-out texts), once per fold for all candidates (TfidfMemory).

Before the next candidate starts, the search checks its budget and skips a candidate
its family's last CV time says will not fit; one that runs past the budget between
folds is abandoned ("skipped: budget"). The winner (best CV score, then the quicker)
is refit on all training rows; its out-of-fold probabilities also decide, by a second
CV, whether a Platt / isotonic map improves its calibration (classifier.calibration).
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bertheads.cancel import CancelToken, check
from classifier.calibration import (
    CalibratedClassifier,
    choose_method,
    fit_calibrator,
    reliability,
)
from classifier.errors import InvalidParameterError, TrainingDataError
from classifier.tasks import TaskSpec, stratify_key, take_rows

# From this many rows on, 3 folds: each held-out fold still has 650+ rows, enough to rank
# candidates, and the search costs 40 % less than with 5 (the budget buys more of it).
MANY_ROWS = 2000
RARE_PER_FOLD = 50
FOLDS_FEW_ROWS, FOLDS_MANY_ROWS = 5, 3
# Classes this many times rarer than the commonest get class-weighted candidates too.
IMBALANCE_RATIO = 3.0
# The calibration map is kept only if it does not cost the selection score more than this.
SCORE_TOLERANCE = 1e-3
FAMILIES: tuple[str, ...] = ("lexical", "logreg", "hybrid", "mlp")


@dataclass
class Candidate:
    """One configuration to score: how to build it, what it reads, how to name it."""

    name: str
    family: str  # lexical | logreg | hybrid | mlp | stacked
    features: str  # embedding | lexical | hybrid | stack
    params: dict[str, Any]
    build: Callable[[], Any] = field(repr=False)
    inputs: tuple[str, ...] = ("vectors",)
    guaranteed: bool = False  # round 1: runs whatever the budget


@dataclass
class Scored:
    """A candidate's CV outcome; `oof` holds its out-of-fold probabilities."""

    candidate: Candidate
    status: str = "ok"
    cv_score: float | None = None
    cv_std: float | None = None
    fit_seconds: float = 0.0  # mean seconds of one fold's fit
    cv_seconds: float = 0.0  # the whole CV of this candidate
    oof: np.ndarray | None = field(default=None, repr=False)
    members: list["Scored"] = field(default_factory=list, repr=False)  # a stack's

    def row(self) -> dict[str, Any]:
        """The candidate's leaderboard entry."""
        return {
            "candidate": self.candidate.name,
            "family": self.candidate.family,
            "features": self.candidate.features,
            "cv_score": self.cv_score,
            "cv_std": self.cv_std,
            "fit_seconds": round(self.fit_seconds, 4),
            "status": self.status,
        }


@dataclass
class SearchResult:
    """Every candidate tried or skipped, the winner and how the search went."""

    scored: list[Scored]
    chosen: Scored
    selection_metric: str
    folds: list[tuple[np.ndarray, np.ndarray]]
    budget_seconds: float
    seconds: float
    cut_by_budget: bool
    rare_classes: list[str]

    def leaderboard(self) -> list[dict[str, Any]]:
        """Scored candidates best first, then the skipped and failed ones in trial order."""
        ok = [item for item in self.scored if item.status == "ok" and item.cv_score is not None]
        ok.sort(key=lambda item: (-(item.cv_score or 0.0), item.fit_seconds))
        rest = [item for item in self.scored if item not in ok]
        return [item.row() for item in ok + rest]

    def summary(self) -> dict[str, Any]:
        """The `search` metadata block."""
        return {
            "budget_seconds": self.budget_seconds,
            "seconds": round(self.seconds, 3),
            "folds": len(self.folds),
            "candidates_tried": sum(item.status != "skipped: budget" for item in self.scored),
            "cut_by_budget": self.cut_by_budget,
            "rare_classes": self.rare_classes,
        }


# -- the candidates ----------------------------------------------------------------------


def _embedding(name: str, family: str, head: str, seed: int, **params: Any) -> Candidate:
    from classifier.heads import HEADS

    def build() -> Any:
        return HEADS[head](random_state=seed, **params)

    return Candidate(name, family, "embedding", {"head": head, **params}, build)


def _text(name: str, features: str, memory: Any, seed: int, **params: Any) -> Candidate:
    from classifier.features.fitting import make_hybrid_head, make_lexical_head

    maker = make_lexical_head if features == "lexical" else make_hybrid_head
    inputs = ("texts",) if features == "lexical" else ("vectors", "texts")

    def build() -> Any:
        return maker(random_state=seed, memory=memory, **params)

    return Candidate(name, features, features, {"features": features, **params}, build, inputs)


def default_candidates(
    spec: TaskSpec, targets: np.ndarray, *, has_texts: bool, has_vectors: bool, seed: int = 0
) -> list[Candidate]:
    """The search's candidates in trial order (see the module doc)."""
    from classifier.features.fitting import TfidfMemory

    memory = TfidfMemory()
    text = has_texts
    vectors = has_vectors
    first: list[Candidate] = []
    if text:
        first.append(_text("lexical svm C=0.5", "lexical", memory, seed, model="svm", C=0.5))
    if vectors:
        first.append(_embedding("logreg C=0.003", "logreg", "logreg", seed, C=0.003))
    if text and vectors:
        first.append(
            _text("hybrid svm w=1", "hybrid", memory, seed, model="svm", C=0.5, vector_weight=1.0)
        )
    if vectors:
        first.append(_embedding("mlp ce", "mlp", "mlp", seed))
    for candidate in first:
        candidate.guaranteed = True
    then: list[Candidate] = []
    if vectors:
        then.append(_embedding("mlp focal", "mlp", "mlp", seed, loss="focal"))
    # Grids, one row per round: each round gives every family one more candidate.
    hybrid = [0.5, 2.0, 0.25, 4.0]
    logreg = [0.01, 0.001, 0.03, 0.0003, 0.1]
    lexical: list[dict[str, Any]] = [
        {"model": "svm", "C": 0.1},
        {"model": "logreg", "C": 10.0},
        {"model": "svm", "C": 2.0},
    ]
    if _imbalanced(spec, targets):
        lexical.insert(0, {"model": "svm", "C": 0.5, "class_weight": "balanced"})
        logreg.insert(0, 0.003)
    balanced_logreg = _imbalanced(spec, targets)
    for round_number in range(max(len(hybrid), len(logreg), len(lexical))):
        if text and vectors and round_number < len(hybrid):
            weight = hybrid[round_number]
            then.append(
                _text(
                    f"hybrid svm w={weight:g}",
                    "hybrid",
                    memory,
                    seed,
                    model="svm",
                    C=0.5,
                    vector_weight=weight,
                )
            )
        if vectors and round_number < len(logreg):
            C = logreg[round_number]
            weighted = balanced_logreg and round_number == 0
            then.append(
                _embedding(
                    f"logreg C={C:g}" + (" balanced" if weighted else ""),
                    "logreg",
                    "logreg",
                    seed,
                    C=C,
                    **({"class_weight": "balanced"} if weighted else {}),
                )
            )
        if text and round_number < len(lexical):
            params = lexical[round_number]
            suffix = " balanced" if params.get("class_weight") else ""
            then.append(
                _text(
                    f"lexical {params['model']} C={params['C']:g}{suffix}",
                    "lexical",
                    memory,
                    seed,
                    **params,
                )
            )
    return first + then


def _imbalanced(spec: TaskSpec, targets: np.ndarray) -> bool:
    if spec.multilabel:
        return False
    counts = np.bincount(targets, minlength=len(spec.labels))
    return counts.max() >= IMBALANCE_RATIO * max(counts.min(), 1)


# -- folds and scores --------------------------------------------------------------------


def plan_folds(
    spec: TaskSpec, targets: np.ndarray, seed: int, folds: int | None = None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Stratified folds, fewer when a class (label) is rarer than that; the rare ones named."""
    from sklearn.model_selection import StratifiedKFold

    rows = len(targets)
    if spec.multilabel:
        counts = targets.sum(axis=0)
    else:
        counts = np.bincount(targets, minlength=len(spec.labels))
    present = counts[counts > 0]
    smallest = int(present.min()) if len(present) else 0
    # 3 folds only when every held-out fold still holds RARE_PER_FOLD rows of the rarest
    # class (label): its score is what a rare class's few rows make noisy.
    few = rows < MANY_ROWS or smallest < FOLDS_MANY_ROWS * RARE_PER_FOLD
    wanted = folds or (FOLDS_FEW_ROWS if few else FOLDS_MANY_ROWS)
    if wanted < 2:
        raise InvalidParameterError(f"folds: need at least 2, got {wanted}")
    count = max(2, min(wanted, smallest))
    if rows < 2 * count:
        raise TrainingDataError(f"labels: {rows} rows are too few to cross-validate; need 4")
    rare = [str(spec.labels[i]) for i, n in enumerate(counts) if n < count]
    splitter = StratifiedKFold(n_splits=count, shuffle=True, random_state=seed)
    key = stratify_key(targets, min_count=count)
    return [(train, held) for train, held in splitter.split(np.zeros(rows), key)], rare


def score(spec: TaskSpec, targets: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Macro-F1 at the argmax (single-label) or mean ROC-AUC over labels (multi-label)."""
    from sklearn.metrics import f1_score, roc_auc_score

    if spec.multilabel:
        values = [
            roc_auc_score(targets[:, label], probabilities[:, label])
            for label in range(targets.shape[1])
            if targets[:, label].min() != targets[:, label].max()
        ]
        return float(np.mean(values)) if values else None
    predicted = probabilities.argmax(axis=1)
    return float(
        f1_score(
            targets,
            predicted,
            labels=list(range(len(spec.labels))),
            average="macro",
            zero_division=0,
        )
    )


def selection_metric(spec: TaskSpec) -> str:
    """The name of the score `score` computes for this task."""
    return "roc_auc_mean" if spec.multilabel else "macro_f1"


def _fit(estimator: Any, inputs: Sequence[str], X: Any, y: np.ndarray, texts: Any) -> Any:
    if "texts" in inputs:
        return estimator.fit(X if "vectors" in inputs else None, y, texts=texts)
    return estimator.fit(X, y)


def _predict(model: Any, inputs: Sequence[str], X: Any, texts: Any) -> np.ndarray:
    if "texts" in inputs:
        vectors = X if "vectors" in inputs else None
        return np.asarray(model.predict_proba(vectors, texts=texts), dtype=np.float32)
    return np.asarray(model.predict_proba(X), dtype=np.float32)


def _aligned(model: Any, probabilities: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """One column per class of `spec`, whatever classes the fold's training rows had."""
    if spec.multilabel or probabilities.shape[1] == len(spec.labels):
        return probabilities
    full = np.zeros((len(probabilities), len(spec.labels)), dtype=np.float32)
    full[:, np.asarray(model.classes_, dtype=np.int64)] = probabilities
    return full


# -- the search --------------------------------------------------------------------------


class _Clock:
    def __init__(self, budget_seconds: float) -> None:
        self.started = time.monotonic()
        self.budget = budget_seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()


def _cross_validate(
    candidate: Candidate,
    spec: TaskSpec,
    X: np.ndarray | None,
    y: np.ndarray,
    texts: list[str] | None,
    folds: list[tuple[np.ndarray, np.ndarray]],
    clock: _Clock,
    cancel: CancelToken | None,
) -> Scored:
    result = Scored(candidate)
    oof = np.zeros((len(y), len(spec.labels)), dtype=np.float32)
    fold_scores, fit_times = [], []
    started = time.monotonic()
    for number, (train, held) in enumerate(folds):
        check(cancel)
        if number and not candidate.guaranteed and clock.left() <= 0:
            result.status = "skipped: budget"
            result.cv_seconds = time.monotonic() - started
            result.fit_seconds = float(np.mean(fit_times))
            return result
        fit_started = time.perf_counter()
        try:
            model = _fit(
                candidate.build(),
                candidate.inputs,
                take_rows(X, train),
                y[train],
                take_rows(texts, train),
            )
            fit_times.append(time.perf_counter() - fit_started)
            probabilities = _predict(
                model, candidate.inputs, take_rows(X, held), take_rows(texts, held)
            )
        except (ValueError, TrainingDataError) as error:
            # scikit-learn refuses, e.g., a fold with one class of a label: the candidate
            # is out of the running, the search goes on.
            result.status = f"failed: {str(error)[:200]}"
            result.cv_seconds = time.monotonic() - started
            return result
        oof[held] = _aligned(model, probabilities, spec)
        fold_score = score(spec, y[held], oof[held])
        if fold_score is not None:
            fold_scores.append(fold_score)
    result.oof = oof
    result.cv_score = score(spec, y, oof)
    result.cv_std = float(np.std(fold_scores)) if fold_scores else None
    result.fit_seconds = float(np.mean(fit_times))
    result.cv_seconds = time.monotonic() - started
    return result


def _stack(
    members: list[Scored],
    spec: TaskSpec,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
) -> Scored:
    """Score a logistic meta-model on the members' out-of-fold log-odds, same folds."""
    from classifier.stacking import fit_meta, meta_features, meta_probabilities

    started = time.monotonic()
    names = ", ".join(member.candidate.name for member in members)
    candidate = Candidate(
        f"stack({names})",
        "stacked",
        "stack",
        {"members": [member.candidate.name for member in members]},
        build=lambda: None,
        inputs=tuple(
            name
            for name in ("vectors", "texts")
            if any(name in member.candidate.inputs for member in members)
        ),
    )
    features = meta_features(spec.task, [member.oof for member in members])
    oof = np.zeros((len(y), len(spec.labels)), dtype=np.float32)
    fold_scores = []
    for train, held in folds:
        weights, bias = fit_meta(spec.task, features[train], y[train], n_classes=len(spec.labels))
        oof[held] = meta_probabilities(spec.task, features[held], weights, bias)
        fold_score = score(spec, y[held], oof[held])
        if fold_score is not None:
            fold_scores.append(fold_score)
    return Scored(
        candidate,
        cv_score=score(spec, y, oof),
        cv_std=float(np.std(fold_scores)) if fold_scores else None,
        fit_seconds=sum(member.fit_seconds for member in members),
        cv_seconds=time.monotonic() - started,
        oof=oof,
        members=members,
    )


def _best_of_each_family(scored: list[Scored]) -> list[Scored]:
    best: dict[str, Scored] = {}
    for item in scored:
        if item.status != "ok" or item.cv_score is None or item.candidate.family == "stacked":
            continue
        family = item.candidate.family
        if family not in best or item.cv_score > (best[family].cv_score or 0.0):
            best[family] = item
    return [best[family] for family in FAMILIES if family in best]


def search_heads(
    spec: TaskSpec,
    X: np.ndarray | None,
    y: np.ndarray,
    texts: Sequence[str] | None,
    *,
    budget_seconds: float = 60.0,
    seed: int = 0,
    folds: int | None = None,
    cancel: CancelToken | None = None,
    candidates: list[Candidate] | None = None,
    progress: bool = False,
) -> SearchResult:
    """Score the candidates by CV within `budget_seconds` (see the module doc).

    Args:
        spec: The task.
        X: Vectors (n, dim), or None (then only lexical candidates).
        y: Encoded targets: class indices (n,) or a 0/1 matrix (n, L).
        texts: The training texts, or None (then only embedding candidates).
        budget_seconds: Time for rounds 2 onwards to start in.
        seed: Seeds the folds and every candidate.
        folds: Folds wanted (default: 5, or 3 from 2,000 rows on; see plan_folds).
        cancel: Checked before every fit; raises when the train is cancelled.
        candidates: Override the default list (tests).
        progress: Show a tqdm bar.

    """
    if budget_seconds <= 0:
        raise InvalidParameterError(f"budget_seconds: must be > 0, got {budget_seconds}")
    text_rows = None if texts is None else list(texts)
    if X is None and text_rows is None:
        raise InvalidParameterError("auto: needs the vectors, the texts or both")
    clock = _Clock(budget_seconds)
    plan, rare = plan_folds(spec, y, seed, folds)
    if candidates is None:
        candidates = default_candidates(
            spec, y, has_texts=text_rows is not None, has_vectors=X is not None, seed=seed
        )
    scored: list[Scored] = []
    cut = False
    last_cost: dict[str, float] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(candidates) + 1, desc="auto search", unit="candidate")
    for candidate in candidates:
        check(cancel)
        if bar is not None:
            bar.set_postfix_str(candidate.name)
        expected = last_cost.get(candidate.family)
        if not candidate.guaranteed and (
            clock.left() <= 0 or (expected is not None and expected > clock.left())
        ):
            cut = True
            scored.append(Scored(candidate, status="skipped: budget"))
        else:
            outcome = _cross_validate(candidate, spec, X, y, text_rows, plan, clock, cancel)
            cut = cut or outcome.status == "skipped: budget"
            last_cost[candidate.family] = outcome.cv_seconds
            scored.append(outcome)
        if bar is not None:
            bar.update()
    members = _best_of_each_family(scored)
    if len(members) >= 2:
        check(cancel)
        scored.append(_stack(members, spec, y, plan))
    if bar is not None:
        bar.update()
        bar.close()
    ranked = [item for item in scored if item.status == "ok" and item.cv_score is not None]
    if not ranked:
        reasons = "; ".join(f"{item.candidate.name}: {item.status}" for item in scored)
        raise TrainingDataError(f"auto: no candidate could be scored ({reasons})")
    chosen = min(ranked, key=lambda item: (-(item.cv_score or 0.0), item.fit_seconds))
    return SearchResult(
        scored,
        chosen,
        selection_metric(spec),
        plan,
        budget_seconds,
        clock.elapsed(),
        cut,
        rare,
    )


# -- refitting the winner ----------------------------------------------------------------


@dataclass
class Refit:
    """The winner fitted on all rows, ready to save, with what the report needs."""

    estimator: Any
    oof: np.ndarray  # out-of-fold probabilities on the scale the estimator serves
    calibration: dict[str, Any]
    fit_seconds: float
    loss_history: dict[str, Any] | None


def _fit_member(item: Scored, X: Any, y: np.ndarray, texts: Any) -> Any:
    return _fit(item.candidate.build(), item.candidate.inputs, X, y, texts)


def _calibration_choice(
    spec: TaskSpec, y: np.ndarray, oof: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[str, dict[str, Any]]:
    """Platt / isotonic or none, decided by a CV of the map on the out-of-fold scores.

    The map is kept when, on rows it was not fitted on, it lowers the expected
    calibration error without costing the selection score more than SCORE_TOLERANCE.
    """
    method = choose_method(len(y))
    mapped = np.zeros_like(oof)
    try:
        for train, held in folds:
            mapped[held] = fit_calibrator(spec.task, y[train], oof[train], method).transform(
                oof[held]
            )
    except ValueError:
        return "none", {"checked": method, "kept": False}
    before, _ = reliability(spec.task, y, oof)
    after, _ = reliability(spec.task, y, mapped)
    score_before, score_after = score(spec, y, oof), score(spec, y, mapped)
    kept = after < before and (
        score_before is None or score_after is None or score_after >= score_before - SCORE_TOLERANCE
    )
    facts = {
        "checked": method,
        "kept": bool(kept),
        "cv_ece_before": before,
        "cv_ece_after": after,
    }
    return (method if kept else "none"), facts


def refit_chosen(
    result: SearchResult,
    spec: TaskSpec,
    X: np.ndarray | None,
    y: np.ndarray,
    texts: Sequence[str] | None,
    cancel: CancelToken | None = None,
) -> Refit:
    """Fit the chosen candidate on all rows (a stack: its members, then the meta-model)."""
    from classifier.stacking import StackedClassifier, fit_meta, meta_features

    text_rows = None if texts is None else list(texts)
    chosen = result.chosen
    assert chosen.oof is not None
    started = time.perf_counter()
    if chosen.candidate.family == "stacked":
        members = []
        for member in chosen.members:
            check(cancel)
            members.append(_fit_member(member, X, y, text_rows))
        features = meta_features(spec.task, [member.oof for member in chosen.members])
        weights, bias = fit_meta(spec.task, features, y)
        estimator: Any = StackedClassifier(members, spec.task, weights, bias)
        history = None
    else:
        check(cancel)
        estimator = _fit_member(chosen, X, y, text_rows)
        history = getattr(estimator, "loss_history_", None)
    fit_seconds = time.perf_counter() - started
    oof = chosen.oof
    if chosen.candidate.family == "stacked":
        # The meta-model is a logistic map over log-odds: a Platt calibration of the members.
        calibration = {"method": "platt", "checked": "stacked", "kept": True}
    else:
        method, facts = _calibration_choice(spec, y, oof, result.folds)
        calibration = {"method": method, **facts}
        if method != "none":
            calibrator = fit_calibrator(spec.task, y, oof, method)
            estimator = CalibratedClassifier(estimator, calibrator)
            oof = calibrator.transform(oof)
    return Refit(estimator, oof, calibration, fit_seconds, history)
