"""The optional Parquet output (text_sha256, vector), written atomically."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class VectorsFile:
    """Streams (text hash, vector) rows into a scratch file that `commit` renames into place.

    A job that dies leaves no half file at `target`: the old one stays, or none.
    """

    def __init__(self, target: Path, dim: int) -> None:
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.stem}-", suffix=".tmp"
        )
        os.close(descriptor)
        self.scratch = Path(name)
        self.schema = pa.schema(
            [("text_sha256", pa.string()), ("vector", pa.list_(pa.float32(), dim))]
        )
        self.writer = pq.ParquetWriter(self.scratch, self.schema)
        self.rows = 0

    def write(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Append rows; `vectors` is float32 (len(hashes), dim)."""
        if not hashes:
            return
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        self.writer.write_table(pa.table([pa.array(hashes), column], schema=self.schema))
        self.rows += len(hashes)

    def commit(self) -> None:
        """Flush to disk and rename onto the target."""
        self.writer.close()
        with self.scratch.open("rb") as handle:
            os.fsync(handle.fileno())
        self.scratch.chmod(0o644)
        os.replace(self.scratch, self.target)

    def abort(self) -> None:
        """Drop the scratch file."""
        self.writer.close()
        self.scratch.unlink(missing_ok=True)
