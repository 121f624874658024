"""The app factory: `uvicorn api.main:create_app --factory`."""

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from api.deps import AppState, log_write_access
from api.errors import NotFoundError, install_error_handlers
from api.metrics import Metrics
from api.middleware import ServiceMiddleware, configure_logging
from api.routes import embed, heads, health, openai_compat, predict
from bertheads.connections import embedding_cache, redacted
from bertheads.settings import Settings
from embedder import EmbeddingService, load_encoder
from embedder.batcher import MicroBatcher, serving_layout
from embedder.cores import available_cores
from embedder.windows import estimated_chars

logger = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


def _build_state(settings: Settings, metrics: Metrics) -> AppState:
    # EMBEDDER_THREADS is the backend's threads per encode call; the server runs one call
    # per core on one thread each unless it is set (`serving_layout` says why).
    # A backend that fails the fidelity gate on this CPU is replaced by torch fp32: the
    # encoder logs a warning saying why, and /health reports it (fallback_reason).
    workers, threads = serving_layout(settings.embedder_threads)
    options = {**settings.encoder_options(), "threads": threads}
    encoder = load_encoder(settings.embedder_model, **options)
    if encoder.device == "cuda":
        workers = 1  # one stream of large batches keeps a GPU busy; more only splits them
    cache = embedding_cache(settings)
    # Buckets cost a text's characters up to what truncation keeps (~8 per token at most);
    # the windows of long texts go through the same queue, costed by their tokens, so
    # they share forward passes (and the queue's limit) with every other request's texts.
    longest = settings.embedder_max_seq_len * 8
    batcher = MicroBatcher(
        encoder.encode_raw,
        max_batch_texts=max(encoder.batch_size * 2, 64),  # the device's batch size
        max_wait_ms=settings.batch_wait_ms,
        max_queue_texts=settings.queue_max_texts,
        max_bucket_texts=settings.embedder_batch_size,
        length=lambda item: min(estimated_chars(item), longest),
        workers=workers,
    )
    batcher.on_batch = metrics.batch_size.observe
    service = EmbeddingService(
        encoder, cache, encode_raw=batcher.encode, **settings.long_text_options()
    )
    return AppState(settings, encoder, service, cache, batcher, metrics)


def _serve_lone_requests_on_every_core(state: AppState) -> None:
    """Give the batcher a second ONNX session using every core, for a lone request.

    One single-threaded call per core serves concurrent clients best, but leaves a lone
    client's text on one core (14 vs 9 ms for mpnet int8 here): a bucket that has the
    workers to itself goes to this session instead. Costs one more session (≈ 200 MB for
    mpnet int8), built here, off the startup path; until it is ready, or where it does not
    apply (torch, whose thread count is per process; a GPU; EMBEDDER_THREADS set; one
    core), every call is single-threaded.
    """
    settings, encoder = state.settings, state.encoder
    cores = available_cores()
    if (
        settings.embedder_threads is not None
        or cores < 2
        or encoder.device != "cpu"
        or encoder.backend_name not in ("onnx", "onnx-int8")
    ):
        return
    try:
        wide = encoder.with_threads(cores)  # the same model file: the same vector space
    except Exception:  # the narrow layout keeps serving; say why in the log
        logger.exception("no every-core session for lone requests; single-threaded calls only")
        return
    state.batcher.encode_alone = wide.encode_raw
    logger.info("lone requests: one call on %d threads", cores)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; the model, Redis client and heads load in the lifespan.

    Args:
        settings: Configuration; default: read from the environment.

    """
    settings = settings or Settings()
    configure_logging(settings.log_level)
    log_write_access(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from api.registry import HeadRegistry

        state = await run_in_threadpool(_build_state, settings, metrics)
        state.batcher.start()
        widening = threading.Thread(
            target=_serve_lone_requests_on_every_core, args=(state,), daemon=True
        )
        widening.start()
        if not state.cache.ping():
            logger.warning(
                "Redis%s at %s does not answer; serving uncached",
                " Cluster" if settings.redis_cluster else "",
                redacted(settings.redis_url),
            )
        state.registry = HeadRegistry.from_settings(settings, state.service, metrics)
        await run_in_threadpool(state.registry.start)
        app.state.bertheads = state
        # Off the startup path: /predict answers 503 "being trained" until it is done.
        state.registry.start_demo_training()
        logger.info("ready: %s", state.encoder.describe())
        try:
            yield
        finally:
            # A process that exits inside ONNX Runtime's session setup aborts in C++.
            widening.join(timeout=30)
            state.registry.stop()
            state.batcher.stop()
            state.cache.close()

    app = FastAPI(
        title="bertheads",
        version="0.1.0",
        summary="A frozen sentence encoder with cached embeddings and cheap classifier heads.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (embed, predict, heads, health, openai_compat):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    # The page's scripts and styles, served by the app itself so the page works offline;
    # only the files that ship in api/static, never a path built from the request.
    assets = {path.name: path for path in STATIC.iterdir() if path.suffix in {".js", ".css"}}

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in assets:
            raise NotFoundError(f"static: no file named {name!r}", "name")
        return FileResponse(assets[name])

    app.add_middleware(ServiceMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    return app
