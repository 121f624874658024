"""Limits on texts, checked in one place for every endpoint that takes them."""

from api.errors import InvalidInputError


def checked_texts(
    texts: str | list[str], *, max_batch: int, max_chars: int, field: str
) -> list[str]:
    """Return `texts` as a list after enforcing the service limits.

    Raises:
        InvalidInputError: The message names the field, the item and the limit.

    """
    items = [texts] if isinstance(texts, str) else texts
    if not items:
        raise InvalidInputError(f"{field}: must hold at least 1 text (got an empty list)", field)
    if len(items) > max_batch:
        raise InvalidInputError(
            f"{field}: at most {max_batch} texts per request (MAX_BATCH), got {len(items)}", field
        )
    for index, text in enumerate(items):
        where = field if isinstance(texts, str) else f"{field}[{index}]"
        if not text.strip():
            raise InvalidInputError(f"{where}: text is empty or only whitespace", where)
        if len(text) > max_chars:
            raise InvalidInputError(
                f"{where}: text has {len(text)} characters, the limit is {max_chars} "
                "(MAX_TEXT_CHARS)",
                where,
            )
    return items
