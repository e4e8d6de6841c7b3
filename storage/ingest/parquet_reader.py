"""Parquet: read row group by row group in batches of bounded decoded size (a compressed file is
spooled to a temporary file first).

Parquet is compressed inside: 20 rows of 50 MB each can be a 2 KB file (one dictionary entry, or
one value repeated by DELTA_BYTE_ARRAY's shared prefixes). So, before decoding, the footer's
uncompressed sizes are held to `max_decompressed_bytes`, and each row group is read in batches
of as many rows as fit `block_size` decoded bytes at the most a row of it can decode to: its
average encoded size, or for a dictionary-encoded column its longest dictionary entry (read
alone first), or for DELTA_BYTE_ARRAY its whole encoded size. The bytes decoded are counted
against `max_decompressed_bytes` as they come. `bounded_batches` is that reading, for any
Parquet body (curriculum losses too).
"""
from __future__ import annotations

import tempfile
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.ingest.common import Fields, IngestError, Rows, extra_columns, first_invalid_utf8, valid_utf8
from storage.ingest.source import Source

PARQUET_BATCH_ROWS = 4096
Opener = Callable[[list[str] | None], pq.ParquetFile]   # (read_dictionary) -> the file, opened anew


def too_large(limit: int, what: str) -> IngestError:
    return IngestError("decompressed_too_large", f"the Parquet file {what} more than {limit} bytes "
                       "(THRESHER_MAX_DECOMPRESSED_BYTES)", {"limit_bytes": limit})


def bounded_batches(pf: pq.ParquetFile, reopen: Opener, columns: list[str], block_size: int,
                    limit: int | None) -> Iterator[pa.RecordBatch]:
    """`columns` of `pf` in batches of about `block_size` decoded bytes (at least one row), the
    bytes decoded held to `limit`: refused from the footer before anything is decoded when it can
    be, else at the batch that passes it. `reopen(read_dictionary)` opens the file again."""
    decoded = 0
    for group, rows in enumerate(_batch_rows(pf, reopen, columns, block_size, limit)):
        for batch in pf.iter_batches(batch_size=rows, row_groups=[group], columns=columns):
            decoded += batch.nbytes
            if limit and decoded > limit:
                raise too_large(limit, "decodes to")
            yield batch


def _batch_rows(pf: pq.ParquetFile, reopen: Opener, columns: list[str], block_size: int,
                limit: int | None) -> list[int]:
    """Rows per batch of each row group: `block_size` over the most a row of it can decode to."""
    meta, per_group, total = pf.metadata, [], 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        chunks = [c for c in map(group.column, range(group.num_columns)) if c.path_in_schema in columns]
        size = sum(c.total_uncompressed_size for c in chunks)
        total += size
        row_bytes = size / max(1, group.num_rows)
        for c in chunks:
            if "DELTA_BYTE_ARRAY" in c.encodings:   # a value can repeat all earlier bytes
                row_bytes = max(row_bytes, c.total_uncompressed_size)
            elif c.has_dictionary_page:
                row_bytes = max(row_bytes, _longest_entry(reopen, g, c.path_in_schema))
        per_group.append(max(1, min(PARQUET_BATCH_ROWS, int(block_size // max(row_bytes, 1)))))
    if limit and total > limit:
        raise too_large(limit, f"says its columns {', '.join(columns)} decompress to {total} bytes,")
    return per_group


def _longest_entry(reopen: Opener, group: int, column: str) -> int:
    """The longest value in a row group's dictionary of `column`: one row read with
    `read_dictionary` brings the whole dictionary page, decoded once, nothing repeated."""
    with reopen([column]) as pf:
        batch = next(pf.iter_batches(batch_size=1, row_groups=[group], columns=[column]), None)
    col = batch.column(0) if batch is not None else None
    if not isinstance(col, pa.DictionaryArray) or len(col.dictionary) == 0 or \
            not (pa.types.is_string(col.dictionary.type) or pa.types.is_binary(col.dictionary.type)):
        return 0
    return pc.max(pc.binary_length(col.dictionary)).as_py() or 0


class ParquetReader:
    unit = "row"
    line_note = ""

    def __init__(self, source: Source, fields: Fields, block_size: int, max_doc_bytes: int | None = None):
        self.max_doc_bytes, self.block_size = max_doc_bytes, block_size
        self.source, self.fields = source, fields
        self.ids_given = False

    def _open(self, spool) -> pq.ParquetFile:
        if self.source.compression:    # Parquet needs random access: decompress to a temporary file
            for data in self.source.blocks(8 << 20):
                spool.write(data)
            spool.flush()
            self._path = (pa.OSFile, spool.name)
        else:
            self._path = (lambda _: self.source.open_file(), None)
        return self._parquet_file()

    def _parquet_file(self, read_dictionary: list[str] | None = None) -> pq.ParquetFile | None:
        opener, path = self._path
        f = opener(path)
        if f.size() == 0:
            return None
        try:
            return pq.ParquetFile(f, pre_buffer=False, buffer_size=8 << 20, read_dictionary=read_dictionary)
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
            for c in (c for c in f if c and c in schema.names):
                self._column(schema, c, allow_int=c == f.id)
            columns = schema.names     # every column: the others are kept as they are typed
            start = 0
            try:
                for batch in bounded_batches(pf, self._parquet_file, columns, self.block_size,
                                             self.source.max_decompressed_bytes):
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
        return Rows(cols[f.text], cols.get(f.id), cols.get(f.source), extra_columns(batch, f))

    def lines_of(self, rows: list[int]) -> list[int]:
        return [r + 1 for r in rows]
