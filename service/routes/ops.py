"""Operations: liveness, readiness and Prometheus metrics."""
from __future__ import annotations

import uuid

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from service.routes.common import Svc
from storage import layout
from workers.runtime import ray_reachable

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz")
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


@router.get("/metrics")
def metrics(s=Svc):
    return Response(generate_latest(s.registry), media_type=CONTENT_TYPE_LATEST)
