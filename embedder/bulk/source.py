"""Read a corpus with Ray Data: every row, with its file, row number and what is wrong with it.

Rows are checked where they are read (on the cluster), so one bad row costs one line in
the report, never the job. Imported only when a job runs: it needs Ray and pyarrow.
"""

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

from embedder.bulk.rows import FORMATS, problem_with

ROWS_PER_BLOCK = 8192
SCHEMA = pa.schema(
    [("path", pa.string()), ("row", pa.int64()), ("text", pa.string()), ("problem", pa.string())]
)


class BulkInputError(ValueError):
    """The corpus cannot be read at all (no files, mixed formats, no text column)."""


def corpus_files(data: Path) -> tuple[list[str], str]:
    """The files of `data` (a file or a folder of shards, sorted) and their one format."""
    if data.is_file():
        files = [data]
    elif data.is_dir():
        files = sorted(
            path for path in data.rglob("*") if path.is_file() and path.suffix.lower() in FORMATS
        )
    else:
        raise BulkInputError(f"--data {data}: no such file or folder")
    if not files:
        raise BulkInputError(f"--data {data}: no {', '.join(sorted(FORMATS))} files in it")
    formats = {FORMATS.get(path.suffix.lower()) for path in files}
    if None in formats:
        raise BulkInputError(
            f"--data {data}: unknown format; use one of {', '.join(sorted(FORMATS))}"
        )
    if len(formats) > 1:
        raise BulkInputError(f"--data {data}: mixes formats {sorted(formats)}; use one per run")
    return [str(path.resolve()) for path in files], formats.pop()  # type: ignore[return-value]


class CorpusRows:
    """Collects checked rows into Arrow blocks of at most ROWS_PER_BLOCK rows."""

    def __init__(self, path: str, max_chars: int) -> None:
        self.path = path
        self.max_chars = max_chars
        self.rows: list[int] = []
        self.texts: list[str | None] = []
        self.problems: list[str | None] = []

    def add(self, row: int, value: object, problem: str | None = None) -> None:
        """Record row `row` (1-based) holding `value`, or the reason it was unreadable."""
        problem = problem or problem_with(value, self.max_chars)
        self.rows.append(row)
        self.texts.append(value if problem is None else None)  # type: ignore[arg-type]
        self.problems.append(problem)

    def full(self) -> bool:
        """True when a block's worth of rows is waiting."""
        return len(self.rows) >= ROWS_PER_BLOCK

    def block(self) -> pa.Table:
        """The waiting rows as one block; the buffer starts again empty."""
        table = pa.table(
            {
                "path": [self.path] * len(self.rows),
                "row": self.rows,
                "text": self.texts,
                "problem": self.problems,
            },
            schema=SCHEMA,
        )
        self.rows, self.texts, self.problems = [], [], []
        return table


class CorpusDatasource(FileBasedDatasource):
    """CSV, TSV, JSONL or Parquet files as rows of (path, row, text, problem).

    Row numbers count data rows from 1 in each file (a CSV header is not a row; a JSONL
    row is a line). Each file is read whole by one task, so they are exact.
    """

    def __init__(self, paths: list[str], *, file_format: str, text_column: str, max_chars: int):
        super().__init__(paths)
        self.file_format = file_format
        self.text_column = text_column
        self.max_chars = max_chars

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        rows = CorpusRows(path, self.max_chars)
        reader = {
            "csv": self._csv_rows,
            "tsv": self._csv_rows,
            "jsonl": self._jsonl_rows,
            "parquet": self._parquet_rows,
        }[self.file_format]
        for _ in reader(f, path, rows):
            if rows.full():
                yield rows.block()
        if rows.rows:
            yield rows.block()

    def _csv_rows(self, f: pa.NativeFile, path: str, rows: CorpusRows) -> Iterator[None]:
        # surrogateescape: undecodable bytes surface as one bad row, not a failed file.
        text = io.TextIOWrapper(
            io.BytesIO(f.readall()), encoding="utf-8", errors="surrogateescape", newline=""
        )
        csv.field_size_limit(sys.maxsize)  # the length check reports long texts by row
        delimiter = "\t" if self.file_format == "tsv" else ","
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        if self.text_column not in header:
            raise BulkInputError(
                f"{path}: no column {self.text_column!r} (columns: {', '.join(header)}); "
                "choose one with --text-col"
            )
        column = header.index(self.text_column)
        row = 0
        while True:
            row += 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                rows.add(row, None, f"unparseable: {error}")
                yield None
                continue
            if len(fields) != len(header):
                rows.add(row, None, f"{len(fields)} fields, the header has {len(header)}")
            else:
                rows.add(row, fields[column])
            yield None

    def _jsonl_rows(self, f: pa.NativeFile, path: str, rows: CorpusRows) -> Iterator[None]:
        for row, line in enumerate(io.BytesIO(f.readall()), start=1):
            try:
                record = json.loads(line)
            except UnicodeDecodeError:
                rows.add(row, None, "not valid UTF-8")
            except json.JSONDecodeError as error:
                rows.add(row, None, "blank line" if not line.strip() else f"not JSON: {error}")
            else:
                if not isinstance(record, dict):
                    rows.add(row, None, "not a JSON object")
                elif self.text_column not in record:
                    rows.add(row, None, f"no {self.text_column!r} field")
                else:
                    rows.add(row, record[self.text_column])
            yield None

    def _parquet_rows(self, f: pa.NativeFile, path: str, rows: CorpusRows) -> Iterator[None]:
        table = pq.ParquetFile(pa.BufferReader(f.readall()))
        if self.text_column not in table.schema_arrow.names:
            raise BulkInputError(
                f"{path}: no column {self.text_column!r} "
                f"(columns: {', '.join(table.schema_arrow.names)}); choose one with --text-col"
            )
        row = 0
        for batch in table.iter_batches(batch_size=ROWS_PER_BLOCK, columns=[self.text_column]):
            for value in batch.column(0).to_pylist():
                row += 1
                rows.add(row, value)
                yield None
