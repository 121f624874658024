"""Annotated dependencies: the app's state, JSON-only bodies and the API key.

Writes (train, rollback, delete) are open without a key only on a loopback bind: a server
configured to bind another address (HOST) refuses them with 403 until API_KEY is set, or
ALLOW_UNAUTHENTICATED_WRITES says the operator means it.

They are `async` although none awaits: FastAPI runs plain functions in its thread pool,
a hop that costs more than these checks on the cached path.
"""

import hmac
import logging
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from api.errors import ApiError, ForbiddenError, UnauthorizedError
from api.metrics import Metrics
from api.train_slots import TrainSlots
from bertheads.settings import Settings
from embedder import EmbeddingCache, EmbeddingService, Encoder
from embedder.batcher import MicroBatcher

logger = logging.getLogger(__name__)


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
    train_slots: TrainSlots = field(init=False)

    def __post_init__(self) -> None:
        self.train_slots = TrainSlots(self.settings.max_concurrent_trains)


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
    # Starlette decodes header bytes as latin-1, so encoding back to latin-1 gives exactly
    # the bytes the client sent; the key is UTF-8, as it was typed into the environment.
    supplied_bytes = token.strip().encode("latin-1", "replace")
    matches = hmac.compare_digest(supplied_bytes, expected.encode("utf-8"))
    if scheme.lower() != "bearer" or not matches:
        raise UnauthorizedError(
            "authorization: this endpoint needs 'Authorization: Bearer <API_KEY>'", "authorization"
        )


def _has_key(settings: Settings) -> bool:
    return settings.api_key is not None and bool(settings.api_key.get_secret_value())


def writes_refused(settings: Settings) -> bool:
    """True when writes need a key this server does not have (non-loopback bind, no API_KEY)."""
    return not (
        _has_key(settings) or settings.binds_loopback or settings.allow_unauthenticated_writes
    )


WRITES_REFUSED_MESSAGE = (
    "authorization: this server binds {host} (HOST), reachable from other machines, and "
    "has no API_KEY, so train, rollback and delete are refused. Set API_KEY=<a long random "
    "secret> in the server's environment and send 'Authorization: Bearer <that secret>'; "
    "or bind HOST=127.0.0.1; or set ALLOW_UNAUTHENTICATED_WRITES=true to let anyone who "
    "can reach the server change its heads"
)


def log_write_access(settings: Settings) -> None:
    """Say at start when writes are open to anyone, or refused, because of the bind."""
    if _has_key(settings) or settings.binds_loopback:
        return
    if settings.allow_unauthenticated_writes:
        logger.warning(
            "HOST=%s is reachable from other machines and API_KEY is unset: anyone who can "
            "reach this server can train, roll back and delete heads "
            "(ALLOW_UNAUTHENTICATED_WRITES=true)",
            settings.host,
        )
    else:
        logger.warning(
            "HOST=%s is reachable from other machines and API_KEY is unset: train, rollback "
            "and delete answer 403 until API_KEY is set (or ALLOW_UNAUTHENTICATED_WRITES=true)",
            settings.host,
        )


async def require_key(request: Request, state: StateDep) -> None:
    """Mutating endpoints: enforce API_KEY; without one, refuse unless the bind is loopback."""
    settings = state.settings
    if writes_refused(settings):
        raise ForbiddenError(WRITES_REFUSED_MESSAGE.format(host=settings.host), "authorization")
    _check_key(request, settings.api_key)


async def require_read_key(request: Request, state: StateDep) -> None:
    """Read endpoints: enforce API_KEY only when PROTECT_READS is set."""
    if state.settings.protect_reads:
        _check_key(request, state.settings.api_key)


JsonBody = Depends(require_json)
WriteAccess = Depends(require_key)
ReadAccess = Depends(require_read_key)
