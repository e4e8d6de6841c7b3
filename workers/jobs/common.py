"""What job kinds of different families share: the empty-document rule, arrays in storage, a job's
manifest and how a selection commits it, a model's record for a worker, and how a stage cuts shards
into pieces for a pool of actors. A kind's own stages stay in its module (another kind that reuses
one, as `filter` reuses export's, imports it from there)."""
from __future__ import annotations

import io

import numpy as np
import pyarrow.dataset as pds

from storage import layout
from storage.catalog import NotFound
from storage.fs import Store
from storage.ingest.common import empty_mask  # noqa: F401  (the rule ingest counts by; jobs import it from here)
from storage.manifests import dataset, manifest_files, selected_by_source, write_selection
from workers.driver.engine import JobContext, JobFailed, derived_id
from workers.jobs.restrict import Restriction
from workers.specs import Select


def unscored(texts, allowed: np.ndarray | None) -> np.ndarray:
    """Documents a selection leaves without a score: the empty ones, and those a restriction
    excludes (`allowed`: the rows it allows, None for all)."""
    skip = empty_mask(texts)
    return skip if allowed is None else skip | ~np.asarray(allowed, dtype=bool)


def save_array(store: Store, arr: np.ndarray, *parts: str) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    store.write_bytes(buf.getvalue(), *parts)


def load_array(store: Store, *parts: str) -> np.ndarray:
    return np.load(io.BytesIO(store.read_bytes(*parts)))


def manifest_id(ctx: JobContext) -> str:
    """The id of the manifest a job writes (derived: a resumed job finds its own)."""
    return derived_id("man", ctx.job_id)


def commit_selection(ctx: JobContext, kind: str, pool: str, info: dict, meta: dict, summary: dict) -> dict:
    """Commit the job's manifest (its parts all written) and build the job's result: the rows, the
    selected documents (per source) and `summary`."""
    man_id = manifest_id(ctx)
    ctx.commit_manifest(man_id, kind, info, meta)
    summary = {"num_rows": info["num_rows"], "num_selected": info["num_selected"],
               "selected_by_source": selected_by_source(ctx.store, manifest_files(ctx.store, man_id),
                                                           ctx.config.temp_root), **summary}
    return {"manifest_id": man_id, "corpus_id": pool, "summary": summary}


def finish_selection(ctx: JobContext, kind: str, pool: str, select: Select | None, mode: str,
                     key: str = "score", meta: dict | None = None, restricted: Restriction | None = None) -> dict:
    """Rank the job's score parts into a manifest, commit it, and build the job result.
    `select=None` ranks without selecting (a plain scoring job). With `restricted`, the documents
    it excludes are never selected, and the manifest and summary record what it was built on."""
    ctx.check_cancelled()
    ctx.progress("select", 0, 1, "steps", force=True)
    man_id = manifest_id(ctx)
    meta = {**(meta or {}), **(restricted.summary() if restricted else {})}
    info = write_selection(ctx.store, layout.score_parts(ctx.store, ctx.job_id), man_id, corpus_id=pool,
                           select=select.as_dict() if select else {"count": 0}, mode=mode, key=key,
                           temp_root=ctx.config.temp_root, max_temp_size=ctx.config.max_temp_size,
                           excluded=restricted.table() if restricted else None)
    result = commit_selection(ctx, kind, pool, info, meta, meta)
    ctx.progress("select", 1, 1, "steps", force=True)
    if select is not None and select.count is not None and select.count > info["num_selected"]:
        eligible = dataset(ctx.store, manifest_files(ctx.store, man_id)).count_rows(filter=pds.field("rank").is_valid())
        if select.count > eligible:
            result["summary"].setdefault("warnings", []).append(
                f"select.count is {select.count} but the pool has only {eligible} selectable (non-empty"
                f"{', not excluded by restrict' if meta.get('built_on') else ''}) documents: all of them were selected")
    return result


def model_record(ctx: JobContext, model_id: str) -> dict:
    """The model's record for a worker; a registered checkpoint's carries the rule its files are
    checked against when the worker opens them (workers.models.checked_checkpoint)."""
    try:
        rec = ctx.catalog.get("models", model_id, ctx.tenant)
    except NotFound:
        raise JobFailed("not_found", f"model {model_id} does not exist") from None
    return {**rec, "access": ctx.access} if rec["source"] == "huggingface" else rec


MIN_PIECE_ROWS = 64  # a shard is split into row ranges of at least this many documents
PIECES_PER_ACTOR = 4


def score_pieces(todo: list[tuple[int, tuple]], counts: dict[int, int], n_actors: int) -> list[tuple[int, tuple, int, int]]:
    """(shard, path, first row, end row) of the scoring tasks: whole shards when there are at least
    as many as actors, else row ranges of about a quarter of (all rows / actors) documents (at least
    MIN_PIECE_ROWS), so that every actor has work, a slow one holds up little, and progress moves."""
    if len(todo) >= n_actors:
        return [(s, p, 0, counts.get(s, 0)) for s, p in todo]
    piece = max(MIN_PIECE_ROWS, -(-sum(counts.get(s, 0) for s, _ in todo) // (PIECES_PER_ACTOR * n_actors)))
    out = []
    for s, p in todo:
        rows = counts.get(s, 0)
        edges = np.linspace(0, rows, max(1, round(rows / piece)) + 1).round().astype(int)
        out += [(s, p, int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    return out
