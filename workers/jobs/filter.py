"""`filter`: a new corpus from a corpus's documents, restricted to some `source` values and/or to
the rows of a selection manifest where a SQL predicate over its columns holds. A cheap operation:
no model, one pass over the shards with the export's machinery (workers.jobs.ingest).

The predicate is checked like a query (storage/query.py's allow-list: it reads the manifest and
nothing else, no file, setting or catalog view) when the job is submitted, through the query
sandbox (a refused predicate answers 4xx and nothing is queued), and again where it runs: one Ray
task evaluates it over the whole manifest (so `score > (SELECT avg(score) FROM m)` means the whole
selection's mean) and writes a mask per corpus shard; then a task per shard writes the kept documents.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from storage import layout
from storage.catalog import NotFound
from storage.errors import DomainError
from storage.fs import Store
from storage.manifests import dataset, manifest_corpus, manifest_files
from storage.query import QueryError, matching_rows, predicate_sql
from workers.driver import lifecycle
from workers.driver.engine import JobContext, JobFailed, derived_id
from workers.jobs.ingest import ShardCompression, export_documents
from workers.kind import SHARD_TASK, JobKind
from workers.runtime import node_id
from workers.specs import CorpusId, ManifestId, Records, StrictModel, check_source_value

MAX_SOURCES = 1000
SELECTION_COLUMNS = {"doc_id", "shard", "row", "selected"}  # what makes a manifest a document selection
WHERE_TIMEOUT_S = 300.0  # a predicate over a whole manifest, in a job: longer than an interactive query


class FilterSpec(StrictModel):
    corpus: CorpusId | None = Field(None, description="the corpus to filter; default: the corpus `manifest` selects from")
    manifest: ManifestId | None = Field(None, description="a selection over the corpus, whose columns `where` reads")
    where: str | None = Field(None, min_length=1, description=(
        "keep the documents of the manifest's rows where this DuckDB predicate holds, e.g. "
        "\"score > 0.3 AND source = 'wiki'\" (table m: the manifest; checked like POST /v1/query)"))
    sources: list[str] | None = Field(None, min_length=1, max_length=MAX_SOURCES,
                                      description="keep only the documents whose source is one of these")
    corpus_name: str | None = Field(None, min_length=1, description="the new corpus's name; default: '<corpus> (filtered)'")
    compression: ShardCompression = "zstd"

    @model_validator(mode="after")
    def _something_to_filter(self):
        if self.corpus is None and self.manifest is None:
            raise ValueError("give the corpus to filter (corpus), or a manifest over it (manifest)")
        if self.where is not None and self.manifest is None:
            raise ValueError("where reads a manifest's columns: give manifest too")
        if self.where is None and self.sources is None:
            raise ValueError("give sources, where (with manifest), or both: what to keep")
        return self

    def check_records(self, records: Records, field: str) -> None:
        corpus_id = self.corpus
        if self.manifest is not None:
            man = records.record("manifests", self.manifest)
            if not SELECTION_COLUMNS <= {c["name"] for c in man.get("columns") or []}:
                raise DomainError("validation_error", f"{field}.manifest: manifest {self.manifest} is not a document "
                                  "selection (it has no doc_id, shard, row, selected)", {"field": f"{field}.manifest"})
            selects_from = records.manifest_corpus(self.manifest)
            if self.corpus is not None and selects_from not in (None, self.corpus):
                raise DomainError("validation_error", f"{field}.manifest: manifest {self.manifest} selects from corpus "
                                  f"{selects_from}, not {self.corpus}", {"field": f"{field}.manifest"})
            corpus_id = corpus_id or selects_from
        if corpus_id is not None:
            corpus = records.record("corpora", corpus_id)
            for i, value in enumerate(self.sources or []):
                check_source_value(corpus, value, f"{field}.sources.{i}")
        if self.where is not None:
            try:
                records.query(predicate_sql(self.where), {"m": self.manifest})
            except QueryError as e:
                raise QueryError(e.code, f"{field}.where: {e.message}", {**e.details, "field": f"{field}.where"}) from None


def where_masks(store: Store, manifest_parts: list, where: str, shard_rows: dict, job_id: str) -> dict:
    """Evaluate the predicate over the whole manifest; write a mask for every corpus shard."""
    rows = matching_rows(where, dataset(store, manifest_parts), timeout_s=WHERE_TIMEOUT_S)
    shards, positions = rows["shard"].to_numpy(zero_copy_only=False), rows["row"].to_numpy(zero_copy_only=False)
    for s, n in shard_rows.items():
        keep = np.zeros(n, dtype=bool)
        keep[positions[shards == s]] = True
        store.write_parquet(pa.table({"selected": keep}), *layout.filter_mask(job_id, s))
    return {"matched": rows.num_rows, "node": node_id()}


def new_corpus_id(job_id: str) -> str:
    return derived_id("cor", job_id, "filtered")


def run_filter(ctx: JobContext, spec: FilterSpec) -> dict:
    source = spec.corpus or manifest_corpus(ctx.store, spec.manifest)
    if source is None:
        raise JobFailed("empty_manifest", f"manifest {spec.manifest} has no rows to filter")
    rec = ctx.corpus(source)
    for i, value in enumerate(spec.sources or []):
        check_source_value(rec, value, f"spec.sources.{i}")
    corpus_id = new_corpus_id(ctx.job_id)
    lifecycle.create_job_corpus(ctx.catalog, ctx.job, corpus_id, spec.corpus_name or f"{rec['name']} (filtered)")
    masks = None
    if spec.where is not None:
        sizes = ctx.corpus_shard_sizes(source)
        parts = manifest_files(ctx.store, spec.manifest)
        ctx.run_one("where", where_masks, parts, spec.where, sizes, ctx.job_id)
        masks = {s: layout.filter_mask(ctx.job_id, s) for s in sizes}
    stats = export_documents(ctx, source, corpus_id, spec.compression, masks, spec.sources)
    if stats["num_docs"] == 0:
        raise JobFailed("empty_result", f"the filter keeps no document of corpus {source}: nothing was stored")
    lifecycle.commit_corpus(ctx.catalog, corpus_id, stats)
    return {"corpus_id": corpus_id, "summary": {**stats, "from_corpus": source, "from_docs": rec["num_docs"]}}


def fail_filtered(ctx: JobContext, state: str, error: dict | None) -> None:
    """A filter that did not succeed leaves its corpus failed, with no shard."""
    try:
        ctx.catalog.get("corpora", new_corpus_id(ctx.job_id))
    except NotFound:
        return
    lifecycle.fail_corpus(ctx.catalog, ctx.store, new_corpus_id(ctx.job_id), error)


KINDS = [JobKind("filter", FilterSpec, run_filter,
                 "a new corpus from a corpus's documents of some sources, or where a predicate over a manifest holds",
                 stages={"where": SHARD_TASK, "export": SHARD_TASK}, on_end=fail_filtered, light=True,
                 skip={"where": lambda s: s.where is None})]
