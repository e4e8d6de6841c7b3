"""Streaming corpus ingestion: a JSONL, CSV, Parquet or plain-text file (optionally gzip/zstd) becomes
Parquet shards `dest/shard-00000.parquet`, … with columns id, text, source and the input's other
fields (extra columns, one type each per corpus), in the input's row order.

Memory stays constant whatever the file size: the input is read block by block, each block is
parsed and validated, then handed to a background thread that appends it to the current shard (so
Parquet compression of one block overlaps parsing of the next). Any problem raises IngestError
naming the first bad line (JSONL, CSV) or row (Parquet), and everything written under `dest` is
removed: a failed ingestion stores nothing.

JSONL is parsed by pyarrow's JSON reader (only the three needed fields); whenever a block fails or
looks suspicious, that block is re-parsed line by line with `json.loads`, which either finds the
first bad line and names it or accepts the block (e.g. a block mixing int and string ids). CSV is
streamed by pyarrow and, on failure, re-read with the csv module to find the line. Duplicate ids
are found at the end by DuckDB over the id column of the written shards (see duplicates.py).
"""
from __future__ import annotations

import os
import re
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from storage import layout
from storage.fs import Store
from storage.ingest.common import FORMATS, SCHEMA, Fields, IngestError
from storage.ingest.csv_reader import CsvReader
from storage.ingest.duplicates import IDS_CHECKED_IN_MEMORY, check_duplicate_ids
from storage.ingest.jsonl_reader import JsonlReader
from storage.ingest.parquet_reader import ParquetReader
from storage.ingest.shards import CorpusStats, ShardWriter, StatsBuilder, field_types, to_table, unify_shards
from storage.ingest.source import Source
from storage.ingest.text_reader import SPLITS, TextReader

__all__ = ["COMPRESSED_SUFFIXES", "FORMATS", "SCHEMA", "SPLITS", "CorpusStats", "Fields", "IngestError",
           "check_duplicate_ids", "detect_format", "ingest", "iter_corpus"]

READERS = {"jsonl": JsonlReader, "csv": CsvReader, "parquet": ParquetReader, "text": TextReader}
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet", ".csv": "csv",
              ".txt": "text", ".text": "text", ".md": "text"}
COMPRESSED_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd")


def detect_format(filename: str, format: str | None = None) -> str:
    """`format` if given, else from the file name (`.jsonl`, `.csv`, `.parquet`, … optionally `.gz`/`.zst`)."""
    if format:
        fmt = {"json": "jsonl", "ndjson": "jsonl"}.get(format.lower(), format.lower())
        if fmt not in FORMATS:
            raise IngestError("unknown_format", f"format {format!r} is not one of {', '.join(FORMATS)}",
                              {"format": format})
        return fmt
    name = os.path.basename(filename or "").lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    ext = os.path.splitext(name)[1]
    if ext not in EXTENSIONS:
        raise IngestError("unknown_format", f"cannot tell the format of {filename!r} from its name; "
                          f"name it .jsonl/.csv/.parquet/.txt/.md (optionally .gz/.zst) or pass format",
                          {"filename": filename})
    return EXTENSIONS[ext]


def ingest(src, *, filename: str, store: Store, dest: tuple[str, ...], format: str | None = None,
           text_field: str = "text", id_field: str | None = "id", source_field: str | None = "source",
           shard_size: int = 10_000, block_size: int = 8 << 20, unit: tuple[int, int] | None = None,
           byte_range: tuple[int, int] | None = None, max_doc_bytes: int | None = None,
           max_decompressed_bytes: int | None = None, check_ids: bool = True, compression: str = "zstd",
           split: str = "file", source_from: str | None = None,
           progress: Callable[[int], None] | None = None) -> CorpusStats:
    """Validate `src` and store it as Parquet shards under `dest` of `store`.

    `src`: a local path, a URI pyarrow.fs understands (`s3://…`, `file://…`), or a
    `(pyarrow.fs.FileSystem, path)` pair. Compression (gzip, zstd) is detected from the magic bytes.
    Ids: the `id_field` values (ints become strings) or, when the first document has none, generated
    as the zero-padded row number `f"{row:010d}"`. `progress(num_docs)` is called after each block.

    `unit=(file, range)`: this call ingests one unit of a many-file corpus (one file, or the lines of
    `byte_range` of an uncompressed JSONL file) into shards of its own (layout.shard_in); generated
    ids then start with `f"{file:05d}-{range:05d}-"` so that units never share one.
    `check_ids=False` leaves duplicate ids to the caller (one check over all units is cheaper).
    `compression`: the shards' Parquet codec (shards.SHARD_COMPRESSIONS).
    Plain text (format "text"): `split` cuts it into documents ("file", "line", "paragraph"), ids
    come from `filename` (a path relative to what was registered), `source_from="dir"` takes the
    source from its first directory (text_reader.py).
    The input's other fields are stored as extra columns, one type per field (shards.unify_shards).
    Raises IngestError (nothing of this call stored) for any bad input.
    """
    fmt = detect_format(filename, format)
    fields = Fields(text_field, id_field or None, source_field or None)
    named = [f for f in fields if f]
    if len(set(named)) != len(named):
        raise IngestError("validation_error", "text_field, id_field and source_field must name different "
                          "fields", {"field": "id_field" if fields.id == fields.text else "source_field"})
    if not dest or shard_size < 1 or block_size < 1:
        raise ValueError("dest must be non-empty, shard_size and block_size positive")
    dest = tuple(dest)
    if unit is None and store.list(*dest):
        raise IngestError("dest_not_empty", f"{store.uri(*dest)} already holds files", {"dest": list(dest)})
    source = Source(src, byte_range, max_decompressed_bytes)
    if fmt == "text":
        reader = TextReader(source, fields, block_size, max_doc_bytes, name=filename, split=split,
                            source_from=source_from)
    else:
        reader = READERS[fmt](source, fields, block_size, max_doc_bytes)
    writer = ShardWriter(store, dest, shard_size, unit=unit, compression=compression)
    stats = StatsBuilder(fields.source)
    id_prefix = "" if unit is None else f"{unit[0]:05d}-{unit[1]:05d}-"
    blocks = iter(reader)
    ids: list | None = [] if check_ids else None   # the ids written, while at most IDS_CHECKED_IN_MEMORY
    try:
        for rows in blocks:
            if len(rows.text):
                table = to_table(rows, stats.num_docs, id_prefix)
                check_document_size(table, stats.num_docs, reader, max_doc_bytes)
                stats.add(table)
                writer.write(table)
                if ids is not None:
                    ids.extend(table.column("id").chunks)
                    if stats.num_docs > IDS_CHECKED_IN_MEMORY:
                        ids = None
                if progress:
                    progress(stats.num_docs)
        writer.close()
        schema = unify_shards(store, writer.shards, compression)
        if stats.num_docs == 0 and unit is None:
            raise IngestError("empty_file", f"{filename!r} holds no documents", {})
        if reader.ids_given and check_ids:
            check_duplicate_ids(store, writer.shards, reader,
                                None if ids is None else pa.chunked_array(ids, pa.string()))
    except BaseException as e:
        blocks.close()     # stops the reading thread before anything is deleted
        writer.abort()
        if unit is None:
            store.delete(*dest)
        else:
            for shard in writer.shards:
                store.delete(*shard)
        if isinstance(e, IngestError) and source.range:
            raise in_whole_file(e, source.lines_before()) from None
        raise
    result = stats.result(len(writer.shards))
    result.fields, result.json_fields = field_types(schema)
    result.ids_generated = not reader.ids_given and stats.num_docs > 0
    return result


def check_document_size(table: pa.Table, first_row: int, reader, max_doc_bytes: int | None) -> None:
    if not max_doc_bytes or not table.num_rows:
        return
    lengths = pc.binary_length(table.column("text"))
    if (pc.max(lengths).as_py() or 0) > max_doc_bytes:
        row = first_row + pc.index(pc.greater(lengths, max_doc_bytes), True).as_py()
        line = reader.lines_of([row])[0]
        raise IngestError("document_too_large", f"{reader.unit} {line}: a document longer than "
                          f"{max_doc_bytes} bytes (THRESHER_MAX_DOC_BYTES){reader.line_note}",
                          {"line": line, "limit_bytes": max_doc_bytes})


def in_whole_file(error: IngestError, lines_before: int) -> IngestError:
    """An error of a byte range, its line numbers counted from the start of the whole file."""
    def shift(value):
        return value + lines_before if isinstance(value, int) else value
    details = {k: (shift(v) if k in ("line", "first_line") else [shift(x) for x in v] if k == "lines" else v)
               for k, v in error.details.items()}
    message = re.sub(r"\bline (\d+)", lambda m: f"line {int(m.group(1)) + lines_before}", error.message)
    return IngestError(error.code, message, details)


def iter_corpus(store: Store, dest: tuple[str, ...], columns: list[str] | None = None,
                batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
    """Stream a stored corpus back in row order, one record batch at a time."""
    for _, shard in layout.shards_in(store, dest):
        yield from store.iter_batches(*shard, columns=columns, batch_size=batch_size)
