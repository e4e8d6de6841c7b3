"""JSON Lines: pyarrow's JSON reader for speed, `json.loads` line by line to name a bad line."""
from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from storage.ingest.common import (BOM, Fields, IngestError, Rows, check_encodable, extra_columns,
                                   extras_of, json_type, valid_utf8)
from storage.ingest.source import Source, prefetched



def count_newlines(data, end: int) -> int:
    """Newlines in data[:end]: numpy's vectorised compare, four times faster than bytes.count."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8, count=end) == 10))


def last_newline(data, step: int = 1 << 16) -> int:
    """The index of the last newline in `data` (-1 if none), looked for from the end."""
    end = len(data)
    while end > 0:
        start = max(0, end - step)
        found = bytes(data[start:end]).rfind(b"\n")
        if found >= 0:
            return start + found
        end = start
    return -1


def joined(pieces: list[memoryview]) -> memoryview:
    """The pieces in one buffer of pyarrow's pool."""
    out = pa.allocate_buffer(sum(map(len, pieces)))
    view, at = memoryview(out).cast("B"), 0
    for piece in pieces:
        view[at:at + len(piece)] = piece
        at += len(piece)
    return view


# Bytes that may pad a line besides its newline (what bytes.strip() strips).
_INLINE_SPACE = np.zeros(256, dtype=bool)
_INLINE_SPACE[[9, 11, 12, 13, 32]] = True
_BLANK = _INLINE_SPACE.copy()
_BLANK[10] = True


def all_blank(block) -> bool:
    """Whether `block` holds only whitespace (blank lines), found in one vectorised pass."""
    return not np.any(~_BLANK[np.frombuffer(block, dtype=np.uint8)])


def nonblank_lines(block) -> tuple[np.ndarray, np.ndarray, bool]:
    """(start offsets of the block's non-blank lines, their 0-based line numbers within the block,
    whether every one of them is a JSON object, i.e. starts with `{` after whitespace). Vectorised,
    so that millions of blank lines cost milliseconds, not a Python loop each."""
    data = np.frombuffer(block, dtype=np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(data == 10) + 1))
    starts = starts[starts < len(data)]
    first = data[starts]
    if np.any(_INLINE_SPACE[first]):     # lines starting with a space, tab or CR: the same lines
        solid = data[~_INLINE_SPACE[data]]   # with that padding removed, to see their first byte
        solid_starts = np.concatenate(([0], np.flatnonzero(solid == 10) + 1))[:len(starts)]
        first = np.append(solid, np.uint8(10))[solid_starts]
    index = np.flatnonzero(first != 10)
    return starts[index], index, bool(np.all(first[index] == ord("{")))


class JsonlReader:
    """JSON Lines in blocks of ~block_size bytes split at newlines. Blank lines are skipped."""
    unit = "line"
    line_note = ""   # appended to messages that cite lines

    def __init__(self, source: Source, fields: Fields, block_size: int, max_doc_bytes: int | None = None):
        self.source, self.fields, self.block_size = source, fields, block_size
        self.max_doc_bytes = max_doc_bytes
        self.id_mode: str | None = None      # "given" | "generated", fixed by the first document
        self.first_doc_line: int | None = None
        self.id_types = [pa.string(), pa.int64()]   # tried in turn; the one that worked goes first
        # Extra fields pyarrow would read as timestamps ("2024-05-01"): read as the strings they
        # are, as json.loads (the slow path) reads them, so that blocks agree.
        self.string_fields: dict[str, pa.DataType] = {}

    @property
    def ids_given(self) -> bool:
        return self.id_mode == "given"

    def _blocks(self) -> Iterator[tuple[int, memoryview]]:
        """(first line number, block ending at a newline) for each block with a non-blank line."""
        line, pending, first = 1, [], True     # pending: pieces of a line not yet ended
        for data in self.source.blocks(self.block_size, buffers=True):
            data = memoryview(data).cast("B")
            if first:
                data, first = data[len(BOM):] if data[:len(BOM)] == BOM else data, False
            end = last_newline(data)
            if end < 0:                          # inside a line longer than a block
                pending.append(data)
                if self.max_doc_bytes and sum(map(len, pending)) > self.max_doc_bytes:
                    raise IngestError("document_too_large", f"line {line}: longer than {self.max_doc_bytes} "
                                      "bytes (THRESHER_MAX_DOC_BYTES)",
                                      {"line": line, "limit_bytes": self.max_doc_bytes})
                continue
            cut = sum(map(len, pending)) + end + 1
            buf = joined(pending + [data]) if pending else data
            n = count_newlines(buf, cut)
            if not all_blank(buf[:cut]):     # blank lines count (as lines and inflated bytes), nothing more
                yield line, buf[:cut]
            line, pending = line + n, [buf[cut:]] if cut < len(buf) else []
        tail = joined(pending) if pending else memoryview(b"")
        if not all_blank(tail):
            yield line, tail

    def __iter__(self) -> Iterator[Rows]:
        for first_line, block in prefetched(self._blocks()):
            starts, index, objects = nonblank_lines(block)
            if not objects:                     # pyarrow must never see a line that is no object:
                yield self._parse_slow(first_line, block, starts, index)   # some (`null`) crash its reader
                continue
            table = self._parse_fast(block)
            rows = self._accept(table, len(starts), first_line + int(index[0])) if table is not None else None
            yield rows if rows is not None else self._parse_slow(first_line, block, starts, index)

    def _parse_fast(self, block) -> pa.Table | None:
        f = self.fields
        for id_type in list(self.id_types):
            table = self._read(block, id_type)
            if table is None:
                continue
            stamps = [n for n in table.schema.names if pa.types.is_timestamp(table.schema.field(n).type)]
            if stamps:
                self.string_fields.update({n: pa.string() for n in stamps})
                table = self._read(block, id_type)
            if table is not None:
                self.id_types.remove(id_type)
                self.id_types.insert(0, id_type)
                return table
        return None

    def _read(self, block, id_type: pa.DataType) -> pa.Table | None:
        """The block as pyarrow reads it (the named fields with their types, other fields inferred),
        or None when it cannot."""
        f = self.fields
        schema = pa.schema([(f.text, pa.string())] + ([(f.id, id_type)] if f.id else [])
                           + ([(f.source, pa.string())] if f.source else [])
                           + [(n, t) for n, t in self.string_fields.items() if n not in f])
        options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
        # pyarrow splits the block into 1 MiB pieces parsed in parallel; a longer document
        # "straddles" pieces, and the block is parsed again as one piece.
        for piece in (1 << 20, len(block) + 1):
            try:
                return pajson.read_json(pa.BufferReader(pa.py_buffer(block)), parse_options=options,
                                        read_options=pajson.ReadOptions(block_size=piece))
            except pa.ArrowInvalid as e:
                if "straddl" in str(e) and piece == 1 << 20:
                    continue
                return None
        return None

    def _accept(self, table: pa.Table, lines: int, first_doc_line: int) -> Rows | None:
        """The rows if pyarrow's parse is certainly right (one per non-blank line), else None (the
        block is parsed again)."""
        f, n = self.fields, table.num_rows
        if n != lines:
            return None                # two objects on one line, which JSON Lines forbids
        text = table.column(f.text)
        ids = table.column(f.id) if f.id else None
        source = table.column(f.source) if f.source else None
        mode = "given" if ids is not None and ids.null_count == 0 else \
            "generated" if ids is None or ids.null_count == n else None
        if text.null_count or mode is None or self.id_mode not in (None, mode):
            return None
        if not all(valid_utf8(c) for c in (text, ids, source) if c is not None and c.type == pa.string()):
            return None
        extras = extra_columns(table, f)
        if extras is not None:
            try:
                extras.validate(full=True)    # UTF-8 of every string, nested ones too
            except pa.ArrowInvalid:
                return None
        self.id_mode = mode
        if self.first_doc_line is None:
            self.first_doc_line = first_doc_line
        return Rows(text, ids.cast(pa.string()) if mode == "given" else None, source, extras)

    def _parse_slow(self, first_line: int, block, starts: np.ndarray, index: np.ndarray) -> Rows:
        """Line by line with json.loads (naming the first bad line); `starts` and `index`: the
        non-blank lines (nonblank_lines), the only ones looked at."""
        f = self.fields
        texts, ids, sources, docs = [], [], [], []
        data = bytes(block)
        for start, i in zip(starts.tolist(), index.tolist()):
            line, end = first_line + i, data.find(b"\n", start)
            raw = data[start:end if end >= 0 else len(data)]
            try:
                doc = json.loads(raw.decode("utf-8"), strict=False)   # raw tabs in strings: tolerated
            except UnicodeDecodeError as e:
                raise IngestError("invalid_utf8", f"line {line}: invalid UTF-8 at byte {e.start + 1}",
                                  {"line": line, "byte": e.start + 1}) from None
            except json.JSONDecodeError as e:
                raise IngestError("malformed_json", f"line {line}: malformed JSON: {e.msg} "
                                  f"(column {e.colno})", {"line": line, "column": e.colno}) from None
            except RecursionError:
                raise IngestError("malformed_json", f"line {line}: nested too deeply", {"line": line}) from None
            except ValueError as e:     # e.g. a number of more digits than Python converts
                raise IngestError("malformed_json", f"line {line}: {e}", {"line": line}) from None
            if not isinstance(doc, dict):
                raise IngestError("malformed_json", f"line {line}: expected a JSON object, found "
                                  f"{json_type(doc)} (one document per line)", {"line": line})
            if self.first_doc_line is None:
                self.first_doc_line = line
            texts.append(self._string(doc, f.text, line, required=True))
            if f.id:
                ids.append(self._id(doc, line))
            if f.source:
                sources.append(self._string(doc, f.source, line, required=False))
            docs.append(doc)
        if self.id_mode is None and texts:
            self.id_mode = "generated"      # no id field configured
        return Rows(pa.array(texts, pa.string()),
                     pa.array(ids, pa.string()) if self.id_mode == "given" else None,
                     pa.array(sources, pa.string()) if f.source else None, extras_of(docs, f))

    def _string(self, doc: dict, name: str, line: int, required: bool) -> str | None:
        value = doc.get(name)
        if value is None and not required:
            return None
        if name not in doc:
            raise IngestError("missing_field", f"line {line}: no {name!r} field", {"line": line, "field": name})
        if not isinstance(value, str):
            raise IngestError("wrong_type", f"line {line}: {name!r} must be a string, found "
                              f"{json_type(value)}", {"line": line, "field": name})
        check_encodable(value, name, line)
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
                              f"{json_type(value)}", {"line": line, "field": name})
        return check_encodable(value, name, line) if isinstance(value, str) else str(value)

    def lines_of(self, rows: list[int]) -> list[int]:
        """1-based line numbers of 0-based document rows (a second pass; for error messages)."""
        wanted, found, row = set(rows), {}, 0
        for first_line, block in self._blocks():
            index = nonblank_lines(block)[1]
            for r in wanted:
                if row <= r < row + len(index):
                    found[r] = first_line + int(index[r - row])
            row += len(index)
            if len(found) == len(wanted):
                break
        return [found.get(r, r + 1) for r in rows]
