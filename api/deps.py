"""Annotated dependencies: the app's state, JSON-only bodies and the API key.

They are `async` although none awaits: FastAPI runs plain functions in its thread pool,
a hop that costs more than these checks on the cached path.
"""

import hmac
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from api.errors import ApiError, UnauthorizedError
from api.metrics import Metrics
from bertheads.settings import Settings
from embedder import EmbeddingCache, EmbeddingService, Encoder
from embedder.batcher import MicroBatcher


@dataclass
class AppState:
    """Everything the lifespan builds; handlers reach it through `StateDep`."""

    settings: Settings
    encoder: Encoder
    service: EmbeddingService
    cache: EmbeddingCache
    batcher: MicroBatcher
    metrics: Metrics
    registry: object = field(default=None)  # api.registry.HeadRegistry, set after heads load


async def get_state(request: Request) -> AppState:
    """The running app's state."""
    return request.app.state.bertheads


StateDep = Annotated[AppState, Depends(get_state)]


class UnsupportedMediaTypeError(ApiError):
    """A body that is not JSON."""

    status = 415


async def require_json(request: Request) -> None:
    """Reject bodies that do not declare JSON, naming the header."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaTypeError(
            f"content-type: must be application/json (got {content_type or 'none'})",
            "content-type",
        )


def _check_key(request: Request, secret: SecretStr | None) -> None:
    expected = secret.get_secret_value() if secret is not None else ""
    if not expected:
        return
    supplied = request.headers.get("authorization", "")
    scheme, _, token = supplied.partition(" ")
    # Compared as bytes: compare_digest refuses non-ASCII str, which would be a 500.
    supplied_bytes = token.strip().encode("utf-8", "surrogateescape")
    matches = hmac.compare_digest(supplied_bytes, expected.encode())
    if scheme.lower() != "bearer" or not matches:
        raise UnauthorizedError(
            "authorization: this endpoint needs 'Authorization: Bearer <API_KEY>'", "authorization"
        )


async def require_key(request: Request, state: StateDep) -> None:
    """Mutating endpoints: enforce API_KEY when it is set."""
    _check_key(request, state.settings.api_key)


async def require_read_key(request: Request, state: StateDep) -> None:
    """Read endpoints: enforce API_KEY only when PROTECT_READS is set."""
    if state.settings.protect_reads:
        _check_key(request, state.settings.api_key)


JsonBody = Depends(require_json)
WriteAccess = Depends(require_key)
ReadAccess = Depends(require_read_key)
