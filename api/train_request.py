"""A train request's data, from inline examples or a server-side file, checked against limits.

Everything here runs before a train takes its slot or embeds a text: the number of
examples (MAX_TRAIN_EXAMPLES), the distinct labels (MAX_LABELS), each text, and whether
the labels fit the head already serving.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.errors import InvalidInputError
from api.schemas import TrainRequest
from api.validation import checked_texts
from bertheads.settings import Settings
from classifier.data import file_sha256, read_labelled
from classifier.errors import TooManyRowsError, TrainingDataError


@dataclass
class TrainingRows:
    """Texts and labels (class names, or label lists) with where they came from."""

    texts: list[str]
    labels: list[Any]
    source: str  # "examples" or "file": the request field errors are reported against
    data_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        """True when each row holds a list of labels."""
        return bool(self.labels) and isinstance(self.labels[0], list)

    def distinct_labels(self) -> set[str]:
        """Every class (or label) name the rows use."""
        if self.multilabel:
            return {name for row in self.labels for name in row}
        return set(self.labels)


def _too_many_examples(where: str, count: str, limit: int) -> InvalidInputError:
    return InvalidInputError(
        f"{where}: {count} examples, the limit is {limit} per train request "
        "(MAX_TRAIN_EXAMPLES); train on a sample, or raise the limit",
        where.split()[0],
    )


def _check_rows(rows: TrainingRows, settings: Settings) -> TrainingRows:
    # The count is checked before this (it bounds the work of the checks themselves).
    checked_texts(
        rows.texts,
        max_batch=max(len(rows.texts), 1),
        max_chars=settings.max_text_chars,
        field=rows.source,
    )
    distinct = len(rows.distinct_labels())
    if distinct > settings.max_labels:
        raise InvalidInputError(
            f"{rows.source}: {distinct} distinct labels, the limit is {settings.max_labels} per "
            "head (MAX_LABELS)",
            rows.source,
        )
    return rows


def example_rows(body: TrainRequest, settings: Settings) -> TrainingRows:
    """The inline examples as rows, after every check that needs no model."""
    examples = body.examples or []
    if len(examples) > settings.max_train_examples:
        raise _too_many_examples("examples", str(len(examples)), settings.max_train_examples)
    single = [example.label is not None for example in examples]
    multi = [example.labels is not None for example in examples]
    for index in range(len(examples)):
        if single[index] == multi[index]:
            raise InvalidInputError(
                f"examples[{index}]: give exactly one of 'label' (one class) or 'labels' "
                "(multi-label)",
                f"examples[{index}]",
            )
    if any(single) and any(multi):
        raise InvalidInputError(
            "examples: mix of 'label' and 'labels'; a head is either single- or multi-label",
            "examples",
        )
    texts = [example.text for example in examples]
    if any(multi):
        labels: list[Any] = [list(example.labels or []) for example in examples]
    else:
        labels = [str(example.label) for example in examples]
    return _check_rows(TrainingRows(texts, labels, "examples"), settings)


def check_label_columns(body: TrainRequest, settings: Settings) -> None:
    """Multi-label columns of a file count against MAX_LABELS before the file is read."""
    if body.label_cols and len(body.label_cols) > settings.max_labels:
        raise InvalidInputError(
            f"label_cols: {len(body.label_cols)} labels, the limit is {settings.max_labels} per "
            "head (MAX_LABELS)",
            "label_cols",
        )


def file_rows(body: TrainRequest, settings: Settings) -> TrainingRows:
    """Rows of the file named in the request, read from TRAIN_DATA_DIR (blocking: run in a thread).

    The file's rows are read only up to MAX_TRAIN_EXAMPLES + 1.
    """
    root: Path | None = settings.train_data_dir
    if root is None:
        raise InvalidInputError(
            "file: server-side training files are disabled; set TRAIN_DATA_DIR or send 'examples'",
            "file",
        )
    base = root.resolve()
    outside = InvalidInputError(f"file: {body.file!r} is not a file inside TRAIN_DATA_DIR", "file")
    try:
        path = (base / str(body.file)).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            raise outside
    except (OSError, ValueError):  # NUL bytes, lone surrogates, over-long names
        raise outside from None
    try:
        texts, labels = read_labelled(
            path,
            body.text_col,
            body.label_col,
            body.label_cols,
            max_rows=settings.max_train_examples,
        )
    except TooManyRowsError as error:
        limit = error.limit
        raise _too_many_examples(f"file {body.file!r}", f"more than {limit}", limit) from None
    except TrainingDataError as error:
        # The reader names the absolute path; the client should see only its own file name.
        message = str(error).replace(str(path), f"file {body.file!r}")
        raise InvalidInputError(message, "file") from None
    if body.label_cols:
        # 0/1 columns become label lists, the same form inline examples use.
        labels = [
            [name for name, on in zip(body.label_cols, row, strict=True) if on] for row in labels
        ]
    rows = TrainingRows(texts, list(labels), "file", {path.name: file_sha256(path)})
    return _check_rows(rows, settings)


def check_labels_match(live: Any, name: str, rows: TrainingRows, allow_new: bool) -> None:
    """Refuse labels unlike those of the head serving now, unless `replace_labels` is set."""
    if live is None or allow_new:
        return
    given = sorted(rows.distinct_labels())
    expected = sorted(str(label) for label in live.metadata["labels"])
    task = live.metadata["task"]
    if (task == "multilabel") != rows.multilabel or not set(given) <= set(expected):
        raise InvalidInputError(
            f"labels: head {name!r} predicts {expected} ({task}); the data has {given}. "
            "Send matching labels, or set replace_labels=true to change them",
            "labels",
        )


def feature_options(body: TrainRequest) -> dict[str, Any]:
    """The train options of `features` (and `vector_weight`), checked against `head`.

    Embedding heads keep the options of today; "svm" and `vector_weight` only make sense
    with the features that use them, so a mismatch is a 422 naming the field.
    """
    if body.features == "embedding":
        if body.head == "svm":
            raise InvalidInputError(
                "head: 'svm' needs features 'lexical' or 'hybrid'; embedding heads are "
                "'logreg' or 'mlp'",
                "head",
            )
        if body.vector_weight is not None:
            raise InvalidInputError("vector_weight: only for features 'hybrid'", "vector_weight")
        return {}
    if body.head == "mlp":
        raise InvalidInputError(
            f"head: 'mlp' reads only vectors; with features {body.features!r} use 'logreg' or "
            "'svm'",
            "head",
        )
    for name, default in (("loss", "ce"), ("resample", "none"), ("alpha", None)):
        if getattr(body, name) != default:
            raise InvalidInputError(
                f"{name}: only for embedding heads; features {body.features!r} takes "
                "class_weight='balanced' for imbalanced classes",
                name,
            )
    options: dict[str, Any] = {"features": body.features}
    if body.vector_weight is not None:
        if body.features != "hybrid":
            raise InvalidInputError("vector_weight: only for features 'hybrid'", "vector_weight")
        options["vector_weight"] = body.vector_weight
    return options


# Options a named head takes and the auto search chooses itself.
HEAD_ONLY_FIELDS: tuple[str, ...] = (
    "loss",
    "gamma",
    "alpha",
    "class_weight",
    "resample",
    "features",
    "vector_weight",
)


def head_options(body: TrainRequest, settings: Settings) -> dict[str, Any]:
    """The head's train options: the auto search's budget, or a named head's options.

    No head: "auto", or "logreg" when an option only a named head takes is sent (what
    such a request trained before auto existed). An option of a named head sent with
    head "auto" is a 422 naming it rather than being ignored; so is a budget sent with a
    named head, or one that cannot end before TRAIN_TIMEOUT_SECONDS. Without one, the
    budget is TRAIN_BUDGET_SECONDS, or half of TRAIN_TIMEOUT_SECONDS when that is less.
    """
    given = [name for name in HEAD_ONLY_FIELDS if name in body.model_fields_set]
    head = body.head or ("logreg" if given else "auto")
    if head != "auto":
        body = body.model_copy(update={"head": head})
        if body.budget_seconds is not None:
            raise InvalidInputError(
                "budget_seconds: only for head 'auto' (the search's time budget)",
                "budget_seconds",
            )
        return {
            "head": head,
            "loss": body.loss,
            "gamma": body.gamma,
            "alpha": body.alpha,
            "class_weight": body.class_weight,
            "resample": body.resample,
            **feature_options(body),
        }
    if given:
        raise InvalidInputError(
            f"{given[0]}: only for a named head (logreg, mlp, svm); head 'auto' searches "
            "the families and their options itself",
            given[0],
        )
    if body.budget_seconds is None:
        # The server's own default never makes a train fail: half the time limit at most
        # leaves the rest for the refit, the baseline and saving.
        budget = min(settings.train_budget_seconds, settings.train_timeout_seconds / 2)
        return {"head": "auto", "budget_seconds": budget}
    budget = body.budget_seconds
    if budget >= settings.train_timeout_seconds:
        raise InvalidInputError(
            f"budget_seconds: {budget:g} s does not leave time to refit and save within "
            f"TRAIN_TIMEOUT_SECONDS ({settings.train_timeout_seconds:g} s)",
            "budget_seconds",
        )
    return {"head": "auto", "budget_seconds": budget}
