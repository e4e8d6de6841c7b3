"""What every format reader shares: the stored schema, the error type, the field names a reader
looks for, the rows it yields, and UTF-8 / JSON helpers for naming a bad line.

A reader (jsonl_reader, csv_reader, parquet_reader) is built as `Reader(source, fields, block_size)`
and iterates over `Rows` blocks in input order. It has `ids_given` (after iteration: the input had
ids), `unit` ("line" or "row"), `line_note` (said after a line number) and `lines_of(rows)`, the
1-based input lines of 0-based document rows.
"""
from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.errors import DomainError

# The columns every corpus shard starts with; the input's other fields follow as extra columns
# (their types per corpus: see shards.unify_shards).
SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("source", pa.string()),
])
FORMATS = ("jsonl", "parquet", "csv", "text")
MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
BOM = b"\xef\xbb\xbf"
MAX_EMPTY_IDS = 20
MAX_SOURCES = 10_000          # `sources` is a per-corpus summary, not a per-document column


class IngestError(DomainError):
    """Bad input. `code` names the problem; `details` locates it (`line`, `field`, `id`, …)."""


class Fields(NamedTuple):
    text: str
    id: str | None        # None: always generate ids
    source: str | None    # None: no source column


class Rows(NamedTuple):
    """One parsed block: string arrays; ids None when generated, source None when absent; `extras`
    the input's other fields (a table of the block's rows), None when it has none."""
    text: pa.Array | pa.ChunkedArray
    ids: pa.Array | pa.ChunkedArray | None
    source: pa.Array | pa.ChunkedArray | None
    extras: pa.Table | None = None


def empty_mask(texts) -> np.ndarray:
    """Documents with no text or nothing but whitespace (an Arrow column or a list of strings):
    counted at ingest, never scored, selected or trained on. The one rule, for ingest and every job."""
    if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = pa.array(texts, pa.string())
    # utf8_is_space is false for "", hence the length test; no trimmed copy of the text is made
    # (ingest runs this over every byte it stores).
    empty = pc.or_(pc.equal(pc.binary_length(texts), 0), pc.utf8_is_space(texts))
    return pc.fill_null(empty, True).to_numpy(zero_copy_only=False)


def stored_name(name: str) -> str:
    """The column an extra field is stored as: a field named like a stored column (`text` beside
    text_field="body") becomes `extra_text`, so that it never overwrites what Thresher stores."""
    return f"extra_{name}" if name in SCHEMA.names else name


def extra_columns(table, fields: Fields) -> pa.Table | None:
    """The columns of `table` (Table or RecordBatch) that are not `fields`, or None when none are."""
    names = [n for n in table.schema.names if n not in fields]
    if not names:
        return None
    return pa.Table.from_arrays([table.column(n) for n in names], names=[stored_name(n) for n in names])


def extras_of(docs: list[dict], fields: Fields) -> pa.Table | None:
    """The fields of parsed JSON objects beyond `fields`, one column each (missing: null), typed as
    pyarrow infers them; a field whose values disagree in type is JSON text (JSON_META)."""
    names = list(dict.fromkeys(k for doc in docs for k in doc if k not in fields))
    if not names:
        return None
    arrays, schema = [], []
    for name in names:
        values = [doc.get(name) for doc in docs]
        try:
            array, meta = pa.array(values), None
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeEncodeError):
            array, meta = pa.array([None if v is None else json.dumps(v) for v in values], pa.string()), JSON_META
        arrays.append(array)
        schema.append(pa.field(stored_name(name), array.type, metadata=meta))
    return pa.Table.from_arrays(arrays, schema=pa.schema(schema))


JSON_META = {b"thresher": b"json"}    # field metadata: the column holds each value's JSON text


def lines_at(numbered, rows: list[int], offset: int) -> list[int]:
    """The 1-based input line of each 0-based document row, from (row, line) pairs in order (read
    only as far as needed); `row + offset` for a row never met."""
    wanted, found = set(rows), {}
    for row, line in numbered:
        if row in wanted:
            found[row] = line
            if len(found) == len(wanted):
                break
    return [found.get(r, r + offset) for r in rows]


def valid_utf8(column) -> bool:
    try:
        for chunk in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]):
            chunk.validate(full=True)   # full validation includes UTF-8 for string arrays
        return True
    except pa.ArrowInvalid:
        return False


def first_invalid_utf8(column) -> int:
    for i, value in enumerate(column.cast(pa.binary()).to_pylist()):
        try:
            value is None or value.decode("utf-8")
        except UnicodeDecodeError:
            return i
    return -1


def json_type(value) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)



def check_encodable(value: str, name: str, line: int) -> str:
    """json.loads turns an escaped lone surrogate ("\\ud800") into a str that is not valid UTF-8."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise IngestError("invalid_utf8", f"line {line}: {name!r} holds a lone surrogate escape "
                              f"(not valid Unicode)", {"line": line, "field": name}) from None
    return value
