"""The input file, opened as often as needed, decompressed by magic bytes, read in blocks on a
background thread."""
from __future__ import annotations

import os
import queue
import threading
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from storage.ingest.common import MAGIC, IngestError


class Source:
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
        self.compression = MAGIC.get(magic[:2]) or MAGIC.get(magic)

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
