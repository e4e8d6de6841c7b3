"""The Python client of the Thresher HTTP API.

`Client(url, api_key)` has one sub-API per resource (`corpora`, `jobs`, `manifests`, `models`,
`projections`, `curricula`), `query()`, and a method per job kind: `client.jobs.submit(kind, **spec)`
is the one general path; `client.<kind>(…)` submits any kind the service lists (`client.kinds()`,
from GET /v1/kinds), its positional arguments being the spec's required fields in order
(`client.dedup(pool, method="exact")`); a kind that selects takes `fraction=`, `count=` or `tau=`
for its `select` (`client.dsir(pool, target, fraction=0.1)`). Spec values may be records: a
Corpus, Manifest or Model stands for its id, a Job for the manifest it wrote
(`restrict=[dedup_job, quality_job]`). Answers are typed records (dataclasses that keep the raw
JSON in `.raw`); every non-2xx answer raises one `ThresherError(code, message, details, status)`.

Uploads and downloads stream: a file, a file object, an iterable of dicts, a pyarrow Table or a
pandas DataFrame goes out as a generator body in chunks (JSONL or Parquet row groups), never
serialised whole in memory; downloads are written to disk chunk by chunk.
"""
from __future__ import annotations

import contextlib
import difflib
import gzip
import inspect
import io
import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from storage.encode import ByteSink

DEFAULT_URL = "http://127.0.0.1:8321"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
CHUNK = 1 << 20
PARQUET_ROWS = 65_536
PARQUET_MEDIA = "application/vnd.apache.parquet"


class ThresherError(Exception):
    """A non-2xx answer of the API (`status` is the HTTP status), a failed job (`status` None,
    `code` the job's error code) or a server that cannot be reached (`code` "unreachable")."""

    def __init__(self, code: str, message: str, details: dict | None = None, status: int | None = None):
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.code, self.message, self.details, self.status = code, message, details or {}, status

    @classmethod
    def from_response(cls, r: httpx.Response) -> "ThresherError":
        try:
            e = r.json()["error"]
            return cls(str(e.get("code") or "error"), str(e.get("message") or ""), e.get("details") or {},
                       r.status_code)
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(f"http_{r.status_code}", (r.text or r.reason_phrase).strip()[:500], {}, r.status_code)


class InvalidArgument(ThresherError, ValueError):
    """A call the client refuses before sending anything (`code` "invalid_argument", `status`
    None): an unknown keyword argument, a format that contradicts the file name."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__("invalid_argument", message, details)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the closest of `choices`, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# ------------------------------------------------------------------------------------ spec schemas

_JSON_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "null",
               "object": "dict"}


def _schema_type(node: dict) -> str:
    """A JSON Schema node as a short type: `str`, `int | null`, `"global"|"per_shard"`, `Select`."""
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[-1]
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        return "|".join(json.dumps(v) for v in node["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            branches = node[key]
            named = [_schema_type(b) for b in branches if b.get("type") != "null"]
            nullable = len(named) < len(branches)
            return " | ".join(named) + (" | null" if nullable else "")
    if node.get("type") == "array":
        return f"list[{_schema_type(node.get('items') or {})}]"
    return _JSON_TYPES.get(node.get("type"), "any")


def _schema_refs(node: dict) -> list[str]:
    """The definitions a node names, directly, through a union or as a list's items."""
    if "$ref" in node:
        return [node["$ref"].rsplit("/", 1)[-1]]
    branches = [b for key in ("anyOf", "oneOf", "allOf") for b in node.get(key, [])]
    if node.get("type") == "array":
        branches.append(node.get("items") or {})
    return [name for b in branches for name in _schema_refs(b)]


def _unset_nulls(value):
    """An object default without its null members (they only say "not set")."""
    if isinstance(value, dict):
        return {k: _unset_nulls(v) for k, v in value.items() if v is not None}
    return value


def describe_schema(schema: dict, defs: dict | None = None, indent: int = 0, seen: tuple = ()) -> list[str]:
    """One line per property of an object's JSON Schema, nested objects indented below theirs:
    `name: type (required | default …) — description`."""
    defs = schema.get("$defs", {}) if defs is None else defs
    required = set(schema.get("required", []))
    lines = []
    for name, node in schema.get("properties", {}).items():
        default = ("required" if name in required else
                   f"default {json.dumps(_unset_nulls(node['default']))}" if "default" in node else "default: computed")
        desc = node.get("description") or ""
        lines.append(f"{'  ' * indent}{name}: {_schema_type(node)} ({default}){f' — {desc}' if desc else ''}")
        for ref in _schema_refs(node):
            if ref in defs and ref not in seen:
                lines += describe_schema(defs[ref], defs, indent + 1, (*seen, ref))
    return lines


# ------------------------------------------------------------------------------------ file names

# What a file's name says about its content: the format, then an optional compression suffix.
FORMAT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                   ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}


def file_format(name: str | os.PathLike, strict: bool = True) -> tuple[str | None, str | None]:
    """(format, compression) that a file name says: `x.jsonl.gz` → ("jsonl", "gzip"), `x.csv` →
    ("csv", None); None for what the name does not say. A suffix that names no format (`x.txt`)
    raises InvalidArgument when `strict` (nothing is written under a misleading name)."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    compression = COMPRESSION_SUFFIXES.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes.pop()
    if suffixes and suffixes[-1] in FORMAT_SUFFIXES:
        return FORMAT_SUFFIXES[suffixes[-1]], compression
    if suffixes and strict:
        raise InvalidArgument(f"cannot tell the format of {Path(name).name!r} from its name: name it .parquet, "
                              ".jsonl or .csv (optionally .gz or .zst), or give the format", {"field": "format"})
    return None, compression


def download_format(path: str | os.PathLike | None, format: str | None) -> tuple[str, str | None]:
    """The (format, compression) a download to `path` is written in: `format` if given, else the
    one the file name says, else (a name without suffix, or no file) Parquet. A `format` that
    contradicts the name is refused."""
    named, compression = file_format(path, strict=not format) if path is not None else (None, None)
    if format and named and format != named:
        raise InvalidArgument(f"the format {format!r} contradicts the file name {Path(path).name!r} ({named}): "
                              "drop the format or rename the file", {"field": "format", "format": format})
    return format or named or "parquet", compression


def _compressed(f, compression: str | None):
    """A writer that compresses into the open binary file `f` (closing it does not close `f`)."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=f, mode="wb")
    if compression == "zstd":
        return zstandard.ZstdCompressor().stream_writer(f, closefd=False)
    return contextlib.nullcontext(f)


# ---------------------------------------------------------------------------------------- records

class Record:
    """Typed view of an API object: its documented fields as attributes, the whole JSON in `raw`."""

    raw: dict

    @classmethod
    def of(cls, raw: dict, client: "Client | None" = None):
        names = {f.name for f in fields(cls)} - {"raw", "client"}
        rec = cls(**{k: raw.get(k) for k in names}, raw=raw)
        rec.client = client
        return rec

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def to_dict(self) -> dict:
        return dict(self.raw)


def _id(x: Any) -> str:
    """An id from a record or a string."""
    return x.id if isinstance(x, Record) else str(x)


@dataclass
class Corpus(Record):
    id: str
    name: str
    state: str
    num_docs: int | None
    num_bytes: int | None
    num_shards: int | None
    num_empty: int | None
    empty_doc_ids: list | None
    ids_generated: bool | None
    sources: dict | None
    created_at: str
    job_id: str | None
    error: dict | None
    raw: dict = field(repr=False, default_factory=dict)
    client: Any = field(repr=False, default=None, compare=False)

    def refresh(self) -> "Corpus":
        return self.client.corpora.get(self.id)

    def wait(self, timeout: float | None = None, poll_interval: float = 0.5) -> "Corpus":
        """For a corpus registered by URI: wait until its ingest job ends; raise if it failed."""
        cur = self.refresh()
        deadline = None if timeout is None else time.monotonic() + timeout
        while cur.state == "ingesting":
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"corpus {self.id} still ingesting after {timeout}s")
            time.sleep(poll_interval)
            cur = cur.refresh()
        if cur.state == "failed":
            e = cur.error or {}
            raise ThresherError(e.get("code", "ingest_failed"), e.get("message", f"corpus {self.id} failed"))
        return cur

    def sample(self, n: int = 5) -> list[dict]:
        return self.client.corpora.sample(self.id, n)

    def download(self, path: str | os.PathLike, format: str | None = None) -> Path:
        return self.client.corpora.download(self.id, path, format)

    def delete(self) -> None:
        self.client.corpora.delete(self.id)


@dataclass
class Progress(Record):
    stage: str | None
    done: float | None
    total: float | None
    unit: str | None
    rate_per_s: float | None
    eta_s: float | None
    raw: dict = field(repr=False, default_factory=dict)
    client: Any = field(repr=False, default=None, compare=False)


@dataclass
class Job(Record):
    id: str
    kind: str
    name: str | None
    state: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: Any
    error: dict | None
    result: dict | None
    spec: dict | None
    raw: dict = field(repr=False, default_factory=dict)
    client: Any = field(repr=False, default=None, compare=False)

    @classmethod
    def of(cls, raw: dict, client: "Client | None" = None) -> "Job":
        job = super().of(raw, client)
        job.progress = Progress.of(raw.get("progress") or {})
        return job

    # the ids a finished job produced
    manifest_id = property(lambda self: (self.result or {}).get("manifest_id"))
    model_id = property(lambda self: (self.result or {}).get("model_id"))
    corpus_id = property(lambda self: (self.result or {}).get("corpus_id"))
    curriculum_id = property(lambda self: (self.result or {}).get("curriculum_id"))
    summary = property(lambda self: (self.result or {}).get("summary") or {})
    # in the answer to a submission: spec fields given by name, [{field, given, id}]
    resolved = property(lambda self: self.raw.get("resolved") or [])
    done = property(lambda self: self.state in TERMINAL)

    def refresh(self) -> "Job":
        return self.client.jobs.get(self.id)

    def events(self) -> Iterator["Job"]:
        return self.client.jobs.events(self.id)

    def wait(self, progress: bool = False, timeout: float | None = None, check: bool = True) -> "Job":
        return self.client.jobs.wait(self.id, progress=progress, timeout=timeout, check=check)

    def cancel(self, wait: bool = True) -> "Job":
        return self.client.jobs.cancel(self.id, wait=wait)

    def manifest(self) -> "Manifest":
        if not self.manifest_id:
            raise ThresherError("no_manifest", f"job {self.id} ({self.state}) has no manifest")
        return self.client.manifests.get(self.manifest_id)

    def plot(self, path: str | os.PathLike | None = None) -> bytes:
        return self.client.projections.plot(self.id, path)

    def predict(self, mixtures: list[list[float]], sizes: list[int]) -> list[dict]:
        return self.client.projections.predict(self.id, mixtures, sizes)


@dataclass
class Manifest(Record):
    id: str
    job_id: str | None
    kind: str
    num_rows: int
    num_selected: int
    columns: list
    num_shards: int
    built_on: list | None
    created_at: str
    raw: dict = field(repr=False, default_factory=dict)
    client: Any = field(repr=False, default=None, compare=False)

    def to_arrow(self, selected_only: bool = False) -> pa.Table:
        return self.client.manifests.to_arrow(self.id, selected_only)

    def to_duckdb(self, con, name: str | None = None, selected_only: bool = False):
        return self.client.manifests.to_duckdb(self.id, con, name, selected_only)

    def download(self, path: str | os.PathLike, format: str | None = None, selected_only: bool = False) -> Path:
        return self.client.manifests.download(self.id, path, format, selected_only)

    def shards(self) -> list[dict]:
        return self.client.manifests.shards(self.id)

    def export(self, selected_only: bool = True, name: str | None = None, restrict: Iterable = ()) -> Job:
        return self.client.manifests.export(self.id, selected_only, name, restrict)

    def rejections(self, restrict: Iterable = (), selected_only: bool = False) -> "Rejections":
        return self.client.manifests.rejections(self.id, restrict, selected_only)


@dataclass
class Rejections(Record):
    """What each filter (`filters`: manifest_id, kind, job_id, rejected, excluded) rejects of a
    manifest's pool, per source (`by_source`: source, pool, selected, survivors, and `rejected`
    and `excluded` by filter manifest), and the totals."""
    manifest_id: str
    corpus_id: str | None
    selected_only: bool
    filters: list
    pool: int
    selected: int
    survivors: int
    by_source: list
    raw: dict = field(repr=False, default_factory=dict)
    client: Any = field(repr=False, default=None, compare=False)


@dataclass
class Model(Record):
    id: str
    name: str | None
    source: str
    job_id: str | None
    created_at: str
    meta: dict | None
    raw: dict = field(repr=False, default_factory=dict)
    client: Any = field(repr=False, default=None, compare=False)


@dataclass
class Kind(Record):
    """A job kind the service runs: its spec's JSON Schema, and the spec fields that name a corpus,
    model or manifest (`refs`: field -> collection)."""
    name: str
    description: str
    spec_schema: dict
    refs: dict
    raw: dict = field(repr=False, default_factory=dict)
    client: Any = field(repr=False, default=None, compare=False)

    @property
    def required(self) -> list[str]:
        """The spec's required fields, in the schema's order."""
        required = set(self.spec_schema.get("required", []))
        return [k for k in self.spec_schema.get("properties", {}) if k in required]

    def describe(self) -> list[str]:
        """One line per spec field (nested objects indented): name, type, default, meaning."""
        return describe_schema(self.spec_schema)


@dataclass
class Curriculum(Record):
    id: str
    job_id: str
    corpus_id: str
    method: str
    epoch: int
    epochs: int
    num_samples: int
    saved_fraction: float
    losses_posted: int
    params: dict
    cost: dict
    created_at: str
    raw: dict = field(repr=False, default_factory=dict)
    client: Any = field(repr=False, default=None, compare=False)

    def plan(self, epoch: int) -> "EpochPlan":
        return self.client.curricula.epoch(self.id, epoch)

    def post_losses(self, epoch: int, losses) -> "Curriculum":
        return self.client.curricula.post_losses(self.id, epoch, losses)


@dataclass
class EpochPlan:
    epoch: int
    doc_ids: list[str]
    weights: list[float] | None


@dataclass
class Page:
    """One page of a list: iterate it, or pass `next_cursor` back as `cursor` for the next."""
    items: list
    next_cursor: str | None

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


# ---------------------------------------------------------------------------------------- bodies

def _parquet_body(batches: Iterator[pa.RecordBatch | pa.Table], schema: pa.Schema | None = None) -> Iterator[bytes]:
    """Parquet bytes, one row group at a time, from a stream of batches (the footer comes last)."""
    sink, writer = ByteSink(), None
    for b in batches:
        if writer is None:
            schema = schema or b.schema
            writer = pq.ParquetWriter(sink, schema)
        t = b if isinstance(b, pa.Table) else pa.Table.from_batches([b])
        writer.write_table(t.cast(schema) if t.schema != schema else t)
        if len(sink) >= CHUNK:
            yield sink.drain()
    if writer is None:
        writer = pq.ParquetWriter(sink, schema or pa.schema([("text", pa.string())]))
    writer.close()
    yield sink.drain()


def _jsonl_body(rows: Iterable[Mapping]) -> Iterator[bytes]:
    buf = bytearray()
    for row in rows:
        buf += json.dumps(row, ensure_ascii=False, default=str).encode() + b"\n"
        if len(buf) >= CHUNK:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _file_body(f) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk.encode() if isinstance(chunk, str) else chunk


def _remaining(f) -> int | None:
    """Bytes left in a regular binary file, or None when that cannot be known."""
    import stat
    try:
        if isinstance(f, io.TextIOBase):
            return None
        st = os.fstat(f.fileno())
        return st.st_size - f.tell() if stat.S_ISREG(st.st_mode) else None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _dataframe_batches(df) -> Iterator[pa.Table]:
    for start in range(0, max(len(df), 1), PARQUET_ROWS):
        yield pa.Table.from_pandas(df.iloc[start:start + PARQUET_ROWS], preserve_index=False)


class _Once:
    """A body generator that remembers whether sending started (then it cannot be retried)."""

    def __init__(self, gen: Iterator[bytes]):
        self.gen, self.started = gen, False

    def __iter__(self):
        self.started = True
        yield from self.gen


# ---------------------------------------------------------------------------------------- client

class Client:
    """`Client(url, api_key)`; both default to $THRESHER_URL / $THRESHER_KEY.

    Connection errors (and, for reads, dropped connections) are retried `retries` times with
    exponential backoff from `backoff` seconds; `timeout` bounds connecting and each read.
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.5, transport: httpx.BaseTransport | None = None):
        self.url = (url or os.environ.get("THRESHER_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("THRESHER_KEY")
        headers = {"User-Agent": "thresher-python"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.api_key, self.retries, self.backoff = key, retries, backoff
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0),
                                 transport=transport)
        self.corpora = Corpora(self)
        self.jobs = Jobs(self)
        self.manifests = Manifests(self)
        self.models = Models(self)
        self.projections = Projections(self)
        self.curricula = Curricula(self)
        self._kinds: dict[str, Kind] | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- transport -----------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, stream: bool = False, **kw) -> httpx.Response:
        """One request with retries on connection errors; raises ThresherError on non-2xx."""
        body = kw.get("content")
        retry_reads = method in ("GET", "HEAD")
        attempt = 0
        while True:
            try:
                if stream:
                    r = self.http.send(self.http.build_request(method, path, **kw), stream=True)
                else:
                    r = self.http.request(method, path, **kw)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError,
                    httpx.ReadTimeout) as e:
                connect = isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout))
                resendable = not (isinstance(body, _Once) and body.started)
                if attempt >= self.retries or not (connect or retry_reads) or not resendable:
                    if connect:
                        raise ThresherError("unreachable", f"cannot reach Thresher at {self.url}: {e}. "
                                            "Is `thresher serve` running?") from e
                    raise ThresherError("connection_error", f"{method} {path}: {e}") from e
                time.sleep(self.backoff * 2 ** attempt)
                attempt += 1
        if r.is_error:
            if stream:
                r.read()
                r.close()
            raise ThresherError.from_response(r)
        return r

    def _json(self, method: str, path: str, **kw) -> Any:
        return self._send(method, path, **kw).json()

    def _download(self, path: str, dest: str | os.PathLike | None, params: dict,
                  compression: str | None = None) -> Path | bytes:
        """Stream a GET to `dest` (written beside it, renamed at the end; gzip or zstd compressed
        on the way when `compression` says so) or return the bytes."""
        r = self._send("GET", path, params=params, stream=True, timeout=httpx.Timeout(60.0, read=600.0))
        try:
            if dest is None:
                return b"".join(r.iter_bytes(CHUNK))
            dest = Path(dest)
            part = dest.with_name(dest.name + ".part")
            try:
                with part.open("wb") as f, _compressed(f, compression) as out:
                    for chunk in r.iter_bytes(CHUNK):
                        out.write(chunk)
                os.replace(part, dest)
            finally:
                part.unlink(missing_ok=True)
            return dest
        finally:
            r.close()

    # -- operations ----------------------------------------------------------------------------
    def health(self) -> dict:
        return self._json("GET", "/healthz")

    def ready(self) -> dict:
        """/readyz's checks (storage, Ray); a 503 (not ready) is returned, not raised."""
        try:
            return self._json("GET", "/readyz")
        except ThresherError as e:
            if e.status == 503:
                return {"status": "not_ready", **e.details}
            raise

    def query(self, sql: str, tables: Mapping[str, Any], limit: int | None = None) -> pa.Table:
        """A read-only DuckDB SELECT over manifests (`tables`: SQL name → manifest id or Manifest)
        as an Arrow table; `result.schema.metadata[b"truncated"]` says whether `limit` cut it."""
        body: dict[str, Any] = {"sql": sql, "tables": {k: _id(v) for k, v in tables.items()}}
        if limit is not None:
            body["limit"] = limit
        ans = self._json("POST", "/v1/query", json=body, timeout=httpx.Timeout(60.0, read=600.0))
        names = [c["name"] for c in ans["columns"]]
        cols = list(zip(*ans["rows"])) if ans["rows"] else [[] for _ in names]
        arrays = [_arrow_array(list(v), c["type"]) for v, c in zip(cols, ans["columns"])]
        meta = {"truncated": str(bool(ans.get("truncated"))).lower()}
        return pa.Table.from_arrays(arrays, names=names).replace_schema_metadata(meta)

    # -- job kinds -----------------------------------------------------------------------------
    def kinds(self, refresh: bool = False) -> dict[str, Kind]:
        """The job kinds the service runs, by name (GET /v1/kinds, asked once per client)."""
        if refresh or self._kinds is None:
            self._kinds = {k["name"]: Kind.of(k, self) for k in self._json("GET", "/v1/kinds")["items"]}
        return self._kinds

    def __getattr__(self, name: str):
        """`client.<kind>(…)` for every kind the service lists that has no hand-written method
        below: a new kind needs no client change. Reached only for names the class lacks."""
        if name.startswith("_") or "http" not in self.__dict__:
            raise AttributeError(name)
        try:
            kinds = self.kinds()
        except ThresherError as e:   # hasattr() and tab completion expect an AttributeError
            raise AttributeError(f"{name!r}: not a Client attribute, and the service's job kinds cannot be "
                                 f"listed ({e})") from e
        if name not in kinds:
            public = [a for a in dir(type(self)) if not a.startswith("_")]
            raise AttributeError(f"{name!r} is neither a Client attribute nor a job kind of the service at "
                                 f"{self.url}{did_you_mean(name, [*kinds, *public])}")
        return _kind_method(self, kinds[name])

    def __dir__(self):
        return [*super().__dir__(), *(self._kinds or {})]

    # -- sugar for some kinds --------------------------------------------------------------------
    def submit(self, kind: str, *, name: str | None = None, idempotency_key: str | None = None, **spec) -> Job:
        return self.jobs.submit(kind, name=name, idempotency_key=idempotency_key, **spec)

    def filter(self, corpus=None, **spec) -> Job:
        """A new corpus (`job.corpus_id`) of `corpus`'s documents whose source is one of `sources`
        and/or of the rows of `manifest` where the SQL predicate `where` holds. (Its spec requires
        no field, so the generated method would take the corpus by name only.)"""
        if corpus is not None:
            spec["corpus"] = corpus
        return _kind_method(self, self.kinds()["filter"])(**spec)


SELECT_SUGAR = ("fraction", "count", "tau")


def _kind_method(client: Client, kind: Kind):
    """`client.<kind>(*required, name=None, idempotency_key=None, **spec)`: the positional arguments
    are the spec's required fields in the schema's order, the rest go by name; the service checks
    the spec (an unknown or misspelt field is its 422, naming the field). A kind whose spec has
    `select` takes it as `fraction=`, `count=` or `tau=` too (`client.dsir(pool, target, fraction=0.1)`)."""
    props = kind.spec_schema.get("properties", {})
    sugar = "select" in props
    required = [f for f in kind.required if not (sugar and f == "select")]

    def submit(*args, name: str | None = None, idempotency_key: str | None = None, **spec) -> Job:
        if len(args) > len(required):
            raise InvalidArgument(f"{kind.name}() takes {len(required)} positional argument"
                                  f"{'s' if len(required) != 1 else ''} ({', '.join(required) or 'none'}), got "
                                  f"{len(args)}: give the other spec fields by name", {"field": kind.name})
        for field_name, value in zip(required, args):
            if field_name in spec:
                raise InvalidArgument(f"{kind.name}() got {field_name!r} twice: by position and by name",
                                      {"field": field_name})
            spec[field_name] = value
        if sugar:
            spec["select"] = _select(spec)
        return client.jobs.submit(kind.name, name=name, idempotency_key=idempotency_key, **spec)

    P = inspect.Parameter
    params = [P(f, P.POSITIONAL_OR_KEYWORD) for f in required]
    params += [P(f, P.KEYWORD_ONLY, default=None) for f in SELECT_SUGAR if sugar]
    params += [P(f, P.KEYWORD_ONLY, default=_unset_nulls(props[f].get("default")))
               for f in props if f not in required and f.isidentifier() and f not in ("name", "idempotency_key")]
    params += [P("name", P.KEYWORD_ONLY, default=None), P("idempotency_key", P.KEYWORD_ONLY, default=None)]
    submit.__signature__ = inspect.Signature(params, return_annotation=Job)
    submit.__name__ = submit.__qualname__ = kind.name
    submit.__doc__ = "\n".join([f"Submit a {kind.name} job: {kind.description}.", "", "Spec fields:",
                                *(f"    {line}" for line in kind.describe()),
                                *(["", "fraction=, count= or tau= give `select`."] if sugar else [])])
    return submit


def _ids(value):
    """Records (a Corpus, a Manifest, …) given as spec values become their ids, also within lists
    and objects; a Job becomes its id, which the service reads as the manifest the job wrote
    where a manifest is expected."""
    if isinstance(value, Record):
        return value.id
    if isinstance(value, (list, tuple)):
        return [_ids(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _ids(v) for k, v in value.items()}
    return value


def _select(spec: dict) -> dict:
    """`select` taken out of `spec`: as given, or from exactly one of fraction, count or tau."""
    given = {k: v for k in SELECT_SUGAR if (v := spec.pop(k, None)) is not None}
    if "select" in spec and spec["select"] is not None:
        if given:
            raise InvalidArgument(f"give select or {', '.join(given)}, not both", {"field": "select"})
        return spec.pop("select")
    if len(given) != 1:
        # A misspelt fraction=/count=/tau= lands in **spec: name it rather than say none was given.
        for k in spec:
            if hint := did_you_mean(k, SELECT_SUGAR):
                raise InvalidArgument(f"unknown keyword argument {k!r}{hint}", {"field": k})
        raise InvalidArgument(f"give exactly one of fraction, count or tau (got {', '.join(given) or 'none'})",
                              {"field": "select"})
    return given


_DUCKDB_TYPES = {"BOOLEAN": pa.bool_(), "TINYINT": pa.int8(), "SMALLINT": pa.int16(), "INTEGER": pa.int32(),
                 "BIGINT": pa.int64(), "HUGEINT": pa.float64(), "UTINYINT": pa.uint8(), "USMALLINT": pa.uint16(),
                 "UINTEGER": pa.uint32(), "UBIGINT": pa.uint64(), "FLOAT": pa.float32(), "DOUBLE": pa.float64(),
                 "VARCHAR": pa.string()}


def _arrow_array(values: list, duck_type: str) -> pa.Array:
    t = _DUCKDB_TYPES.get(duck_type.upper())
    if t is None and duck_type.upper().startswith("DECIMAL"):
        t = pa.float64()
    try:
        return pa.array(values, type=t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array(values)


# ---------------------------------------------------------------------------------------- sub-APIs

class _Api:
    def __init__(self, client: Client):
        self.c = client

    def _page(self, path: str, record, limit: int, cursor: str | None, **params) -> Page:
        q = {"limit": limit, **({"cursor": cursor} if cursor else {}), **{k: v for k, v in params.items() if v}}
        ans = self.c._json("GET", path, params=q)
        return Page([record.of(x, self.c) for x in ans["items"]], ans.get("next_cursor"))

    def _all(self, path: str, record, **params) -> Iterator:
        cursor = None
        while True:
            page = self._page(path, record, 200, cursor, **params)
            yield from page
            if not page.next_cursor:
                return
            cursor = page.next_cursor


class Corpora(_Api):
    def upload(self, data, name: str, *, format: str | None = None, filename: str | None = None,
               text_field: str | None = None, id_field: str | None = None,
               source_field: str | None = None) -> Corpus:
        """Upload `data` as a new corpus, streamed: a path; a binary or text file object; bytes; an
        iterable of dicts (sent as JSONL); a pyarrow Table, RecordBatchReader or pandas DataFrame
        (sent as Parquet, one row group at a time). The format comes from `format`, else the file
        name, else the server reads it from the content."""
        params: dict[str, Any] = {"name": name}
        for k, v in (("text_field", text_field), ("id_field", id_field), ("source_field", source_field)):
            if v is not None:
                params[k] = v
        headers = {"Content-Type": "application/octet-stream"}
        opened = None
        if isinstance(data, (str, os.PathLike)):
            path = Path(data)
            opened = path.open("rb")
            body: Any = _file_body(opened)
            filename = filename or path.name
            headers["Content-Length"] = str(path.stat().st_size)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            body = bytes(data)
        elif hasattr(data, "read"):
            body = _file_body(data)
            size = _remaining(data)
            if size is not None:     # a known length lets the server refuse an oversized upload at once
                headers["Content-Length"] = str(size)
            fname = getattr(data, "name", None)
            if not filename and isinstance(fname, str) and not fname.isdigit():
                filename = os.path.basename(fname)
        elif isinstance(data, pa.Table):
            body, format = _parquet_body(iter(data.to_batches(max_chunksize=PARQUET_ROWS)), data.schema), "parquet"
        elif isinstance(data, pa.RecordBatchReader):
            body, format = _parquet_body(iter(data), data.schema), "parquet"
        elif type(data).__module__.startswith("pandas") and hasattr(data, "iloc"):
            body, format = _parquet_body(_dataframe_batches(data)), "parquet"
        elif isinstance(data, Iterable) and not isinstance(data, Mapping):
            body, format = _jsonl_body(data), "jsonl"
        else:
            raise TypeError(f"cannot upload a {type(data).__name__}: give a path, a file object, bytes, an "
                            "iterable of dicts, a pyarrow Table or a pandas DataFrame")
        if format:
            params["format"] = format
        if filename:
            params["filename"] = filename
        try:
            content = body if isinstance(body, bytes) else _Once(body)
            raw = self.c._json("POST", "/v1/corpora", params=params, content=content, headers=headers,
                               timeout=httpx.Timeout(60.0, read=3600.0, write=600.0))
        finally:
            if opened:
                opened.close()
        return Corpus.of(raw, self.c)

    def upload_dir(self, path: str | os.PathLike, name: str, *, split: str = "file",
                   source_from: str | None = None, suffixes: tuple[str, ...] = (".txt", ".md", ".text")) -> Corpus:
        """Upload a local directory of plain-text files (those ending in `suffixes`, at any depth) as
        one corpus, sent as JSONL: cut as the server cuts registered text (`split` "file", "line"
        or "paragraph"), ids from the paths relative to `path` (`a/b.txt`, `a/b.txt#7` for line 7),
        the source from the first directory with `source_from="dir"`."""
        from storage.ingest.common import Fields
        from storage.ingest.source import Source
        from storage.ingest.text_reader import TextReader
        root = Path(path)
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
        if not files:
            raise InvalidArgument(f"{root} holds no file ending in {', '.join(suffixes)}")

        def docs():
            for f in files:
                reader = TextReader(Source(str(f)), Fields("text", None, None), 1 << 20,
                                    name=f.relative_to(root).as_posix(), split=split, source_from=source_from)
                for rows in reader:
                    for doc_id, text, source in zip(rows.ids.to_pylist(), rows.text.to_pylist(),
                                                    rows.source.to_pylist()):
                        yield {"id": doc_id, "text": text, **({"source": source} if source else {})}
        return self.upload(docs(), name)

    def register(self, uri: str, name: str, *, format: str | None = None, text_field: str = "text",
                 id_field: str = "id", source_field: str = "source", split: str = "file",
                 source_from: str | None = None) -> Corpus:
        """Register server-side data (a file under an allowed root, or an object-store URI); the
        corpus is `ingesting` until its job ends (`.wait()`). Plain text (format "text", or files
        named .txt/.md): `split` and `source_from` as in `upload_dir`."""
        body = {"name": name, "uri": uri, "format": format, "text_field": text_field, "id_field": id_field,
                "source_field": source_field, "split": split, "source_from": source_from}
        return Corpus.of(self.c._json("POST", "/v1/corpora", json=body), self.c)

    def list(self, limit: int = 50, cursor: str | None = None) -> Page:
        return self._page("/v1/corpora", Corpus, limit, cursor)

    def iter(self) -> Iterator[Corpus]:
        """Every corpus, newest first, across pages."""
        return self._all("/v1/corpora", Corpus)

    def get(self, corpus_id) -> Corpus:
        return Corpus.of(self.c._json("GET", f"/v1/corpora/{_id(corpus_id)}"), self.c)

    def sample(self, corpus_id, n: int = 5) -> list[dict]:
        return self.c._json("GET", f"/v1/corpora/{_id(corpus_id)}/sample", params={"n": n})["items"]

    def download(self, corpus_id, path: str | os.PathLike | None = None, format: str | None = None) -> Path | bytes:
        """Stream the corpus to `path`; without a path, return the bytes. The format (parquet,
        jsonl or csv) is `format`, else the one the file name says (`x.jsonl.gz`: JSONL, gzipped
        here), else Parquet."""
        fmt, compression = download_format(path, format)
        return self.c._download(f"/v1/corpora/{_id(corpus_id)}/download", path, {"format": fmt}, compression)

    def to_arrow(self, corpus_id) -> pa.Table:
        return pq.read_table(pa.BufferReader(self.download(corpus_id)))

    def shards(self, corpus_id) -> list[dict]:
        """Per stored shard: `{shard, num_rows, url}`."""
        return self.c._json("GET", f"/v1/corpora/{_id(corpus_id)}/shards")["items"]

    def read_shard(self, corpus_id, shard: int, columns: list[str] | None = None) -> pa.Table:
        """One stored shard (`id`, `text`, `source`) as an Arrow table."""
        params = {"columns": ",".join(columns)} if columns else {}
        data = self.c._download(f"/v1/corpora/{_id(corpus_id)}/shards/{shard}", None, params)
        return pq.read_table(pa.BufferReader(data))

    def delete(self, corpus_id) -> None:
        self.c._send("DELETE", f"/v1/corpora/{_id(corpus_id)}")


class Jobs(_Api):
    def submit(self, kind: str, *, name: str | None = None, idempotency_key: str | None = None, **spec) -> Job:
        """Submit a job of `kind` with `spec` as keyword arguments (ids, names or records)."""
        spec = _ids(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        raw = self.c._json("POST", "/v1/jobs", json={"kind": kind, "name": name or kind, "spec": spec},
                           headers=headers)
        return Job.of(raw, self.c)

    def list(self, limit: int = 50, cursor: str | None = None, state: str | None = None,
             kind: str | None = None) -> Page:
        return self._page("/v1/jobs", Job, limit, cursor, state=state, kind=kind)

    def iter(self, state: str | None = None, kind: str | None = None) -> Iterator[Job]:
        return self._all("/v1/jobs", Job, state=state, kind=kind)

    def get(self, job_id) -> Job:
        return Job.of(self.c._json("GET", f"/v1/jobs/{_id(job_id)}"), self.c)

    def cancel(self, job_id, wait: bool = True, timeout: float = 60.0) -> Job:
        """Cancel a queued or running job; with `wait`, return it once it has stopped."""
        job = Job.of(self.c._json("POST", f"/v1/jobs/{_id(job_id)}/cancel"), self.c)
        deadline = time.monotonic() + timeout
        while wait and not job.done and time.monotonic() < deadline:
            time.sleep(0.2)
            job = job.refresh()
        return job

    def events(self, job_id) -> Iterator[Job]:
        """The job each time it changes (server-sent events), until it ends; reconnects if the
        stream drops before that."""
        while True:
            job = None
            try:
                r = self.c._send("GET", f"/v1/jobs/{_id(job_id)}/events", stream=True,
                                 headers={"Accept": "text/event-stream"}, timeout=httpx.Timeout(60.0, read=90.0))
                try:
                    for data in _sse_data(r.iter_lines()):
                        job = Job.of(json.loads(data), self.c)
                        yield job
                        if job.done:
                            return
                finally:
                    r.close()
            except (httpx.TransportError, ThresherError) as e:
                if isinstance(e, ThresherError) and e.status is not None:
                    raise
                time.sleep(self.c.backoff)
            if job is not None and job.done:
                return
            if self.get(job_id).done:
                yield self.get(job_id)
                return

    def wait(self, job_id, progress: bool = False, timeout: float | None = None, check: bool = True) -> Job:
        """Follow the job until it ends and return it. `progress=True` shows a tqdm bar (a widget in
        Jupyter). With `check`, a failed or cancelled job raises ThresherError (its error code)."""
        bar = _Bar() if progress else None
        job = self.get(job_id)
        try:
            if bar:
                bar.update(job)
            if timeout is None:             # follow the event stream
                for job in ([] if job.done else self.events(job_id)):
                    if bar:
                        bar.update(job)
            else:                           # poll, so that the deadline holds while nothing changes
                deadline = time.monotonic() + timeout
                while not job.done:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"job {job.id} still {job.state} after {timeout}s")
                    time.sleep(0.5)
                    job = self.get(job_id)
                    if bar:
                        bar.update(job)
        finally:
            if bar:
                bar.close()
        if check and job.state != "succeeded":
            e = job.error or {}
            raise ThresherError(e.get("code", job.state), e.get("message", f"job {job.id} {job.state}"),
                                {"job_id": job.id, "state": job.state})
        return job


def _sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each event of a text/event-stream, by the format's rules: comments and
    keep-alives skipped, one space after `data:` dropped, and an event that a dropped connection
    left without its closing blank line not dispatched (its JSON may be cut short)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)


class _Bar:
    """A tqdm bar per job stage; tqdm.auto picks the Jupyter widget in a notebook."""

    def __init__(self):
        try:
            from tqdm.auto import tqdm
            tqdm(total=0, disable=True).close()   # the notebook flavour fails here without ipywidgets
        except ImportError:
            from tqdm import tqdm
        self.tqdm, self.bar, self.stage = tqdm, None, None

    def update(self, job: Job) -> None:
        p = job.progress
        stage = p.stage or job.state
        if self.bar is None or stage != self.stage:
            if self.bar is not None:
                self.bar.close()
            self.stage = stage
            self.bar = self.tqdm(total=p.total or None, unit=f" {p.unit}" if p.unit else "it",
                                 desc=f"{job.kind} {stage}", dynamic_ncols=True)
        if p.total and self.bar.total != p.total:
            self.bar.total = p.total
        self.bar.n = p.done or 0
        self.bar.set_postfix_str(job.state, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Manifests(_Api):
    def list(self, limit: int = 50, cursor: str | None = None) -> Page:
        return self._page("/v1/manifests", Manifest, limit, cursor)

    def iter(self) -> Iterator[Manifest]:
        return self._all("/v1/manifests", Manifest)

    def get(self, manifest_id) -> Manifest:
        return Manifest.of(self.c._json("GET", f"/v1/manifests/{_id(manifest_id)}"), self.c)

    def download(self, manifest_id, path: str | os.PathLike | None = None, format: str | None = None,
                 selected_only: bool = False) -> Path | bytes:
        """Stream the manifest to `path`; without a path, return the bytes. The format (parquet,
        csv or jsonl) is `format`, else the one the file name says, else Parquet."""
        fmt, compression = download_format(path, format)
        return self.c._download(f"/v1/manifests/{_id(manifest_id)}/download", path,
                                {"format": fmt, "selected_only": str(selected_only).lower()}, compression)

    def to_arrow(self, manifest_id, selected_only: bool = False) -> pa.Table:
        return pq.read_table(pa.BufferReader(self.download(manifest_id, None, "parquet", selected_only)))

    def to_duckdb(self, manifest_id, con, name: str | None = None, selected_only: bool = False):
        """Register the manifest in the DuckDB connection `con` as a table named `name` (default:
        the manifest id); returns `con`."""
        table = self.to_arrow(manifest_id, selected_only)
        con.register(name or _id(manifest_id), table)
        return con

    def shards(self, manifest_id) -> list[dict]:
        return self.c._json("GET", f"/v1/manifests/{_id(manifest_id)}/shards")["items"]

    def read_shard(self, manifest_id, shard: int, selected_only: bool = True) -> pa.Table:
        data = self.c._download(f"/v1/manifests/{_id(manifest_id)}/shards/{shard}", None,
                                {"format": "parquet", "selected_only": str(selected_only).lower()})
        return pq.read_table(pa.BufferReader(data))

    def export(self, manifest_id, selected_only: bool = True, name: str | None = None,
               restrict: Iterable = ()) -> Job:
        """A job that materialises the (selected) documents as a new corpus (`job.corpus_id`),
        leaving out those a manifest of `restrict` (ids, Manifests or the Jobs that wrote them)
        does not select."""
        body = {"selected_only": selected_only, **({"name": name} if name else {}),
                **({"restrict": _ids(list(restrict))} if restrict else {})}
        return Job.of(self.c._json("POST", f"/v1/manifests/{_id(manifest_id)}/export", json=body), self.c)

    def rejections(self, manifest_id, restrict: Iterable = (), selected_only: bool = False) -> Rejections:
        """How many documents of the manifest's pool each filter rejects, per source, and how many
        survive them all. Filters: `restrict` (ids, Manifests or Jobs), else what the manifest was
        built on, else the manifest itself (a dedup, decontaminate or quality manifest);
        `selected_only`: the pool is the manifest's selected documents (what an export draws from)."""
        params = [("restrict", r) for r in _ids(list(restrict))] + [("selected_only", str(selected_only).lower())]
        return Rejections.of(self.c._json("GET", f"/v1/manifests/{_id(manifest_id)}/rejections", params=params), self.c)


class Models(_Api):
    def list(self, limit: int = 50, cursor: str | None = None) -> Page:
        return self._page("/v1/models", Model, limit, cursor)

    def iter(self) -> Iterator[Model]:
        return self._all("/v1/models", Model)

    def get(self, model_id) -> Model:
        return Model.of(self.c._json("GET", f"/v1/models/{_id(model_id)}"), self.c)

    def register(self, name: str, path: str) -> Model:
        """Register a local Hugging Face causal-LM checkpoint directory under an allowed root."""
        return Model.of(self.c._json("POST", "/v1/models", json={"name": name, "path": str(path)}), self.c)


class Projections(_Api):
    def predict(self, job_id, mixtures: list[list[float]], sizes: list[int]) -> list[dict]:
        """The fitted projection's metric for each mixture at each size: `[{size, mixture, predicted}]`."""
        body = {"mixtures": [list(map(float, m)) for m in mixtures], "sizes": [int(n) for n in sizes]}
        return self.c._json("POST", f"/v1/projections/{_id(job_id)}/predict", json=body)["predictions"]

    def plot(self, job_id, path: str | os.PathLike | None = None) -> bytes:
        """The projection's plot as PNG bytes (also written to `path` when given)."""
        png = self.c._send("GET", f"/v1/jobs/{_id(job_id)}/plot").content
        if path is not None:
            Path(path).write_bytes(png)
        return png


class Curricula(_Api):
    def get(self, curriculum_id) -> Curriculum:
        return Curriculum.of(self.c._json("GET", f"/v1/curricula/{_id(curriculum_id)}"), self.c)

    def epoch(self, curriculum_id, epoch: int) -> EpochPlan:
        """The samples to train on in `epoch`, in order (fetched as Parquet), with InfoBatch weights."""
        data = self.c._send("GET", f"/v1/curricula/{_id(curriculum_id)}/epochs/{epoch}",
                            params={"format": "parquet"}).content
        t = pq.read_table(pa.BufferReader(data))
        weights = t["weight"].to_pylist() if "weight" in t.column_names else None
        return EpochPlan(epoch, t["doc_id"].to_pylist(), weights)

    def post_losses(self, curriculum_id, epoch: int, losses) -> Curriculum:
        """Post the losses seen in `epoch`: a {doc_id: loss} mapping, (doc_id, loss) pairs, dicts
        with doc_id and loss, or a pyarrow Table with those columns (sent as Parquet)."""
        if isinstance(losses, pa.Table):
            table = losses.select(["doc_id", "loss"])
        else:
            items = losses.items() if isinstance(losses, Mapping) else losses
            pairs = [(x["doc_id"], x["loss"]) if isinstance(x, Mapping) else tuple(x) for x in items]
            table = pa.table({"doc_id": pa.array([p[0] for p in pairs], pa.string()),
                              "loss": pa.array([float(p[1]) for p in pairs], pa.float64())})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        raw = self.c._json("POST", f"/v1/curricula/{_id(curriculum_id)}/losses", params={"epoch": epoch},
                           content=sink.getvalue().to_pybytes(), headers={"Content-Type": PARQUET_MEDIA})
        return Curriculum.of(raw, self.c)
