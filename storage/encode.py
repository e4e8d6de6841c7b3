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
