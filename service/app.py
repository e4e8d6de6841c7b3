"""The FastAPI application: validation, auth and translation of HTTP into catalog reads and jobs."""
from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram

from service import errors, openapi
from service.docs import install_docs
from service.lenient import JsonByDefault
from service.routes import (browse, corpora, corpus_shards, curricula, jobs, manifests, models, ops, projections,
                            query, ui)
from service.routes.ops import JobStates, Readiness
from service.schemas import JOB_REQUESTS, PUBLIC_KINDS
from service.settings import Settings
from service.state import ServiceState
from storage.catalog import Catalog
from storage.fs import Store
from workers.driver.curriculum_runs import CurriculumRuns
from workers.driver import janitor
from workers.driver.engine import EngineConfig, JobEngine
from workers.registry import KINDS
from workers.runtime import init_ray, shutdown_ray

log = logging.getLogger("thresher")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        started = time.time()
        os.makedirs(settings.home, exist_ok=True)
        init_ray(settings.resolved_ray_address, home=settings.home)
        catalog = Catalog(os.path.join(settings.home, "catalog.duckdb"))
        store = Store(settings.store_root, timeout_s=settings.storage_timeout_s)
        janitor.sweep(catalog, store, spool_dir=os.path.join(settings.home, "uploads"),
                      scratch_dir=settings.temp_dir, started=started)
        engine = JobEngine(catalog, store, EngineConfig(
            max_inflight=settings.max_inflight, max_concurrent_jobs=settings.max_concurrent_jobs,
            task_retries=settings.task_retries, shard_size=settings.shard_size,
            temp_root=settings.temp_dir, max_temp_size=settings.duckdb_max_temp,
            allowed_roots=tuple(settings.allowed_roots), limits=settings.spec_limits,
            max_attempts=settings.max_job_attempts, light_concurrent_jobs=settings.light_concurrent_jobs,
            light_max_docs=settings.light_max_docs, light_workers=settings.light_workers), KINDS)
        registry = CollectorRegistry()
        app.state.svc = ServiceState(
            settings, catalog, store, engine, CurriculumRuns(store), registry,
            Counter("thresher_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry),
            Histogram("thresher_http_request_seconds", "HTTP request latency", ["route"], registry=registry))
        registry.register(JobStates(catalog))
        app.state.readiness = Readiness(store)
        app.state.keys = settings.keys_by_token()
        engine.start()
        try:
            yield
        finally:
            engine.stop()
            catalog.close()
            shutdown_ray()  # stops the whole local Ray if this service started it

    app = FastAPI(title="Thresher", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Data selection and pretraining curation: score, select, reweight, "
                              "curriculum and mixture projection jobs over Ray, results as Parquet.")
    for module in (corpora, corpus_shards, jobs, manifests, models, curricula, projections, query, ops, browse, ui):
        app.include_router(module.router)
    install_docs(app)
    app.add_middleware(JsonByDefault)
    errors.install(app, kind_tags=set(KINDS) | {m.__name__ for m in JOB_REQUESTS},
                   server_paths=(os.path.abspath(settings.home), settings.store_root),
                   tags={"kind": [k for k in KINDS if k in PUBLIC_KINDS]})
    openapi.install(app)

    @app.middleware("http")
    async def _metrics(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        svc = getattr(request.app.state, "svc", None)
        if svc is not None:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            svc.requests.labels(request.method, path, str(response.status_code)).inc()
            svc.latency.labels(path).observe(time.perf_counter() - t0)
        return response

    return app
