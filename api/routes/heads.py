"""Head management: list, describe, train, roll back, delete."""

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from api.deps import JsonBody, ReadAccess, StateDep, WriteAccess
from api.errors import InvalidInputError
from api.schemas import RollbackRequest, TrainRequest
from api.train_request import (
    check_label_columns,
    check_labels_match,
    example_rows,
    file_rows,
    head_options,
)
from api.train_slots import run_watched
from bertheads.cancel import CancelToken
from classifier.errors import TrainingDataError

router = APIRouter(tags=["heads"])
HeadName = Annotated[
    str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Head name.")
]


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


@router.post("/heads/{name}/train", dependencies=[JsonBody, WriteAccess])
async def train(name: HeadName, body: TrainRequest, state: StateDep, request: Request) -> dict:
    """Train a new version of `name` on cached embeddings and make it live.

    Limits, in order: the request's shape, MAX_TRAIN_EXAMPLES and MAX_LABELS (422), a free
    slot of MAX_CONCURRENT_TRAINS (429 with Retry-After), TRAIN_TIMEOUT_SECONDS (408). A
    client that disconnects cancels the train; a stopped train saves nothing.
    """
    settings = state.settings
    if (body.examples is None) == (body.file is None):
        raise InvalidInputError("body: give exactly one of 'examples' or 'file'", "examples")
    rows = None
    if body.examples is not None:
        rows = example_rows(body, settings)
        check_labels_match(state.registry.live(name), name, rows, body.replace_labels)
    else:
        check_label_columns(body, settings)
    with state.train_slots.take():
        token = CancelToken(settings.train_timeout_seconds, limit_name="TRAIN_TIMEOUT_SECONDS")
        if rows is None:
            rows = await run_in_threadpool(file_rows, body, settings)
            check_labels_match(state.registry.live(name), name, rows, body.replace_labels)
        options = {
            **head_options(body, settings),
            "test_size": body.test_size,
            "seed": body.seed,
        }
        if body.label_cols and body.file is not None:
            options["label_names"] = body.label_cols
        try:
            return await run_watched(
                request,
                token,
                state.registry.train,
                name,
                rows.texts,
                rows.labels,
                options,
                data_hashes=rows.data_hashes,
                cancel=token,
            )
        except TrainingDataError as error:
            # The classifier knows what is wrong with the data; only the API knows which
            # field it came from.
            message = str(error)
            if not message.startswith(f"{rows.source}:"):
                message = f"{rows.source}: {message}"
            raise InvalidInputError(message, rows.source) from None


@router.post("/heads/{name}/rollback", dependencies=[JsonBody, WriteAccess])
async def rollback(name: HeadName, body: RollbackRequest, state: StateDep) -> dict:
    """Serve the previous version again (`{}`), or the given one (`{"version": N}`).

    The body must be JSON, like train's: a browser page on another site can send a
    text/plain or form POST without asking, but not an application/json one.
    """
    return await run_in_threadpool(state.registry.rollback, name, body.version)


@router.delete("/heads/{name}", dependencies=[WriteAccess])
async def delete(name: HeadName, state: StateDep) -> dict:
    """Take the head out of service (it moves to the head store's trash)."""
    return await run_in_threadpool(state.registry.delete, name)
