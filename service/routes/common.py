"""Small helpers shared by the routers."""
from __future__ import annotations

from fastapi import Depends, Query, Request

from service.auth import tenant_of
from service.errors import ApiError, not_found
from service.state import ServiceState
from storage.catalog import NotFound

NAMES = {"corpora": "corpus", "jobs": "job", "manifests": "manifest", "models": "model", "curricula": "curriculum run"}


def svc(request: Request) -> ServiceState:
    return request.app.state.svc


Tenant = Depends(tenant_of)
Svc = Depends(svc)
Limit = Query(50, ge=1, le=1000)


# Path parameters that name a resource, resolved by `resolve_path_ids` before a route reads them.
PATH_IDS = {"corpus_id": "corpora", "manifest_id": "manifests", "model_id": "models"}
NAMED = {"corpora", "models"}   # the catalog tables whose records have a name


def resolve(s: ServiceState, table: str, ref: str, tenant: str, field: str | None = None) -> dict:
    """The caller's record that `ref` names where an id is expected: its id; else, for corpora and
    models, the name of exactly one of the caller's (failed corpora aside); else, for manifests,
    the id of a job that wrote one. A 404 in plain words otherwise (`field`: where `ref` was given)."""
    try:
        return s.catalog.get(table, ref, tenant)
    except NotFound:
        pass
    what, where = NAMES[table], f"{field}: " if field else ""
    details = {"id": ref, **({"field": field} if field else {})}
    if table == "manifests":
        try:
            job = s.catalog.get("jobs", ref, tenant)
        except NotFound:
            raise ApiError(404, "not_found", f"{where}no manifest has the id {ref!r}", details) from None
        manifest_id = (job.get("result") or {}).get("manifest_id")
        if manifest_id:
            return s.catalog.get("manifests", manifest_id, tenant)
        if job["state"] in ("queued", "running"):
            raise ApiError(409, "job_not_finished", f"{where}{ref!r} is a {job['kind']} job that is still {job['state']}: "
                           "its manifest exists once it succeeds (wait for it)", {**details, "state": job["state"]})
        raise ApiError(404, "not_found", f"{where}{ref!r} is a job ({job['kind']}, {job['state']}) that wrote no "
                       "manifest; give a manifest id", details)
    if table not in NAMED:
        raise ApiError(404, "not_found", f"{where}no {what} has the id {ref!r}", details)
    named = [r for r in s.catalog.find(table, tenant=tenant, name=ref) if r.get("state") != "failed"]
    if len(named) == 1:
        return named[0]
    if not named:
        raise ApiError(404, "not_found", f"{where}no {what} has the id or the name {ref!r}", details)
    ids = [r["id"] for r in named]
    raise ApiError(404, "ambiguous_name", f"{where}no {what} has the id {ref!r}, and {len(ids)} are named so "
                   f"({', '.join(ids)}, newest first): give the id", {**details, "matches": ids})


def resolve_path_ids(request: Request, s=Depends(svc)) -> None:
    """Router dependency: a corpus or model given by name (or a manifest by its job's id) in the
    path is replaced by its id before the route reads it (FastAPI reads path parameters after
    solving dependencies)."""
    params = request.scope.get("path_params") or {}
    for key in PATH_IDS.keys() & params.keys():
        params[key] = resolve(s, PATH_IDS[key], params[key], tenant_of(request))["id"]


ResolveIds = Depends(resolve_path_ids)


def owned(s: ServiceState, table: str, id_: str, tenant: str) -> dict:
    """The record if the caller's tenant owns it; 404 otherwise (another tenant's looks absent)."""
    try:
        return s.catalog.get(table, id_, tenant)
    except NotFound:
        raise not_found(NAMES[table], id_) from None


def page(s: ServiceState, table: str, tenant: str, limit: int, cursor: str | None, **equals):
    try:
        return s.catalog.page(table, tenant, limit, cursor, **equals)
    except ValueError as e:
        raise ApiError(400, "bad_cursor", str(e), {"field": "cursor"}) from None
