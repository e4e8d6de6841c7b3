"""POST /v1/query: read-only SQL over the caller's own manifests."""
from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import Svc, Tenant, owned
from service.schemas import QueryRequest, QueryResult
from storage.manifests import dataset, manifest_files
from storage.query import run_query

router = APIRouter(tags=["query"], responses=ERROR_RESPONSES)
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@router.post("/v1/query", response_model=QueryResult)
async def query(body: QueryRequest, tenant: str = Tenant, s=Svc):
    """DuckDB SELECT over the manifests named in `tables`; files, network, ATTACH, COPY, extensions
    and settings are off, and time and memory are bounded."""
    tables = {}
    for name, manifest_id in body.tables.items():
        if not IDENT.match(name):
            raise ApiError(422, "validation_error", f"tables.{name}: table names must be SQL identifiers",
                           {"field": f"tables.{name}"})
        owned(s, "manifests", manifest_id, tenant)
        tables[name] = dataset(s.store, manifest_files(s.store, manifest_id))
    return await run_in_threadpool(run_query, body.sql, tables, limit=body.limit,
                                   timeout_s=s.settings.query_timeout_s, memory_limit=s.settings.query_memory)
