"""POST /v1/embeddings, shaped like the OpenAI embeddings API."""

import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.deps import JsonBody, ReadAccess, StateDep
from api.errors import NotFoundError
from api.validation import CleanStr, checked_texts
from api.vectors import finite_embeddings
from embedder import EmbeddingService, Encoder
from embedder.service import EmbedResult

router = APIRouter(tags=["openai"])


class OpenAIEmbeddingRequest(BaseModel):
    """The subset of OpenAI's request that a frozen text encoder can honour."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="A text or a list of texts (token arrays: no).")
    model: CleanStr
    encoding_format: Literal["float", "base64"] = "float"
    user: CleanStr | None = None


# Text averages about 4 characters per token (English, WordPiece); a prefix of 12 per token
# of the cap nearly always already holds more tokens than the cap, so one tokenizer call
# on a bounded prefix settles a long text.
PREFIX_CHARS_PER_TOKEN = 12


def prompt_tokens(encoder: Encoder, texts: list[str], cap: int | None = None) -> int:
    """Tokens the encoder reads: each text's count, capped at `cap`.

    `cap` defaults to max_seq_len; with long texts read as windows it is what the windows
    cover (EmbeddingService.tokens_read). Only a prefix of each long text is tokenised,
    cut at whitespace (so no word is split differently than in the whole text): once the
    prefix reaches `cap` tokens the text is over the cap and the rest needs no tokenising.
    A prefix that falls short while the text goes on (a very long word, say) is counted
    whole.
    """
    cap = cap or encoder.max_seq_len
    window = PREFIX_CHARS_PER_TOKEN * (cap + 1)
    prefixes = []
    for text in texts:
        cut = text.rfind(" ", 0, window) if len(text) > window else len(text)
        prefixes.append(text[: cut if cut > 0 else len(text)])
    lengths = encoder.token_lengths(prefixes)
    short = [
        row
        for row, (text, prefix) in enumerate(zip(texts, prefixes, strict=True))
        if len(prefix) < len(text) and lengths[row] < cap
    ]
    if short:
        lengths[short] = encoder.token_lengths([texts[row] for row in short])
    return int(np.minimum(lengths, cap).sum())


def _embed_and_count(service: EmbeddingService, texts: list[str]) -> tuple[EmbedResult, int]:
    """Runs in the thread pool: tokenising is CPU work the event loop must not wait for."""
    result = finite_embeddings(service, texts, field="input", count_truncated=False)
    return result, prompt_tokens(service.encoder, texts, service.tokens_read())


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
    result, tokens = await run_in_threadpool(_embed_and_count, state.service, texts)
    state.metrics.texts.labels("cache").inc(result.cached)
    state.metrics.texts.labels("encoder").inc(len(texts) - result.cached)
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
