"""Every job kind, by name: what POST /v1/jobs accepts and what the engine can run."""
from __future__ import annotations

from workers.jobs import curation, filter, ingest, lm, projection, selection
from workers.kind import JobKind

KINDS: dict[str, JobKind] = {k.name: k for m in (selection, lm, curation, projection, ingest, filter) for k in m.KINDS}
