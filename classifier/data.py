"""Read labelled text files (CSV, TSV, JSONL) into texts and labels; the CLI's file edge."""

import csv
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from classifier.errors import (
    EmptyDataError,
    MissingColumnError,
    TrainingDataError,
    UnknownFileTypeError,
)

FILE_TYPES: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All rows of a CSV / TSV / JSONL file as dicts (a header line is required for CSV/TSV)."""
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise UnknownFileTypeError(
            f"{path}: unknown file type {path.suffix!r}; use one of {sorted(FILE_TYPES)}"
        )
    if not path.is_file():
        raise TrainingDataError(f"{path}: no such file")
    with open(path, encoding="utf-8", newline="") as handle:
        if kind == "jsonl":
            rows = []
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise TrainingDataError(
                        f"{path}: line {number} is not JSON ({error})"
                    ) from None
                if not isinstance(row, dict):
                    raise TrainingDataError(f"{path}: line {number} is not a JSON object")
                rows.append(row)
        else:
            # Long texts are legal: the csv module's 128 KiB field limit is not our rule.
            csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
            rows = list(csv.DictReader(handle, delimiter="," if kind == "csv" else "\t"))
    if not rows:
        raise EmptyDataError(f"{path}: no data rows")
    return rows


def _require(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    available = list(rows[0].keys())
    missing = [column for column in columns if column not in available]
    if missing:
        raise MissingColumnError(f"{path}: no column {missing}; available columns: {available}")


def _binary(path: Path, value: Any, column: str, number: int) -> int:
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true"):
        return 1
    if text in ("0", "0.0", "false", ""):
        return 0
    raise TrainingDataError(f"{path}: row {number} column {column!r} is {value!r}; expected 0 or 1")


def read_labelled(
    path: Path,
    text_column: str = "text",
    label_column: str = "label",
    label_columns: list[str] | None = None,
) -> tuple[list[str], list[str] | list[list[int]]]:
    """Texts and labels of a file.

    Args:
        path: A .csv, .tsv or .jsonl file.
        text_column: Column holding the text.
        label_column: Column holding the class label (binary / multi-class).
        label_columns: 0/1 columns, one per label (multi-label); overrides label_column.

    Returns:
        Texts, and either class labels as strings or 0/1 rows (one value per label column).

    """
    rows = read_rows(path)
    _require(path, rows, [text_column, *(label_columns or [label_column])])
    texts = ["" if row[text_column] is None else str(row[text_column]) for row in rows]
    if label_columns:
        matrix = [
            [_binary(path, row[column], column, number) for column in label_columns]
            for number, row in enumerate(rows, start=1)
        ]
        return texts, matrix
    labels = []
    for number, row in enumerate(rows, start=1):
        value = row[label_column]
        if value is None or str(value).strip() == "":
            raise TrainingDataError(f"{path}: row {number} has an empty {label_column!r}")
        labels.append(str(value))
    return texts, labels
