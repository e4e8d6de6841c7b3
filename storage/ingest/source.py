"""The input file, opened as often as needed, decompressed by magic bytes, read in blocks on a
background thread."""
from __future__ import annotations

import io
import os
import queue
import threading
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from storage.ingest.common import MAGIC, IngestError
from storage.inputs import UserFile


class Source:
    """The input file, reopened as often as needed (a failing block is located by a second pass).

    `src`: a local path or URI (the caller's own file), a `(pyarrow.fs.FileSystem, path)` pair, or
    a `storage.inputs.UserFile` (a tenant's file: every open is checked there, before anything of it
    is read). `byte_range=(start, end)` reads only the lines that start in [start, end) of an
    uncompressed file: a 50 GB JSONL file is ingested by many tasks, each cutting its range at line
    boundaries (a line belongs to the range its first byte is in). `max_decompressed_bytes` bounds
    what a compressed input may grow to (a decompression bomb stops with 413, not with the memory).
    """

    def __init__(self, src, byte_range: tuple[int, int] | None = None,
                 max_decompressed_bytes: int | None = None):
        self.user = src if isinstance(src, UserFile) else None
        if self.user:
            self.fs, self.path = None, src.path
        elif isinstance(src, tuple):
            self.fs, self.path = src
        elif isinstance(src, str) and "://" in src:
            self.fs, self.path = pafs.FileSystem.from_uri(src)
        else:
            self.fs, self.path = pafs.LocalFileSystem(), os.path.abspath(os.fspath(src))
        if not self.user:
            info = self.fs.get_file_info(self.path)
            if info.type != pafs.FileType.File:
                raise IngestError("file_not_found", f"no file at {self.path}", {"path": self.path})
        with self.open_file() as f:
            self.size = f.size()
            magic = f.read(4)
        self.compression = MAGIC.get(magic[:2]) or MAGIC.get(magic)
        self.max_decompressed_bytes = max_decompressed_bytes
        self.range = None
        if byte_range is not None and byte_range != (0, self.size):
            if self.compression:
                raise ValueError("only an uncompressed file can be read by byte range")
            self.range = (self._line_start(byte_range[0]), self._line_start(byte_range[1]))

    def open_file(self, stream: bool = False) -> pa.NativeFile:
        """The raw file, random access or (`stream`) sequential; a tenant's file is checked again
        at each open."""
        if self.user:
            return pa.PythonFile(self.user.open(), mode="r")
        return self.fs.open_input_stream(self.path, compression=None) if stream else self.fs.open_input_file(self.path)

    def _line_start(self, offset: int) -> int:
        """The first line start at or after `offset` (the file's size if none)."""
        if offset <= 0:
            return 0
        if offset >= self.size:
            return self.size
        with self.open_file() as f:
            f.seek(offset - 1)
            while chunk := f.read(1 << 16):
                cut = chunk.find(b"\n")
                if cut >= 0:
                    return f.tell() - len(chunk) + cut + 1
        return self.size

    def lines_before(self) -> int:
        """Lines before this source's range (0 for a whole file): for naming a line in error messages."""
        if not self.range or not self.range[0]:
            return 0
        count, left = 0, self.range[0]
        with self.open_file(stream=True) as f:
            while left and (chunk := f.read(min(left, 8 << 20))):
                count += chunk.count(b"\n")
                left -= len(chunk)
        return count

    def open(self):
        if self.range:
            return _RangeStream(self.open_file(), *self.range)
        raw = self.open_file(stream=True)
        return pa.CompressedInputStream(raw, self.compression) if self.compression else raw

    def read(self, stream, n: int, buffer: bool = False):
        try:
            return stream.read_buffer(n) if buffer else stream.read(n)
        except (OSError, pa.ArrowException) as e:
            if not self.compression:
                raise
            raise IngestError("corrupt_compression", f"cannot decompress the {self.compression} "
                              f"file: {e}", {"compression": self.compression}) from e

    def blocks(self, size: int, buffers: bool = False) -> Iterator:
        """The (decompressed, bounded) input in pieces of `size` bytes: bytes, or pyarrow Buffers
        (`buffers`: no copy, and memory from pyarrow's pool, which reuses its pages where fresh
        Python bytes of a few MB each cost a page fault per 4 KiB)."""
        stream = self.open()
        total = 0
        try:
            while data := self.read(stream, size, buffers):
                total += len(data)
                if self.compression and self.max_decompressed_bytes and total > self.max_decompressed_bytes:
                    raise IngestError("decompressed_too_large", f"the {self.compression} input decompresses "
                                      f"to more than {self.max_decompressed_bytes} bytes (THRESHER_MAX_DECOMPRESSED_BYTES)",
                                      {"limit_bytes": self.max_decompressed_bytes})
                yield data
        finally:
            stream.close()

    def counting(self, block_size: int = 1 << 20) -> "_CountingReader":
        """A file object over the (decompressed, bounded) input that counts the bytes it served
        and the double quotes among them (an odd count: a CSV quote never closed)."""
        return _CountingReader(self.blocks(block_size))


class _RangeStream:
    """Bytes [start, end) of a random-access file, as a stream."""

    def __init__(self, f, start: int, end: int):
        self.f, self.left = f, end - start
        f.seek(start)

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n) if n else b""
        self.left -= len(data)
        return data

    def read_buffer(self, n: int) -> pa.Buffer:
        data = self.f.read_buffer(min(n, self.left))
        self.left -= data.size
        return data

    def close(self) -> None:
        self.f.close()


class _CountingReader(io.RawIOBase):
    def __init__(self, blocks: Iterator[bytes]):
        self.blocks, self.pending, self.quotes = blocks, b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            try:
                self.pending = next(self.blocks)
            except StopIteration:
                return 0
            self.quotes += self.pending.count(b'"')
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close(self) -> None:
        self.blocks.close()
        super().close()


def prefetched(items: Iterator, depth: int = 2) -> Iterator:
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
