"""Parquet: read in row batches (a compressed file is spooled to a temporary file first)."""
from __future__ import annotations

import tempfile
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.ingest.common import Fields, IngestError, Rows, first_invalid_utf8, valid_utf8
from storage.ingest.source import Source

PARQUET_BATCH_ROWS = 4096


class ParquetReader:
    unit = "row"
    line_note = ""

    def __init__(self, source: Source, fields: Fields, block_size: int, max_doc_bytes: int | None = None):
        self.max_doc_bytes = max_doc_bytes
        self.source, self.fields = source, fields
        self.ids_given = False

    def _open(self, spool) -> pq.ParquetFile:
        if self.source.compression:    # Parquet needs random access: decompress to a temporary file
            for data in self.source.blocks(8 << 20):
                spool.write(data)
            spool.flush()
            f = pa.OSFile(spool.name)
        else:
            f = self.source.open_file()
        if f.size() == 0:
            return None
        try:
            return pq.ParquetFile(f, pre_buffer=False, buffer_size=8 << 20)
        except (pa.ArrowInvalid, OSError) as e:
            raise IngestError("malformed_parquet", f"not a readable Parquet file: {e}", {}) from None

    def _column(self, schema: pa.Schema, name: str, allow_int: bool):
        t = schema.field(name).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        ok = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) \
            or (allow_int and pa.types.is_integer(t))
        if not ok:
            raise IngestError("wrong_type", f"column {name!r} has type {t}; it must be a string"
                              + (" or an integer" if allow_int else ""), {"field": name})

    def __iter__(self) -> Iterator[Rows]:
        f = self.fields
        with tempfile.NamedTemporaryFile(suffix=".parquet") as spool:
            pf = self._open(spool)
            if pf is None:
                return
            schema = pf.schema_arrow
            if f.text not in schema.names:
                raise IngestError("missing_field", f"no {f.text!r} column; columns are {schema.names[:20]}",
                                  {"field": f.text})
            self.ids_given = bool(f.id and f.id in schema.names)
            columns = [c for c in f if c and c in schema.names]
            for c in columns:
                self._column(schema, c, allow_int=c == f.id)
            start = 0
            try:
                batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
                for batch in batches:
                    yield self._rows(batch, start)
                    start += batch.num_rows
            except (pa.ArrowInvalid, OSError) as e:
                raise IngestError("malformed_parquet", f"row {start + 1} onwards cannot be read: {e}",
                                  {"row": start + 1, "line": start + 1}) from None

    def _rows(self, batch: pa.RecordBatch, start: int) -> Rows:
        f = self.fields
        cols = {c: batch.column(c).cast(pa.string()) for c in f if c and c in batch.schema.names}
        for name, col in cols.items():
            if col.null_count and name != f.source:
                row = start + pc.index(pc.is_null(col), True).as_py() + 1
                raise IngestError("missing_field", f"row {row}: {name!r} is null",
                                  {"row": row, "line": row, "field": name})
            if not valid_utf8(col):
                row = start + first_invalid_utf8(col) + 1
                raise IngestError("invalid_utf8", f"row {row}: {name!r} is not valid UTF-8",
                                  {"row": row, "line": row, "field": name})
        return Rows(cols[f.text], cols.get(f.id), cols.get(f.source))

    def lines_of(self, rows: list[int]) -> list[int]:
        return [r + 1 for r in rows]
