"""One filesystem for everything Thresher stores: a local directory or an object store, via pyarrow.fs.

Paths inside the store are tuples of parts joined with '/', so the same code runs on a laptop
directory and on `s3://bucket/prefix`. Writes are atomic: data goes to a temporary name first and
is renamed into place (object stores publish a whole object on close, which is atomic already).

Every object-store request gives up after `timeout_s` without progress (tried `ATTEMPTS` times), so
a frozen store fails a call within a bounded time instead of holding a thread for minutes; a failure
of the store itself is told apart from the caller's mistakes by `storage_error`.
"""
from __future__ import annotations

import errno
import os
import re
import uuid
from contextlib import contextmanager
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.errors import DomainError

TMP_PREFIX = ".tmp-"  # a file being written; renamed to its final name when complete
PARQUET_DEFAULTS = {"compression": "zstd"}  # every Parquet file the store writes, unless told otherwise
TIMEOUT_ENV = "THRESHER_STORAGE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 5.0
ATTEMPTS = 3  # per object-store request: a frozen store fails a call after about ATTEMPTS × timeout


def default_timeout_s() -> float:
    """THRESHER_STORAGE_TIMEOUT_S of this process's environment: Ray workers build their stores
    from the root alone, and read it as they read the store's credentials (AWS_*)."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def bounded(fs: pafs.FileSystem, timeout_s: float) -> pafs.FileSystem:
    """`fs` with a time limit on each request. pyarrow's S3 defaults retry a frozen server for about
    99 s per call (and its URIs take no timeout option), so the filesystem is rebuilt with its own
    options plus the limits."""
    if isinstance(fs, pafs.S3FileSystem):
        options = fs.__reduce__()[1][0]
        proxy = options.pop("proxy_options", None)
        if proxy and proxy.get("host"):
            options["proxy_options"] = proxy
        return pafs.S3FileSystem(**{**options, "request_timeout": timeout_s, "connect_timeout": timeout_s},
                                 retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS))
    return fs


# How pyarrow reports an object store that does not answer, and a bucket that does not exist (its
# errors carry no code but the AWS SDK's, in the message).
_UNREACHABLE = re.compile(r"NETWORK_CONNECTION|curlCode|Timeout was reached|SERVICE_UNAVAILABLE")
_NO_BUCKET = re.compile(r"NO_SUCH_BUCKET|not found\. To create buckets")


def no_bucket() -> DomainError:
    return DomainError("storage_unavailable", "the server's storage bucket does not exist; an operator must "
                       "create it (THRESHER_STORAGE_URI)")


def storage_error(exc: BaseException) -> DomainError | None:
    """The domain error for a failure of the store itself, not of the request: a full disk
    (`insufficient_storage`), an object store that does not answer or has no such bucket
    (`storage_unavailable`). None for anything else."""
    if not isinstance(exc, OSError):
        return None
    text = str(exc)
    if exc.errno == errno.ENOSPC or "No space left on device" in text:
        return DomainError("insufficient_storage", "the server's storage is full; nothing was stored, try again later")
    if _NO_BUCKET.search(text):
        return no_bucket()
    if _UNREACHABLE.search(text):
        return DomainError("storage_unavailable", "the server's storage did not answer in time "
                           "(THRESHER_STORAGE_TIMEOUT_S); try again later")
    return None


class Store:
    def __init__(self, root: str, create: bool = True, timeout_s: float | None = None):
        """`timeout_s`: how long an object-store request may go without progress (default: the
        environment's THRESHER_STORAGE_TIMEOUT_S, else DEFAULT_TIMEOUT_S)."""
        if "://" in root:
            fs, base = pafs.FileSystem.from_uri(root)
            self.fs = bounded(fs, timeout_s or default_timeout_s())
            self.local = isinstance(self.fs, pafs.LocalFileSystem)
            self.scheme = root.split("://", 1)[0]
        else:
            self.fs, base = pafs.LocalFileSystem(), os.path.abspath(root)
            self.local, self.scheme = True, "file"
        self.base = base.rstrip("/")
        self.root = root
        if self.local and create:
            os.makedirs(self.base, exist_ok=True)

    # -- paths -------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """The path of `parts` inside the filesystem (what pyarrow calls a path)."""
        return "/".join([self.base, *[str(p).strip("/") for p in parts]])

    def uri(self, *parts: str) -> str:
        """A location DuckDB and other readers understand: a plain path locally, a URI otherwise."""
        p = self.path(*parts)
        return p if self.local else f"{self.scheme}://{p}"

    # -- queries -----------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def missing_bucket(self) -> str | None:
        """The bucket of an object store that does not exist, else None."""
        if self.local:
            return None
        bucket = self.base.split("/", 1)[0]
        return bucket if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound else None

    def _listing(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        infos = self.fs.get_file_info(selector)
        # An object store lists a missing bucket as an empty folder: a corpus would look empty.
        if not infos and self.missing_bucket():
            raise no_bucket()
        return infos

    def list(self, *parts: str, suffix: str = "") -> list[str]:
        """Sorted base names of the files directly under `parts` (empty if it does not exist)."""
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        names = [i.base_name for i in self._listing(sel) if i.type == pafs.FileType.File]
        return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))

    def entries(self, *parts: str, recursive: bool = False) -> list[tuple[tuple[str, ...], pafs.FileInfo]]:
        """(parts, info) of every file and folder under `parts`, temporaries included."""
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True, recursive=recursive)
        prefix = self.base + "/"
        return [(tuple(i.path[len(prefix):].split("/")), i) for i in self._listing(sel)]

    def list_dirs(self, *parts: str) -> list[str]:
        """Sorted names of the directories directly under `parts` (on an object store: the common
        prefixes)."""
        return sorted(p[-1] for p, info in self.entries(*parts) if info.type == pafs.FileType.Directory)

    def size(self, *parts: str) -> int:
        return self.fs.get_file_info(self.path(*parts)).size

    # -- reads -------------------------------------------------------------------------------
    def open_input(self, *parts: str):
        return self.fs.open_input_stream(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        with self.open_input(*parts) as f:
            return f.read()

    def parquet_file(self, *parts: str) -> pq.ParquetFile:
        return pq.ParquetFile(self.fs.open_input_file(self.path(*parts)))

    def read_parquet(self, *parts: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(*parts), filesystem=self.fs, columns=columns)

    def iter_batches(self, *parts: str, columns=None, batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
        yield from self.parquet_file(*parts).iter_batches(batch_size=batch_size, columns=columns)

    # -- writes ------------------------------------------------------------------------------
    def _tmp_and_final(self, parts) -> tuple[str, str]:
        final = self.path(*parts)
        parent = final.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if not self.local:
            return final, final
        return f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{final.rsplit('/', 1)[1]}", final

    def write_bytes(self, data: bytes, *parts: str) -> None:
        tmp, final = self._tmp_and_final(parts)
        with self.fs.open_output_stream(tmp, compression=None) as f:
            f.write(data)
        if tmp != final:
            self.fs.move(tmp, final)

    def write_parquet(self, table: pa.Table, *parts: str, **kwargs) -> None:
        """Write a whole table atomically: readers see the old file or the complete new one."""
        tmp, final = self._tmp_and_final(parts)
        pq.write_table(table, tmp, filesystem=self.fs, **{**PARQUET_DEFAULTS, **kwargs})
        if tmp != final:
            self.fs.move(tmp, final)

    @contextmanager
    def open_output(self, *parts: str):
        """A byte stream that appears under its final name when the block ends, and not at all if
        it raises (an object store publishes an object on close; on failure it is deleted)."""
        tmp, final = self._tmp_and_final(parts)
        stream = self.fs.open_output_stream(tmp, compression=None)
        try:
            yield stream
        except BaseException:
            stream.close()
            self.fs.delete_file(tmp)
            raise
        stream.close()
        if tmp != final:
            self.fs.move(tmp, final)

    def parquet_writer(self, schema: pa.Schema, *parts: str, **options) -> "AtomicParquetWriter":
        """`options` go to pyarrow's ParquetWriter (over PARQUET_DEFAULTS)."""
        return AtomicParquetWriter(self, schema, parts, **options)

    def delete(self, *parts: str) -> None:
        p = self.path(*parts)
        info = self.fs.get_file_info(p)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(p)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(p)


class AtomicParquetWriter:
    """Streams record batches into a Parquet file that appears under its final name only on close()."""

    def __init__(self, store: Store, schema: pa.Schema, parts, **options):
        self.store = store
        self.tmp, self.final = store._tmp_and_final(parts)
        self.writer = pq.ParquetWriter(self.tmp, schema, filesystem=store.fs, **{**PARQUET_DEFAULTS, **options})
        self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        self.writer.write_table(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        self.writer.close()
        if self.tmp != self.final:
            self.store.fs.move(self.tmp, self.final)

    def abort(self) -> None:
        self.writer.close()
        try:
            self.store.fs.delete_file(self.tmp)
        except (FileNotFoundError, OSError):
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.abort() if exc_type else self.close()
