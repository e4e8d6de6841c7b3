"""Tell an upload's format from its first bytes, for bodies with neither a content type nor a
file name that says it: compression magic (gzip, zstd) first, then the decompressed start:
`PAR1` is Parquet, `{` (after whitespace or a UTF-8 BOM) is JSONL. CSV is never guessed."""
from __future__ import annotations

import gzip
import io

import zstandard

from storage.ingest.common import MAGIC


def _start(head: bytes, n: int = 4096) -> bytes:
    """The first n bytes of the content that `head` (the file's first bytes) begins, decompressed
    when it is gzip or zstd (reading at most n bytes out, whatever the compression ratio)."""
    try:
        compression = MAGIC.get(head[:2]) or MAGIC.get(head[:4])
        if compression == "gzip":
            return gzip.GzipFile(fileobj=io.BytesIO(head)).read(n)
        if compression == "zstd":
            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(head)).read(n)
    except (OSError, EOFError, ValueError, zstandard.ZstdError):
        return b""
    return head[:n]


def sniff_format(head: bytes) -> str | None:
    """'parquet', 'jsonl' or None (cannot tell), from the first bytes of a file."""
    start = _start(head)
    if start.startswith(b"PAR1"):
        return "parquet"
    if start.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "jsonl"
    return None
