"""One train as the CLI and the API run it: split, head, baseline, calibration.

The head is the auto search or a named head; the TF-IDF baseline is fitted on the same
split; everything the report shows is gathered here.

`train_reported` returns a classifier.training.TrainedHead whose `report` holds the
metadata blocks of /work/brief/METADATA.md: selection_metric, chosen, features,
leaderboard, search (auto only), baseline and calibration (every run).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertheads.cancel import CancelToken, check
from classifier.errors import InputShapeError, InvalidParameterError, TrainingDataError
from classifier.tasks import TaskSpec, encode_labels, take_rows
from classifier.training import TrainedHead, _encode_like, holdout_rows, train_head

AUTO = "auto"
BLAS_THREADS = 1


def train_reported(
    vectors: np.ndarray | None,
    labels: Sequence[Any] | np.ndarray,
    *,
    texts: Sequence[str] | None,
    label_names: Sequence[str] | None = None,
    test_vectors: np.ndarray | None = None,
    test_texts: Sequence[str] | None = None,
    test_labels: Sequence[Any] | np.ndarray | None = None,
    test_size: float = 0.2,
    head: str = AUTO,
    budget_seconds: float = 60.0,
    folds: int | None = None,
    seed: int = 0,
    tune_threshold: bool | None = None,
    cancel: CancelToken | None = None,
    progress: bool = False,
    **head_options: Any,
) -> TrainedHead:
    """Train `head` ("auto" searches, see classifier.search) and report it against the baseline.

    Args:
        vectors: Training vectors (n, dim), or None (lexical heads only).
        labels: Class labels, label lists or a 0/1 matrix (classifier.tasks).
        texts: The training texts (the baseline and the lexical and hybrid candidates
            need them; without them the report has no baseline).
        label_names: Names of a multi-label matrix's columns.
        test_vectors: Vectors of explicit held-out rows.
        test_texts: Their texts.
        test_labels: Their labels; without them `test_size` of the training rows are
            split off (stratified).
        test_size: Share held out when no test rows are given; 0 holds out none.
        head: "auto", or a head train_head knows ("logreg", "mlp", "svm").
        budget_seconds: The auto search's budget.
        folds: CV folds of the auto search (default: classifier.search's rule).
        seed: Seeds splits, folds and every fit.
        tune_threshold: Binary tasks may opt in; multi-label always tunes.
        cancel: Checked between fits.
        progress: tqdm bars (the CLI).
        **head_options: Options of a named head (loss, C, features, ...); none for auto.

    """
    from threadpoolctl import threadpool_limits

    # Many small fits: BLAS threads cost more in hand-offs than they save, and on a
    # shared 2-core machine they spin against other work (a 1-feature Platt fit took
    # 0.2 s with 2 threads under load, 1 ms with one).
    with threadpool_limits(limits=BLAS_THREADS):
        if head != AUTO:
            trained = train_head(
                vectors,
                labels,
                label_names=label_names,
                test_vectors=test_vectors,
                test_labels=test_labels,
                test_texts=test_texts,
                test_size=test_size,
                texts=texts,
                head=head,
                seed=seed,
                tune_threshold=tune_threshold,
                **head_options,
            )
            check(cancel)
            _attach_baseline_and_calibration(
                trained,
                labels,
                label_names,
                texts,
                test_texts,
                test_labels,
                test_size,
                seed,
                cancel,
            )
            method = "platt" if getattr(trained.estimator, "model", None) == "svm" else "none"
            _set_calibration_method(trained, method)
            trained.report["features"] = trained.params.get("features", "embedding")
            return trained
        unknown = sorted(key for key, value in head_options.items() if value is not None)
        if unknown:
            raise InvalidParameterError(
                f"head 'auto' chooses its own options; {unknown} are for a named head "
                "(logreg, mlp, svm)"
            )
        return _train_auto(
            vectors,
            labels,
            texts=texts,
            label_names=label_names,
            test_vectors=test_vectors,
            test_texts=test_texts,
            test_labels=test_labels,
            test_size=test_size,
            budget_seconds=budget_seconds,
            folds=folds,
            seed=seed,
            tune_threshold=tune_threshold,
            cancel=cancel,
            progress=progress,
        )


def _checked_inputs(
    vectors: np.ndarray | None, texts: Sequence[str] | None, rows: int, field: str
) -> tuple[np.ndarray | None, list[str] | None]:
    X = None
    if vectors is not None:
        X = np.asarray(vectors, dtype=np.float32)
        if X.ndim != 2 or len(X) != rows:
            raise InputShapeError(f"{field}vectors: need ({rows}, dim), got shape {X.shape}")
    text_rows = None
    if texts is not None:
        text_rows = list(texts)
        if len(text_rows) != rows:
            raise InputShapeError(f"{field}texts: {len(text_rows)} texts for {rows} rows")
    return X, text_rows


def _train_auto(
    vectors: np.ndarray | None,
    labels: Any,
    *,
    texts: Sequence[str] | None,
    label_names: Sequence[str] | None,
    test_vectors: np.ndarray | None,
    test_texts: Sequence[str] | None,
    test_labels: Any,
    test_size: float,
    budget_seconds: float,
    folds: int | None,
    seed: int,
    tune_threshold: bool | None,
    cancel: CancelToken | None,
    progress: bool,
) -> TrainedHead:
    from classifier.metrics import evaluate, tune_thresholds
    from classifier.search import refit_chosen, search_heads

    spec, y = encode_labels(labels, label_names)
    X, text_rows = _checked_inputs(vectors, texts, len(y), "")
    tune = spec.multilabel if tune_threshold is None else tune_threshold
    if tune and spec.task == "multiclass":
        raise InvalidParameterError("tune_threshold: only for binary or multi-label tasks")
    test_X, test_rows_texts, test_y = None, None, None
    if test_labels is not None:
        test_y = _encode_like(spec, test_labels, label_names)
        test_X, test_rows_texts = _checked_inputs(test_vectors, test_texts, len(test_y), "test_")
        if (X is not None and test_X is None) or (
            text_rows is not None and test_rows_texts is None
        ):
            raise InputShapeError(
                "test rows: give the same inputs (vectors, texts) as for training"
            )
    elif test_size > 0:
        train, held = holdout_rows(y, test_size, seed)
        X, test_X = take_rows(X, train), take_rows(X, held)
        text_rows, test_rows_texts = take_rows(text_rows, train), take_rows(text_rows, held)
        y, test_y = y[train], y[held]
    try:
        result = search_heads(
            spec,
            X,
            y,
            text_rows,
            budget_seconds=budget_seconds,
            seed=seed,
            folds=folds,
            cancel=cancel,
            progress=progress,
        )
        refit = refit_chosen(result, spec, X, y, text_rows, cancel)
    except ValueError as error:
        raise TrainingDataError(f"cannot train on this data: {error}") from None
    thresholds = None
    if tune:
        truth = y if spec.multilabel else (y == 1).astype(int)[:, None]
        thresholds = tune_thresholds(truth, refit.oof if spec.multilabel else refit.oof[:, 1:])
    if test_y is not None:
        from classifier.calibration import predict_with

        probabilities = predict_with(refit.estimator, test_X, test_rows_texts)
        metrics = evaluate(spec, test_y, probabilities, thresholds)
        evaluation = (test_y, probabilities)
    else:
        # No held-out rows: the chosen candidate's out-of-fold predictions, which the
        # choice itself has seen (a little optimistic; said so in the metrics).
        metrics = evaluate(spec, y, refit.oof, thresholds)
        metrics["evaluated_on"] = (
            f"{len(result.folds)}-fold out-of-fold predictions of the chosen candidate"
        )
        evaluation = (y, refit.oof)
    metrics["fit_seconds"] = refit.fit_seconds
    lexical = _lexical_report(refit.estimator, test_rows_texts if test_y is not None else None)
    if lexical is not None:
        metrics["lexical"] = lexical
    chosen = result.chosen
    trained = TrainedHead(
        estimator=refit.estimator,
        spec=spec,
        thresholds=thresholds,
        metrics=metrics,
        params={"head": AUTO, "chosen": chosen.candidate.name, **chosen.candidate.params},
        fit_seconds=refit.fit_seconds,
        n_train=len(y),
        loss_history=refit.loss_history,
        evaluation=evaluation,
    )
    trained.report.update(
        {
            "selection_metric": result.selection_metric,
            "chosen": {
                "candidate": chosen.candidate.name,
                "family": chosen.candidate.family,
                "features": chosen.candidate.features,
                "cv_score": chosen.cv_score,
                "cv_std": chosen.cv_std,
                "params": chosen.candidate.params,
            },
            "features": chosen.candidate.features,
            "leaderboard": result.leaderboard(),
            "search": result.summary(),
        }
    )
    check(cancel)
    if test_y is not None and text_rows is not None:
        _baseline(trained, spec, y, text_rows, test_rows_texts, test_y, tune, seed)
    elif text_rows is None:
        trained.report["baseline"] = {"name": None, "metrics": {}, "skipped": "no texts"}
    else:
        trained.report["baseline"] = {"name": None, "metrics": {}, "skipped": "no held-out rows"}
    _calibration(trained, refit.oof, y, refit.calibration)
    return trained


def _lexical_report(estimator: Any, test_texts: list[str] | None) -> dict[str, Any] | None:
    """Vocabulary and texts without usable tokens of the chosen model's lexical part."""
    from classifier.training import lexical_report

    parts = [estimator, getattr(estimator, "base_", None), *getattr(estimator, "members_", [])]
    for part in parts:
        if part is not None and hasattr(part, "lexical_report_"):
            return lexical_report(part, test_texts)
    return None


def _baseline(
    trained: TrainedHead,
    spec: TaskSpec,
    y: np.ndarray,
    texts: list[str],
    test_texts: list[str],
    test_y: np.ndarray,
    tune: bool,
    seed: int,
) -> None:
    from classifier.baseline import compare, fit_baseline

    baseline = fit_baseline(texts, y, spec, test_texts, test_y, tune_threshold=tune, seed=seed)
    trained.report["baseline"] = compare(trained.metrics, baseline)


def _calibration(
    trained: TrainedHead, oof: np.ndarray | None, y: np.ndarray | None, facts: dict[str, Any]
) -> None:
    from classifier.calibration import calibration_report

    method = facts.get("method", "none")
    if trained.evaluation is not None:
        report = calibration_report(trained.spec.task, *trained.evaluation, method)
        report["measured_on"] = trained.metrics.get("evaluated_on", "held-out rows")
    elif oof is not None and y is not None:
        report = calibration_report(trained.spec.task, y, oof, method)
        report["measured_on"] = "out-of-fold predictions of the training rows"
    else:
        report = {"method": method, "ece": None, "reliability": []}
    report.update({key: value for key, value in facts.items() if key != "method"})
    trained.report["calibration"] = report


def _set_calibration_method(trained: TrainedHead, method: str) -> None:
    calibration = trained.report.get("calibration")
    if calibration is not None:
        calibration["method"] = method


def _attach_baseline_and_calibration(
    trained: TrainedHead,
    labels: Any,
    label_names: Sequence[str] | None,
    texts: Sequence[str] | None,
    test_texts: Sequence[str] | None,
    test_labels: Any,
    test_size: float,
    seed: int,
    cancel: CancelToken | None,
) -> None:
    """Baseline and calibration of a named head, on the split train_head made."""
    spec, y = encode_labels(labels, label_names)
    tune = trained.thresholds is not None
    if texts is None:
        trained.report["baseline"] = {"name": None, "metrics": {}, "skipped": "no texts"}
    elif test_labels is not None and test_texts is not None:
        test_y = _encode_like(spec, test_labels, label_names)
        _baseline(trained, spec, y, list(texts), list(test_texts), test_y, tune, seed)
    elif test_labels is None and test_size > 0:
        train, held = holdout_rows(y, test_size, seed)
        text_rows = list(texts)
        _baseline(
            trained,
            spec,
            y[train],
            take_rows(text_rows, train),
            take_rows(text_rows, held),
            y[held],
            tune,
            seed,
        )
    else:
        trained.report["baseline"] = {"name": None, "metrics": {}, "skipped": "no held-out rows"}
    check(cancel)
    _calibration(trained, None, None, {"method": "none"})
