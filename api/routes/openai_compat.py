"""POST /v1/embeddings, shaped like the OpenAI embeddings API."""

import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.deps import JsonBody, ReadAccess, StateDep
from api.errors import NotFoundError
from api.validation import checked_texts

router = APIRouter(tags=["openai"])


class OpenAIEmbeddingRequest(BaseModel):
    """The subset of OpenAI's request that a frozen text encoder can honour."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="A text or a list of texts (token arrays: no).")
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


def _model_matches(requested: str, model_id: str) -> bool:
    short = model_id.rstrip("/").split("/")[-1]
    return requested in (model_id, short, "default")


@router.post("/v1/embeddings", dependencies=[JsonBody, ReadAccess])
async def openai_embeddings(body: OpenAIEmbeddingRequest, state: StateDep) -> dict:
    """Embed `input` with the served model; `model` must name it (or be "default")."""
    model_id = state.encoder.model_id
    if not _model_matches(body.model, model_id):
        raise NotFoundError(
            f"model: {body.model!r} is not served here; this server serves {model_id!r} "
            f"(also accepted: {model_id.split('/')[-1]!r}, 'default')",
            "model",
        )
    settings = state.settings
    texts = checked_texts(
        body.input, max_batch=settings.max_batch, max_chars=settings.max_text_chars, field="input"
    )
    result = await run_in_threadpool(state.service.embed, texts, count_truncated=False)
    state.metrics.texts.labels("cache").inc(result.cached)
    state.metrics.texts.labels("encoder").inc(len(texts) - result.cached)
    lengths = np.minimum(state.encoder.token_lengths(texts), state.encoder.max_seq_len)
    tokens = int(lengths.sum())
    data = []
    for index, vector in enumerate(result.vectors):
        if body.encoding_format == "base64":
            encoded: object = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            encoded = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "data": data,
        "model": model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
