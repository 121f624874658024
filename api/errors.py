"""Domain exceptions mapped to HTTP statuses in one table, and the one error body shape.

Every error the service returns has the body
`{"error": {"message": str, "type": str, "param": str | null, "code": int}}`,
which is also the shape OpenAI clients expect.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bertheads.cancel import CancelledError, DeadlineExceededError
from classifier.errors import (
    ClassifierError,
    CorruptHeadError,
    FingerprintMismatchError,
    HeadNotFoundError,
    TrainingDataError,
)
from embedder.errors import EmbedderError, ModelNotFoundError, QueueFullError

logger = logging.getLogger(__name__)
BODY_PARSE_DETAIL = "There was an error parsing the body"


class ApiError(Exception):
    """An error raised by the API layer itself, carrying the offending field."""

    status = 400
    kind = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def headers(self) -> dict[str, str] | None:
        """Extra response headers (e.g. Retry-After); none by default."""
        return None


class InvalidInputError(ApiError):
    """A request field breaks a limit."""

    status = 422


class NotFoundError(ApiError):
    """A named thing does not exist."""

    status = 404
    kind = "not_found_error"


class UnauthorizedError(ApiError):
    """A mutating request without the right API key."""

    status = 401
    kind = "authentication_error"

    def headers(self) -> dict[str, str] | None:
        """The scheme the client must use."""
        return {"WWW-Authenticate": "Bearer"}


class ForbiddenError(ApiError):
    """A request this server is configured to refuse, whoever sends it."""

    status = 403
    kind = "permission_error"


class TrainingBusyError(ApiError):
    """Every training slot of this process is taken (MAX_CONCURRENT_TRAINS)."""

    status = 429
    kind = "rate_limit_error"

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message, None)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str] | None:
        """Retry-After in whole seconds."""
        return {"Retry-After": str(self.retry_after_seconds)}


class NoHeadError(ApiError):
    """Predict was asked for while no head is loaded."""

    status = 503
    kind = "service_unavailable"


class PayloadTooLargeError(ApiError):
    """The request body is over the configured size."""

    status = 413


# The one table from exception to (HTTP status, error type). Most specific first.
STATUS_TABLE: list[tuple[type[Exception], int, str]] = [
    (QueueFullError, 429, "rate_limit_error"),
    # A train that ran past TRAIN_TIMEOUT_SECONDS; the message names the limit.
    (DeadlineExceededError, 408, "timeout_error"),
    # Work stopped because its client went away: nobody reads this answer, but the access
    # log and metrics show the train as "client closed request", not as a server error.
    (CancelledError, 499, "cancelled_error"),
    (HeadNotFoundError, 404, "not_found_error"),
    (TrainingDataError, 422, "invalid_request_error"),
    (FingerprintMismatchError, 409, "conflict_error"),
    (CorruptHeadError, 503, "service_unavailable"),
    (ClassifierError, 422, "invalid_request_error"),
    (ModelNotFoundError, 503, "service_unavailable"),
    (EmbedderError, 500, "server_error"),
]


def error_body(message: str, kind: str, status: int, param: str | None = None) -> dict:
    """The one error body shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(
    message: str, kind: str, status: int, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    """A JSONResponse carrying `error_body`."""
    return JSONResponse(error_body(message, kind, status, param), status, headers=headers)


def _describe_validation(error: RequestValidationError) -> tuple[str, str | None]:
    messages = []
    first_param = None
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ()) if part != "body"]
        param = ".".join(location) if location else "body"
        text = item.get("msg", "invalid value")
        if item.get("type") == "json_invalid":
            text = f"body is not valid JSON ({item.get('ctx', {}).get('error', 'parse error')})"
            param = "body"  # the location is a character offset, not a field
        first_param = first_param or param
        messages.append(f"{param}: {text}")
    return "; ".join(messages[:5]), first_param


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception through the status table and the one body shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(str(error), error.kind, error.status, error.param, error.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(error)
        return error_response(message, "invalid_request_error", 422, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        if error.status_code == 400 and error.detail == BODY_PARSE_DETAIL:
            # FastAPI's answer to a body it cannot decode: bytes that are not UTF-8, or a
            # client that went away mid-upload.
            message = "body: cannot be read as JSON text (it must be UTF-8)"
            return error_response(message, kind, 400, "body")
        return error_response(str(error.detail), kind, error.status_code)

    async def _domain(request: Request, error: Exception) -> JSONResponse:
        for exception_type, status, kind in STATUS_TABLE:
            if isinstance(error, exception_type):
                headers = None
                if isinstance(error, QueueFullError):
                    headers = {"Retry-After": str(int(error.retry_after_seconds + 0.999))}
                if status >= 500:
                    logger.error("%s: %s", type(error).__name__, error)
                return error_response(str(error), kind, status, headers=headers)
        raise error  # not ours: let the server-error handler below report it

    for base in (EmbedderError, ClassifierError, CancelledError):
        app.add_exception_handler(base, _domain)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response("internal error; see the server log", "server_error", 500)
