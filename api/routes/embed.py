"""POST /embed."""

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import JsonBody, ReadAccess, StateDep
from api.schemas import EmbedRequest, EmbedResponse
from api.validation import checked_texts
from api.vectors import finite_embeddings

router = APIRouter(tags=["embeddings"])


@router.post("/embed", response_model=EmbedResponse, dependencies=[JsonBody, ReadAccess])
async def embed(body: EmbedRequest, state: StateDep) -> Response:
    """Embed one text or a list of texts, from the Redis cache where possible."""
    settings = state.settings
    texts = checked_texts(
        body.texts, max_batch=settings.max_batch, max_chars=settings.max_text_chars, field="texts"
    )
    result = await run_in_threadpool(
        finite_embeddings, state.service, texts, field="texts", normalize=body.normalize
    )
    state.metrics.texts.labels("cache").inc(result.cached)
    state.metrics.texts.labels("encoder").inc(len(texts) - result.cached)
    # Serialised by pydantic's Rust core straight to bytes: json.dumps of 768 Python floats
    # per text costs more than the whole cached lookup.
    response = EmbedResponse(
        model=state.encoder.model_id,
        dim=state.encoder.dim,
        embeddings=result.vectors.tolist(),
        cached=result.cached,
        truncated=result.truncated,
    )
    return Response(response.model_dump_json(), media_type="application/json")
