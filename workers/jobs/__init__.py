"""The job kinds. Each module defines a spec model and `run(ctx, spec) -> result`; KINDS maps names to them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel


@dataclass(frozen=True)
class JobKind:
    name: str
    spec: type[BaseModel]
    run: Callable
    description: str = ""
    internal: bool = False  # started by the service itself (ingest, export), not via POST /v1/jobs

    def on_end(self, ctx, state: str) -> None:
        """Hook for kinds that must mark other records when a job does not succeed."""
        hook = getattr(self.run, "on_end", None)
        if hook:
            hook(ctx, state)


def _load() -> dict[str, JobKind]:
    from workers.jobs import curation, ingest, lm, projection, selection
    kinds = [*selection.KINDS, *lm.KINDS, *curation.KINDS, *projection.KINDS, *ingest.KINDS]
    return {k.name: k for k in kinds}


KINDS = _load()
