"""A pool restricted by earlier manifests (`restrict`, workers.specs.Restricted): the one place that
turns the manifests into what every kind uses.

The documents that one of the manifests does not select (a dedup's duplicates, a decontamination's
contaminated documents, a quality filter's rejections, or any selection's unselected ones) are
found once by a DuckDB query over the manifests' parts (storage.manifests.exclusions), which hold
`shard` and `row` of the same corpus. A job hands each per-shard task its shard's mask of allowed
rows (`allowed(shard)`; None when nothing is excluded), the task scores or reads only those, and a
selection's manifest keeps every document, the excluded ones with `excluded_by` and no score.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from storage.catalog import Catalog, NotFound
from storage.errors import DomainError
from storage.fs import Store
from storage.manifests import EXCLUDED_SCHEMA, exclusions, manifest_corpus
from workers.driver.engine import JobContext
from workers.specs import Restricted, ref_of, walk

DOCUMENT_COLUMNS = {"corpus_id", "shard", "row", "selected"}


@dataclass
class Restriction:
    """The restricting manifests and the rows they exclude, per shard."""
    built_on: list[str] = field(default_factory=list)
    excluded: pa.Table = field(default_factory=EXCLUDED_SCHEMA.empty_table)
    sizes: dict[int, int] = field(default_factory=dict)   # rows per corpus shard
    _rows: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        shard = self.excluded["shard"].to_numpy()
        row = self.excluded["row"].to_numpy()
        cuts = np.flatnonzero(np.diff(shard)) + 1   # sorted by shard: one slice per shard
        for rows, first in zip(np.split(row, cuts), np.split(shard, cuts)):
            if len(rows):
                self._rows[int(first[0])] = rows

    def allowed(self, shard: int) -> np.ndarray | None:
        """The shard's allowed rows as a boolean mask, or None when every row is allowed."""
        rows = self._rows.get(shard)
        if rows is None:
            return None
        mask = np.ones(self.sizes[shard], dtype=bool)
        mask[rows] = False
        return mask

    def masks(self, shards: list[int]) -> list[np.ndarray | None]:
        return [self.allowed(s) for s in shards]

    def table(self) -> pa.Table | None:
        """What write_selection leaves out (None: an unrestricted pool)."""
        return self.excluded if self.built_on else None

    def summary(self) -> dict:
        """{built_on, excluded: {manifest: documents it is the first to exclude}, excluded_total}."""
        if not self.built_on:
            return {}
        counts = {m: 0 for m in self.built_on}
        for c in pc.value_counts(self.excluded["excluded_by"]).to_pylist():
            counts[c["values"]] = c["counts"]
        return {"built_on": self.built_on, "excluded": counts, "excluded_total": self.excluded.num_rows}


def check_restrict(store: Store, catalog: Catalog, tenant: str, corpus: str | None, ids: list[str],
                   field: str) -> None:
    """Each manifest of `ids` is one of the tenant's document manifests over `corpus` (422 naming
    the item otherwise: `field`.i)."""
    for i, mid in enumerate(ids):
        at = f"{field}.{i}"
        try:
            rec = catalog.get("manifests", mid, tenant)
        except NotFound:
            raise DomainError("not_found", f"{at}: no manifest has the id {mid!r}", {"field": at, "id": mid}) from None
        if not DOCUMENT_COLUMNS <= {c["name"] for c in rec["columns"]}:
            raise DomainError("validation_error", f"{at}: manifest {mid} ({rec['kind']}) does not hold documents "
                              "with a `selected` column, so it cannot restrict a pool", {"field": at})
        over = manifest_corpus(store, mid)
        if over != corpus:
            raise DomainError("validation_error", f"{at}: manifest {mid} is over corpus {over}, not {corpus}, the "
                              "corpus it should restrict", {"field": at, "manifest_corpus": over, "corpus": corpus})


def pool_corpus(store: Store, spec: Restricted) -> str | None:
    """The corpus a Restricted part of a spec draws from: its `pool_field`, a corpus or a manifest's corpus."""
    value = getattr(spec, spec.pool_field)
    ref = ref_of(type(spec).model_fields[spec.pool_field])
    return manifest_corpus(store, value) if ref and ref.table == "manifests" else value


def check_restrictions(store: Store, catalog: Catalog, tenant: str, spec: BaseModel,
                       root: tuple = ("spec",)) -> None:
    """check_restrict for every Restricted part of a spec (at submit, ids already resolved);
    `root`: where the spec lies in the request."""
    for v, at, _ in walk(spec, root):
        if isinstance(v, Restricted) and v.restrict:
            check_restrict(store, catalog, tenant, pool_corpus(store, v), v.restrict,
                           ".".join(map(str, (*at, "restrict"))))


def restriction(ctx: JobContext, corpus: str, ids: list[str], field: str = "spec.restrict") -> Restriction:
    """The pool `corpus` restricted by manifests `ids` (checked again: a job runs after its submit);
    an empty restriction when `ids` is empty."""
    sizes = ctx.corpus_shard_sizes(corpus)
    if not ids:
        return Restriction(sizes=sizes)
    check_restrict(ctx.store, ctx.catalog, ctx.tenant, corpus, ids, field)
    ctx.progress("restrict", 0, 1, "steps", force=True)
    out = Restriction(list(ids), exclusions(ctx.store, list(ids), ctx.config.temp_root), sizes)
    ctx.progress("restrict", 1, 1, "steps", force=True)
    return out


def allowed_rows(ctx: JobContext, pool: str, ids: list[str]) -> dict[int, np.ndarray] | None:
    """Per shard of `pool`, its allowed rows as a boolean mask (shards without exclusions: all
    True); None without a restriction. For a selector that wants only the masks."""
    if not ids:
        return None
    r = restriction(ctx, pool, ids)
    return {s: (m if (m := r.allowed(s)) is not None else np.ones(n, dtype=bool)) for s, n in r.sizes.items()}
