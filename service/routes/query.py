"""POST /v1/query: read-only SQL over the caller's own manifests and corpora."""
from __future__ import annotations

import os
import re

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import Svc, Tenant, resolve
from service.schemas import QueryRequest, QueryResult
from storage import layout
from storage.catalog import PREFIX
from storage.manifests import dataset, manifest_files
from storage.query import run_query

router = APIRouter(tags=["query"], responses=ERROR_RESPONSES)
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def table_data(s, ref: str, tenant: str, field: str):
    """A manifest's rows, or (a corpus id) a corpus's documents with every stored column: the extra
    fields of a selection are a join away (`JOIN c ON c.id = m.doc_id`)."""
    if ref.startswith(f"{PREFIX['corpora']}_"):
        corpus = resolve(s, "corpora", ref, tenant, field)
        if corpus["state"] != "ready":
            raise ApiError(409, "corpus_not_ready", f"{field}: corpus {ref} is {corpus['state']}", {"field": field})
        return dataset(s.store, [p for _, p in layout.corpus_shards(s.store, corpus["id"])])
    return dataset(s.store, manifest_files(s.store, resolve(s, "manifests", ref, tenant, field)["id"]))


@router.post("/v1/query", response_model=QueryResult)
async def query(body: QueryRequest, tenant: str = Tenant, s=Svc):
    """DuckDB SELECT over the manifests (and corpora, by id) named in `tables`, run in a process of its own; files,
    network, ATTACH, COPY, extensions, settings and catalog views are off; time, memory and the
    result's rows and bytes are bounded."""
    if body.limit > s.settings.query_max_rows:
        raise ApiError(422, "validation_error", f"limit: at most {s.settings.query_max_rows} rows "
                       "(THRESHER_QUERY_MAX_ROWS)", {"field": "limit", "max": s.settings.query_max_rows})
    tables = {}
    for name, manifest_id in body.tables.items():
        if not IDENT.match(name):
            raise ApiError(422, "validation_error", f"tables.{name}: table names must be SQL identifiers",
                           {"field": f"tables.{name}"})
        tables[name] = table_data(s, manifest_id, tenant, f"tables.{name}")
    # The answer is the child's JSON as it came: the rows are never Python objects in the service.
    answer = await run_in_threadpool(sandboxed, s, body.sql, tables, body.limit)
    return Response(answer, media_type="application/json")


def sandboxed(s, sql: str, tables: dict, limit: int) -> bytes:
    """The JSON answer of `sql` run in the query sandbox under the server's bounds (time, memory,
    result bytes, spill), for this path and the others that read manifests with SQL (a document
    listing, the predicates job specs carry)."""
    cfg = s.settings
    return run_query(sql, tables, limit=limit, timeout_s=cfg.query_timeout_s, memory_limit=cfg.query_memory,
                     process_memory=cfg.query_process_memory, max_bytes=cfg.query_max_bytes, temp_root=cfg.temp_dir,
                     max_temp_size=cfg.duckdb_max_temp, server_paths=(os.path.abspath(cfg.home), cfg.store_root))
