"""Corpora: upload (body or multipart), register by URI, list, show, sample, download, delete."""
from __future__ import annotations

import os
import uuid
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from service.bodies import TooLarge, attachment, check_declared, limited, parse_slot, spool, too_large
from service.errors import ERROR_RESPONSES, ApiError, invalid_body
from service.routes.common import Limit, ResolveIds, Svc, Tenant, owned, page
from service.schemas import Corpus, CorpusList, RegisterCorpus, Split, distinct_fields, printable_name
from storage import layout
from storage.catalog import new_id
from storage.encode import MEDIA_TYPES, bounded_batches, encode
from storage.inputs import Access, join_uri, split_uri
from storage.sniff import sniff_format
from workers.driver import lifecycle
from workers.jobs.ingest import ListingLimits, ingest_upload, list_registered
from workers.registry import KINDS
from workers.specs import iter_refs

router = APIRouter(prefix="/v1/corpora", tags=["corpora"], responses=ERROR_RESPONSES, dependencies=[ResolveIds])
Format = Literal["jsonl", "parquet", "csv", "text"]
KNOWN_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".csv", ".parquet", ".txt", ".text", ".md")
CONTENT_TYPES = {"application/x-ndjson": "jsonl", "application/jsonl": "jsonl", "text/csv": "csv",
                 "application/vnd.apache.parquet": "parquet", "application/x-parquet": "parquet"}


def corpus_view(rec: dict) -> Corpus:
    meta = rec.get("meta") or {}
    return Corpus(**{k: v for k, v in rec.items() if k in Corpus.model_fields and v is not None},
                  empty_doc_ids=meta.get("empty_ids", []), ids_generated=meta.get("ids_generated"),
                  fields=meta.get("fields") or {}, json_fields=meta.get("json_fields") or [])


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
                        filename: str | None = Query(None, description="the file's name, for format and compression"),
                        split: Split = Query("paragraph", description="plain text: a document per file, "
                                             "per non-empty line or per blank-line-separated paragraph")):
    """Upload a file as the request body or as multipart field `file` (→ 201, ingested), or send JSON
    `{"name", "uri", …}` to register server-side data (→ 202, ingested by a job)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        return await _register(request, tenant, s)
    limit = s.settings.max_upload_bytes
    check_declared(request, limit)
    if name is not None:
        check_name(name, "name")
    fields = {"name": name, "format": format, "text_field": text_field, "id_field": id_field,
              "source_field": source_field, "filename": filename, "split": split}
    # The body goes into storage first: a Ray worker parses it, so that no input can crash or
    # bloat the API process, and no worker needs to read this machine's disk.
    upload = layout.upload(uuid.uuid4().hex)
    try:
        if ctype == "multipart/form-data":
            await _spool_multipart(request, s.store, upload, limit, fields)
        else:
            await spool(request, s.store, upload, limit, "upload")
        if not fields["name"]:
            raise ApiError(422, "missing_field", "name is required (query parameter or form field)",
                           {"field": "name"})
        check_name(fields["name"], "name")
        fmt = fields["format"] or CONTENT_TYPES.get(ctype)
        fname = fields["filename"] or fields["name"]
        if fmt is None and not any(ext in fname.lower() for ext in KNOWN_EXTENSIONS):
            with s.store.open_input(*upload) as head:  # neither a content type nor a name says it
                fmt = sniff_format(head.read(1 << 16))
        if fmt is None and not any(ext in fname.lower() for ext in KNOWN_EXTENSIONS):
            raise ApiError(415, "unknown_format", "cannot tell the file's format from its content type, name or first bytes: "
                           "pass format=jsonl|csv|parquet|text or a filename with an extension", {"field": "format"})
        try:
            distinct_fields(fields["text_field"], fields["id_field"])
        except ValueError as e:
            raise ApiError(422, "validation_error", f"id_field: {e}", {"field": "id_field"}) from None
        cid = new_id("corpora")
        options = {"text_field": fields["text_field"], "id_field": fields["id_field"],
                   "source_field": fields["source_field"], "shard_size": s.settings.shard_size,
                   "compression": s.settings.shard_compression, "max_doc_bytes": s.settings.max_doc_bytes,
                   "max_decompressed_bytes": s.settings.max_decompressed_bytes, "split": fields["split"]}
        async with parse_slot(s):
            stats = await run_in_threadpool(ingest_upload, s.store, upload, cid, fname, fmt, options)
        rec = lifecycle.create_uploaded_corpus(s.catalog, cid, tenant, fields["name"], stats,
                                               {"format": fmt, "filename": fname})
        return corpus_view(rec)
    finally:
        await run_in_threadpool(s.store.delete, *upload)


def tenant_access(s) -> Access:
    """What a tenant's paths may reach: the allowed roots, never the server's store or home."""
    return Access(tuple(s.settings.allowed_roots), (s.settings.store_root, os.path.abspath(s.settings.home)))


async def _spool_multipart(request: Request, store, upload: tuple, limit: int, fields: dict) -> None:
    """The multipart field `file` into storage at `upload`; the other form fields fill `fields`."""
    limited_request = Request(request.scope, limited(request.receive, limit))
    try:
        with store.open_output(*upload) as out:
            form = await limited_request.form(max_files=1)
            part = form.get("file")
            if part is None or isinstance(part, str):
                raise ApiError(422, "missing_field", "multipart upload needs a file field named 'file'",
                               {"field": "file"})
            for k in fields:
                if fields[k] in (None, "text", "id", "source", "paragraph") and isinstance(form.get(k), str):
                    fields[k] = form[k]
            fields["filename"] = fields["filename"] or part.filename
            while chunk := await part.read(1 << 20):
                await run_in_threadpool(out.write, chunk)
    except TooLarge:
        raise too_large(limit) from None
    except ClientDisconnect:
        raise ApiError(400, "incomplete_upload", "the client disconnected during the upload") from None


def check_name(name: str, field: str) -> None:
    try:
        printable_name(name)
    except ValueError as e:
        raise ApiError(422, "validation_error", f"{field}: {e}", {"field": field}) from None


async def _register(request: Request, tenant: str, s) -> JSONResponse:
    try:
        body = RegisterCorpus.model_validate_json(await request.body())
    except ValidationError as e:
        raise invalid_body(e) from None
    scheme, path, query = split_uri(body.uri)
    uri = join_uri(scheme, path, query)          # a local path made absolute; links resolved at each open
    access = tenant_access(s)
    access.check_uri(uri)                        # a quick 403/422 before anything is listed
    listing = ListingLimits(max_files=s.settings.max_input_files, timeout_s=s.settings.listing_timeout_s)
    # Listed on a Ray worker, bounded: every file matched is checked there (403 naming it), and
    # each one again by the worker that opens it.
    files = await run_in_threadpool(list_registered, uri, access, listing)
    if not files:
        raise ApiError(404, "not_found", f"{body.uri} matches no file", {"field": "uri", "pattern": body.uri})
    spec = {"uri": uri, "format": body.format, "text_field": body.text_field, "id_field": body.id_field,
            "source_field": body.source_field, "split": body.split, "source_from": body.source_from,
            "shard_size": s.settings.shard_size,
            "split_bytes": s.settings.split_bytes, "compression": s.settings.shard_compression,
            "limits": {"max_doc_bytes": s.settings.max_doc_bytes}, "listing": listing.model_dump()}
    rec, _ = lifecycle.create_corpus_by_job(s.engine, tenant, body.name, "ingest", f"ingest {body.name}", spec)
    return JSONResponse(corpus_view(rec).model_dump(), status_code=202)


@router.get("", response_model=CorpusList)
def list_corpora(tenant: str = Tenant, s=Svc, limit: int = Limit, cursor: str | None = None):
    rows, nxt = page(s, "corpora", tenant, limit, cursor)
    return CorpusList(items=[corpus_view(r) for r in rows], next_cursor=nxt)


@router.get("/{corpus_id}", response_model=Corpus)
def get_corpus(corpus_id: str, tenant: str = Tenant, s=Svc):
    return corpus_view(owned(s, "corpora", corpus_id, tenant))


def _shards(s, corpus_id: str) -> list[tuple[str, ...]]:
    return [p for _, p in layout.corpus_shards(s.store, corpus_id)]


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
            yield from bounded_batches(s.store.parquet_file(*parts))
    return StreamingResponse(encode(batches(), schema, format), media_type=MEDIA_TYPES[format],
                             headers={"Content-Disposition": attachment(f"{rec['name']}.{format}")})


@router.delete("/{corpus_id}", status_code=204)
def delete_corpus(corpus_id: str, tenant: str = Tenant, s=Svc):
    owned(s, "corpora", corpus_id, tenant)
    for state in ("queued", "running"):
        for job in s.catalog.find("jobs", tenant=tenant, state=state):
            spec = KINDS[job["kind"]].spec.model_validate(job["spec"])
            uses = [r for r in iter_refs(spec) if r[1] == corpus_id]
            if uses or job["spec"].get("corpus_id") == corpus_id:
                raise ApiError(409, "corpus_in_use", f"job {job['id']} ({state}) uses corpus {corpus_id}; "
                               "cancel it or wait for it to finish", {"job_id": job["id"]})
    lifecycle.delete_corpus(s.catalog, s.store, corpus_id)
