"""Jobs: submit (with Idempotency-Key), list, show, cancel, and follow as server-sent events."""
from __future__ import annotations

import asyncio
import hashlib
import json

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import Limit, Svc, Tenant, owned, page, resolve
from service.routes.query import sandboxed
from service.schemas import Job, JobList, JobRequest, Resolved
from storage.manifests import dataset, manifest_corpus, manifest_files
from workers.driver.engine import TERMINAL
from workers.driver.lifecycle import submit_job
from workers.jobs.restrict import check_restrictions
from workers.specs import check_limits, check_records, iter_refs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


def job_view(rec: dict) -> Job:
    return Job(**{k: v for k, v in rec.items() if k in Job.model_fields and v is not None})


def check_refs(s, tenant: str, spec) -> list[dict]:
    """Every corpus/model/manifest a spec names must be the caller's (else 404); one given by name
    (a manifest: by its job's id) resolves to its id. Returns the resolutions, {field, given, id}."""
    resolved = []
    for table, ref, path in iter_refs(spec):
        field = ".".join(str(p) for p in ("spec", *path))
        rec = resolve(s, table, ref, tenant, field)
        if rec["id"] != ref:
            resolved.append({"field": field, "given": ref, "id": rec["id"], "path": path})
    return resolved


def _set(spec: dict, path: tuple, value) -> None:
    for part in path[:-1]:
        spec = spec[part]
    spec[path[-1]] = value


class TenantRecords:
    """What a spec's submit-time checks read (workers.specs.Records), for the caller's tenant."""

    def __init__(self, s, tenant: str):
        self.s, self.tenant = s, tenant

    def record(self, table: str, id_: str) -> dict:
        return self.s.catalog.get(table, id_, self.tenant)

    def manifest_corpus(self, manifest_id: str) -> str | None:
        return manifest_corpus(self.s.store, manifest_id)

    def query(self, sql: str, tables: dict[str, str]) -> None:
        sandboxed(self.s, sql, {n: dataset(self.s.store, manifest_files(self.s.store, m)) for n, m in tables.items()}, 0)


@router.post("", status_code=202, response_model=Job)
def create_job(request: JobRequest, tenant: str = Tenant, s=Svc,
               idempotency_key: str | None = Header(None, description="same key + same body → same job")):
    resolved = check_refs(s, tenant, request.spec)
    body = request.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()   # the body as sent
    for r in resolved:
        _set(body["spec"], r.pop("path"), r["id"])
    # The checks read the spec as it will run: names resolved to ids.
    spec = type(request.spec).model_validate(body["spec"]) if resolved else request.spec
    check_limits(spec, s.engine.config.limits)
    check_records(spec, TenantRecords(s, tenant))
    check_restrictions(s.store, s.catalog, tenant, spec)
    rec, new = submit_job(s.engine, tenant, request.kind, request.name, body["spec"], idempotency_key or None,
                          digest)
    if not new and rec["request_hash"] != digest:
        raise ApiError(409, "idempotency_conflict", "this Idempotency-Key was used with a "
                       "different request body", {"job_id": rec["id"]})
    return job_view(rec).model_copy(update={"resolved": [Resolved(**r) for r in resolved] or None})


@router.get("", response_model=JobList)
def list_jobs(tenant: str = Tenant, s=Svc, limit: int = Limit, cursor: str | None = None,
              state: str | None = None, kind: str | None = None):
    filters = {k: v for k, v in (("state", state), ("kind", kind)) if v}
    rows, nxt = page(s, "jobs", tenant, limit, cursor, **filters)
    return JobList(items=[job_view(r) for r in rows], next_cursor=nxt)


@router.get("/{job_id}", response_model=Job)
def get_job(job_id: str, tenant: str = Tenant, s=Svc):
    return job_view(owned(s, "jobs", job_id, tenant))


@router.post("/{job_id}/cancel", response_model=Job)
def cancel_job(job_id: str, tenant: str = Tenant, s=Svc):
    owned(s, "jobs", job_id, tenant)
    return job_view(s.engine.cancel(job_id))


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, request: Request, tenant: str = Tenant, s=Svc):
    """Server-sent events: the job object each time it changes; the stream ends when the job does."""
    owned(s, "jobs", job_id, tenant)

    async def stream():
        last, quiet = None, 0.0
        while True:
            rec = s.catalog.get("jobs", job_id)
            data = job_view(rec).model_dump_json()
            if data != last:
                last, quiet = data, 0.0
                yield f"event: job\ndata: {data}\n\n"
            elif quiet >= 15:  # a comment line keeps proxies and clients from timing out
                quiet = 0.0
                yield ": keep-alive\n\n"
            if rec["state"] in TERMINAL or await request.is_disconnected():
                return
            await asyncio.sleep(0.25)
            quiet += 0.25
    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


