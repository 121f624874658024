"""Read labelled text files (CSV, TSV, JSONL) into texts and labels; the CLI's file edge.

Every row is checked, not only the first: each must hold a usable text and label, and an
error names the row (and its line in the file) and the rule it breaks.
"""

import csv
import hashlib
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

from classifier.errors import (
    EmptyDataError,
    MissingColumnError,
    TooManyRowsError,
    TrainingDataError,
    UnknownFileTypeError,
)

FILE_TYPES: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# NUL and lone surrogates (JSON "\ud800") parse but cannot be encoded, hashed or stored.
UNUSABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")
JSON_TYPES = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "an array",
    dict: "an object",
}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _decode(path: Path, data: bytes) -> str:
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise TrainingDataError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[error.start]:02x} at offset "
            f"{error.start}); save the file as UTF-8"
        ) from None


def _too_many(path: Path, max_rows: int) -> TooManyRowsError:
    return TooManyRowsError(f"{path}: more than {max_rows} data rows", max_rows)


def _located_rows(path: Path, max_rows: int | None) -> list[tuple[str, dict[str, Any]]]:
    """Rows with where they sit in the file ("row 3 (line 4)"), stopping past `max_rows`."""
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise UnknownFileTypeError(
            f"{path}: unknown file type {path.suffix!r}; use one of {sorted(FILE_TYPES)}"
        )
    if not path.is_file():
        raise TrainingDataError(f"{path}: no such file")
    text = _decode(path, path.read_bytes())
    rows: list[tuple[str, dict[str, Any]]] = []
    if kind == "jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise TrainingDataError(f"{path}: line {number} is not JSON ({error})") from None
            if not isinstance(row, dict):
                raise TrainingDataError(f"{path}: line {number} is not a JSON object")
            if max_rows is not None and len(rows) >= max_rows:
                raise _too_many(path, max_rows)
            rows.append((f"row {len(rows) + 1} (line {number})", row))
        return rows
    # Long texts are legal: the csv module's 128 KiB field limit is not our rule.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="," if kind == "csv" else "\t")
    try:
        for row in reader:
            if max_rows is not None and len(rows) >= max_rows:
                raise _too_many(path, max_rows)
            rows.append((f"row {len(rows) + 1} (line {reader.line_num})", row))
    except csv.Error as error:
        message = f"{path}: line {reader.line_num} is not valid CSV ({error})"
        raise TrainingDataError(message) from None
    return rows


def read_rows(path: Path, max_rows: int | None = None) -> list[dict[str, Any]]:
    """All rows of a CSV / TSV / JSONL file as dicts (a header line is required for CSV/TSV).

    Raises:
        TooManyRowsError: The file has more than `max_rows` data rows (reading stops there).

    """
    rows = [row for _, row in _located_rows(path, max_rows)]
    if not rows:
        raise EmptyDataError(f"{path}: no data rows")
    return rows


def _require(path: Path, rows: list[tuple[str, dict[str, Any]]], columns: list[str]) -> None:
    available = list(rows[0][1].keys())
    missing = [column for column in columns if column not in available]
    if missing:
        raise MissingColumnError(f"{path}: no column {missing}; available columns: {available}")
    for where, row in rows:
        absent = [column for column in columns if column not in row or row[column] is None]
        if absent:
            raise MissingColumnError(
                f"{path}: {where} has no {absent}; every row needs the columns {columns}"
            )


def _unusable(value: str) -> str | None:
    found = UNUSABLE_CHARACTER.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "a NUL character (U+0000)"
    return f"a lone surrogate (U+{ord(found.group()):04X})"


def _text(path: Path, where: str, value: Any, column: str) -> str:
    if not isinstance(value, str):
        kind = JSON_TYPES.get(type(value), type(value).__name__)
        raise TrainingDataError(f"{path}: {where} column {column!r} is {kind}, not a string")
    if not value.strip():
        raise TrainingDataError(f"{path}: {where} column {column!r} is empty or only whitespace")
    reason = _unusable(value)
    if reason is not None:
        raise TrainingDataError(f"{path}: {where} column {column!r} holds {reason}")
    return value


def _label(path: Path, where: str, value: Any, column: str) -> str:
    if isinstance(value, list | dict):
        raise TrainingDataError(
            f"{path}: {where} column {column!r} is {JSON_TYPES[type(value)]}; one label is "
            "expected (for several labels per text use 0/1 label columns)"
        )
    if isinstance(value, float) and not value.is_integer():
        raise TrainingDataError(f"{path}: {where} column {column!r} is {value!r}; not a label")
    if isinstance(value, float):
        value = int(value)  # 1.0 and 1 name the same class
    text = "" if value is None else str(value)
    if not text.strip():
        raise TrainingDataError(f"{path}: {where} has an empty {column!r}")
    reason = _unusable(text)
    if reason is not None:
        raise TrainingDataError(f"{path}: {where} column {column!r} holds {reason}")
    return text


def _binary(path: Path, value: Any, column: str, where: str) -> int:
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true"):
        return 1
    if text in ("0", "0.0", "false", ""):
        return 0
    raise TrainingDataError(f"{path}: {where} column {column!r} is {value!r}; expected 0 or 1")


def read_labelled(
    path: Path,
    text_column: str = "text",
    label_column: str = "label",
    label_columns: list[str] | None = None,
    *,
    max_rows: int | None = None,
) -> tuple[list[str], list[str] | list[list[int]]]:
    """Texts and labels of a file.

    Args:
        path: A .csv, .tsv or .jsonl file.
        text_column: Column holding the text.
        label_column: Column holding the class label (binary / multi-class).
        label_columns: 0/1 columns, one per label (multi-label); overrides label_column.
        max_rows: Refuse files with more data rows than this (reading stops at the limit).

    Returns:
        Texts, and either class labels as strings or 0/1 rows (one value per label column).

    Raises:
        TrainingDataError: Naming the row, its line and the rule it breaks.

    """
    rows = _located_rows(path, max_rows)
    if not rows:
        raise EmptyDataError(f"{path}: no data rows")
    _require(path, rows, [text_column, *(label_columns or [label_column])])
    texts = [_text(path, where, row[text_column], text_column) for where, row in rows]
    if label_columns:
        matrix = [
            [_binary(path, row[column], column, where) for column in label_columns]
            for where, row in rows
        ]
        return texts, matrix
    labels = [_label(path, where, row[label_column], label_column) for where, row in rows]
    return texts, labels
