"""Stream Arrow record batches out as Parquet, CSV or JSON Lines bytes, chunk by chunk."""
from __future__ import annotations

import io
import json
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

MEDIA_TYPES = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv",
               "jsonl": "application/x-ndjson"}


class ByteSink(io.RawIOBase):
    """A write-only file that hands out what was written since the last drain()."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.chunks.append(bytes(b))
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos

    def __len__(self) -> int:
        """Bytes written since the last drain()."""
        return sum(map(len, self.chunks))

    def drain(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


DOWNLOAD_BATCH_BYTES = 2 << 20


def bounded_batches(pf: pq.ParquetFile, columns: list[str] | None = None,
                    target_bytes: int = DOWNLOAD_BATCH_BYTES) -> Iterator[pa.RecordBatch]:
    """A stored Parquet file in batches of about `target_bytes` (at least one row), row group by
    row group, sized from the footer: a download holds a batch or two whatever the file's size (a
    batch of 8192 documents was 40 MB, and a dataset scanner's read-ahead ~25 MB per download)."""
    meta = pf.metadata
    wanted = set(columns or pf.schema_arrow.names)
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        size = sum(c.total_uncompressed_size for c in map(group.column, range(group.num_columns))
                   if c.path_in_schema in wanted)
        rows = max(1, int(target_bytes * group.num_rows // max(1, size)))
        yield from pf.iter_batches(batch_size=rows, row_groups=[g], columns=columns, use_threads=False)


def encode(batches: Iterable[pa.RecordBatch], schema: pa.Schema, fmt: str) -> Iterator[bytes]:
    if fmt == "parquet":
        sink = ByteSink()
        writer = pq.ParquetWriter(sink, schema, compression="zstd")
        for b in batches:
            writer.write_batch(b)
            if chunk := sink.drain():
                yield chunk
        writer.close()
        yield sink.drain()
    elif fmt == "csv":
        first = True
        for b in batches:
            buf = io.BytesIO()
            pacsv.write_csv(pa.Table.from_batches([b], schema), buf,
                            pacsv.WriteOptions(include_header=first))
            first = False
            yield buf.getvalue()
        if first:  # no rows: still a header
            buf = io.BytesIO()
            pacsv.write_csv(schema.empty_table(), buf)
            yield buf.getvalue()
    elif fmt == "jsonl":
        for b in batches:
            yield "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in b.to_pylist()).encode()
    else:
        raise ValueError(f"unknown format {fmt}")
