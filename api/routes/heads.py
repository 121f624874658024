"""Head management: list, describe, train, roll back, delete."""

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from api.deps import JsonBody, ReadAccess, StateDep, WriteAccess
from api.errors import InvalidInputError
from api.schemas import RollbackRequest, TrainRequest
from api.validation import checked_texts
from classifier.data import file_sha256, read_labelled
from classifier.errors import TrainingDataError

router = APIRouter(tags=["heads"])
HeadName = Annotated[
    str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Head name.")
]
MAX_TRAIN_EXAMPLES = 200_000


@router.get("/heads", dependencies=[ReadAccess])
async def list_heads(state: StateDep) -> dict:
    """Every head in the head store, live or not (store reads run off the event loop)."""
    registry = state.registry
    heads = await run_in_threadpool(registry.summaries)
    default = registry.default_head if registry.default_head in registry.names() else None
    store = "up" if registry.store_error is None else "down"
    return {"heads": heads, "default_head": default, "head_store": store}


@router.get("/heads/{name}", dependencies=[ReadAccess])
async def describe_head(name: HeadName, state: StateDep) -> dict:
    """One head: live version, all versions with their metadata."""
    return await run_in_threadpool(state.registry.describe, name)


def _examples_to_rows(body: TrainRequest) -> tuple[list[str], Any, dict[str, str]]:
    examples = body.examples or []
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
        return texts, [list(example.labels or []) for example in examples], {}
    return texts, [str(example.label) for example in examples], {}


def _file_to_rows(body: TrainRequest, root: Path | None) -> tuple[list[str], Any, dict[str, str]]:
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
    except (OSError, ValueError):  # NUL bytes, over-long names
        raise outside from None
    try:
        texts, labels = read_labelled(path, body.text_col, body.label_col, body.label_cols)
    except TrainingDataError as error:
        # The reader names the absolute path; the client should see only its own file name.
        message = str(error).replace(str(path), f"file {body.file!r}")
        raise InvalidInputError(message, "file") from None
    if body.label_cols:
        # 0/1 columns become label lists, the same form inline examples use.
        labels = [
            [name for name, on in zip(body.label_cols, row, strict=True) if on] for row in labels
        ]
    return texts, labels, {path.name: file_sha256(path)}


def _check_labels_match(state: StateDep, name: str, labels: Any, allow_new: bool) -> None:
    live = state.registry.live(name)
    if live is None or allow_new:
        return
    multilabel = bool(labels) and isinstance(labels[0], list)
    given = sorted({item for row in labels for item in row}) if multilabel else sorted(set(labels))
    expected = sorted(str(label) for label in live.metadata["labels"])
    if (live.metadata["task"] == "multilabel") != multilabel or not set(given) <= set(expected):
        raise InvalidInputError(
            f"labels: head {name!r} predicts {expected} ({live.metadata['task']}); the data has "
            f"{given}. Send matching labels, or set replace_labels=true to change them",
            "labels",
        )


@router.post("/heads/{name}/train", dependencies=[JsonBody, WriteAccess])
async def train(name: HeadName, body: TrainRequest, state: StateDep) -> dict:
    """Train a new version of `name` on cached embeddings and make it live."""
    settings = state.settings
    if (body.examples is None) == (body.file is None):
        raise InvalidInputError("body: give exactly one of 'examples' or 'file'", "examples")
    if body.examples is not None:
        texts, labels, hashes = _examples_to_rows(body)
    else:
        texts, labels, hashes = await run_in_threadpool(
            _file_to_rows, body, settings.train_data_dir
        )
    checked_texts(
        texts,
        max_batch=MAX_TRAIN_EXAMPLES,
        max_chars=settings.max_text_chars,
        field="examples" if body.examples is not None else "file",
    )
    _check_labels_match(state, name, labels, body.replace_labels)
    options = {
        "head": body.head,
        "loss": body.loss,
        "gamma": body.gamma,
        "alpha": body.alpha,
        "class_weight": body.class_weight,
        "resample": body.resample,
        "test_size": body.test_size,
        "seed": body.seed,
    }
    if body.label_cols and body.file is not None:
        options["label_names"] = body.label_cols
    try:
        return await run_in_threadpool(
            state.registry.train, name, texts, labels, options, data_hashes=hashes
        )
    except TrainingDataError as error:
        # The classifier knows what is wrong with the data; only the API knows which field it
        # came from.
        source = "examples" if body.examples is not None else "file"
        message = str(error)
        message = message if message.startswith(f"{source}:") else f"{source}: {message}"
        raise InvalidInputError(message, source) from None


@router.post("/heads/{name}/rollback", dependencies=[WriteAccess])
async def rollback(name: HeadName, state: StateDep, body: RollbackRequest | None = None) -> dict:
    """Serve the previous version again, or the given one."""
    version = body.version if body else None
    return await run_in_threadpool(state.registry.rollback, name, version)


@router.delete("/heads/{name}", dependencies=[WriteAccess])
async def delete(name: HeadName, state: StateDep) -> dict:
    """Take the head out of service (it moves to the head store's trash)."""
    return await run_in_threadpool(state.registry.delete, name)
