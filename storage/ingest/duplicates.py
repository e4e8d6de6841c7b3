"""Duplicate ids across all shards of an ingestion: counted in memory when the ids are few enough,
otherwise found with DuckDB over the id column of the written shards."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from storage import layout
from storage.duck import connection
from storage.fs import Store
from storage.ingest.common import IngestError

DUPLICATE_IDS_SCANNED = 100_000
# An ingestion keeps the ids it wrote up to this many (tens of MB): a file of up to a million
# documents is checked in memory, without opening DuckDB (whose connection alone costs more CPU
# than parsing a 4 MB file) or reading the shards back; a larger one is checked by DuckDB.
IDS_CHECKED_IN_MEMORY = 1_000_000


def duplicates_in_memory(ids: pa.ChunkedArray) -> pa.Array:
    if pc.count_distinct(ids).as_py() == len(ids):
        return pa.array([], pa.string())
    counts = pc.value_counts(ids)
    return pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1)).slice(0, DUPLICATE_IDS_SCANNED)


def duplicates_with_duckdb(store: Store, shards: list[layout.Parts]) -> pa.Array:
    dataset = pads.dataset([store.path(*s) for s in shards], filesystem=store.fs, format="parquet")
    with connection() as con:
        con.register("corpus", dataset)
        return pa.array([r[0] for r in con.execute(
            f"SELECT id FROM corpus GROUP BY id HAVING count(*) > 1 LIMIT {DUPLICATE_IDS_SCANNED}"
        ).fetchall()], pa.string())


def check_duplicate_ids(store: Store, shards: list[layout.Parts], reader, ids: pa.ChunkedArray | None = None) -> None:
    """Raise duplicate_id for the id whose second occurrence comes first.

    `ids`: every id written, in order, when the caller kept them (at most IDS_CHECKED_IN_MEMORY);
    they are counted in memory. Otherwise DuckDB groups the id column of the written shards: its
    hash aggregate spills to disk past `memory_limit`, so memory stays bounded however many
    documents there are, and only ids are read back, not text. Only when duplicates exist does a
    second pass over the ids (the kept ones, or the id column streamed from the shards) find the
    earliest repeat among them (at most DUPLICATE_IDS_SCANNED ids are kept).
    """
    dups = duplicates_in_memory(ids) if ids is not None else duplicates_with_duckdb(store, shards)
    if len(dups) == 0:
        return
    first_row: dict[str, int] = {}
    row = 0
    columns = (ids.chunks if ids is not None else
               (b.column(0) for s in shards for b in store.iter_batches(*s, columns=["id"], batch_size=65536)))
    for column in columns:
        for i in pc.indices_nonzero(pc.is_in(column, value_set=dups)).to_pylist():
            doc_id = column[i].as_py()
            if doc_id in first_row:
                a, b = reader.lines_of([first_row[doc_id], row + i])
                unit = reader.unit
                raise IngestError("duplicate_id", f"duplicate id {doc_id!r}: {unit} {a} and {unit} {b}"
                                  f"{reader.line_note}; ids must be unique",
                                  {"id": doc_id, "line": b, "first_line": a, f"{unit}s": [a, b]})
            first_row[doc_id] = row + i
        row += len(column)
