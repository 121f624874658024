"""GET /health and GET /metrics."""

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import StateDep
from api.schemas import HealthResponse

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=HealthResponse)
async def health(state: StateDep) -> dict:
    """Model, vector space, cache state and heads; `degraded` while Redis is down."""
    cache_up = await run_in_threadpool(state.cache.ping)
    heads = state.registry.names() if state.registry else []
    default = state.settings.default_head if state.settings.default_head in heads else None
    return {
        "status": "ok" if cache_up else "degraded",
        "model": state.encoder.model_id,
        "dim": state.encoder.dim,
        "fingerprint": state.encoder.fingerprint(),
        "backend": state.encoder.backend_name,
        "fallback_reason": state.encoder.fallback_reason,
        "device": state.encoder.device,
        "cache": "up" if cache_up else "down",
        "heads": heads,
        "default_head": default,
    }


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus text format."""
    state.metrics.queue_depth.set(state.batcher.queue_depth)
    state.metrics.cache_up.set(1 if state.cache.up else 0)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")
