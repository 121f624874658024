"""POST /predict."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.deps import JsonBody, ReadAccess, StateDep
from api.schemas import PredictRequest, PredictResponse
from api.validation import checked_texts
from api.vectors import finite_embeddings

router = APIRouter(tags=["heads"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    dependencies=[JsonBody, ReadAccess],
)
async def predict(body: PredictRequest, state: StateDep) -> dict:
    """Classify texts with a head (default: the server's default head)."""
    settings = state.settings
    texts = checked_texts(
        body.texts, max_batch=settings.max_batch, max_chars=settings.max_text_chars, field="texts"
    )
    # Take the head object once: a swap during this request cannot change what answers it.
    head = state.registry.get(body.head)
    result = await run_in_threadpool(
        finite_embeddings, state.service, texts, field="texts", count_truncated=False
    )
    state.metrics.texts.labels("cache").inc(result.cached)
    state.metrics.texts.labels("encoder").inc(len(texts) - result.cached)
    return {"head": head.name, "version": head.version, "predictions": head.predict(result.vectors)}
