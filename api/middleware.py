"""ASGI middleware: request ids, access logs and metrics, and the body size limit."""

import contextlib
import json
import logging
import time
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from api.metrics import Metrics

logger = logging.getLogger("api.access")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach `request_id`."""
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as JSON."""
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO") -> None:
    """Structured logs on stderr with request ids."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _BodyTooLarge(Exception):
    pass


class ServiceMiddleware:
    """Gives each request an id, enforces the body limit, and records latency by route.

    The route label is the path template (e.g. /heads/{name}), never the raw path,
    so metrics cardinality stays bounded.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_holder = {"status": 500}
        limit = self.max_body_bytes

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit, request_id)
            self._record(scope, 413, started)
            request_id_var.reset(token)
            return

        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            if too_large:
                # FastAPI turns a failed body read into its own 400; the 413 below replaces it.
                return
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            with contextlib.suppress(_BodyTooLarge):
                await self.app(scope, limited_receive, tracking_send)
            if too_large:
                status_holder["status"] = 413
                await self._reject(send, limit, request_id)
        finally:
            self._record(scope, status_holder["status"], started)
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        elapsed = time.perf_counter() - started
        self.metrics.observe_request(scope.get("method", "?"), template, status, elapsed)
        logger.info("%s %s %d %.1fms", scope.get("method"), template, status, elapsed * 1000)

    async def _reject(self, send: Send, limit: int, request_id: str) -> None:
        body = json.dumps(
            error_body(
                f"body: request body is over the limit of {limit} bytes",
                "invalid_request_error",
                413,
                "body",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
