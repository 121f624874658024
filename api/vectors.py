"""The last check before vectors leave the service: every number is finite.

The cache checks what it reads, but a response must never carry NaN, Inf or the null that
JSON serialisers write for them, whatever produced them. A row that is not finite is
deleted from the cache and encoded again; a text the encoder itself cannot turn into a
finite vector is refused by name.
"""

import logging

import numpy as np

from api.errors import InvalidInputError
from embedder import EmbeddingService
from embedder.service import EmbedResult

logger = logging.getLogger(__name__)


def _forget(service: EmbeddingService, texts: list[str]) -> None:
    # Best effort (one Redis or a cluster): the re-encode below runs whatever happens here.
    service.forget(texts)  # a long text read as windows: every window's entry


def finite_embeddings(
    service: EmbeddingService, texts: list[str], *, field: str, **options: object
) -> EmbedResult:
    """`service.embed(texts, **options)`, with every vector finite.

    Raises:
        InvalidInputError: The encoder gives a non-finite vector for a text (named by index).

    """
    result = service.embed(texts, **options)
    bad_rows = np.flatnonzero(~np.isfinite(result.vectors).all(axis=1))
    if len(bad_rows) == 0:
        return result
    poisoned = list(dict.fromkeys(texts[row] for row in bad_rows))
    logger.warning(
        "%d vector(s) with NaN or Inf came back from the cache; encoding them again", len(poisoned)
    )
    _forget(service, poisoned)
    again = service.embed(poisoned, **options)
    fresh = dict(zip(poisoned, again.vectors, strict=True))
    vectors = result.vectors.copy()
    for row in bad_rows:
        vectors[row] = fresh[texts[row]]
    still_bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(still_bad):
        where = f"{field}[{still_bad[0]}]"
        raise InvalidInputError(
            f"{where}: the encoder gives a vector with NaN or Inf for this text; it cannot be "
            "embedded",
            where,
        )
    return EmbedResult(
        vectors=vectors, cached=max(0, result.cached - len(bad_rows)), truncated=result.truncated
    )
