"""The `classifier` kind: a DCLM-style fastText classifier, target against a sample of the pool.

Positives are the target's documents (a seeded sample of at most `max_target_docs`), negatives a
seeded uniform sample of the pool, `negatives_per_positive` as many. One task trains it once
(epochs and learning rate chosen on a held-out slice, scoring/fasttext_classifier.py) and stores the
model under the job's folder; then one Ray task per pool shard loads it and writes the shard's
scores, P(target). A task per shard rather than an actor pool: loading the model is a file read
(bench/selectors.py measures it against a shard's scoring), tasks need no actor lifecycle, and
each shard is resumable on its own like DSIR's.

The embedding kind's BETR path trains and scores with the same stages (`train_fasttext`,
`fasttext_scores_into`), on labels it derives from embedding similarity.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Annotated

import numpy as np
import pyarrow as pa
from pydantic import Field

from scoring import fasttext_classifier as ftc
from scoring.hashing import word_counts
from storage import layout
from storage.fs import Store
from storage.manifests import score_part
from workers.driver.engine import JobContext, JobFailed
from workers.jobs.common import empty_mask, finish_selection, unscored
from workers.jobs.restrict import Restriction, restriction
from workers.kind import BOOKKEEPING, CPU_TRAINING, SHARD_TASK, JobKind
from workers.runtime import node_id
from workers.specs import Seed, StrictModel, TargetedSelection

Rows = list[tuple[tuple, list[int]]]  # (shard path, row numbers) pairs: documents to read


class FastTextOptions(StrictModel):
    """The fastText classifier's training: the grid it chooses from on a held-out slice, and its size."""
    epochs: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        list(ftc.EPOCHS_GRID), min_length=1, max_length=8,
        description="epochs to try (the held-out slice chooses; one value: no choice)")
    lr: list[Annotated[float, Field(gt=0, le=10)]] = Field(
        list(ftc.LR_GRID), min_length=1, max_length=8, description="learning rates to try")
    holdout_fraction: float = Field(0.2, ge=0, le=0.5, description=(
        "share of each class held out to choose epochs and lr (0: no check, the first of each)"))
    dim: int = Field(ftc.FastTextParams.dim, ge=ftc.MIN_DIM, le=512, description="fastText vector size")
    buckets: int = Field(ftc.FastTextParams.buckets, ge=ftc.MIN_BUCKETS, le=4_000_000, description=(
        "hash buckets of the word bigrams; the model file holds (words + buckets) × dim floats"))


class ClassifierSpec(TargetedSelection, FastTextOptions):
    seed: Seed = 0
    negatives_per_positive: float = Field(1.0, gt=0, le=100, description=(
        "pool documents sampled as negatives per target document"))
    max_target_docs: int = Field(20_000, ge=1, le=1_000_000, description=(
        "at most this many target documents are positives (a seeded sample)"))


# -- shared with the embedding kind's BETR path ------------------------------------------------------

def sample_rows(shards: list[tuple[int, tuple]], sizes: dict[int, int], n: int, seed: int,
                restricted: Restriction | None = None) -> Rows:
    """A seeded uniform sample of `n` rows of a corpus, as (shard path, sorted rows) per shard;
    every row when `n` is at least the corpus's size. With `restricted`, only the rows it allows
    (an unrestricted draw is the same as before restrictions)."""
    restricted = restricted or Restriction()
    rows_of = []
    for s, _ in shards:
        mask = restricted.allowed(s)
        rows_of.append(np.arange(sizes.get(s, 0)) if mask is None else np.flatnonzero(mask))
    counts = np.array([len(r) for r in rows_of], dtype=np.int64)
    total = int(counts.sum())
    pick = np.arange(total) if n >= total else np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    out = []
    for i, (_, parts) in enumerate(shards):
        at = pick[(pick >= starts[i]) & (pick < starts[i + 1])] - starts[i]
        if len(at):
            out.append((parts, rows_of[i][at].tolist()))
    return out


def read_rows(store: Store, rows: Rows) -> list[str]:
    """The non-empty texts of the given rows."""
    texts = []
    for parts, idx in rows:
        col = store.read_parquet(*parts, columns=["text"])["text"].take(idx).to_pylist()
        texts += [t for t, empty in zip(col, empty_mask(col)) if not empty]
    return texts


def train_fasttext(store: Store, positives: Rows, negatives: Rows, opts: dict, seed: int, threads: int,
                   out_model: tuple, out_report: tuple) -> dict:
    """Train the classifier once and store it; the report (the held-out check) is written last. The
    grid's fits run `threads` at a time, each on one core (scoring/fasttext_classifier.py says why)."""
    started = time.monotonic()
    pos, neg = read_rows(store, positives), read_rows(store, negatives)
    if not pos or not neg:
        raise JobFailed("empty_corpus", f"the classifier has {len(pos)} positive and {len(neg)} negative "
                                        "non-empty documents: it needs both")
    o = FastTextOptions.model_validate(opts)
    params = ftc.FastTextParams(dim=o.dim, buckets=o.buckets, workers=threads, seed=seed)
    labels = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    data, report = ftc.fit_with_holdout(pos + neg, labels, params, o.epochs, o.lr, o.holdout_fraction)
    store.write_bytes(data, *out_model)
    seconds = time.monotonic() - started
    report.update(parallel_fits=threads, seconds=round(seconds, 2), model_bytes=len(data),
                  docs_per_s=round(len(labels) / seconds, 1))
    store.write_bytes(json.dumps(report).encode(), *out_report)
    return {**report, "node": node_id()}


def load_fasttext(store: Store, parts: tuple):
    if store.local:
        return ftc.load(store.path(*parts))
    with tempfile.TemporaryDirectory() as tmp:  # fastText reads only from a path
        path = os.path.join(tmp, parts[-1])
        with open(path, "wb") as f:
            f.write(store.read_bytes(*parts))
        return ftc.load(path)


def fasttext_scores(store: Store, shard: int, parts: tuple, out: tuple, model_parts: tuple,
                    allowed: np.ndarray | None) -> dict:
    """One shard's P(target) under the stored classifier; the documents `allowed` leaves out are not scored."""
    t0 = time.monotonic()
    model = load_fasttext(store, model_parts)
    load_s = time.monotonic() - t0
    t = store.read_parquet(*parts, columns=["id", "text", "source"])
    keep = ~unscored(t["text"], allowed)
    p = np.full(t.num_rows, np.nan)
    p[keep] = ftc.p_target(model, t["text"].filter(pa.array(keep)).to_pylist())
    store.write_parquet(score_part(t["id"], shard, t["source"], word_counts(t["text"]), p), *out)
    return {"rows": t.num_rows, "load_s": load_s, "seconds": time.monotonic() - t0, "node": node_id()}


def ensure_fasttext(ctx: JobContext, stage: str, positives: Rows, negatives: Rows, opts: FastTextOptions,
                    seed: int) -> dict:
    """The job's classifier, trained once by one task (a resumed job finds its report and skips)."""
    model, report = layout.job_file(ctx.job_id, "classifier_model"), layout.job_file(ctx.job_id, "classifier_report")
    ctx.run_one(stage, train_fasttext, positives, negatives, opts.model_dump(include=set(FastTextOptions.model_fields)),
                seed, ctx.threads(stage), model, report, out=report, unit="models")
    return json.loads(ctx.store.read_bytes(*report))


def fasttext_scores_into(ctx: JobContext, stage: str, pool: str, restricted: Restriction) -> dict:
    """Score every shard of `pool` with the job's classifier (one task per shard, resumable), the
    documents `restricted` allows; the stage's figures."""
    started = time.monotonic()
    model = layout.job_file(ctx.job_id, "classifier_model")
    shards = ctx.corpus_shards(pool)
    done = [r for r in ctx.map_shards(stage, fasttext_scores, shards, model, out=lambda s: layout.score_part(ctx.job_id, s),
                                      each=lambda s: (restricted.allowed(s),)).values() if r]
    seconds = time.monotonic() - started
    rows = sum(r["rows"] for r in done)
    return {"tasks": len(shards), "scored_now": len(done), "documents": rows, "seconds": round(seconds, 2),
            "docs_per_s": round(rows / seconds, 1) if seconds > 0 and rows else None,
            "model_load_s": round(float(np.mean([r["load_s"] for r in done])), 3) if done else None}


# -- classifier ----------------------------------------------------------------------------------

def run_classifier(ctx: JobContext, spec: ClassifierSpec) -> dict:
    ctx.corpus(spec.pool)
    ctx.corpus(spec.target)
    pool = restriction(ctx, spec.pool, spec.restrict)
    target_sizes = ctx.corpus_shard_sizes(spec.target)
    positives = sample_rows(ctx.corpus_shards(spec.target), target_sizes, spec.max_target_docs, spec.seed)
    n_pos = sum(len(r) for _, r in positives)
    # Seeded apart from the positives' draw, so a pool that is the target is not sampled row for row.
    # Negatives come from the restricted pool: what restrict leaves out is not the pool selected from.
    negatives = sample_rows(ctx.corpus_shards(spec.pool), pool.sizes, max(1, round(spec.negatives_per_positive * n_pos)),
                            spec.seed + 1, pool)
    report = ensure_fasttext(ctx, "train", positives, negatives, spec, spec.seed)
    scoring = fasttext_scores_into(ctx, "score", spec.pool, pool)
    result = finish_selection(ctx, "classifier", spec.pool, spec.select, spec.mode, restricted=pool,
                              meta={"score": "P(target) under a fastText word-bigram classifier"})
    result["summary"]["classifier"] = report
    result["summary"]["scoring"] = scoring
    return result


KINDS = [
    JobKind("classifier", ClassifierSpec, run_classifier,
            "DCLM-style fastText classifier (word bigrams): target against a sample of the pool, P(target)",
            stages={"train": CPU_TRAINING, "score": SHARD_TASK, "select": BOOKKEEPING}),
]
