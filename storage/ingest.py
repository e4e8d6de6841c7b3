"""Streaming corpus ingestion: a JSONL, CSV or Parquet file (optionally gzip/zstd) becomes Parquet
shards `dest/shard-00000.parquet`, … with columns id, text, source, in the input's row order.

Memory stays constant whatever the file size: the input is read block by block, each block is
parsed and validated, then handed to a background thread that appends it to the current shard (so
Parquet compression of one block overlaps parsing of the next). Any problem raises IngestError
naming the first bad line (JSONL, CSV) or row (Parquet), and everything written under `dest` is
removed: a failed ingestion stores nothing.

JSONL is parsed by pyarrow's JSON reader (only the three needed fields); whenever a block fails or
looks suspicious, that block is re-parsed line by line with `json.loads`, which either finds the
first bad line and names it or accepts the block (e.g. a block mixing int and string ids). CSV is
streamed by pyarrow and, on failure, re-read with the csv module to find the line. Duplicate ids
are found at the end by DuckDB over the id column of the written shards (see _check_duplicate_ids).
"""
from __future__ import annotations

import csv
import json
import os
import queue
import tempfile
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from storage.fs import Store

SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("source", pa.string()),
])
FORMATS = ("jsonl", "parquet", "csv")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
               ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
_COMPRESSED_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd")
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
_BOM = b"\xef\xbb\xbf"
MAX_EMPTY_IDS = 20
MAX_SOURCES = 10_000          # `sources` is a per-corpus summary, not a per-document column
_DUPLICATE_IDS_SCANNED = 100_000
_PARQUET_BATCH_ROWS = 4096


class IngestError(ValueError):
    """Bad input. `code` is the API error code; `details` locates it (`line`, `field`, `id`, …)."""

    STATUS = {"unknown_format": 415, "dest_not_empty": 409, "duplicate_id": 422,
              "missing_field": 422, "wrong_type": 422, "inconsistent_ids": 422,
              "too_many_sources": 422, "file_not_found": 404}

    def __init__(self, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}

    @property
    def status(self) -> int:
        """The HTTP status the service should answer with."""
        return self.STATUS.get(self.code, 400)

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "details": self.details}


@dataclass
class CorpusStats:
    num_docs: int
    num_bytes: int                # UTF-8 bytes of text
    num_shards: int
    num_empty: int                # documents whose text is empty or whitespace only (kept)
    empty_ids: list[str] = field(default_factory=list)   # the first MAX_EMPTY_IDS of them
    sources: dict[str, int] = field(default_factory=dict)  # documents per non-null source
    ids_generated: bool = False   # the input had no ids: they were generated

    def to_dict(self) -> dict:
        return asdict(self)


class _Fields(NamedTuple):
    text: str
    id: str | None        # None: always generate ids
    source: str | None    # None: no source column


class _Rows(NamedTuple):
    """One parsed block: string arrays; ids None when generated, source None when absent."""
    text: pa.Array | pa.ChunkedArray
    ids: pa.Array | pa.ChunkedArray | None
    source: pa.Array | pa.ChunkedArray | None


# -- public API ------------------------------------------------------------------------------

def detect_format(filename: str, format: str | None = None) -> str:
    """`format` if given, else from the file name (`.jsonl`, `.csv`, `.parquet`, … optionally `.gz`/`.zst`)."""
    if format:
        fmt = {"json": "jsonl", "ndjson": "jsonl"}.get(format.lower(), format.lower())
        if fmt not in FORMATS:
            raise IngestError("unknown_format", f"format {format!r} is not one of {', '.join(FORMATS)}",
                              {"format": format})
        return fmt
    name = os.path.basename(filename or "").lower()
    for suffix in _COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    ext = os.path.splitext(name)[1]
    if ext not in _EXTENSIONS:
        raise IngestError("unknown_format", f"cannot tell the format of {filename!r} from its name; "
                          f"name it .jsonl/.csv/.parquet (optionally .gz/.zst) or pass format",
                          {"filename": filename})
    return _EXTENSIONS[ext]


def ingest(src, *, filename: str, store: Store, dest: tuple[str, ...], format: str | None = None,
           text_field: str = "text", id_field: str | None = "id", source_field: str | None = "source",
           shard_size: int = 10_000, block_size: int = 8 << 20,
           progress: Callable[[int], None] | None = None) -> CorpusStats:
    """Validate `src` and store it as Parquet shards under `dest` of `store`.

    `src`: a local path, a URI pyarrow.fs understands (`s3://…`, `file://…`), or a
    `(pyarrow.fs.FileSystem, path)` pair. Compression (gzip, zstd) is detected from the magic bytes.
    Ids: the `id_field` values (ints become strings) or, when the first document has none, generated
    as the zero-padded row number `f"{row:010d}"`. `progress(num_docs)` is called after each block.
    Raises IngestError (nothing stored) for any bad input.
    """
    fmt = detect_format(filename, format)
    fields = _Fields(text_field, id_field or None, source_field or None)
    if not dest or shard_size < 1 or block_size < 1 or len({f for f in fields if f}) != len([f for f in fields if f]):
        raise ValueError("dest must be non-empty, shard_size and block_size positive, field names distinct")
    dest = tuple(dest)
    if store.list(*dest):
        raise IngestError("dest_not_empty", f"{store.uri(*dest)} already holds files", {"dest": list(dest)})
    reader = _READERS[fmt](_Source(src), fields, block_size)
    writer = _ShardWriter(store, dest, shard_size)
    stats = _StatsBuilder(fields.source)
    blocks = iter(reader)
    try:
        for rows in blocks:
            if len(rows.text):
                table = _to_table(rows, stats.num_docs)
                stats.add(table)
                writer.write(table)
                if progress:
                    progress(stats.num_docs)
        writer.close()
        if stats.num_docs == 0:
            raise IngestError("empty_file", f"{filename!r} holds no documents", {})
        if reader.ids_given:
            _check_duplicate_ids(store, dest, writer.shards, reader)
    except BaseException:
        blocks.close()     # stops the reading thread before anything is deleted
        writer.abort()
        store.delete(*dest)
        raise
    result = stats.result(len(writer.shards))
    result.ids_generated = not reader.ids_given
    return result


def corpus_shards(store: Store, dest: tuple[str, ...]) -> list[str]:
    """File names of a stored corpus's shards, in row order."""
    return [n for n in store.list(*dest, suffix=".parquet") if n.startswith("shard-")]


def iter_corpus(store: Store, dest: tuple[str, ...], columns: list[str] | None = None,
                batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
    """Stream a stored corpus back in row order, one record batch at a time."""
    for shard in corpus_shards(store, dest):
        yield from store.iter_batches(*dest, shard, columns=columns, batch_size=batch_size)


# -- input -----------------------------------------------------------------------------------

class _Source:
    """The input file, reopened as often as needed (a failing block is located by a second pass)."""

    def __init__(self, src):
        if isinstance(src, tuple):
            self.fs, self.path = src
        elif isinstance(src, str) and "://" in src:
            self.fs, self.path = pafs.FileSystem.from_uri(src)
        else:
            self.fs, self.path = pafs.LocalFileSystem(), os.path.abspath(os.fspath(src))
        if self.fs.get_file_info(self.path).type != pafs.FileType.File:
            raise IngestError("file_not_found", f"no file at {self.path}", {"path": self.path})
        with self.fs.open_input_stream(self.path, compression=None) as f:
            magic = f.read(4)
        self.compression = _MAGIC.get(magic[:2]) or _MAGIC.get(magic)

    def open(self):
        raw = self.fs.open_input_stream(self.path, compression=None)
        return pa.CompressedInputStream(raw, self.compression) if self.compression else raw

    def read(self, stream, n: int) -> bytes:
        try:
            return stream.read(n)
        except (OSError, pa.ArrowException) as e:
            if not self.compression:
                raise
            raise IngestError("corrupt_compression", f"cannot decompress the {self.compression} "
                              f"file: {e}", {"compression": self.compression}) from e

    def blocks(self, size: int) -> Iterator[bytes]:
        stream = self.open()
        try:
            while data := self.read(stream, size):
                yield data
        finally:
            stream.close()


def _prefetched(items: Iterator, depth: int = 2) -> Iterator:
    """`items` produced on a background thread (reading, decompressing and splitting the input
    overlap parsing), at most `depth` ahead so memory stays bounded. Errors arrive in order."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as e:   # handed to the consumer, raised there
            put((False, e))
        finally:
            items.close()

    thread = threading.Thread(target=produce, name="ingest-reader", daemon=True)
    thread.start()
    try:
        while True:
            more, item = slots.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _valid_utf8(column) -> bool:
    try:
        for chunk in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]):
            chunk.validate(full=True)   # full validation includes UTF-8 for string arrays
        return True
    except pa.ArrowInvalid:
        return False


def _first_invalid_utf8(column) -> int:
    for i, value in enumerate(column.cast(pa.binary()).to_pylist()):
        try:
            value is None or value.decode("utf-8")
        except UnicodeDecodeError:
            return i
    return -1


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


class _JsonlReader:
    """JSON Lines in blocks of ~block_size bytes split at newlines. Blank lines are skipped."""
    unit = "line"

    def __init__(self, source: _Source, fields: _Fields, block_size: int):
        self.source, self.fields, self.block_size = source, fields, block_size
        self.id_mode: str | None = None      # "given" | "generated", fixed by the first document
        self.first_doc_line: int | None = None
        self.id_types = [pa.string(), pa.int64()]   # tried in turn; the one that worked goes first

    @property
    def ids_given(self) -> bool:
        return self.id_mode == "given"

    def _blocks(self) -> Iterator[tuple[int, memoryview, int]]:
        """(first line number, block ending at a newline, newlines in it)."""
        line, pending, first = 1, [], True     # pending: pieces of a line not yet ended
        for data in self.source.blocks(self.block_size):
            if first:
                data, first = data.removeprefix(_BOM), False
            if data.rfind(b"\n") < 0:           # inside a line longer than a block
                pending.append(data)
                continue
            buf = b"".join(pending + [data]) if pending else data
            cut = buf.rfind(b"\n") + 1
            n = buf.count(b"\n", 0, cut)
            yield line, memoryview(buf)[:cut], n
            line, pending = line + n, [buf[cut:]] if cut < len(buf) else []
        tail = b"".join(pending)
        if tail.strip():
            yield line, memoryview(tail), 0

    def __iter__(self) -> Iterator[_Rows]:
        for first_line, block, newlines in _prefetched(self._blocks()):
            table = self._parse_fast(block)
            rows = self._accept(table, block, newlines, first_line) if table is not None else None
            yield rows if rows is not None else self._parse_slow(first_line, block)

    def _parse_fast(self, block) -> pa.Table | None:
        f = self.fields
        for id_type in list(self.id_types):
            schema = pa.schema([(f.text, pa.string())] + ([(f.id, id_type)] if f.id else [])
                               + ([(f.source, pa.string())] if f.source else []))
            options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
            # pyarrow splits the block into 1 MiB pieces parsed in parallel; a longer document
            # "straddles" pieces, and the block is parsed again as one piece.
            for piece in (1 << 20, len(block) + 1):
                try:
                    table = pajson.read_json(pa.BufferReader(pa.py_buffer(block)), parse_options=options,
                                             read_options=pajson.ReadOptions(block_size=piece))
                except pa.ArrowInvalid as e:
                    if "straddl" in str(e) and piece == 1 << 20:
                        continue
                    break
                self.id_types.remove(id_type)
                self.id_types.insert(0, id_type)
                return table
        return None

    def _accept(self, table: pa.Table, block, newlines: int, first_line: int) -> _Rows | None:
        """The rows if pyarrow's parse is certainly right, else None (the block is parsed again)."""
        f, n = self.fields, table.num_rows
        segments = newlines + (block[-1] != 10)
        if n != segments and n != sum(1 for s in bytes(block).split(b"\n") if s.strip()):
            return None                # two objects on one line, which JSON Lines forbids
        if n == 0:
            return _Rows(pa.array([], pa.string()), None, None)
        text = table.column(f.text)
        ids = table.column(f.id) if f.id else None
        source = table.column(f.source) if f.source else None
        mode = "given" if ids is not None and ids.null_count == 0 else \
            "generated" if ids is None or ids.null_count == n else None
        if text.null_count or mode is None or self.id_mode not in (None, mode):
            return None
        if not all(_valid_utf8(c) for c in (text, ids, source) if c is not None and c.type == pa.string()):
            return None
        self.id_mode = mode
        if self.first_doc_line is None:
            self.first_doc_line = next(i for i, s in enumerate(bytes(block).split(b"\n"), first_line) if s.strip())
        return _Rows(text, ids.cast(pa.string()) if mode == "given" else None, source)

    def _parse_slow(self, first_line: int, block) -> _Rows:
        f = self.fields
        texts, ids, sources = [], [], []
        for line, raw in enumerate(bytes(block).split(b"\n"), first_line):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw.decode("utf-8"), strict=False)   # raw tabs in strings: tolerated
            except UnicodeDecodeError as e:
                raise IngestError("invalid_utf8", f"line {line}: invalid UTF-8 at byte {e.start + 1}",
                                  {"line": line, "byte": e.start + 1}) from None
            except json.JSONDecodeError as e:
                raise IngestError("malformed_json", f"line {line}: malformed JSON: {e.msg} "
                                  f"(column {e.colno})", {"line": line, "column": e.colno}) from None
            if not isinstance(doc, dict):
                raise IngestError("malformed_json", f"line {line}: expected a JSON object, found "
                                  f"{_json_type(doc)} (one document per line)", {"line": line})
            if self.first_doc_line is None:
                self.first_doc_line = line
            texts.append(self._string(doc, f.text, line, required=True))
            if f.id:
                ids.append(self._id(doc, line))
            if f.source:
                sources.append(self._string(doc, f.source, line, required=False))
        if self.id_mode is None and texts:
            self.id_mode = "generated"      # no id field configured
        return _Rows(pa.array(texts, pa.string()),
                     pa.array(ids, pa.string()) if self.id_mode == "given" else None,
                     pa.array(sources, pa.string()) if f.source else None)

    def _string(self, doc: dict, name: str, line: int, required: bool) -> str | None:
        value = doc.get(name)
        if value is None and not required:
            return None
        if name not in doc:
            raise IngestError("missing_field", f"line {line}: no {name!r} field", {"line": line, "field": name})
        if not isinstance(value, str):
            raise IngestError("wrong_type", f"line {line}: {name!r} must be a string, found "
                              f"{_json_type(value)}", {"line": line, "field": name})
        _check_encodable(value, name, line)
        return value

    def _id(self, doc: dict, line: int) -> str | None:
        name, value = self.fields.id, doc.get(self.fields.id)
        mode = "given" if value is not None else "generated"
        if self.id_mode is None:
            self.id_mode = mode
        elif mode != self.id_mode:
            if mode == "generated":
                raise IngestError("missing_field", f"line {line}: no {name!r} field (the first document "
                                  f"has one: give every document an id, or none)", {"line": line, "field": name})
            raise IngestError("inconsistent_ids", f"line {line} has an {name!r} but the first document "
                              f"(line {self.first_doc_line}) has none: give every document an id, or none",
                              {"line": line, "field": name})
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise IngestError("wrong_type", f"line {line}: {name!r} must be a string or an integer, found "
                              f"{_json_type(value)}", {"line": line, "field": name})
        return _check_encodable(value, name, line) if isinstance(value, str) else str(value)

    def lines_of(self, rows: list[int]) -> list[int]:
        """1-based line numbers of 0-based document rows (a second pass; for error messages)."""
        wanted, found, row = set(rows), {}, 0
        for first_line, block, _ in self._blocks():
            for line, raw in enumerate(bytes(block).split(b"\n"), first_line):
                if raw.strip():
                    if row in wanted:
                        found[row] = line
                    row += 1
            if len(found) == len(wanted):
                break
        return [found.get(r, r + 1) for r in rows]


def _check_encodable(value: str, name: str, line: int) -> str:
    """json.loads turns an escaped lone surrogate ("\\ud800") into a str that is not valid UTF-8."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise IngestError("invalid_utf8", f"line {line}: {name!r} holds a lone surrogate escape "
                              f"(not valid Unicode)", {"line": line, "field": name}) from None
    return value


class _CsvReader:
    """CSV with a header line, streamed by pyarrow; Python's csv module locates problems."""
    unit = "line"

    def __init__(self, source: _Source, fields: _Fields, block_size: int):
        self.source, self.fields, self.block_size = source, fields, block_size
        self.columns: list[str] = []
        self.ids_given = False

    def _physical_lines(self) -> Iterator[str]:
        pending: list[bytes] = []       # pieces of a line not yet ended
        for data in self.source.blocks(1 << 20):
            if b"\n" not in data and b"\r" not in data:
                pending.append(data)
                continue
            lines = b"".join(pending + [data]).splitlines(keepends=True)
            pending = [lines.pop()]     # maybe incomplete, or a "\r" whose "\n" is in the next block
            for raw in lines:
                yield raw.decode("utf-8", "surrogateescape")
        if tail := b"".join(pending):
            yield tail.decode("utf-8", "surrogateescape")

    def _records(self) -> Iterator[tuple[int, list[str]]]:
        """(first line, fields) of each non-blank record, header included."""
        counted = [0]

        def counting():
            for text in self._physical_lines():
                counted[0] += 1
                yield text.removeprefix("\ufeff") if counted[0] == 1 else text

        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))   # the default is 128 KiB
        start, reader = 1, csv.reader(counting())
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise IngestError("malformed_csv", f"line {start}: {e} (line 1 is the header)",
                                  {"line": start}) from None
            if record:
                yield start, record
            start = counted[0] + 1

    def __iter__(self) -> Iterator[_Rows]:
        header = next(self._records(), (1, None))[1]
        if header is None:
            return
        f = self.fields
        if f.text not in header:
            raise IngestError("missing_field", f"line 1 (the header): no {f.text!r} column; columns are "
                              f"{header[:20]}", {"line": 1, "field": f.text})
        self.columns = [c for c in f if c and c in header]
        self.ids_given = bool(f.id and f.id in header)
        options = pacsv.ConvertOptions(include_columns=self.columns,
                                       column_types={c: pa.string() for c in self.columns})
        stream = self.source.open()
        try:
            try:
                reader = pacsv.open_csv(stream, convert_options=options,
                                        read_options=pacsv.ReadOptions(block_size=self.block_size),
                                        parse_options=pacsv.ParseOptions(newlines_in_values=True))
            except (pa.ArrowInvalid, OSError) as e:
                self._diagnose(e)
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except (pa.ArrowInvalid, OSError) as e:
                    self._diagnose(e)
                source = batch.column(f.source) if self.fields.source in self.columns else None
                if source is not None:   # CSV cannot say null: an empty cell means no source
                    source = pc.if_else(pc.equal(source, ""), pa.scalar(None, pa.string()), source)
                yield _Rows(batch.column(f.text), batch.column(f.id) if self.ids_given else None, source)
        finally:
            stream.close()

    def _diagnose(self, error: Exception):
        """pyarrow failed: find the first bad line with the csv module and raise about it."""
        records = self._records()
        _, header = next(records)
        index = {name: header.index(name) for name in self.columns}
        for line, record in records:
            if len(record) != len(header):
                raise IngestError("malformed_csv", f"line {line}: expected {len(header)} fields, found "
                                  f"{len(record)} (line 1 is the header)", {"line": line})
            for name, i in index.items():
                try:
                    record[i].encode("utf-8")
                except UnicodeEncodeError:
                    raise IngestError("invalid_utf8", f"line {line}: invalid UTF-8 in {name!r} "
                                      f"(line 1 is the header)", {"line": line, "field": name}) from None
        raise IngestError("malformed_csv", f"cannot parse the CSV file: {error}", {})

    def lines_of(self, rows: list[int]) -> list[int]:
        wanted, found = set(rows), {}
        for row, (line, _) in enumerate(self._records(), -1):   # row -1 is the header
            if row in wanted:
                found[row] = line
                if len(found) == len(wanted):
                    break
        return [found.get(r, r + 2) for r in rows]


class _ParquetReader:
    unit = "row"

    def __init__(self, source: _Source, fields: _Fields, block_size: int):
        self.source, self.fields = source, fields
        self.ids_given = False

    def _open(self, spool) -> pq.ParquetFile:
        if self.source.compression:    # Parquet needs random access: decompress to a temporary file
            for data in self.source.blocks(8 << 20):
                spool.write(data)
            spool.flush()
            f = pa.OSFile(spool.name)
        else:
            f = self.source.fs.open_input_file(self.source.path)
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

    def __iter__(self) -> Iterator[_Rows]:
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
                batches = pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns)
                for batch in batches:
                    yield self._rows(batch, start)
                    start += batch.num_rows
            except (pa.ArrowInvalid, OSError) as e:
                raise IngestError("malformed_parquet", f"row {start + 1} onwards cannot be read: {e}",
                                  {"row": start + 1, "line": start + 1}) from None

    def _rows(self, batch: pa.RecordBatch, start: int) -> _Rows:
        f = self.fields
        cols = {c: batch.column(c).cast(pa.string()) for c in f if c and c in batch.schema.names}
        for name, col in cols.items():
            if col.null_count and name != f.source:
                row = start + pc.index(pc.is_null(col), True).as_py() + 1
                raise IngestError("missing_field", f"row {row}: {name!r} is null",
                                  {"row": row, "line": row, "field": name})
            if not _valid_utf8(col):
                row = start + _first_invalid_utf8(col) + 1
                raise IngestError("invalid_utf8", f"row {row}: {name!r} is not valid UTF-8",
                                  {"row": row, "line": row, "field": name})
        return _Rows(cols[f.text], cols.get(f.id), cols.get(f.source))

    def lines_of(self, rows: list[int]) -> list[int]:
        return [r + 1 for r in rows]


_READERS = {"jsonl": _JsonlReader, "csv": _CsvReader, "parquet": _ParquetReader}


# -- output ----------------------------------------------------------------------------------

def _to_table(rows: _Rows, start: int) -> pa.Table:
    n = len(rows.text)
    ids = rows.ids
    if ids is None:
        ids = pc.utf8_lpad(pc.cast(pa.array(np.arange(start, start + n)), pa.string()), 10, "0")
    source = rows.source if rows.source is not None else pa.nulls(n, pa.string())
    cols = [c if isinstance(c, pa.ChunkedArray) else pa.chunked_array([c]) for c in (ids, rows.text, source)]
    return pa.Table.from_arrays(cols, schema=SCHEMA)


class _StatsBuilder:
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
        # utf8_is_space is false for "", hence the length test
        empty = pc.or_(pc.equal(lengths, 0), pc.utf8_is_space(text))
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


class _ShardWriter:
    """Appends tables to shards of `shard_size` rows on one background thread (so in order), with at
    most `depth` tables in flight, which bounds memory."""

    def __init__(self, store: Store, dest: tuple[str, ...], shard_size: int, depth: int = 2):
        self.store, self.dest, self.shard_size, self.depth = store, dest, shard_size, depth
        self.shards: list[str] = []
        self._writer = None
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
            if self._writer is None:
                self._name = f"shard-{len(self.shards):05d}.parquet"
                self._writer = self.store.parquet_writer(SCHEMA, *self.dest, self._name)
            room = self.shard_size - self._writer.rows
            self._writer.write(table.slice(0, room))
            table = table.slice(room)
            if self._writer.rows >= self.shard_size:
                self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.shards.append(self._name)
            self._writer = None


# -- duplicate ids ---------------------------------------------------------------------------

def _check_duplicate_ids(store: Store, dest: tuple[str, ...], shards: list[str], reader) -> None:
    """Raise duplicate_id for the id whose second occurrence comes first.

    DuckDB groups the id column of the written shards: its hash aggregate spills to disk past
    `memory_limit`, so memory stays bounded however many documents there are, and only ids are
    read back, not text. Only when duplicates exist does a second, streaming pass over the id
    column find the earliest repeat among them (at most _DUPLICATE_IDS_SCANNED ids are kept).
    """
    dataset = pads.dataset([store.path(*dest, s) for s in shards], filesystem=store.fs, format="parquet")
    with tempfile.TemporaryDirectory(prefix="ingest-duckdb-") as spill:
        con = duckdb.connect(config={"memory_limit": "1GB", "temp_directory": spill})
        try:
            con.register("corpus", dataset)
            dups = pa.array([r[0] for r in con.execute(
                f"SELECT id FROM corpus GROUP BY id HAVING count(*) > 1 LIMIT {_DUPLICATE_IDS_SCANNED}"
            ).fetchall()], pa.string())
        finally:
            con.close()
    if len(dups) == 0:
        return
    first_row: dict[str, int] = {}
    row = 0
    for batch in iter_corpus(store, dest, columns=["id"], batch_size=65536):
        ids = batch.column(0)
        for i in pc.indices_nonzero(pc.is_in(ids, value_set=dups)).to_pylist():
            doc_id = ids[i].as_py()
            if doc_id in first_row:
                a, b = reader.lines_of([first_row[doc_id], row + i])
                unit = reader.unit
                header = " (line 1 is the header)" if isinstance(reader, _CsvReader) else ""
                raise IngestError("duplicate_id", f"duplicate id {doc_id!r}: {unit} {a} and {unit} {b}"
                                  f"{header}; ids must be unique",
                                  {"id": doc_id, "line": b, "first_line": a, f"{unit}s": [a, b]})
            first_row[doc_id] = row + i
        row += len(ids)
