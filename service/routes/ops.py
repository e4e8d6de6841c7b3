"""Operations: liveness, readiness and Prometheus metrics."""
from __future__ import annotations

import hmac
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from service.auth import is_loopback
from service.errors import ApiError, ErrorResponse
from service.routes.common import Svc
from storage import layout
from workers.runtime import ray_reachable

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "storage not writable or Ray not reachable"}})
def readyz(s=Svc):
    checks = {"ray": ray_reachable()}
    try:
        probe = layout.probe(uuid.uuid4().hex)
        s.store.write_bytes(b"ok", *probe)
        s.store.delete(*probe)
        checks["storage"] = True
    except OSError:
        checks["storage"] = False
    ready = all(checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)


class JobStates:
    """Prometheus collector: jobs by kind and state, read from the catalog at scrape time."""

    def __init__(self, catalog):
        self.catalog = catalog

    def collect(self):
        g = GaugeMetricFamily("thresher_jobs", "jobs by kind and state", labels=["kind", "state"])
        for kind, state, n in self.catalog.counts("jobs", "kind", "state"):
            g.add_metric([kind, state], n)
        yield g


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}},
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
def metrics(request: Request, s=Svc):
    """Prometheus metrics (jobs by kind and state over all tenants, request counts and latency).
    With THRESHER_METRICS_TOKEN set, a scraper sends `Authorization: Bearer <token>`; without it,
    only clients on the loopback interface are answered."""
    token = s.settings.metrics_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "unauthorized", "/metrics needs the scrape token (THRESHER_METRICS_TOKEN) "
                           "as a bearer token", headers={"WWW-Authenticate": "Bearer"})
    elif not is_loopback(request.client.host if request.client else ""):
        raise ApiError(403, "forbidden", "/metrics answers only loopback clients unless THRESHER_METRICS_TOKEN "
                       "is set")
    return Response(generate_latest(s.registry), media_type=CONTENT_TYPE_LATEST)
