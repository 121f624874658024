"""A small Python client for a bertheads server: embed, predict, train, with retries.

```python
from bertheads.client import Client

with Client("http://127.0.0.1:8000") as client:
    vectors = client.embed(["refund please", "parcel is late"])  # float32 (2, dim)
    result = client.predict(["refund please"], head="demo")
    result.labels  # ["billing"]
```
"""

import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import httpx
import numpy as np

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 60.0
# The server's 422 for an oversized batch reads "at most N texts per request (MAX_BATCH)".
MAX_BATCH_MESSAGE = re.compile(r"at most (\d+) texts per request \(MAX_BATCH\)")


class BertheadsError(Exception):
    """Base class of every error this client raises."""


class ApiError(BertheadsError):
    """The server answered with an error body `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(f"{status} {kind}: {message}")
        self.status = status
        self.message = message
        self.type = kind
        self.param = param


class ServerUnreachableError(BertheadsError):
    """No answer from the server after every retry."""


@dataclass(frozen=True)
class Prediction:
    """One text's prediction: `label` (single-label heads) or `labels` (multi-label heads)."""

    probabilities: dict[str, float]
    label: str | None = None
    labels: list[str] | None = None


@dataclass(frozen=True)
class PredictResult:
    """Predictions in input order and the head version that made all of them."""

    head: str
    version: int
    predictions: list[Prediction]

    @property
    def labels(self) -> list[Any]:
        """The predicted label of each text (a list of labels for multi-label heads)."""
        return [item.labels if item.labels is not None else item.label for item in self.predictions]


@dataclass
class EmbedResponse:
    """Vectors (n, dim) in input order and the server's cache / truncation counts."""

    vectors: np.ndarray
    cached: int = 0
    truncated: int = 0
    model: str = ""


class Client:
    """Talks to one bertheads server.

    Args:
        url: Base URL, e.g. "http://127.0.0.1:8000".
        api_key: Sent as `Authorization: Bearer <key>` when given.
        timeout: Seconds per request (training uses `train` 's own timeout).
        max_retries: Extra attempts after a 429/502/503/504 or a connection failure.
        batch_size: Texts per request; lowered automatically when the server's MAX_BATCH is smaller.
        max_request_bytes: Text bytes per request, kept under the server's body limit.
        backoff_seconds: First retry delay, doubled each attempt, when there is no Retry-After.

    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        batch_size: int = 256,
        max_request_bytes: int = 1_000_000,
        backoff_seconds: float = 0.5,
    ) -> None:
        if batch_size < 1 or max_retries < 0:
            raise ValueError("batch_size must be >= 1 and max_retries >= 0")
        self.url = url.rstrip("/")
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.max_request_bytes = max_request_bytes
        self.backoff_seconds = backoff_seconds
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def health(self) -> dict[str, Any]:
        """GET /health: model, dim, fingerprint, backend, cache state, heads."""
        return self._request("GET", "/health")

    def heads(self) -> dict[str, Any]:
        """GET /heads: every head and the default head."""
        return self._request("GET", "/heads")

    def embed(self, texts: str | Sequence[str], normalize: bool | None = None) -> np.ndarray:
        """Embed texts; float32 (n, dim) in input order (a single string gives (1, dim))."""
        return self.embed_detailed(texts, normalize=normalize).vectors

    def embed_detailed(
        self,
        texts: str | Sequence[str],
        *,
        normalize: bool | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> EmbedResponse:
        """Like `embed`, with the cache counts; `on_chunk(n)` is called after each request."""
        parts: list[np.ndarray] = []
        cached = truncated = 0
        model = ""
        for chunk, body in self._chunked("/embed", _as_list(texts), {"normalize": normalize}):
            vectors = np.asarray(body["embeddings"], dtype=np.float32)
            parts.append(vectors.reshape(len(chunk), int(body["dim"])))
            cached += int(body.get("cached", 0))
            truncated += int(body.get("truncated", 0))
            model = body.get("model", model)
            if on_chunk is not None:
                on_chunk(len(chunk))
        return EmbedResponse(np.concatenate(parts), cached, truncated, model)

    def predict(self, texts: str | Sequence[str], head: str | None = None) -> PredictResult:
        """Classify texts with `head` (default: the server's default head)."""
        items = _as_list(texts)
        extra = {} if head is None else {"head": head}
        for _ in range(3):
            answers = list(self._chunked("/predict", items, extra))
            versions = {body["version"] for _, body in answers}
            if len(versions) == 1:
                break
            # A new version went live between chunks: ask again so one version answers all.
            extra = {"head": answers[-1][1]["head"]}
        else:
            raise BertheadsError("head kept changing version during predict; try again")
        predictions = [
            Prediction(
                probabilities=item.get("probabilities", {}),
                label=item.get("label"),
                labels=item.get("labels"),
            )
            for _, body in answers
            for item in body["predictions"]
        ]
        return PredictResult(answers[0][1]["head"], answers[0][1]["version"], predictions)

    def train(
        self,
        name: str,
        examples: Sequence[Mapping[str, Any] | tuple[str, Any]] | None = None,
        file: str | None = None,
        *,
        timeout: float = 600.0,
        **options: Any,
    ) -> dict[str, Any]:
        """Train a new version of head `name` and make it live; returns the server's summary.

        Args:
            name: Head name.
            examples: `{"text", "label"}` / `{"text", "labels"}` dicts or `(text, label)` pairs
                (a list label means multi-label).
            file: Instead of examples, a file name inside the server's TRAIN_DATA_DIR.
            timeout: Seconds to wait for training.
            **options: Training options of POST /heads/{name}/train (head, loss, seed, ...).

        """
        body: dict[str, Any] = dict(options)
        if examples is not None:
            body["examples"] = [_example(item) for item in examples]
        if file is not None:
            body["file"] = file
        return self._request(
            "POST", f"/heads/{name}/train", body, timeout=timeout, idempotent=False
        )

    def _chunked(
        self, path: str, texts: list[str], extra: dict[str, Any]
    ) -> Iterator[tuple[list[str], dict[str, Any]]]:
        """POST `texts` in server-sized chunks, yielding each chunk with its answer."""
        if not texts:  # let the server say why an empty list is refused
            yield [], self._request("POST", path, {"texts": [], **extra})
            return
        start = 0
        while start < len(texts):
            chunk = self._next_chunk(texts, start)
            try:
                body = self._request("POST", path, {"texts": chunk, **extra})
            except ApiError as error:
                match = MAX_BATCH_MESSAGE.search(error.message) if error.status == 422 else None
                if match is None or int(match.group(1)) >= len(chunk):
                    raise
                self.batch_size = int(match.group(1))
                continue
            yield chunk, body
            start += len(chunk)

    def _next_chunk(self, texts: list[str], start: int) -> list[str]:
        end, size = start, 0
        while end < len(texts) and end - start < self.batch_size:
            size += len(texts[end].encode("utf-8")) + 8  # quotes, comma, escapes
            if size > self.max_request_bytes and end > start:
                break
            end += 1
        return texts[start:end]

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        idempotent: bool = True,
    ) -> dict[str, Any]:
        extra = {} if timeout is None else {"timeout": timeout}
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._http.request(method, path, json=body, **extra)
            except httpx.TransportError as error:
                # A failed connect never reached the server; other failures may have been
                # processed, so only calls that are safe to repeat are retried after them.
                connect_failed = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
                if last or not (idempotent or connect_failed):
                    raise ServerUnreachableError(f"{self.url}{path}: {error!r}") from error
                self._sleep(attempt, None)
                continue
            if response.status_code < 400:
                return response.json()
            if response.status_code not in RETRY_STATUSES or last:
                raise _api_error(response)
            self._sleep(attempt, response.headers.get("retry-after"))
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff_seconds * 2**attempt
        # Retry-After may also be an HTTP date; this server sends seconds, so dates get backoff.
        if retry_after is not None and retry_after.strip().isdigit():
            delay = min(float(retry_after), MAX_RETRY_AFTER_SECONDS)
        time.sleep(delay + random.uniform(0, 0.1 * delay))


def _as_list(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def _example(item: Mapping[str, Any] | tuple[str, Any]) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    text, label = item
    key = "labels" if isinstance(label, list) else "label"
    return {"text": text, key: label}


def _api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(
            response.status_code,
            str(error["message"]),
            str(error.get("type", "http_error")),
            error.get("param"),
        )
    except (ValueError, KeyError, TypeError):
        return ApiError(
            response.status_code, response.text[:300] or response.reason_phrase, "http_error"
        )
