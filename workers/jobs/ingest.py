"""Jobs that make corpora: `ingest` (register server-side data by URI) and `export` (a selection's
documents, with text, as a new corpus), and the Ray task that parses every upload. The service
creates the corpus record (state `ingesting`) when it accepts a registration; these jobs fill it in
and mark it `ready`, or `failed` (with every shard removed).

A registration is ingested in units, one Ray task each: a file, or a byte range of a large
uncompressed JSONL file cut at line boundaries. The matched files are listed once and recorded
(`inputs.json`), every unit writes its shards and then its statistics (`units/unit-F-R.json`), so a
restarted job skips finished units. Duplicate ids across units are found by DuckDB over the id
columns before the corpus becomes ready.
"""
from __future__ import annotations

import json
import os
from typing import Annotated, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray
from pydantic import Field

from storage import layout
from storage.duck import connection
from storage.fs import Store
from storage.ingest import COMPRESSED_SUFFIXES, SPLITS, IngestError, detect_format, ingest
from storage.ingest.shards import MAX_EMPTY_IDS, SHARD_COMPRESSIONS, field_types, shard_options, unify_shards
from storage.inputs import Access, InputFile, fixed_prefix, list_inputs, open_input, split_uri
from storage.manifests import manifest_corpus
from workers.driver import lifecycle
from workers.driver.engine import JobContext, JobFailed, on_ray
from workers.jobs.common import empty_mask
from workers.jobs.restrict import Restriction, restriction
from workers.kind import REQUEST_TASK, SHARD_TASK, JobKind
from workers.runtime import node_id, ray_get
from workers.specs import ManifestId, Restricted, StrictModel

class Limits(StrictModel):
    """Bounds on untrusted input: a document's bytes, and what a compressed file may inflate to."""
    max_doc_bytes: int | None = Field(None, ge=1)
    max_decompressed_bytes: int | None = Field(None, ge=1)


class ListingLimits(StrictModel):
    """Bounds on listing what a registration names (THRESHER_MAX_INPUT_FILES, THRESHER_LISTING_TIMEOUT_S)."""
    max_files: int = Field(100_000, ge=1)
    timeout_s: float = Field(60.0, gt=0)


ShardCompression = Annotated[Literal[SHARD_COMPRESSIONS], Field(description="the shards' Parquet codec")]


class IngestSpec(StrictModel):
    corpus_id: str
    uri: str = Field(description="a file, a directory or a glob, local or in an object store")
    format: str | None = None
    text_field: str = "text"
    id_field: str = "id"
    source_field: str = "source"
    shard_size: int = Field(10_000, ge=1)
    split_bytes: int = Field(256 << 20, ge=1024, description="uncompressed JSONL files larger than this "
                                                            "are ingested in byte ranges of this size")
    limits: Limits = Limits()
    listing: ListingLimits = ListingLimits()
    compression: ShardCompression = "zstd"
    split: Literal[SPLITS] = Field("file", description="plain text: how a file is cut into documents")
    source_from: Literal["dir"] | None = None


def ingest_options(spec: IngestSpec | dict) -> dict:
    s = spec if isinstance(spec, dict) else spec.model_dump()
    return {"text_field": s["text_field"], "id_field": s["id_field"], "source_field": s["source_field"],
            "shard_size": s["shard_size"], "compression": s.get("compression", "zstd"),
            "split": s.get("split", "file"), "source_from": s.get("source_from"), **(s.get("limits") or {})}


def ingest_unit(store: Store, unit: tuple | None, source: dict, marker: tuple | None, corpus_id: str,
                fmt: str | None, options: dict, access: Access, byte_range: list | None) -> dict:
    """Parse one unit (None: a whole upload) into shards of the corpus; its statistics, also written
    to `marker` last. `source`: an upload spooled in the store (`parts`), or a tenant's file (`uri`,
    `path`), opened through `access` (checked at each open, here on the worker, not when it was
    registered)."""
    name = source["name"]
    src = (store.fs, store.path(*source["parts"])) if "parts" in source else \
        open_input(source["uri"], access, source["path"])
    try:
        stats = ingest(src, filename=name, store=store, dest=layout.corpus(corpus_id), format=fmt,
                       unit=tuple(unit) if unit else None,
                       byte_range=tuple(byte_range) if byte_range else None, **options).to_dict()
    except IngestError as e:
        if unit is None:
            raise
        raise IngestError(e.code, f"{name}: {e.message}", {**e.details, "file": name}) from None
    except ValueError as e:      # a byte range of a file that turned out compressed (no extension)
        if byte_range is None or "byte range" not in str(e):
            raise
        if byte_range[0] > 0:    # the first range reads the whole file; the others nothing
            stats = {"num_docs": 0, "num_bytes": 0, "num_shards": 0, "num_empty": 0, "empty_ids": [], "sources": {},
                     "ids_generated": False, "fields": {}, "json_fields": []}
        else:
            stats = ingest(src, filename=name, store=store, dest=layout.corpus(corpus_id), format=fmt,
                           unit=tuple(unit), **options).to_dict()
    stats["node"] = node_id()
    if marker:
        store.write_bytes(json.dumps(stats).encode(), *marker)
    return stats


def plan_units(files: list[InputFile], split_bytes: int,
               fmt: str | None = None) -> list[tuple[tuple[int, int], InputFile, list | None]]:
    """(unit, file, byte range or None): a file per unit, or byte ranges of a large uncompressed file."""
    units = []
    for i, f in enumerate(files):
        splittable = f.size > split_bytes and not f.name.lower().endswith(COMPRESSED_SUFFIXES) and \
            detect_format(f.name, fmt) == "jsonl"
        if not splittable:
            units.append(((i, 0), f, None))
            continue
        for r, start in enumerate(range(0, f.size, split_bytes)):
            units.append(((i, r), f, [start, min(start + split_bytes, f.size)]))
    return units


@ray.remote(max_retries=0)
def list_task(uri: str, access: Access, max_files: int, timeout_s: float) -> list[dict]:
    return [f.to_dict() for f in list_inputs(uri, access, max_files, timeout_s)]


def list_registered(uri: str, access: Access, limits: ListingLimits) -> list[InputFile]:
    """The files a registration names, listed on a Ray worker (never in the service process: a
    listing's size is the tenant's to choose), within its bounds. Raises DomainError."""
    ref = list_task.options(**REQUEST_TASK.ray_options()).remote(uri, access, limits.max_files, limits.timeout_s)
    try:
        # The task stops itself at its deadline; past it with a margin, it is stuck in one call.
        files = ray_get(ref, "listing the files", timeout=limits.timeout_s + 30)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise IngestError("listing_timeout", f"listing {uri.split('?', 1)[0]} takes too long "
                          "(THRESHER_LISTING_TIMEOUT_S); name a narrower directory or glob", {"field": "uri"}) from None
    except RuntimeError as e:     # the filesystem could not be reached
        raise IngestError("bad_uri", f"cannot list {uri.split('?', 1)[0]}: {e}", {"field": "uri"}) from None
    return [InputFile(**f) for f in files]


def recorded_inputs(ctx: JobContext, spec: IngestSpec) -> list[InputFile]:
    """The files of the registration, listed once: a restarted job sees the same list."""
    where = layout.job_file(ctx.job_id, "inputs")
    if ctx.store.exists(*where):
        return [InputFile(**f) for f in json.loads(ctx.store.read_bytes(*where))]
    files = list_registered(spec.uri, ctx.access, spec.listing)
    if not files:
        raise JobFailed("not_found", f"{spec.uri} matches no file")
    for f in files:
        try:
            detect_format(f.name, spec.format)
        except IngestError as e:
            raise JobFailed(e.code, f"{f.name}: {e.message}") from None
    ctx.store.write_bytes(json.dumps([f.to_dict() for f in files]).encode(), *where)
    return files


def run_ingest(ctx: JobContext, spec: IngestSpec) -> dict:
    files = recorded_inputs(ctx, spec)
    units = plan_units(files, spec.split_bytes, spec.format)
    # One unit checks its own ids (naming lines); many are checked once over all of them at the end.
    options = {**ingest_options(spec), "check_ids": len(units) == 1}
    base = registered_base(spec.uri)
    sources = [(unit, {"uri": f.uri, "path": f.path, "name": relative_name(f, base)}) for unit, f, _ in units]
    ranges = {unit: rng for unit, _, rng in units}
    sizes = {unit: (rng[1] - rng[0]) if rng else f.size for unit, f, rng in units}
    files_of = {}
    for unit, _, _ in units:
        files_of.setdefault(unit[0], set()).add(unit)

    def files_done(done: set) -> dict:
        return {"files_done": sum(parts <= done for parts in files_of.values()), "files_total": len(files)}

    marker = lambda unit: layout.ingested_unit(ctx.job_id, unit)  # noqa: E731
    ctx.map_shards("ingest", ingest_unit, sources, spec.corpus_id, spec.format, options, ctx.access, out=marker,
                   each=lambda unit: (ranges[unit],), size=sizes.get, unit="bytes", detail=files_done)
    stats = merge_stats([json.loads(ctx.store.read_bytes(*marker(unit))) for unit in ranges])
    stats["num_shards"] = len(ctx.corpus_shards(spec.corpus_id))
    if len(units) > 1:     # each unit settled its own schema: now one for the corpus
        schema = unify_shards(ctx.store, [p for _, p in ctx.corpus_shards(spec.corpus_id)], spec.compression)
        stats["fields"], stats["json_fields"] = field_types(schema)
    if stats["num_docs"] == 0:
        raise JobFailed("empty_file", f"{spec.uri} holds no documents")
    if len(units) > 1:
        ctx.run_one("check_ids", check_unit_ids, spec.corpus_id, [f.name for f in files])
    lifecycle.commit_corpus(ctx.catalog, spec.corpus_id, stats)
    return {"corpus_id": spec.corpus_id, "summary": {**stats, "files": len(files), "units": len(units)}}


def registered_base(uri: str) -> str:
    """The directory a registration's files are named relative to (a text document's id): the
    URI's part before any glob character; a single file's own directory."""
    _, path, _ = split_uri(uri)
    base = fixed_prefix(path)
    return os.path.realpath(base) if "://" not in uri or uri.startswith("file://") else base


def relative_name(f: InputFile, base: str) -> str:
    rest = f.path[len(base):].lstrip("/") if f.path.startswith(base.rstrip("/") + "/") else ""
    return rest or f.name


def merge_stats(parts: list[dict]) -> dict:
    out = {"num_docs": 0, "num_bytes": 0, "num_empty": 0, "empty_ids": [], "sources": {},
           "ids_generated": any(p.get("ids_generated") for p in parts),
           "fields": {k: v for p in parts for k, v in p.get("fields", {}).items()},
           "json_fields": sorted({k for p in parts for k in p.get("json_fields", [])})}
    for p in parts:
        for k in ("num_docs", "num_bytes", "num_empty"):
            out[k] += p[k]
        out["empty_ids"] = (out["empty_ids"] + p.get("empty_ids", []))[:MAX_EMPTY_IDS]
        for src, n in p["sources"].items():
            out["sources"][src] = out["sources"].get(src, 0) + n
    out["sources"] = dict(sorted(out["sources"].items(), key=lambda kv: -kv[1]))
    return out


def check_unit_ids(store: Store, corpus_id: str, file_names: list[str]) -> None:
    """Refuse the corpus if two units hold the same id: the error names the id and both files.
    DuckDB's aggregate spills past its memory limit, so this stays bounded however large."""
    shards = [p for _, p in layout.corpus_shards(store, corpus_id)]
    data = pads.dataset([store.path(*p) for p in shards], filesystem=store.fs, format="parquet")
    with connection() as con:
        con.register("corpus", data)
        dup = con.execute("SELECT id FROM corpus GROUP BY id HAVING count(*) > 1 LIMIT 1").fetchone()
    if dup is None:
        return
    holders = []
    for shard in shards:
        ids = store.read_parquet(*shard, columns=["id"])["id"]
        holders += [file_names[layout.unit_of(shard)[0]]] * (pc.sum(pc.equal(ids, dup[0])).as_py() or 0)
        if len(holders) >= 2:
            break
    first, second = holders[:2]
    where = f"{first} and {second}" if first != second else f"{first} (twice)"
    raise IngestError("duplicate_id", f"duplicate id {dup[0]!r} in {where}; ids must be unique across "
                      "all files of a corpus", {"id": dup[0], "files": [first, second]})


def ingest_upload(store: Store, upload: tuple, corpus_id: str, filename: str, fmt: str | None,
                  options: dict) -> dict:
    """Parse an upload spooled into storage on a Ray worker (a parser crash cannot take the API
    process down) and store it as the corpus's shards; its statistics. Bad input raises IngestError;
    a worker that dies on the input raises IngestError too (the input is what killed it)."""
    ref = on_ray(ingest_unit, store.root, None, {"parts": list(upload), "name": filename}, None, corpus_id, fmt,
                 options, Access(), None, **REQUEST_TASK.ray_options(), max_retries=0)
    try:
        return ray_get(ref, "ingesting the upload")
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayActorError) as e:
        store.delete(*layout.corpus(corpus_id))
        raise IngestError("unparseable_input", "the parser crashed on this input; nothing was stored",
                          {"reason": type(e).__name__}) from None


def fail_corpus(ctx: JobContext, state: str, error: dict | None) -> None:
    """The job that fills a corpus did not succeed: the corpus fails with it, and leaves no shard."""
    lifecycle.fail_corpus(ctx.catalog, ctx.store, ctx.job["spec"]["corpus_id"], error)


class ExportSpec(Restricted):
    pool_field: ClassVar[str] = "manifest"
    manifest: ManifestId
    corpus_id: str
    selected_only: bool = True
    compression: ShardCompression = "zstd"


def export_shard(store: Store, shard: int, corpus_part: tuple, out: tuple, compression: str,
                 sources: list[str] | None, mask_part: tuple | None, allowed: np.ndarray | None) -> dict:
    """One shard of a corpus written as a shard of another: the rows `mask_part`'s `selected`
    marks (a manifest part, or a filter's mask) and `allowed` allows (a restriction's mask of the
    shard's rows), whose `source` is one of `sources`; all if none of them."""
    docs = store.read_parquet(*corpus_part)      # every column: the extra fields travel with the text
    keep = np.ones(docs.num_rows, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
    if mask_part is not None:
        keep = keep & store.read_parquet(*mask_part, columns=["selected"])["selected"].to_numpy(zero_copy_only=False)
    if mask_part is not None or allowed is not None:
        docs = docs.filter(pa.array(keep))
    if sources is not None:
        docs = docs.filter(pc.is_in(docs["source"], pa.array(sources, pa.string())))
    store.write_parquet(docs, *out, **shard_options(compression))  # written like an ingested shard
    return {"rows": docs.num_rows, "node": node_id()}


def shard_stats(docs) -> dict:
    texts = docs["text"]
    sources = pc.value_counts(pc.fill_null(docs["source"], "")).to_pylist()
    return {"num_docs": docs.num_rows, "num_bytes": int(pc.sum(pc.binary_length(texts)).as_py() or 0),
            "num_empty": int(empty_mask(texts).sum()), "sources": {d["values"]: d["counts"] for d in sources}}


def export_documents(ctx: JobContext, corpus_id: str, new_corpus_id: str, compression: str,
                     masks: dict[int, tuple] | None = None, sources: list[str] | None = None,
                     restricted: Restriction | None = None) -> dict:
    """Write the documents of `corpus_id` that `masks` (per shard), `sources` and `restricted` (the
    rows a restriction allows) keep as the shards of `new_corpus_id` (stage `export`, a task a
    shard, resumable); its statistics."""
    restricted = restricted or Restriction()
    shards = ctx.corpus_shards(corpus_id)
    ctx.map_shards("export", export_shard, shards, compression, sources,
                   out=lambda s: layout.corpus_shard(new_corpus_id, s),
                   each=lambda s: (masks[s] if masks is not None else None, restricted.allowed(s)))
    # Count from storage: shards finished before a restart returned nothing this time.
    stats = {"num_docs": 0, "num_bytes": 0, "num_empty": 0, "sources": {}, "num_shards": len(shards)}
    for s, _ in shards:
        part = shard_stats(ctx.store.read_parquet(*layout.corpus_shard(new_corpus_id, s), columns=["text", "source"]))
        for k in ("num_docs", "num_bytes", "num_empty"):
            stats[k] += part[k]
        for src, n in part["sources"].items():
            stats["sources"][src] = stats["sources"].get(src, 0) + n
    source = ctx.catalog.get("corpora", corpus_id).get("meta") or {}
    stats["fields"], stats["json_fields"] = source.get("fields", {}), source.get("json_fields", [])
    return stats


def run_export(ctx: JobContext, spec: ExportSpec) -> dict:
    corpus_id = manifest_corpus(ctx.store, spec.manifest)
    if corpus_id is None:
        raise JobFailed("empty_manifest", f"manifest {spec.manifest} has no rows to export")
    pool = restriction(ctx, corpus_id, spec.restrict)
    masks = {s: layout.manifest_part(spec.manifest, s) for s, _ in ctx.corpus_shards(corpus_id)} \
        if spec.selected_only else None
    stats = export_documents(ctx, corpus_id, spec.corpus_id, spec.compression, masks, restricted=pool)
    if stats["num_docs"] == 0:
        raise JobFailed("empty_export", f"restrict leaves none of manifest {spec.manifest}'s documents to export")
    lifecycle.commit_corpus(ctx.catalog, spec.corpus_id, stats)
    return {"corpus_id": spec.corpus_id, "manifest_id": spec.manifest, "summary": {**stats, **pool.summary()}}


KINDS = [
    JobKind("ingest", IngestSpec, run_ingest, "register server-side data as a corpus",
            stages={"ingest": SHARD_TASK, "check_ids": SHARD_TASK}, internal=True, on_end=fail_corpus),
    JobKind("export", ExportSpec, run_export, "materialise a selection's documents as a corpus",
            stages={"export": SHARD_TASK}, internal=True, on_end=fail_corpus, light=True),
]
