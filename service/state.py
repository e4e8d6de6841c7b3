"""What every request handler reaches through `request.app.state.svc`: the settings and the
resources the service process owns for its lifetime."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from service.settings import Settings
from storage.catalog import Catalog
from storage.fs import Store
from workers.driver.curriculum_runs import CurriculumRuns
from workers.driver.engine import JobEngine


@dataclass
class ServiceState:
    settings: Settings
    catalog: Catalog
    store: Store
    engine: JobEngine
    curricula: CurriculumRuns
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
