r"""Limits on texts, checked in one place for every endpoint that takes them.

A JSON string can parse into a Python str that no later step can use: `"\ud800"` is a lone
surrogate (not encodable as UTF-8, so neither hashable into a cache key nor serialisable
into a response) and `"\u0000"` a NUL. Both are refused here, naming the field.
"""

import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from api.errors import InvalidInputError

UNUSABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def unusable_character(text: str) -> str | None:
    """Why `text` cannot be embedded, stored or returned, or None when it can."""
    found = UNUSABLE_CHARACTER.search(text)
    if found is None:
        return None
    character, position = found.group(), found.start()
    if character == "\x00":
        return f"holds a NUL character (U+0000) at character {position}"
    return (
        f"holds a lone surrogate (U+{ord(character):04X}) at character {position}; "
        "text must be valid Unicode"
    )


def _usable(value: str) -> str:
    reason = unusable_character(value)
    if reason is not None:
        raise PydanticCustomError("unusable_character", reason)
    return value


def usable_label(value: str) -> str:
    """`value` if it can name a class or label; a validation error otherwise."""
    if not value.strip():
        raise PydanticCustomError("empty_label", "label is empty or only whitespace")
    return _usable(value)


# A string field that is names, columns or labels rather than text to embed.
CleanStr = Annotated[str, AfterValidator(_usable)]
# A class or label name: also never empty.
LabelStr = Annotated[str, AfterValidator(usable_label)]


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
        reason = unusable_character(text)
        if reason is not None:
            raise InvalidInputError(f"{where}: text {reason}", where)
    return items
