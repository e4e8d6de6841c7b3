"""Every job kind, by name: what POST /v1/jobs accepts and what the engine can run."""
from __future__ import annotations

from workers.jobs import classifier, curation, embedding, ingest, lm, projection, selection
from workers.kind import JobKind

KINDS: dict[str, JobKind] = {k.name: k for m in (selection, classifier, embedding, lm, curation, projection, ingest) for k in m.KINDS}
