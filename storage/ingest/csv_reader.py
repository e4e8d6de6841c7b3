"""CSV with a header line: streamed by pyarrow, located by Python's csv module on failure."""
from __future__ import annotations

import csv
import re
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from storage.ingest.common import Fields, IngestError, Rows, extra_columns, lines_at
from storage.ingest.source import Source

_BREAKS = re.compile(rb"[\r\n]{2,}")   # a line's end and maybe blank lines after it


def _collapsed(data: bytes) -> Iterator[tuple[str, int]]:
    """The lines of `data` (decoded, surrogate-escaped), each run of blank lines as one "\n"."""
    pos = 0
    for run in _BREAKS.finditer(data):
        breaks = run.group()
        first = 2 if breaks.startswith(b"\r\n") else 1    # the break that ends the line before
        for raw in data[pos:run.start() + first].splitlines(keepends=True):
            yield raw.decode("utf-8", "surrogateescape"), 1
        if blank := breaks.count(b"\n") + breaks.count(b"\r") - breaks.count(b"\r\n") - 1:
            yield "\n", blank
        pos = run.end()
    for raw in data[pos:].splitlines(keepends=True):
        yield raw.decode("utf-8", "surrogateescape"), 1


class CsvReader:
    """CSV with a header line, streamed by pyarrow; Python's csv module locates problems."""
    unit = "line"
    line_note = " (line 1 is the header)"   # appended to messages that cite lines

    def __init__(self, source: Source, fields: Fields, block_size: int, max_doc_bytes: int | None = None):
        self.max_doc_bytes = max_doc_bytes
        self.source, self.fields, self.block_size = source, fields, block_size
        self.columns: list[str] = []
        self.ids_given = False

    def _physical_lines(self) -> Iterator[tuple[str, int]]:
        """(line, how many lines it stands for): a run of blank lines comes as one blank line, so
        that a million of them cost one regular-expression match, not a million csv records (a
        blank line inside a quoted value shrinks, which nothing that reads these lines minds)."""
        pending: list[bytes] = []       # pieces of a line not yet ended
        for data in self.source.blocks(1 << 20):
            # the last complete line ends at the last "\n", or at a "\r" whose "\n" cannot follow
            end = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1))
            if end < 0:
                pending.append(data)
                if self.max_doc_bytes and sum(map(len, pending)) > self.max_doc_bytes:
                    raise IngestError("document_too_large", f"a line longer than {self.max_doc_bytes} bytes "
                                      "(THRESHER_MAX_DOC_BYTES)", {"limit_bytes": self.max_doc_bytes})
                continue
            buf = b"".join(pending + [data[:end + 1]])
            pending = [data[end + 1:]]
            yield from _collapsed(buf[:end + 1])
        if tail := b"".join(pending):
            yield from _collapsed(tail)

    def _records(self, strict: bool = False) -> Iterator[tuple[int, list[str]]]:
        """(first line, fields) of each non-blank record, header included. `strict`: a quote never
        closed is an error (else the rest of the file is silently one field)."""
        counted = [0]

        def counting():
            for text, lines in self._physical_lines():
                counted[0] += lines
                yield text.removeprefix("\ufeff") if counted[0] == 1 else text

        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))   # the default is 128 KiB
        start, reader = 1, csv.reader(counting(), strict=strict)
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

    def __iter__(self) -> Iterator[Rows]:
        header = next(self._records(), (1, None))[1]
        if header is None:
            return
        f = self.fields
        if f.text not in header:
            raise IngestError("missing_field", f"line 1 (the header): no {f.text!r} column; columns are "
                              f"{header[:20]}", {"line": 1, "field": f.text})
        self.columns = [c for c in f if c and c in header]
        self.ids_given = bool(f.id and f.id in header)
        # Every column is kept, as the string it is (CSV does not say types).
        options = pacsv.ConvertOptions(column_types={c: pa.string() for c in header})
        stream = self.source.counting(self.block_size)
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
                    if stream.quotes % 2:    # a quote never closed swallowed the rest of the file
                        self._diagnose_unclosed_quote()
                    return
                except (pa.ArrowInvalid, OSError) as e:
                    self._diagnose(e)
                source = batch.column(f.source) if self.fields.source in self.columns else None
                if source is not None:   # CSV cannot say null: an empty cell means no source
                    source = pc.if_else(pc.equal(source, ""), pa.scalar(None, pa.string()), source)
                yield Rows(batch.column(f.text), batch.column(f.id) if self.ids_given else None, source,
                           extra_columns(batch, f))
        finally:
            stream.close()

    def _diagnose(self, error: Exception):
        """pyarrow failed: find the first bad line with the csv module and raise about it."""
        records = self._records()
        _, header = next(records)
        index = {name: i for i, name in enumerate(header)}   # every column is read
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

    def _diagnose_unclosed_quote(self):
        for _ in self._records(strict=True):
            pass
        raise IngestError("malformed_csv", "a quoted field is never closed (an odd number of double "
                          "quotes in the file)", {})

    def lines_of(self, rows: list[int]) -> list[int]:
        # row -1 is the header
        return lines_at(((row, line) for row, (line, _) in enumerate(self._records(), -1)), rows, 2)
