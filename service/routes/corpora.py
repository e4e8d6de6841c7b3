"""Corpora: upload (body or multipart), register by URI, list, show, sample, download, delete."""
from __future__ import annotations

import os
import tempfile
from typing import Literal

import pyarrow.fs as pafs
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from service.errors import ERROR_RESPONSES, ApiError, invalid_body
from service.routes.common import Limit, Svc, Tenant, owned, page
from service.schemas import Corpus, CorpusList, RegisterCorpus
from storage.catalog import new_id, now
from storage.encode import MEDIA_TYPES, encode
from storage.ingest import IngestError, ingest
from storage.sniff import sniff_format
from workers.specs import iter_refs

router = APIRouter(prefix="/v1/corpora", tags=["corpora"], responses=ERROR_RESPONSES)
Format = Literal["jsonl", "parquet", "csv"]
CONTENT_TYPES = {"application/x-ndjson": "jsonl", "application/jsonl": "jsonl", "text/csv": "csv",
                 "application/vnd.apache.parquet": "parquet", "application/x-parquet": "parquet"}


def corpus_view(rec: dict) -> Corpus:
    meta = rec.get("meta") or {}
    return Corpus(**{k: v for k, v in rec.items() if k in Corpus.model_fields and v is not None},
                  empty_doc_ids=meta.get("empty_ids", []), ids_generated=meta.get("ids_generated"))


class _TooLarge(Exception):
    pass


def _limited(receive, limit: int):
    """Wrap an ASGI receive so that a body over `limit` bytes stops the upload (413)."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _TooLarge()
        return message
    return wrapped


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"upload exceeds the limit of {limit} bytes",
                    {"limit_bytes": limit})


@router.post("", status_code=201, response_model=Corpus, summary="Upload or register a corpus",
             openapi_extra={"requestBody": {"content": {
                 "application/x-ndjson": {"schema": {"type": "string", "format": "binary"}},
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "file": {"type": "string", "format": "binary"}, "name": {"type": "string"}}}},
                 "application/json": {"schema": {"$ref": "#/components/schemas/RegisterCorpus"}}}}})
async def create_corpus(request: Request, tenant: str = Tenant, s=Svc,
                        name: str | None = Query(None, description="required (query or form field)"),
                        format: Format | None = Query(None, description="default: from the file name"),
                        text_field: str = "text", id_field: str = "id", source_field: str = "source",
                        filename: str | None = Query(None, description="the file's name, for format and compression")):
    """Upload a file as the request body or as multipart field `file` (→ 201, ingested), or send JSON
    `{"name", "uri", …}` to register server-side data (→ 202, ingested by a job)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        return await _register(request, tenant, s)
    limit = s.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    fields = {"name": name, "format": format, "text_field": text_field, "id_field": id_field,
              "source_field": source_field, "filename": filename}
    spool_dir = os.path.join(s.settings.home, "uploads")
    os.makedirs(spool_dir, exist_ok=True)
    fd, spool = tempfile.mkstemp(dir=spool_dir)
    try:
        limited = Request(request.scope, _limited(request.receive, limit))
        try:
            if ctype == "multipart/form-data":
                form = await limited.form(max_files=1)
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(422, "missing_field", "multipart upload needs a file field named 'file'",
                                   {"field": "file"})
                for k in fields:
                    if fields[k] in (None, "text", "id", "source") and isinstance(form.get(k), str):
                        fields[k] = form[k]
                fields["filename"] = fields["filename"] or upload.filename
                with os.fdopen(fd, "wb") as out:
                    while chunk := await upload.read(1 << 20):
                        out.write(chunk)
            else:
                with os.fdopen(fd, "wb") as out:
                    async for chunk in limited.stream():
                        out.write(chunk)
        except _TooLarge:
            raise _too_large(limit) from None
        except ClientDisconnect:
            raise ApiError(400, "incomplete_upload", "the client disconnected during the upload") from None
        if not fields["name"]:
            raise ApiError(422, "missing_field", "name is required (query parameter or form field)",
                           {"field": "name"})
        fmt = fields["format"] or CONTENT_TYPES.get(ctype)
        fname = fields["filename"] or fields["name"]
        if fmt is None and not any(ext in fname.lower() for ext in (".jsonl", ".json", ".ndjson", ".csv", ".parquet")):
            fmt = sniff_format(spool)   # neither the content type nor a name says it: read the first bytes
        if fmt is None and not any(ext in fname.lower() for ext in (".jsonl", ".json", ".ndjson", ".csv", ".parquet")):
            raise ApiError(415, "unknown_format", "cannot tell the file's format from its content type, name or first bytes: "
                           "pass format=jsonl|csv|parquet or a filename with an extension", {"field": "format"})
        cid = new_id("corpora")
        try:
            stats = await run_in_threadpool(
                ingest, spool, filename=fname, store=s.store, dest=("corpora", cid), format=fmt,
                text_field=fields["text_field"], id_field=fields["id_field"],
                source_field=fields["source_field"], shard_size=s.settings.shard_size)
        except IngestError as e:
            raise ApiError(e.status, e.code, e.message, e.details) from None
        rec = {"id": cid, "tenant": tenant, "name": fields["name"], "state": "ready", "created_at": now(),
               **{k: v for k, v in stats.to_dict().items() if k in ("num_docs", "num_bytes", "num_shards", "num_empty", "sources")},
               "meta": {"empty_ids": stats.empty_ids, "format": fmt, "filename": fname,
                        "ids_generated": stats.ids_generated}}
        s.catalog.insert("corpora", rec)
        return corpus_view(rec)
    finally:
        try:
            os.unlink(spool)
        except FileNotFoundError:
            pass


def allowed_uri(uri: str, roots: list[str]) -> str | None:
    """The URI normalised if it lies under an allowed root, else None."""
    if uri.startswith("file://") or "://" not in uri:
        path = os.path.realpath(uri[len("file://"):] if uri.startswith("file://") else uri)
        for root in roots:
            if "://" in root and not root.startswith("file://"):
                continue
            base = os.path.realpath(root[len("file://"):] if root.startswith("file://") else root)
            if path == base or path.startswith(base.rstrip("/") + "/"):
                return "file://" + path
        return None
    return uri if any(uri.startswith(r.rstrip("/") + "/") for r in roots if "://" in r) else None


async def _register(request: Request, tenant: str, s) -> JSONResponse:
    try:
        body = RegisterCorpus.model_validate_json(await request.body())
    except ValidationError as e:
        raise invalid_body(e) from None
    uri = allowed_uri(body.uri, s.settings.allowed_roots)
    if uri is None:
        raise ApiError(403, "forbidden_uri", f"{body.uri} is not under an allowed root "
                       "(THRESHER_ALLOWED_ROOTS)", {"field": "uri"})
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        missing = fs.get_file_info(path).type != pafs.FileType.File
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ApiError(422, "bad_uri", f"cannot read {body.uri}: {e}", {"field": "uri"}) from None
    if missing:
        raise ApiError(404, "not_found", f"{body.uri} does not exist or is not a file", {"field": "uri"})
    cid, jid = new_id("corpora"), new_id("jobs")
    s.catalog.insert("corpora", {"id": cid, "tenant": tenant, "name": body.name, "state": "ingesting",
                                 "created_at": now(), "job_id": jid, "sources": {}})
    spec = {"corpus_id": cid, "uri": uri, "format": body.format, "text_field": body.text_field,
            "id_field": body.id_field, "source_field": body.source_field, "shard_size": s.settings.shard_size}
    s.engine.submit({"id": jid, "tenant": tenant, "kind": "ingest", "name": f"ingest {body.name}",
                     "state": "queued", "spec": spec, "created_at": now()})
    rec = s.catalog.get("corpora", cid)
    return JSONResponse(corpus_view(rec).model_dump(), status_code=202)


@router.get("", response_model=CorpusList)
def list_corpora(tenant: str = Tenant, s=Svc, limit: int = Limit, cursor: str | None = None):
    rows, nxt = page(s, "corpora", tenant, limit, cursor)
    return CorpusList(items=[corpus_view(r) for r in rows], next_cursor=nxt)


@router.get("/{corpus_id}", response_model=Corpus)
def get_corpus(corpus_id: str, tenant: str = Tenant, s=Svc):
    return corpus_view(owned(s, "corpora", corpus_id, tenant))


def _shards(s, corpus_id: str) -> list[tuple[str, ...]]:
    return [("corpora", corpus_id, n) for n in s.store.list("corpora", corpus_id, suffix=".parquet")]


def _ready(s, corpus_id: str, tenant: str) -> dict:
    rec = owned(s, "corpora", corpus_id, tenant)
    if rec["state"] != "ready":
        raise ApiError(409, "corpus_not_ready", f"corpus {corpus_id} is {rec['state']}")
    return rec


@router.get("/{corpus_id}/sample")
def sample_corpus(corpus_id: str, n: int = Query(5, ge=1, le=100), tenant: str = Tenant, s=Svc):
    """The first n documents, in stored order."""
    _ready(s, corpus_id, tenant)
    docs = []
    for parts in _shards(s, corpus_id):
        for batch in s.store.iter_batches(*parts, batch_size=n):
            docs += batch.to_pylist()[: n - len(docs)]
            break
        if len(docs) >= n:
            break
    return {"items": docs}


@router.get("/{corpus_id}/download", response_class=StreamingResponse,
            responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}})
def download_corpus(corpus_id: str, format: Literal["parquet", "jsonl", "csv"] = "parquet",
                    tenant: str = Tenant, s=Svc):
    rec = _ready(s, corpus_id, tenant)
    shards = _shards(s, corpus_id)
    schema = s.store.parquet_file(*shards[0]).schema_arrow

    def batches():
        for parts in shards:
            yield from s.store.iter_batches(*parts)
    filename = f"{rec['name']}.{format}".replace('"', "")
    return StreamingResponse(encode(batches(), schema, format), media_type=MEDIA_TYPES[format],
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.delete("/{corpus_id}", status_code=204)
def delete_corpus(corpus_id: str, tenant: str = Tenant, s=Svc):
    owned(s, "corpora", corpus_id, tenant)
    from workers.jobs import KINDS
    for state in ("queued", "running"):
        for job in s.catalog.find("jobs", tenant=tenant, state=state):
            spec = KINDS[job["kind"]].spec.model_validate(job["spec"])
            uses = [r for r in iter_refs(spec) if r[1] == corpus_id]
            if uses or job["spec"].get("corpus_id") == corpus_id:
                raise ApiError(409, "corpus_in_use", f"job {job['id']} ({state}) uses corpus {corpus_id}; "
                               "cancel it or wait for it to finish", {"job_id": job["id"]})
    s.catalog.delete("corpora", corpus_id)
    s.store.delete("corpora", corpus_id)
