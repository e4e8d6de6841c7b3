"""Output: parsed rows become stored tables, counted into corpus statistics, appended to shards."""
from __future__ import annotations

import json
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage import layout
from storage.fs import Store
from storage.ingest.common import JSON_META, MAX_EMPTY_IDS, MAX_SOURCES, SCHEMA, IngestError, Rows, empty_mask


@dataclass
class CorpusStats:
    num_docs: int
    num_bytes: int                # UTF-8 bytes of text
    num_shards: int
    num_empty: int                # documents whose text is empty or whitespace only (kept)
    empty_ids: list[str] = field(default_factory=list)   # the first MAX_EMPTY_IDS of them
    sources: dict[str, int] = field(default_factory=dict)  # documents per non-null source
    ids_generated: bool = False   # the input had no ids: they were generated
    fields: dict[str, str] = field(default_factory=dict)   # extra column -> its Arrow type
    json_fields: list[str] = field(default_factory=list)   # extras kept as JSON text (types disagreed)

    def to_dict(self) -> dict:
        return asdict(self)



def to_table(rows: Rows, start: int, id_prefix: str = "") -> pa.Table:
    """The stored table of a block whose first row is `start`; missing ids are generated from it."""
    n = len(rows.text)
    ids = rows.ids
    if ids is None:
        ids = pc.utf8_lpad(pc.cast(pa.array(np.arange(start, start + n)), pa.string()), 10, "0")
        if id_prefix:
            ids = pc.binary_join_element_wise(pa.scalar(id_prefix), ids, "")
    source = rows.source if rows.source is not None else pa.nulls(n, pa.string())
    cols = [c if isinstance(c, pa.ChunkedArray) else pa.chunked_array([c]) for c in (ids, rows.text, source)]
    table = pa.Table.from_arrays(cols, schema=SCHEMA)
    if rows.extras is not None:
        for f, column in zip(rows.extras.schema, rows.extras.columns):
            table = table.append_column(f, column)
    return table


# -- extra columns: one schema per corpus ------------------------------------------------------
# Each block's extra fields come with the types its reader found; a shard is written with the
# schema of its first block (later blocks are cast to it when they can be, else a new shard
# starts). When the corpus is complete, unify_shards settles one type per field and rewrites the
# shards that differ: nothing for data whose fields agree, which is the common case.

def is_json(f: pa.Field) -> bool:
    return (f.metadata or {}).get(b"thresher") == b"json"


def unified_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """The stored columns, then every extra field once (in order of first appearance), with the
    type all of `schemas` widen to (null -> int -> double, struct fields merged); a field whose
    types cannot be merged, or that is JSON text anywhere, becomes a JSON-text string column."""
    types: dict[str, list[pa.Field]] = {}
    for schema in schemas:
        for f in schema:
            if f.name not in SCHEMA.names:
                types.setdefault(f.name, []).append(f)
    out = list(SCHEMA)
    for name, found in types.items():
        try:
            if any(map(is_json, found)):
                raise pa.ArrowInvalid("json")
            merged = pa.unify_schemas([pa.schema([f.remove_metadata()]) for f in found],
                                      promote_options="permissive").field(name)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            merged = pa.field(name, pa.string(), metadata=JSON_META)
        out.append(merged)
    return pa.schema(out)


def conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with the columns and types of `schema` (missing extras null). Raises pa.ArrowInvalid
    (or another ArrowException) when a column cannot be cast."""
    columns = []
    for f in schema:
        if f.name not in table.schema.names:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        column, have = table.column(f.name), table.schema.field(f.name)
        if is_json(f) and not is_json(have):
            column = pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                               for v in column.to_pylist()], pa.string())
        columns.append(column if column.type == f.type else column.cast(f.type))
    if set(table.schema.names) - set(schema.names):
        raise pa.ArrowInvalid("the table has columns the schema lacks")
    return pa.Table.from_arrays(columns, schema=schema)


def unify_shards(store: Store, shards: list[layout.Parts], compression: str = "zstd") -> pa.Schema:
    """Give every shard the corpus's one schema (unified_schema of theirs), rewriting those that
    differ; the schema."""
    schemas = [store.parquet_file(*parts).schema_arrow for parts in shards]
    schema = unified_schema(schemas)
    for parts, have in zip(shards, schemas):
        if not have.equals(schema, check_metadata=True):
            table = conformed(store.read_parquet(*parts), schema)
            store.write_parquet(table, *parts, **shard_options(compression))
    return schema


def field_types(schema: pa.Schema) -> tuple[dict[str, str], list[str]]:
    """(extra field -> type, the extras stored as JSON text) of a corpus schema."""
    extras = [f for f in schema if f.name not in SCHEMA.names]
    return {f.name: str(f.type) for f in extras}, [f.name for f in extras if is_json(f)]


class StatsBuilder:
    def __init__(self, source_field: str | None):
        self.source_field = source_field
        self.num_docs = self.num_bytes = self.num_empty = 0
        self.empty_ids: list[str] = []
        self.sources: Counter = Counter()

    def add(self, table: pa.Table) -> None:
        text = table.column("text")
        lengths = pc.binary_length(text)
        self.num_docs += table.num_rows
        self.num_bytes += pc.sum(lengths).as_py() or 0
        empty = pa.array(empty_mask(text))
        n_empty = pc.sum(empty).as_py() or 0
        if n_empty:
            self.num_empty += n_empty
            room = MAX_EMPTY_IDS - len(self.empty_ids)
            if room > 0:
                self.empty_ids += pc.filter(table.column("id"), empty).slice(0, room).to_pylist()
        counts = pc.value_counts(table.column("source"))
        for value, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
            if value is not None:
                self.sources[value] += count
        if len(self.sources) > MAX_SOURCES:
            raise IngestError("too_many_sources", f"more than {MAX_SOURCES} distinct sources; "
                              f"source_field should name a column with few values (a dataset or domain "
                              f"name), or be empty", {"field": self.source_field})

    def result(self, num_shards: int) -> CorpusStats:
        return CorpusStats(self.num_docs, self.num_bytes, num_shards, self.num_empty,
                           self.empty_ids, dict(self.sources.most_common()))


SHARD_COMPRESSIONS = ("zstd", "lz4", "snappy", "none")


def shard_options(compression: str = "zstd") -> dict:
    """pyarrow ParquetWriter options of a corpus shard. Only `source` is dictionary-encoded: ids and
    texts are (nearly) all distinct, and a dictionary tried on them is built, overflows and is
    thrown away in every row group. No statistics for `text`: nothing filters on its min and max,
    which are whole documents stored in every page header and column chunk."""
    if compression not in SHARD_COMPRESSIONS:
        raise ValueError(f"shard compression {compression!r} is not one of {', '.join(SHARD_COMPRESSIONS)}")
    return {"compression": compression, "use_dictionary": ["source"], "write_statistics": ["id", "source"]}


class ShardWriter:
    """Appends tables to shards of `shard_size` rows on one background thread (so in order), with at
    most `depth` tables in flight, which bounds memory."""

    def __init__(self, store: Store, dest: tuple[str, ...], shard_size: int, depth: int = 2,
                 unit: tuple[int, int] | None = None, compression: str = "zstd"):
        self.store, self.dest, self.shard_size, self.depth, self.unit = store, dest, shard_size, depth, unit
        self.options = shard_options(compression)
        self.shards: list[layout.Parts] = []   # paths of the finished shards, in order
        self._writer = None
        self._schema: pa.Schema | None = None    # the current shard's (and, so far, the corpus's)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ingest-writer")
        self._in_flight: deque = deque()

    def write(self, table: pa.Table) -> None:
        self._in_flight.append(self._pool.submit(self._append, table))
        while len(self._in_flight) > self.depth:
            self._in_flight.popleft().result()

    def close(self) -> None:
        self._in_flight.append(self._pool.submit(self._close_shard))
        while self._in_flight:
            self._in_flight.popleft().result()
        self._pool.shutdown()

    def abort(self) -> None:
        for future in self._in_flight:
            future.cancel()
        self._pool.shutdown(wait=True)
        if self._writer is not None:
            try:
                self._writer.abort()
            except Exception:
                pass
            self._writer = None

    def _append(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is not None and not table.schema.equals(self._schema, check_metadata=True):
                try:
                    table = conformed(table, self._schema)
                except pa.ArrowException:     # new fields or wider types: a shard of its own
                    self._schema = unified_schema([self._schema, table.schema])
                    self._close_shard()
            if self._writer is None:
                self._path = layout.shard_in(self.dest, len(self.shards), self.unit)
                self._schema = unified_schema([s for s in (self._schema, table.schema) if s is not None])
                table = conformed(table, self._schema)
                self._writer = self.store.parquet_writer(self._schema, *self._path, **self.options)
            room = self.shard_size - self._writer.rows
            self._writer.write(table.slice(0, room))
            table = table.slice(room)
            if self._writer.rows >= self.shard_size:
                self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.shards.append(self._path)
            self._writer = None
