"""GET /health and GET /metrics."""

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import ReadAccess, StateDep
from api.schemas import HealthResponse

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=HealthResponse)
async def health(state: StateDep) -> dict:
    """Model, vector space, cache, head store and heads; `degraded` while a store is down."""
    answers = await run_in_threadpool(state.cache.ping)
    # A cluster with some masters down still answers for the others' keys: "degraded".
    cache = "up" if answers and state.cache.up else "degraded" if answers else "down"
    registry = state.registry
    heads = registry.names() if registry else []
    default = state.settings.default_head if state.settings.default_head in heads else None
    store_up = registry is None or registry.store_error is None
    batcher = state.batcher
    workers_up = batcher.workers_alive == batcher.workers
    return {
        "status": "ok" if cache == "up" and store_up and workers_up else "degraded",
        "model": state.encoder.model_id,
        "dim": state.encoder.dim,
        "fingerprint": state.encoder.fingerprint(),
        "backend": state.encoder.backend_name,
        "fallback_reason": state.encoder.fallback_reason,
        "device": state.encoder.device,
        "encode_workers": f"{batcher.workers_alive}/{batcher.workers}",
        "cache": cache,
        "cache_problem": state.cache.problem,
        "heads": heads,
        "default_head": default,
        "head_store": "up" if store_up else "down",
        "head_problems": registry.problems if registry else {},
        "long_texts": state.service.describe_long_texts(),
    }


@router.get("/metrics", response_class=Response, dependencies=[ReadAccess])
async def metrics(state: StateDep) -> Response:
    """Prometheus text format; needs the key when PROTECT_READS is set."""
    state.metrics.queue_depth.set(state.batcher.queue_depth)
    state.metrics.trains_running.set(state.train_slots.running)
    state.metrics.cache_up.set(1 if state.cache.up else 0)
    state.metrics.cache_rejected.set(state.cache.rejected)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")
