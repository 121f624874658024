"""What makes a row of the corpus usable, and how a text is named in outputs."""

import hashlib

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def text_hash(text: str) -> str:
    """The sha256 hex of a text: the last part of its cache key and its id in the Parquet output."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def problem_with(value: object, max_chars: int) -> str | None:
    """Why `value` cannot be embedded (None when it can): missing, non-string, empty, too long."""
    if value is None:
        return "missing (null)"
    if not isinstance(value, str):
        return f"not a string ({type(value).__name__})"
    if not value.strip():
        return "empty"
    if len(value) > max_chars:
        return f"{len(value)} characters, over the limit of {max_chars} (MAX_TEXT_CHARS)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    return None
