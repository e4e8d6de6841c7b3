"""The `embedding` kind: rank the pool by sentence-embedding similarity to the target.

One task embeds the target once (a seeded sample of at most `max_target_docs`) and stores its unit
embeddings; the driver puts that matrix in Ray's object store once and hands it to a pool of
`EmbeddingScorer` actors, each of which loads the encoder once (scoring/encoder.py) and then takes
shard after shard. Each score part holds both similarities (`centroid`, `knn`); `score` is the one
the spec names.

For pools too large to embed whole, `betr` follows BETR: embed a seeded sample of the pool, label
its most similar documents positive and the rest negative, train the fastText classifier of the
`classifier` kind on those labels, and score the whole pool with it (P(similar), the classifier's
stages). The summary's `path` says which ran.
"""
from __future__ import annotations

import os
import time
from typing import Literal

import numpy as np
import pyarrow as pa
import ray
import torch
from pydantic import Field

from scoring.device import pick_device
from scoring.encoder import MAX_TOKENS, Encoder, centroid_similarity, knn_similarity, loads
from scoring.hashing import word_counts
from storage import layout
from storage.fs import Store
from storage.manifests import score_part
from workers.driver.engine import JobContext, JobFailed, Task
from workers.jobs.classifier import (FastTextOptions, Rows, ensure_fasttext, fasttext_scores_into, read_rows,
                                     sample_rows)
from workers.jobs.restrict import Restriction, restriction
from workers.jobs.common import empty_mask, finish_selection, load_array, save_array, score_pieces, unscored
from workers.kind import BOOKKEEPING, CPU_TRAINING, SCORER, SHARD_TASK, TRAINING, JobKind
from workers.runtime import actor_cpu, cluster_cpus, cluster_gpus, node_id
from workers.specs import Seed, StrictModel, TargetedSelection

Similarity = Literal["centroid", "knn"]


class BetrOptions(FastTextOptions):
    """BETR: embed a sample, label its most similar documents, and let a fastText classifier score the pool."""
    sample: int = Field(ge=20, le=10_000_000, description="pool documents to embed (a seeded uniform sample)")
    positive_fraction: float = Field(0.1, gt=0, lt=1, description=(
        "the sample's most similar documents labelled positive; the rest are negatives"))


class EmbeddingSpec(TargetedSelection):
    seed: Seed = 0
    # knn by default: a target made of several parts (four books, a guide's many topics) has no one
    # centre. On bench/color_quality.py's within-domain tasks the top by knn was 0.55, 0.80 and 0.57
    # target-part documents against 0.35, 0.55 and 0.13 by centroid; on bench/selectors.py's
    # one-part generated task the two were level (centroid 0.71, knn 0.69).
    similarity: Similarity = Field("knn", description=(
        "centroid: cosine similarity to the target's mean embedding; knn: mean cosine similarity to the "
        "k most similar target documents"))
    k: int = Field(10, ge=1, le=1000, description="target neighbours averaged by `knn`")
    max_target_docs: int = Field(20_000, ge=1, le=1_000_000, description=(
        "at most this many target documents are embedded (a seeded sample)"))
    actors: int | None = Field(None, ge=1, le=4096, description=(
        "at most this many encoder actors (each holds the encoder); default one per GPU, else one per CPU core"))
    batch_size: int = Field(32, ge=1, le=1024, description="documents per encoder batch")
    betr: BetrOptions | None = Field(None, description=(
        "embed only a sample of the pool and score the rest with a classifier fitted on it"))


def set_threads(threads: int) -> None:
    if threads == 1:  # one encoder per core: the tokenizer's thread pool would compete with the others
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        os.environ["RAYON_NUM_THREADS"] = "1"
    torch.set_num_threads(max(1, threads))


def embed_target(store: Store, rows: Rows, out: tuple, threads: int, batch_size: int) -> dict:
    started = time.monotonic()
    set_threads(threads)
    texts = read_rows(store, rows)
    if not texts:
        raise JobFailed("empty_corpus", "the target has no non-empty documents")
    emb = Encoder(device=pick_device(), batch_size=batch_size).encode(texts)
    save_array(store, emb, *out)
    seconds = time.monotonic() - started
    return {"docs": len(texts), "seconds": round(seconds, 2), "docs_per_s": round(len(texts) / seconds, 1),
            "node": node_id()}


@ray.remote
class EmbeddingScorer:
    """Loads the encoder once, holds the target's embeddings, and scores shard after shard. Every
    answer carries `loads`, the encoders built in this actor's process: 1 unless it reloads."""

    def __init__(self, store_root: str, target: np.ndarray, k: int, threads: int, batch_size: int, index: int):
        set_threads(threads)
        self.store, self.target, self.k, self.index = Store(store_root), target, k, index
        self.encoder = Encoder(device=pick_device(), batch_size=batch_size)

    def _similarities(self, texts: list) -> dict[str, np.ndarray]:
        emb = self.encoder.encode(texts)
        return {"centroid": centroid_similarity(emb, self.target), "knn": knn_similarity(emb, self.target, self.k)}

    def _info(self, rows: int, started: float) -> dict:
        return {"rows": rows, "seconds": time.monotonic() - started, "loads": loads(), "actor": self.index,
                "device": str(self.encoder.device), "node": node_id(), "cpu_s": actor_cpu(self)}

    def score_rows(self, shard: int, parts: tuple, similarity: str, allowed: np.ndarray | None, first: int = 0,
                   end: int | None = None, out: tuple | None = None) -> dict:
        """The score table of rows [first, end) of a shard: written to `out` (a whole shard), or
        returned for the driver to join with the shard's other row ranges. Only the rows `allowed`
        (the shard's mask, None: all) are embedded; the others, and empty ones, have no score."""
        started = time.monotonic()
        t = self.store.read_parquet(*parts, columns=["id", "text", "source"])
        end = t.num_rows if end is None else end
        t = t.slice(first, end - first)
        keep = ~unscored(t["text"], None if allowed is None else allowed[first:end])
        sims = {}
        for name, v in self._similarities(t["text"].filter(pa.array(keep)).to_pylist()).items():
            sims[name] = np.full(t.num_rows, np.nan, dtype=v.dtype)
            sims[name][keep] = v
        table = score_part(t["id"], shard, t["source"], word_counts(t["text"]), sims[similarity],
                           row=np.arange(first, first + t.num_rows, dtype=np.int64), **sims)
        if out is not None:
            self.store.write_parquet(table, *out)
            return self._info(t.num_rows, started)
        return {**self._info(t.num_rows, started), "table": table}

    def sample_similarities(self, shard: int, parts: tuple, rows: list[int]) -> dict:
        started = time.monotonic()
        texts = self.store.read_parquet(*parts, columns=["text"])["text"].take(rows)
        sims = self._similarities(texts.to_pylist())
        table = pa.table({"shard": pa.array(np.full(len(rows), shard, np.int32)), "row": pa.array(rows, pa.int64()),
                          "empty": pa.array(empty_mask(texts)), **sims})
        return {**self._info(len(rows), started), "table": table}


def scorers_wanted(ctx: JobContext, spec: EmbeddingSpec) -> int:
    """Encoder actors for the job: `actors`, else one per GPU, else one per CPU (one thread each)."""
    return spec.actors or cluster_gpus() or max(1, cluster_cpus() // ctx.threads("score"))


def on_scorers(ctx: JobContext, spec: EmbeddingSpec, target: np.ndarray, calls: list[tuple],
               unit: str) -> tuple[dict, dict]:
    """Run each (key, out, size, call) on a pool of EmbeddingScorer actors, `call(actor)` starting
    it (round robin): no more actors than calls. Returns the results by key and the stage's figures."""
    if not calls:
        return {}, {"actors": 0}
    started = time.monotonic()
    threads = ctx.threads("score")
    n = min(scorers_wanted(ctx, spec), len(calls))
    matrix = ray.put(target)  # once: every actor gets the same object
    actors = [EmbeddingScorer.options(**ctx.actor_options("score")).remote(
        ctx.store.root, matrix, spec.k, threads, spec.batch_size, i) for i in range(n)]
    tasks = [Task(out=out, key=key, size=size, submit=lambda a=actors[i % n], call=call: call(a))
             for i, (key, out, size, call) in enumerate(calls)]
    try:
        results = ctx.run_tasks("score", tasks, unit=unit)
    finally:
        for a in actors:
            ray.kill(a)
    done = [r for r in results.values() if r]
    loads: dict[int, int] = {}
    for r in done:
        loads[r["actor"]] = max(loads.get(r["actor"], 0), r["loads"])
    seconds, docs = time.monotonic() - started, sum(r["rows"] for r in done)
    return results, {"actors": n, "actors_used": len(loads), "encoder_loads": sum(loads.values()),
                     "threads_per_actor": threads, "devices": sorted({r["device"] for r in done}),
                     "tasks": len(tasks), "documents": docs, "seconds": round(seconds, 2),
                     "docs_per_s": round(docs / seconds, 1) if docs and seconds > 0 else None}


def ensure_target(ctx: JobContext, spec: EmbeddingSpec) -> tuple[np.ndarray, dict]:
    out = layout.job_file(ctx.job_id, "target_embeddings")
    rows = sample_rows(ctx.corpus_shards(spec.target), ctx.corpus_shard_sizes(spec.target), spec.max_target_docs,
                       spec.seed)
    info = ctx.run_one("embed_target", embed_target, rows, out, ctx.threads("embed_target"), spec.batch_size,
                       out=out, unit="tasks")
    matrix = load_array(ctx.store, *out)
    return matrix, {"docs": len(matrix), **({k: info[k] for k in ("seconds", "docs_per_s")} if info else {})}


def embed_pool(ctx: JobContext, spec: EmbeddingSpec, target: np.ndarray, restricted: Restriction) -> dict:
    """Every shard of the pool embedded and scored, the documents `restricted` allows (resumable:
    finished parts are skipped). With
    fewer unfinished shards than actors, shards are cut into row ranges (as CoLoR-Filter's scoring
    cuts them) so that every actor works; a cut shard's ranges are joined into its one part."""
    counts = ctx.corpus_shard_sizes(spec.pool)
    todo = [(s, p) for s, p in ctx.corpus_shards(spec.pool) if not ctx.store.exists(*layout.score_part(ctx.job_id, s))]
    calls = []
    for s, p, a, b in score_pieces(todo, counts, scorers_wanted(ctx, spec)):
        if (a, b) == (0, counts.get(s, 0)):  # a whole shard writes its own part
            out = layout.score_part(ctx.job_id, s)
            calls.append(((s, a), out, 1, lambda actor, s=s, p=p, out=out: actor.score_rows.remote(
                s, p, spec.similarity, restricted.allowed(s), out=out)))
        else:
            calls.append(((s, a), None, 1, lambda actor, s=s, p=p, a=a, b=b: actor.score_rows.remote(
                s, p, spec.similarity, restricted.allowed(s), a, b)))
    results, figures = on_scorers(ctx, spec, target, calls, "pieces")
    cut = sorted({key[0] for key, out, _, _ in calls if out is None})
    for s in cut:
        pieces = sorted((key[1], r["table"]) for key, r in results.items() if key[0] == s)
        ctx.store.write_parquet(pa.concat_tables([t for _, t in pieces]), *layout.score_part(ctx.job_id, s))
    return {"path": "full", "embedding": {**figures, "cut_shards": len(cut)}}


def betr_labels(ctx: JobContext, spec: EmbeddingSpec, target: np.ndarray,
                restricted: Restriction) -> tuple[Rows, Rows, dict]:
    """The sample's similarities (stored once), and its top `positive_fraction` by the chosen
    similarity as positives, the rest as negatives; the sample is drawn from what `restricted` allows."""
    out = layout.job_file(ctx.job_id, "betr_sample")
    figures: dict = {"resumed": True}
    if not ctx.store.exists(*out):
        rows = sample_rows(ctx.corpus_shards(spec.pool), restricted.sizes, spec.betr.sample, spec.seed, restricted)
        shard_of = {p: s for s, p in ctx.corpus_shards(spec.pool)}
        calls = [
            (shard_of[p], None, len(r), lambda a, p=p, r=r: a.sample_similarities.remote(shard_of[p], p, r))
            for p, r in rows]
        results, figures = on_scorers(ctx, spec, target, calls, "documents")
        ctx.store.write_parquet(pa.concat_tables([results[k]["table"] for k in sorted(results)]), *out)
    t = ctx.store.read_parquet(*out)
    keep = ~t["empty"].to_numpy(zero_copy_only=False)
    shard, row, sim = (t[c].to_numpy()[keep] for c in ("shard", "row", spec.similarity))
    n_pos = max(1, round(spec.betr.positive_fraction * len(sim)))
    positive = np.zeros(len(sim), bool)
    positive[np.argsort(-sim, kind="stable")[:n_pos]] = True
    parts = dict(ctx.corpus_shards(spec.pool))

    def grouped(mask: np.ndarray) -> Rows:
        return [(parts[int(s)], sorted(row[mask & (shard == s)].tolist())) for s in np.unique(shard[mask])]

    threshold = float(sim[positive].min()) if len(sim) else None
    return grouped(positive), grouped(~positive), {
        "sampled": int(len(t)), "embedded_non_empty": int(len(sim)), "positives": int(n_pos),
        "positive_threshold": threshold, "embedding": figures}


def betr_scores(ctx: JobContext, spec: EmbeddingSpec, target: np.ndarray, restricted: Restriction) -> dict:
    positives, negatives, sample = betr_labels(ctx, spec, target, restricted)
    report = ensure_fasttext(ctx, "train", positives, negatives, spec.betr, spec.seed)
    return {"path": "betr", "sample": sample, "classifier": report,
            "classify": fasttext_scores_into(ctx, "classify", spec.pool, restricted)}


def run_embedding(ctx: JobContext, spec: EmbeddingSpec) -> dict:
    ctx.corpus(spec.pool)
    ctx.corpus(spec.target)
    pool = restriction(ctx, spec.pool, spec.restrict)
    target, target_info = ensure_target(ctx, spec)
    scoring = betr_scores(ctx, spec, target, pool) if spec.betr else embed_pool(ctx, spec, target, pool)
    score = ("P(similar) under a fastText classifier fitted to a sample's similarities" if spec.betr
             else f"{spec.similarity} cosine similarity to the target")
    result = finish_selection(ctx, "embedding", spec.pool, spec.select, spec.mode, restricted=pool, meta={
        "score": score, "similarity": spec.similarity, "k": spec.k if spec.similarity == "knn" else None,
        "encoder": "all-MiniLM-L6-v2", "max_tokens": MAX_TOKENS})
    result["summary"].update(path=scoring.pop("path"), target=target_info, scoring=scoring)
    return result


KINDS = [
    JobKind("embedding", EmbeddingSpec, run_embedding,
            "similarity of sentence embeddings (all-MiniLM-L6-v2) to the target; optionally BETR's sample + classifier",
            stages={"embed_target": TRAINING, "score": SCORER, "train": CPU_TRAINING, "classify": SHARD_TASK,
                    "select": BOOKKEEPING},
            skip={"train": lambda s: s.betr is None, "classify": lambda s: s.betr is None}),
]
