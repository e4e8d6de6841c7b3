"""Plain text: a document per file, per non-empty line, or per blank-line-separated paragraph.

Ids come from the file's name as registered (a path relative to the registered directory, or the
uploaded file's name): `notes/a.txt` for split "file", `notes/a.txt#7` for the document that starts
on line 7 (1-based) for "line" and "paragraph". A line number, not an ordinal, so that an id points
at its place in the file (`sed -n 7p`), stays put when a paragraph above is edited, and matches
the line numbers of error messages. `source_from="dir"` makes the first directory of that path
the document's source (`manuals/intro.txt` -> "manuals"; a file at the top has none).

Lines end at "\\n"; a "\\r" before it (CRLF) is dropped. A line of only whitespace is blank: it
separates paragraphs and is never a document of its own. A paragraph keeps its lines joined by
"\\n". Split "file" keeps the file's text exactly (a UTF-8 byte-order mark aside).
"""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from storage.ingest.common import BOM, Fields, IngestError, Rows, lines_at
from storage.ingest.source import Source

SPLITS = ("file", "line", "paragraph")
SOURCE_FROM = ("dir",)


class TextReader:
    unit = "line"
    line_note = ""

    def __init__(self, source: Source, fields: Fields, block_size: int, max_doc_bytes: int | None = None, *,
                 name: str, split: str = "file", source_from: str | None = None):
        if split not in SPLITS:
            raise IngestError("validation_error", f"split {split!r} is not one of {', '.join(SPLITS)}",
                              {"field": "split"})
        if source_from not in (None, *SOURCE_FROM):
            raise IngestError("validation_error", f"source_from {source_from!r} is not one of "
                              f"{', '.join(SOURCE_FROM)} (or null)", {"field": "source_from"})
        self.source, self.block_size, self.max_doc_bytes = source, block_size, max_doc_bytes
        self.name, self.split = name.lstrip("/"), split
        head, _, _ = self.name.rpartition("/")
        self.doc_source = head.split("/", 1)[0] if source_from == "dir" and head else None
        self.ids_given = True      # from the path: never generated

    def _lines(self) -> Iterator[tuple[int, str]]:
        """(1-based line number, text without its line ending) of every line, decoded one by one
        so that invalid UTF-8 names its line."""
        number, pending = 0, b""
        for data in self.source.blocks(min(self.block_size, 1 << 20)):
            data = pending + data
            if number == 0:
                data = data.removeprefix(BOM)
            cut = data.rfind(b"\n")
            if cut < 0:
                pending = data
                if self.max_doc_bytes and len(pending) > self.max_doc_bytes:
                    raise self._too_large(number + 1)
                continue
            pending = data[cut + 1:]
            for raw in data[:cut].split(b"\n"):
                number += 1
                yield number, self._decode(raw.removesuffix(b"\r"), number)
        if pending:
            yield number + 1, self._decode(pending.removesuffix(b"\r"), number + 1)

    def _decode(self, raw: bytes, line: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise IngestError("invalid_utf8", f"{self.name} line {line}: invalid UTF-8 at byte {e.start + 1} "
                              "of the line", {"line": line, "byte": e.start + 1, "file": self.name}) from None

    def _too_large(self, line: int) -> IngestError:
        where = f"{self.name}" if self.split == "file" else f"{self.name} line {line}"
        return IngestError("document_too_large", f"{where}: a document longer than {self.max_doc_bytes} bytes "
                           "(THRESHER_MAX_DOC_BYTES)", {"line": line, "limit_bytes": self.max_doc_bytes,
                                                        "file": self.name})

    def _whole_file(self) -> Iterator[tuple[int, str]]:
        pieces, size = [], 0
        for data in self.source.blocks(min(self.block_size, 1 << 20)):
            size += len(data)
            if self.max_doc_bytes and size > self.max_doc_bytes + len(BOM):
                raise self._too_large(1)
            pieces.append(data)
        raw = b"".join(pieces).removeprefix(BOM)
        try:
            yield 1, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise IngestError("invalid_utf8", f"{self.name} line {line}: invalid UTF-8",
                              {"line": line, "file": self.name}) from None

    def _docs(self) -> Iterator[tuple[int, str]]:
        """(first line, text) of each document."""
        if self.split == "file":
            yield from self._whole_file()
            return
        if self.split == "line":
            for number, line in self._lines():
                if line.strip():
                    yield number, line
            return
        first, lines = 0, []
        for number, line in self._lines():
            if line.strip():
                first = first or number
                lines.append(line)
            elif lines:
                yield first, "\n".join(lines)
                first, lines = 0, []
        if lines:
            yield first, "\n".join(lines)

    def __iter__(self) -> Iterator[Rows]:
        lines, texts, size = [], [], 0
        for line, text in self._docs():
            if self.max_doc_bytes and len(text.encode("utf-8")) > self.max_doc_bytes:
                raise self._too_large(line)
            lines.append(line)
            texts.append(text)
            size += len(text)
            if size >= self.block_size:
                yield self._rows(lines, texts)
                lines, texts, size = [], [], 0
        if texts:
            yield self._rows(lines, texts)

    def _rows(self, lines: list[int], texts: list[str]) -> Rows:
        ids = [self.name] if self.split == "file" else [f"{self.name}#{n}" for n in lines]
        source = pa.array([self.doc_source] * len(texts), pa.string())
        return Rows(pa.array(texts, pa.string()), pa.array(ids, pa.string()), source)

    def lines_of(self, rows: list[int]) -> list[int]:
        return lines_at(((row, line) for row, (line, _) in enumerate(self._docs())), rows, 1)
