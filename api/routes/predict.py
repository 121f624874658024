"""POST /predict."""

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.deps import AppState, JsonBody, ReadAccess, StateDep
from api.schemas import PredictRequest, PredictResponse
from api.validation import checked_texts
from api.vectors import finite_embeddings
from classifier.loaded import LoadedHead

router = APIRouter(tags=["heads"])
# Below this many characters a lexical head's TF-IDF takes well under a millisecond:
# computing it on the event loop costs less than a hop to the thread pool.
INLINE_TEXT_CHARS = 2_000


def _embed_and_predict(state: AppState, head: LoadedHead, texts: list[str]) -> list[dict[str, Any]]:
    """Vectors only for heads that read them, then the head's predictions (blocking)."""
    vectors = None
    if head.needs_vectors:
        result = finite_embeddings(state.service, texts, field="texts", count_truncated=False)
        state.metrics.texts.labels("cache").inc(result.cached)
        state.metrics.texts.labels("encoder").inc(len(texts) - result.cached)
        vectors = result.vectors
    return head.predict(vectors, texts)


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    dependencies=[JsonBody, ReadAccess],
)
async def predict(body: PredictRequest, state: StateDep) -> dict:
    """Classify texts with a head (default: the server's default head).

    A lexical-only head reads the texts alone: the encoder is never called for it.
    """
    settings = state.settings
    texts = checked_texts(
        body.texts, max_batch=settings.max_batch, max_chars=settings.max_text_chars, field="texts"
    )
    # Take the head object once: a swap during this request cannot change what answers it.
    head = state.registry.get(body.head)
    if not head.needs_vectors and sum(map(len, texts)) <= INLINE_TEXT_CHARS:
        predictions = _embed_and_predict(state, head, texts)
    else:
        predictions = await run_in_threadpool(_embed_and_predict, state, head, texts)
    return {"head": head.name, "version": head.version, "predictions": predictions}
