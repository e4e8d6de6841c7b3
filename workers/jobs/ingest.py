"""Jobs that make corpora: `ingest` (register server-side data by URI) and `export` (a selection's
documents, with text, as a new corpus). The service creates the corpus record (state `ingesting`)
when it accepts the request; these jobs fill it in and mark it `ready`, or `failed`."""
from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray
from pydantic import Field

from storage.fs import Store
from storage.ingest import IngestError, ingest
from storage.manifests import part_name
from workers.engine import JobContext, JobFailed, Task
from workers.jobs import JobKind
from workers.specs import ManifestId, StrictModel


class IngestSpec(StrictModel):
    corpus_id: str
    uri: str
    format: str | None = None
    text_field: str = "text"
    id_field: str = "id"
    source_field: str = "source"
    shard_size: int = Field(10_000, ge=1)


@ray.remote
def ingest_uri(store_root: str, spec: dict) -> dict:
    store = Store(store_root)
    fs, path = pafs.FileSystem.from_uri(spec["uri"])
    try:
        stats = ingest((fs, path), filename=path.rsplit("/", 1)[-1], store=store,
                       dest=("corpora", spec["corpus_id"]), format=spec["format"],
                       text_field=spec["text_field"], id_field=spec["id_field"],
                       source_field=spec["source_field"], shard_size=spec["shard_size"])
    except IngestError as e:
        raise JobFailed(e.code, f"{e.message} ({e.details})" if e.details else e.message) from None
    return stats.to_dict()


def run_ingest(ctx: JobContext, spec: IngestSpec) -> dict:
    ctx.progress("ingest", 0, 1, "files", force=True)
    opts = ctx.task_options()
    tasks = [Task(out=None, key="stats",
                  submit=lambda: ingest_uri.options(**opts).remote(ctx.store.root, spec.model_dump()))]
    stats = ctx.run_tasks("ingest", tasks, unit="files")["stats"]
    mark_ready(ctx, spec.corpus_id, stats)
    return {"corpus_id": spec.corpus_id, "summary": stats}


def mark_ready(ctx: JobContext, corpus_id: str, stats: dict) -> None:
    ctx.catalog.update("corpora", corpus_id, state="ready", num_docs=stats["num_docs"],
                       num_bytes=stats["num_bytes"], num_shards=stats["num_shards"],
                       num_empty=stats["num_empty"], sources=stats["sources"],
                       meta={"empty_ids": stats.get("empty_ids", []), "ids_generated": stats.get("ids_generated")})


def mark_failed(ctx: JobContext, state: str) -> None:
    corpus_id = ctx.job["spec"]["corpus_id"]
    job = ctx.catalog.get("jobs", ctx.job_id)
    ctx.catalog.update("corpora", corpus_id, state="failed", error=job["error"])
    ctx.store.delete("corpora", corpus_id)


run_ingest.on_end = mark_failed


class ExportSpec(StrictModel):
    manifest: ManifestId
    corpus_id: str
    selected_only: bool = True


@ray.remote
def export_shard(store_root: str, corpus_part: tuple, manifest_part: tuple, out: tuple,
                 selected_only: bool) -> int:
    store = Store(store_root)
    docs = store.read_parquet(*corpus_part, columns=["id", "text", "source"])
    if selected_only:
        docs = docs.filter(store.read_parquet(*manifest_part, columns=["selected"])["selected"])
    store.write_parquet(docs, *out)
    return docs.num_rows


def shard_stats(docs) -> dict:
    texts = docs["text"]
    empty = pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0).to_numpy(zero_copy_only=False) == 0
    sources = pc.value_counts(pc.fill_null(docs["source"], "")).to_pylist()
    return {"num_docs": docs.num_rows, "num_bytes": int(pc.sum(pc.binary_length(texts)).as_py() or 0),
            "num_empty": int(empty.sum()), "sources": {d["values"]: d["counts"] for d in sources}}


def run_export(ctx: JobContext, spec: ExportSpec) -> dict:
    man = ctx.catalog.get("manifests", spec.manifest, ctx.tenant)
    corpus_id = ctx.store.read_parquet("manifests", spec.manifest, part_name(0), columns=["corpus_id"])["corpus_id"][0].as_py() \
        if man["num_shards"] else None
    if corpus_id is None:
        raise JobFailed("empty_manifest", f"manifest {spec.manifest} has no rows to export")
    opts = ctx.task_options()
    tasks = []
    for s, p in ctx.corpus_shards(corpus_id):
        out = ("corpora", spec.corpus_id, f"shard-{s:05d}.parquet")
        tasks.append(Task(out=out, key=s, submit=lambda p=p, s=s, out=out: export_shard.options(**opts).remote(
            ctx.store.root, p, ("manifests", spec.manifest, part_name(s)), out, spec.selected_only)))
    ctx.run_tasks("export", tasks)
    # Count from storage: shards finished before a restart returned nothing this time.
    stats = {"num_docs": 0, "num_bytes": 0, "num_empty": 0, "sources": {}, "num_shards": len(tasks)}
    for t in tasks:
        part = shard_stats(ctx.store.read_parquet(*t.out, columns=["text", "source"]))
        for k in ("num_docs", "num_bytes", "num_empty"):
            stats[k] += part[k]
        for src, n in part["sources"].items():
            stats["sources"][src] = stats["sources"].get(src, 0) + n
    mark_ready(ctx, spec.corpus_id, stats)
    return {"corpus_id": spec.corpus_id, "manifest_id": spec.manifest, "summary": stats}


run_export.on_end = mark_failed

KINDS = [
    JobKind("ingest", IngestSpec, run_ingest, "register server-side data as a corpus", internal=True),
    JobKind("export", ExportSpec, run_export, "materialise a selection's documents as a corpus", internal=True),
]
