"""Tell an upload's format from its first bytes, for bodies with neither a content type nor a
file name that says it: compression magic (gzip, zstd) first, then the decompressed start:
`PAR1` is Parquet, `{` (after whitespace or a UTF-8 BOM) is JSONL. CSV is never guessed."""
from __future__ import annotations

import gzip
import io

GZIP, ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


def _head(path: str, n: int = 4096) -> bytes:
    """The first n bytes of the file, decompressed when it is gzip or zstd."""
    with open(path, "rb") as f:
        raw = f.read(4)
        f.seek(0)
        try:
            if raw[:2] == GZIP:
                return gzip.GzipFile(fileobj=f).read(n)
            if raw == ZSTD:
                import zstandard
                return zstandard.ZstdDecompressor().stream_reader(f).read(n)
        except (OSError, EOFError, ValueError, io.UnsupportedOperation):
            return b""
        return f.read(n)


def sniff_format(path: str) -> str | None:
    """'parquet', 'jsonl' or None (cannot tell)."""
    head = _head(path)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "jsonl"
    return None
