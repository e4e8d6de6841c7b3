"""Every job kind, by name: what POST /v1/jobs accepts and what the engine can run."""
from __future__ import annotations

from workers.jobs import (classifier, compare, curation, decontaminate, dedup, embedding, filter, ingest, lm,
                          projection, quality, selection)
from workers.kind import JobKind

MODULES = (selection, classifier, embedding, lm, compare, curation, projection, dedup, decontaminate, quality, ingest,
           filter)
KINDS: dict[str, JobKind] = {k.name: k for m in MODULES for k in m.KINDS}
