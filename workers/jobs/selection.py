"""Model-free selection kinds: `random` and `dsir` (docs/methods.md §2), one Ray task per shard."""
from __future__ import annotations

import io
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import ray
from pydantic import Field

from scoring.hashing import DEFAULT_BUCKETS, ngram_counts, word_counts
from storage import layout
from storage.fs import Store
from storage.manifests import dataset, manifest_files, score_part, selected_by_source, write_selection
from workers.driver.engine import JobContext, Task, derived_id
from workers.jobs.restrict import Restriction, restriction
from workers.kind import BOOKKEEPING, SHARD_TASK, JobKind, small_inputs
from workers.runtime import measured, node_id
from workers.specs import CorpusId, Restricted, Seed, Select, SelectMode, TargetedSelection


def empty_mask(texts) -> np.ndarray:
    """Documents with nothing but whitespace: reported at ingest, never scored or selected."""
    lengths = pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0)
    return lengths.to_numpy(zero_copy_only=False) == 0


def unscored(texts, allowed: np.ndarray | None) -> np.ndarray:
    """Documents a selection leaves without a score: the empty ones, and those a restriction excludes."""
    skip = empty_mask(texts)
    return skip if allowed is None else skip | ~allowed


def save_array(store: Store, arr: np.ndarray, *parts: str) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    store.write_bytes(buf.getvalue(), *parts)


def load_array(store: Store, *parts: str) -> np.ndarray:
    return np.load(io.BytesIO(store.read_bytes(*parts)))


def finish_selection(ctx: JobContext, kind: str, pool: str, select: Select | None, mode: str,
                     key: str = "score", meta: dict | None = None, restricted: Restriction | None = None) -> dict:
    """Rank the job's score parts into a manifest, commit it, and build the job result.
    `select=None` ranks without selecting (a plain scoring job). With `restricted`, the documents
    it excludes are never selected, and the manifest and summary record what it was built on."""
    ctx.check_cancelled()
    ctx.progress("select", 0, 1, "steps", force=True)
    man_id = derived_id("man", ctx.job_id)
    meta = {**(meta or {}), **(restricted.summary() if restricted else {})}
    info = write_selection(ctx.store, layout.score_parts(ctx.store, ctx.job_id), man_id, corpus_id=pool,
                           select=select.as_dict() if select else {"count": 0}, mode=mode, key=key,
                           temp_root=ctx.config.temp_root, max_temp_size=ctx.config.max_temp_size,
                           excluded=restricted.table() if restricted else None)
    ctx.commit_manifest(man_id, kind, info, meta)
    ctx.progress("select", 1, 1, "steps", force=True)
    summary = {"num_rows": info["num_rows"], "num_selected": info["num_selected"],
               "selected_by_source": selected_by_source(ctx.store, manifest_files(ctx.store, man_id),
                                                           ctx.config.temp_root), **(meta or {})}
    if select is not None and select.count is not None and select.count > info["num_selected"]:
        eligible = dataset(ctx.store, manifest_files(ctx.store, man_id)).count_rows(filter=pds.field("rank").is_valid())
        if select.count > eligible:
            summary.setdefault("warnings", []).append(
                f"select.count is {select.count} but the pool has only {eligible} selectable (non-empty"
                f"{', not excluded by restrict' if meta.get('built_on') else ''}) documents: all of them were selected")
    return {"manifest_id": man_id, "corpus_id": pool, "summary": summary}


# -- random --------------------------------------------------------------------------------------

class RandomSpec(Restricted):
    pool: CorpusId
    select: Select
    mode: SelectMode = "global"
    seed: Seed = 0


@ray.remote
@measured
def random_scores(store_root: str, shard: int, parts: tuple, out: tuple, seed: int,
                  allowed: np.ndarray | None) -> int:
    store = Store(store_root)
    t = store.read_parquet(*parts, columns=["id", "text", "source"])
    score = np.random.default_rng([seed, shard]).random(t.num_rows)
    score[unscored(t["text"], allowed)] = np.nan
    store.write_parquet(score_part(t["id"], shard, t["source"], word_counts(t["text"]), score), *out)
    return {"rows": t.num_rows, "node": node_id()}


def run_random(ctx: JobContext, spec: RandomSpec) -> dict:
    ctx.corpus(spec.pool)
    pool = restriction(ctx, spec.pool, spec.restrict)
    tasks = [Task(out=layout.score_part(ctx.job_id, s), key=s,
                  submit=lambda s=s, p=p: ctx.submit("score", random_scores, ctx.store.root, s, p,
                                                     layout.score_part(ctx.job_id, s), spec.seed, pool.allowed(s)))
             for s, p in ctx.corpus_shards(spec.pool)]
    ctx.run_tasks("score", tasks)
    return finish_selection(ctx, "random", spec.pool, spec.select, spec.mode, restricted=pool)


# -- dsir ----------------------------------------------------------------------------------------

class DsirSpec(TargetedSelection):
    seed: Seed = 0
    buckets: int = Field(DEFAULT_BUCKETS, ge=16, le=1_000_000)
    sampling: Literal["gumbel", "topk"] = Field(
        "gumbel", description="gumbel: importance resampling without replacement (Gumbel top-k); "
                             "topk: deterministic top-k by log importance weight")


@ray.remote
@measured
def bucket_totals(store_root: str, parts: tuple, out: tuple, buckets: int, allowed: np.ndarray | None) -> int:
    store = Store(store_root)
    t = store.read_parquet(*parts, columns=["text"])
    if allowed is not None:
        t = t.filter(pa.array(allowed))
    save_array(store, np.asarray(ngram_counts(t["text"], buckets).sum(axis=0)).ravel(), *out)
    return {"rows": t.num_rows, "node": node_id()}


@ray.remote
@measured
def dsir_scores(store_root: str, shard: int, parts: tuple, out: tuple, ratio: tuple,
                buckets: int, seed: int, allowed: np.ndarray | None) -> int:
    store = Store(store_root)
    t = store.read_parquet(*parts, columns=["id", "text", "source"])
    skip = unscored(t["text"], allowed)
    # Excluded documents are not counted: their text is hashed as empty.
    counts = ngram_counts(pc.if_else(pa.array(skip), "", t["text"]) if allowed is not None else t["text"], buckets)
    logw = counts @ load_array(store, *ratio)
    logw[skip] = np.nan
    gumbel = np.random.default_rng([seed, shard]).gumbel(size=t.num_rows)
    store.write_parquet(score_part(t["id"], shard, t["source"], word_counts(t["text"]), logw,
                                   resample_key=logw + gumbel), *out)
    return {"rows": t.num_rows, "node": node_id()}


def dsir_scores_into(ctx: JobContext, pool: str, target: str, into: str, buckets: int, seed: int,
                     stages: tuple[str, str] = ("fit", "score"), restricted: Restriction | None = None) -> None:
    """DSIR's fit and per-shard scores of `pool` toward `target`, written under job id `into` (the
    job's own, or a derived one when another kind compares itself with DSIR), resumable. With
    `restricted`, the pool's distribution is that of the documents it allows, and only they are scored."""
    restricted = restricted or Restriction()
    fit = []
    for role, corpus in (("pool", pool), ("target", target)):
        for s, p in ctx.corpus_shards(corpus):
            out = layout.dsir_counts(into, role, s)
            allowed = restricted.allowed(s) if role == "pool" else None
            fit.append(Task(out=out, key=(role, s),
                            submit=lambda p=p, out=out, allowed=allowed: ctx.submit(
                                stages[0], bucket_totals, ctx.store.root, p, out, buckets, allowed)))
    ctx.run_tasks(stages[0], fit)
    ratio = layout.job_file(into, "dsir_log_ratio")
    if not ctx.store.exists(*ratio):
        totals = {"pool": np.zeros(buckets), "target": np.zeros(buckets)}
        for t in fit:  # one file a shard, read here in the driver: stop at once when cancelled
            ctx.check_cancelled()
            totals[t.key[0]] += load_array(ctx.store, *t.out)
        # Add-one smoothing keeps unseen buckets finite.
        logp = {k: np.log((v + 1.0) / (v.sum() + buckets)) for k, v in totals.items()}
        save_array(ctx.store, logp["target"] - logp["pool"], *ratio)
    scoring = [Task(out=layout.score_part(into, s), key=s,
                    submit=lambda s=s, p=p: ctx.submit(stages[1], dsir_scores, ctx.store.root, s, p,
                                                       layout.score_part(into, s), ratio, buckets, seed,
                                                       restricted.allowed(s)))
               for s, p in ctx.corpus_shards(pool)]
    ctx.run_tasks(stages[1], scoring)


def run_dsir(ctx: JobContext, spec: DsirSpec) -> dict:
    ctx.corpus(spec.pool)
    ctx.corpus(spec.target)
    pool = restriction(ctx, spec.pool, spec.restrict)
    dsir_scores_into(ctx, spec.pool, spec.target, ctx.job_id, spec.buckets, spec.seed, restricted=pool)
    key = "resample_key" if spec.sampling == "gumbel" else "score"
    return finish_selection(ctx, "dsir", spec.pool, spec.select, spec.mode, key=key, restricted=pool)


KINDS = [
    JobKind("random", RandomSpec, run_random, "uniform random selection (a baseline)",
            stages={"score": SHARD_TASK, "select": BOOKKEEPING}, light=small_inputs),
    JobKind("dsir", DsirSpec, run_dsir, "DSIR: hashed n-gram importance weights toward a target",
            stages={"fit": SHARD_TASK, "score": SHARD_TASK, "select": BOOKKEEPING}, light=small_inputs),
]
