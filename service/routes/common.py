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
