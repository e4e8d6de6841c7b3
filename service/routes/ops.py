"""Operations: liveness, readiness and Prometheus metrics."""
from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from typing import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from service.auth import is_loopback
from service.errors import ApiError, ErrorResponse
from service.routes.common import Svc
from storage import layout
from storage.fs import Store, storage_error
from workers.runtime import ray_reachable

router = APIRouter(tags=["operations"])
log = logging.getLogger("thresher.ops")
READY_WAIT_S = 1.5   # the longest /readyz waits for its checks
READY_FRESH_S = 1.0  # a check's answer is reused this long (probes come often; each writes a file)


class Check:
    """One readiness check run in a thread of its own, never two at once: a frozen store holds
    one thread, not one per probe, and a caller waits for it only as long as it chooses.
    `run()` returns None when all is well, else the reason."""

    def __init__(self, run: Callable[[], str | None], fresh_s: float = READY_FRESH_S):
        self.run, self.fresh_s = run, fresh_s
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.reason: str | None = None
        self.at = float("-inf")

    def _work(self) -> None:
        try:
            reason = self.run()
        except Exception as e:  # noqa: BLE001 - a failed check is an answer
            log.warning("readiness check failed", exc_info=e)
            reason = "the check failed"
        with self.lock:
            self.reason, self.at = reason, time.monotonic()

    def start(self) -> threading.Thread | None:
        with self.lock:
            busy = self.thread is not None and self.thread.is_alive()
            if not busy and time.monotonic() - self.at >= self.fresh_s:
                self.thread = threading.Thread(target=self._work, name="thresher-readyz", daemon=True)
                self.thread.start()
            return self.thread

    def answer(self, thread: threading.Thread | None, deadline: float) -> str | None:
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return f"no answer within {READY_WAIT_S:g} s"
        with self.lock:
            return self.reason


def storage_check(store: Store) -> Callable[[], str | None]:
    def run() -> str | None:
        probe = layout.probe(uuid.uuid4().hex)
        try:
            store.write_bytes(b"ok", *probe)
            store.delete(*probe)
        except OSError as e:
            log.warning("storage is not writable: %s", e)
            bucket = store.missing_bucket()
            if bucket:
                return f"the bucket {bucket!r} of THRESHER_STORAGE_URI does not exist"
            failed = storage_error(e)
            return failed.message if failed else "the storage is not writable"
        return None
    return run


class Readiness:
    """What /readyz checks: the storage takes a write, and Ray answers."""

    def __init__(self, store: Store):
        self.checks = {"ray": Check(lambda: None if ray_reachable() else "Ray is not reachable"),
                       "storage": Check(storage_check(store))}

    def __call__(self) -> dict[str, str | None]:
        deadline = time.monotonic() + READY_WAIT_S
        started = {name: check.start() for name, check in self.checks.items()}
        return {name: check.answer(started[name], deadline) for name, check in self.checks.items()}


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "storage not writable or Ray not reachable"}})
def readyz(request: Request):
    """Ready when the storage takes a write and Ray answers, within READY_WAIT_S; `reasons` says
    why not."""
    reasons = request.app.state.readiness()
    ready = not any(reasons.values())
    body = {"status": "ready" if ready else "not_ready", "checks": {k: v is None for k, v in reasons.items()}}
    if not ready:
        body["reasons"] = {k: v for k, v in reasons.items() if v}
    return JSONResponse(body, status_code=200 if ready else 503)


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
