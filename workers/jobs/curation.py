"""Training-time curation kinds: `reweight` (docs/methods.md §3) and `curriculum` (§4).

Both start from per-document losses: those of an auxiliary model (scored here on LossScorer
actors, resumable per shard) or those of an existing `score` manifest.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from scoring.reweight import STRATEGIES, sample_weights
from storage import layout
from storage.catalog import NotFound
from storage.duck import connection
from storage.fs import Store
from storage.manifests import dataset, manifest_files, write_table_manifest
from workers.driver import lifecycle
from workers.driver.curriculum_runs import create_run
from workers.driver.engine import JobContext, JobFailed, derived_id
from workers.jobs.common import manifest_id, model_record
from workers.jobs.lm import ScoreOptions, score_shards
from workers.kind import SCORER, SHARD_TASK, JobKind
from workers.specs import CorpusId, ManifestId, ModelId, Seed, StrictModel, exactly_one


def document_losses(ctx: JobContext, corpus: str, model: str | None, losses: str | None,
                    options: ScoreOptions) -> pa.Table:
    """doc_id, shard, row, source, loss (NaN for unscored documents) in corpus order."""
    if model:
        score_shards(ctx, corpus, [model_record(ctx, model)], options)
        parts = layout.score_parts(ctx.store, ctx.job_id)
    else:
        man = ctx.catalog.get("manifests", losses, ctx.tenant)
        if "loss" not in [c["name"] for c in man["columns"]]:
            raise JobFailed("not_a_loss_manifest", f"manifest {losses} has no loss column (use a score job's)")
        parts = manifest_files(ctx.store, losses)
    with connection(ctx.config.temp_root, ctx.config.max_temp_size) as con:
        con.register("s", dataset(ctx.store, parts))
        return con.sql("SELECT doc_id, shard, row, source, loss FROM s ORDER BY shard, row").to_arrow_table()


class LossSource(StrictModel):
    model: ModelId | None = Field(None, description="an auxiliary model to score the corpus with")
    losses: ManifestId | None = Field(None, description="a score manifest (with a loss column) of this corpus")

    @model_validator(mode="after")
    def _one(self):
        return exactly_one(self, "model", "losses")


# -- reweight ------------------------------------------------------------------------------------

class ReweightSpec(LossSource):
    corpus: CorpusId
    strategy: Literal[STRATEGIES] = "linupper"
    r: float = Field(0.4, gt=0, description="softmax temperature")
    batch_size: int = Field(256, ge=1, le=1_000_000)
    seed: Seed = 0
    scoring: ScoreOptions = ScoreOptions()


def reweight_batches(store: Store, losses: pa.Table, man_id: str, corpus_id: str, strategy: str,
                     r: float, batch_size: int, seed: int) -> dict:
    """A seeded epoch order of the scored documents, cut into batches, each weighted on its own."""
    loss = losses["loss"].to_numpy(zero_copy_only=False).astype(np.float64)
    scored = np.flatnonzero(np.isfinite(loss))  # documents without a loss cannot be trained on
    order = scored[np.random.default_rng(seed).permutation(len(scored))]
    weight = np.empty(len(order))
    for start in range(0, len(order), batch_size):
        sl = slice(start, start + batch_size)
        weight[sl] = sample_weights(loss[order[sl]], strategy, r)
    n = len(order)
    table = pa.table({
        "doc_id": losses["doc_id"].take(order), "corpus_id": pa.array([corpus_id] * n),
        "shard": losses["shard"].take(order), "row": losses["row"].take(order),
        "source": losses["source"].take(order),
        "batch": pa.array(np.arange(n) // batch_size), "position": pa.array(np.arange(n) % batch_size),
        "loss": pa.array(loss[order]), "weight": pa.array(weight)})
    info = write_table_manifest(store, table, man_id)
    info["skipped_unscored"] = int(len(loss) - n)
    return info


def run_reweight(ctx: JobContext, spec: ReweightSpec) -> dict:
    ctx.corpus(spec.corpus)
    losses = document_losses(ctx, spec.corpus, spec.model, spec.losses, spec.scoring)
    man_id = manifest_id(ctx)
    info = ctx.run_one("weights", reweight_batches, losses, man_id, spec.corpus, spec.strategy, spec.r,
                       spec.batch_size, spec.seed)
    skipped = info.pop("skipped_unscored")
    ctx.commit_manifest(man_id, "reweight", info, {"strategy": spec.strategy, "r": spec.r})
    return {"manifest_id": man_id, "corpus_id": spec.corpus,
            "summary": {"num_rows": info["num_rows"], "batches": -(-info["num_rows"] // spec.batch_size),
                        "skipped_unscored": skipped, "strategy": spec.strategy, "r": spec.r}}


# -- curriculum ----------------------------------------------------------------------------------

class CurriculumSpec(StrictModel):
    corpus: CorpusId
    method: Literal["seta", "infobatch"]
    epochs: int = Field(ge=1, le=100_000)
    prune_ratio: float | None = Field(None, ge=0, lt=1, description="default: 0.1 for SeTa, 0.5 for InfoBatch")
    num_groups: int = Field(5, ge=1, le=1000, description="SeTa: k of the k-means on losses")
    window_scale: float = Field(0.9, gt=0, le=1, description="SeTa: share of clusters in the window")
    delta: float = Field(0.875, ge=0, le=1, description="share of epochs that prune; the rest anneal")
    seed: Seed = 0
    initial_score: float = Field(3.0, description="score of samples with no loss yet")
    model: ModelId | None = Field(None, description="score the corpus first for initial losses")
    scoring: ScoreOptions = ScoreOptions()


def run_curriculum(ctx: JobContext, spec: CurriculumSpec) -> dict:
    ctx.corpus(spec.corpus)
    run_id = derived_id("cur", ctx.job_id)
    try:
        ctx.catalog.get("curricula", run_id)
        return {"curriculum_id": run_id, "corpus_id": spec.corpus, "summary": {}}
    except NotFound:
        pass
    initial = None
    if spec.model:
        table = document_losses(ctx, spec.corpus, spec.model, None, spec.scoring)
        ids, initial = table["doc_id"], table["loss"].to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        ids = pa.concat_arrays([ctx.store.read_parquet(*p, columns=["id"])["id"].combine_chunks()
                                for _, p in ctx.corpus_shards(spec.corpus)])
    params = {"epochs": spec.epochs, "delta": spec.delta, "seed": spec.seed, "initial_score": spec.initial_score}
    if spec.method == "seta":
        params.update(prune_ratio=0.1 if spec.prune_ratio is None else spec.prune_ratio,
                      num_groups=spec.num_groups, window_scale=spec.window_scale)
    else:
        params.update(prune_ratio=0.5 if spec.prune_ratio is None else spec.prune_ratio)
    info = create_run(ctx.store, run_id, spec.method, ids, params, initial)
    lifecycle.commit_curriculum(ctx.catalog, ctx.job, run_id, spec.method, spec.corpus, spec.epochs, info["params"])
    return {"curriculum_id": run_id, "corpus_id": spec.corpus,
            "summary": {"num_samples": info["num_samples"], "initial_losses": spec.model is not None}}


KINDS = [
    JobKind("reweight", ReweightSpec, run_reweight,
            "per-sample loss weights (LinUpper / Quadratic / Extremes) for a seeded batch order",
            stages={"score": SCORER, "weights": SHARD_TASK}, skip={"score": lambda s: s.model is None}),
    JobKind("curriculum", CurriculumSpec, run_curriculum,
            "a SeTa or InfoBatch curriculum run that a training loop drives over HTTP",
            stages={"score": SCORER}, skip={"score": lambda s: s.model is None}),
]
