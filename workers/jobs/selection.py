"""Model-free selection kinds: `random` and `dsir` (docs/methods.md §2), one Ray task per shard."""
from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from scoring.hashing import DEFAULT_BUCKETS, ngram_counts, word_counts
from storage import layout
from storage.fs import Store
from storage.manifests import score_part
from workers.driver.engine import JobContext
from workers.jobs.common import finish_selection, load_array, save_array, unscored
from workers.jobs.restrict import Restriction, restriction
from workers.kind import BOOKKEEPING, SHARD_TASK, JobKind, small_inputs
from workers.runtime import measured, node_id
from workers.specs import CorpusId, Restricted, Seed, Select, SelectMode, TargetedSelection


# -- random --------------------------------------------------------------------------------------

class RandomSpec(Restricted):
    pool: CorpusId
    select: Select
    mode: SelectMode = "global"
    seed: Seed = 0


def random_scores(store: Store, shard: int, parts: tuple, out: tuple, seed: int, allowed: np.ndarray | None) -> dict:
    t = store.read_parquet(*parts, columns=["id", "text", "source"])
    score = np.random.default_rng([seed, shard]).random(t.num_rows)
    score[unscored(t["text"], allowed)] = np.nan
    store.write_parquet(score_part(t["id"], shard, t["source"], word_counts(t["text"]), score), *out)
    return {"rows": t.num_rows, "node": node_id()}


def run_random(ctx: JobContext, spec: RandomSpec) -> dict:
    ctx.corpus(spec.pool)
    pool = restriction(ctx, spec.pool, spec.restrict)
    ctx.map_shards("score", random_scores, ctx.corpus_shards(spec.pool), spec.seed,
                   out=lambda s: layout.score_part(ctx.job_id, s), each=lambda s: (pool.allowed(s),))
    return finish_selection(ctx, "random", spec.pool, spec.select, spec.mode, restricted=pool)


# -- dsir ----------------------------------------------------------------------------------------

class DsirSpec(TargetedSelection):
    seed: Seed = 0
    buckets: int = Field(DEFAULT_BUCKETS, ge=16, le=1_000_000)
    sampling: Literal["gumbel", "topk"] = Field(
        "gumbel", description="gumbel: importance resampling without replacement (Gumbel top-k); "
                             "topk: deterministic top-k by log importance weight")


def bucket_totals(store: Store, key: tuple, parts: tuple, out: tuple, buckets: int,
                  allowed: np.ndarray | None) -> dict:
    t = store.read_parquet(*parts, columns=["text"])
    if allowed is not None:
        t = t.filter(pa.array(allowed))
    save_array(store, np.asarray(ngram_counts(t["text"], buckets).sum(axis=0)).ravel(), *out)
    return {"rows": t.num_rows, "node": node_id()}


def dsir_scores(store: Store, shard: int, parts: tuple, out: tuple, ratio: tuple, buckets: int, seed: int,
                allowed: np.ndarray | None) -> dict:
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
    roles = {"pool": pool, "target": target}
    fit = [((role, s), p) for role, corpus in roles.items() for s, p in ctx.corpus_shards(corpus)]
    # The pool's distribution is that of the documents the restriction allows; the target's is whole.
    ctx.map_shards(stages[0], bucket_totals, fit, buckets, out=lambda key: layout.dsir_counts(into, *key),
                   each=lambda key: (restricted.allowed(key[1]) if key[0] == "pool" else None,))
    ratio = layout.job_file(into, "dsir_log_ratio")
    if not ctx.store.exists(*ratio):
        totals = {"pool": np.zeros(buckets), "target": np.zeros(buckets)}
        for (role, s), _ in fit:  # one file a shard, read here in the driver: stop at once when cancelled
            ctx.check_cancelled()
            totals[role] += load_array(ctx.store, *layout.dsir_counts(into, role, s))
        # Add-one smoothing keeps unseen buckets finite.
        logp = {k: np.log((v + 1.0) / (v.sum() + buckets)) for k, v in totals.items()}
        save_array(ctx.store, logp["target"] - logp["pool"], *ratio)
    ctx.map_shards(stages[1], dsir_scores, ctx.corpus_shards(pool), ratio, buckets, seed,
                   out=lambda s: layout.score_part(into, s), each=lambda s: (restricted.allowed(s),))


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
