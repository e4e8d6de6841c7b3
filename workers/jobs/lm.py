"""Model-based kinds: `train_model`, `score`, `color_filter` (docs/methods.md §1) and `evaluate`.

Training runs as one Ray task per model (progress in tokens through a ProgressBoard); scoring runs
on LossScorer actors that load the models once and stream shards through them. Every product is
stored under an id derived from the job, so a restarted job reuses trained models and finished
score parts.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from pydantic import Field, model_validator

from scoring.checkpoint import tokenizers_form
from scoring.lm_loss import tokenize_documents
from scoring.ngrams import overlap
from scoring.tokenizer import eos_id, train_tokenizer
from scoring.train import validation_loss
from storage import layout
from storage.fs import Store
from storage.manifests import (manifest_corpus, manifest_files, overlap_with_top, score_distribution,
                               selection_overlap)
from workers.driver import lifecycle
from workers.driver.engine import JobContext, JobFailed, Task, derived_id, progress_reporter, stop_when_gone
from workers.jobs.common import empty_mask, finish_selection, model_record, score_pieces
from workers.jobs.restrict import Restriction, restriction
from workers.jobs.selection import DsirSpec, dsir_scores_into
from workers.kind import BOOKKEEPING, HALF_TRAINING, SCORER, SHARD_TASK, TRAINING, JobKind
from workers.models import LossScorer, checkpoint_complete, load_for_scoring, read_texts, save_trained
from workers.runtime import cluster_cpus, cluster_gpus, measured
from workers.specs import (MAX_COUNT, CorpusId, ManifestId, ModelId, Restricted, Seed, StrictModel,
                           TargetedSelection, exactly_one)
from workers.training import FinetuneOptions, TrainOptions, finetune_docs, token_stream, train_from_scratch


class ScoreOptions(StrictModel):
    # A batch materialises up to batch_tokens × vocabulary logits: 262,144 tokens is 4× a GPU's default.
    batch_tokens: int | None = Field(None, ge=64, le=262_144, description="tokens per forward batch; default: tuned per device")
    max_tokens_per_doc: int | None = Field(None, ge=2, le=MAX_COUNT, description="score only a document's first tokens")


# -- training ------------------------------------------------------------------------------------

# The prior's default budget (docs/methods.md §1): a fraction of the pool's tokens, within bounds, so a
# small pool does not pay for a million tokens and the prior sees each pool token about once at most.
AUTO_PRIOR_MIN_TOKENS, AUTO_PRIOR_MAX_TOKENS = 100_000, 1_000_000


class PriorTrainOptions(TrainOptions):
    """TrainOptions whose `tokens` default to `pool_fraction` of the pool's tokens, within bounds."""
    tokens: int | None = Field(None, ge=1_000, description=(
        f"training budget in tokens; default: pool_fraction × the pool's tokens, within "
        f"[{AUTO_PRIOR_MIN_TOKENS:,}, {AUTO_PRIOR_MAX_TOKENS:,}]"))
    pool_fraction: float = Field(0.5, gt=0, le=100, description="the default budget as a fraction of the pool's tokens")


def prior_budget(opts: PriorTrainOptions, stream_tokens: int, sample_docs: int, corpus_docs: int) -> dict:
    """The tokens the prior trains for, and why: given, or pool_fraction × the pool's tokens
    (estimated from the training sample's token stream) within the bounds."""
    if opts.tokens is not None:
        return {"tokens": opts.tokens, "rule": "given"}
    pool_tokens = stream_tokens * max(1, corpus_docs) / max(1, sample_docs)
    tokens = int(min(AUTO_PRIOR_MAX_TOKENS, max(AUTO_PRIOR_MIN_TOKENS, opts.pool_fraction * pool_tokens)))
    return {"tokens": tokens, "pool_tokens_estimate": int(pool_tokens), "rule": (
        f"{opts.pool_fraction} × the pool's ~{int(pool_tokens):,} tokens, within "
        f"[{AUTO_PRIOR_MIN_TOKENS:,}, {AUTO_PRIOR_MAX_TOKENS:,}]")}


@ray.remote(max_retries=2)
@measured
def pretrain_task(store_root: str, opts: dict, corpus_docs: int, shard_parts: list, model_id: str, board,
                  threads: int) -> dict:
    torch.set_num_threads(max(1, threads))
    store = Store(store_root)
    o = PriorTrainOptions.model_validate(opts)
    texts = read_texts(store, shard_parts, o.max_docs, o.seed)
    if not texts:
        raise JobFailed("empty_corpus", "the training corpus has no non-empty documents")
    tokenizer = train_tokenizer(texts, vocab_size=o.vocab_size)
    stream = token_stream(tokenizer, texts)
    budget = prior_budget(o, len(stream), len(texts), corpus_docs)
    board.set.remote(0, budget["tokens"])
    plain = TrainOptions.model_validate({**o.model_dump(exclude={"pool_fraction"}), "tokens": budget["tokens"]})
    model, stats = train_from_scratch(tokenizer, texts, plain, stream=stream, on_progress=progress_reporter(board))
    meta = {"preset": o.preset, "params": model.num_params(), "train_docs": len(texts),
            "train_tokens": stats["tokens"], "final_loss": stats["final_loss"], "budget": budget,
            "tokens_per_s": stats["tokens_per_s"], "seconds": stats["seconds"], "context": model.context}
    save_trained(store, model_id, model.cpu(), tokenizer, meta)
    return meta


@ray.remote(max_retries=2)
@measured
def finetune_task(store_root: str, opts: dict, init: dict, shard_parts: list, model_id: str, board, threads: int) -> dict:
    torch.set_num_threads(max(1, threads))
    store = Store(store_root)
    o = FinetuneOptions.model_validate(opts)
    # A registered Hugging Face model is fine-tuned like ours, on its own tokens (the prepend its
    # scoring uses), and stored as a trained model in its own format (scoring.checkpoint.save_model).
    model, tokenizer, prepend = load_for_scoring(store, init)
    try:
        tokenizers_form(tokenizer)
    except ValueError as e:
        raise JobFailed("unsupported_model", f"cannot fine-tune model {init['id']}: {e}") from None
    texts = read_texts(store, shard_parts, None, o.seed)
    docs = tokenize_documents(tokenizer, texts, prepend_id=prepend)
    stats = finetune_docs(model, docs, o, on_progress=progress_reporter(board))
    meta = {"init_model": init["id"], "finetune_docs": stats["train_docs"], "finetune_tokens": stats["tokens"],
            "max_epochs": o.epochs, "budget_tokens": stats["planned_tokens"], "final_loss": stats["final_loss"],
            "seconds": stats["seconds"], "context": model.context}
    if stats["holdout_docs"]:
        meta.update(holdout_docs=stats["holdout_docs"], initial_holdout_loss=stats["initial_holdout_loss"],
                    holdout_loss=stats["holdout_loss"], best_tokens=stats["best_tokens"],
                    stopped_early=stats["stopped_early"], evaluations=stats["evaluations"],
                    lr=stats["lr"], attempts=stats["attempts"])
    save_trained(store, model_id, model.cpu(), tokenizer, meta)
    return meta


def ensure_trained(ctx: JobContext, stage: str, role: str, name: str, corpus: str, task, *args,
                   estimate: float = 1) -> dict:
    """The job's model `role`: trained by `task` on `corpus` unless a resumed job finds its
    checkpoint complete, then registered (once) in the catalog. `estimate`: tokens to train, shown
    until the task knows its budget."""
    model_id = derived_id("mdl", ctx.job_id, role)
    if not checkpoint_complete(ctx.store, model_id):
        parts = [p for _, p in ctx.corpus_shards(corpus)]
        ctx.run_long(stage, "tokens", lambda board: task.options(**ctx.options(stage)).remote(
            ctx.store.root, *args, parts, model_id, board, ctx.threads(stage)), total=estimate)
    meta = json.loads(ctx.store.read_bytes(*layout.model_meta(model_id)))
    return lifecycle.commit_trained_model(ctx.catalog, ctx.job, model_id, name, {**meta, "corpus": corpus})


BYTES_PER_TOKEN = 4  # a rough guide for progress estimates only


def corpus_tokens_estimate(ctx: JobContext, corpus: str) -> int:
    return max(1, int(ctx.corpus(corpus).get("num_bytes") or 0) // BYTES_PER_TOKEN)


def ensure_pretrained(ctx: JobContext, corpus: str, opts: TrainOptions, role: str, stage: str) -> dict:
    rec = ctx.corpus(corpus)
    docs = max(1, (rec.get("num_docs") or 0) - (rec.get("num_empty") or 0))
    prior = PriorTrainOptions.model_validate(opts.model_dump())
    estimate = prior_budget(prior, corpus_tokens_estimate(ctx, corpus), docs, docs)["tokens"]
    return ensure_trained(ctx, stage, role, f"{role} ({opts.preset}) of {ctx.job_id}", corpus, pretrain_task,
                          prior.model_dump(), docs, estimate=estimate)


def ensure_finetuned(ctx: JobContext, init: dict, corpus: str, opts: FinetuneOptions, role: str, stage: str) -> dict:
    opts = opts.within(ctx.config.limits)
    estimate = opts.epochs * corpus_tokens_estimate(ctx, corpus) * (1 - opts.holdout_fraction)
    if opts.max_tokens:
        estimate = min(estimate, opts.max_tokens)
    return ensure_trained(ctx, stage, role, f"{role} of {ctx.job_id}", corpus, finetune_task,
                          opts.model_dump(), init, estimate=max(1, int(estimate)))


class TrainModelSpec(TrainOptions):
    corpus: CorpusId
    init_model: ModelId | None = Field(None, description="fine-tune this model instead of training from scratch")
    epochs: int = Field(1, ge=1, le=100, description="fine-tuning passes (with init_model)")
    warmup_steps: int = Field(20, ge=1, le=10**9, description="fine-tuning warm-up (with init_model)")


def run_train_model(ctx: JobContext, spec: TrainModelSpec) -> dict:
    ctx.corpus(spec.corpus)
    if spec.init_model:
        init = model_record(ctx, spec.init_model)
        ft = FinetuneOptions(epochs=spec.epochs, lr=spec.lr, warmup_steps=spec.warmup_steps,
                             batch_size=spec.batch_size, seed=spec.seed)
        rec = ensure_finetuned(ctx, init, spec.corpus, ft, "model", "finetune")
    else:
        opts = TrainOptions.model_validate(spec.model_dump(include=set(TrainOptions.model_fields)))
        rec = ensure_pretrained(ctx, spec.corpus, opts, "model", "train")
    return {"model_id": rec["id"], "summary": rec["meta"]}


# -- scoring -------------------------------------------------------------------------------------

def score_shards(ctx: JobContext, corpus: str, records: list[dict], opts: ScoreOptions,
                 restricted: Restriction | None = None) -> dict:
    """Score every shard of `corpus` once (resumable) on LossScorer actors: one per GPU, or one
    single-threaded actor per CPU of the cluster. With fewer unfinished shards than actors, shards
    are cut into row ranges scored as separate tasks and joined into the shard's one score part.
    Documents `restricted` excludes are not scored. Returns the stage's figures (actors, actors
    that scored, pieces, tokens, seconds, dtype)."""
    restricted = restricted or Restriction()
    started = time.monotonic()
    threads = ctx.threads("score")
    n_actors = cluster_gpus() or max(1, cluster_cpus() // threads)
    counts = ctx.corpus_shard_sizes(corpus)
    todo = [(s, p) for s, p in ctx.corpus_shards(corpus) if not ctx.store.exists(*layout.score_part(ctx.job_id, s))]
    pieces = score_pieces(todo, counts, n_actors)
    split = {s for s, _, a, b in pieces if (a, b) != (0, counts.get(s, 0))}
    actors = [LossScorer.options(**ctx.actor_options("score")).remote(ctx.store.root, records, threads,
                                                                      opts.model_dump(), i)
              for i in range(min(n_actors, len(pieces)))]
    tasks = []
    for i, (s, p, a, b) in enumerate(pieces):
        actor = actors[i % len(actors)]
        if s in split:
            tasks.append(Task(out=None, key=(s, a), size=b - a,
                              submit=lambda actor=actor, s=s, p=p, a=a, b=b: actor.score_rows.remote(
                                  s, p, a, b, restricted.allowed(s))))
        else:
            out = layout.score_part(ctx.job_id, s)
            tasks.append(Task(out=out, key=(s, a), size=max(1, b - a),
                              submit=lambda actor=actor, s=s, p=p, out=out: actor.score_shard.remote(
                                  s, p, out, restricted.allowed(s))))
    try:
        results = ctx.run_tasks("score", tasks, unit="documents")
    finally:
        for a in actors:
            ray.kill(a)
    for s in sorted(split):  # the row ranges of a split shard become its one score part
        tables = [results[k]["table"] for k in sorted(k for k in results if k[0] == s)]
        ctx.store.write_parquet(pa.concat_tables(tables), *layout.score_part(ctx.job_id, s))
    done = [r for r in results.values() if r]
    seconds = time.monotonic() - started
    tokens = sum(r["tokens"] for r in done)
    return {"actors": len(actors), "actors_used": len({r["actor"] for r in done}),
            "threads_per_actor": threads if not cluster_gpus() else None, "tasks": len(tasks),
            "split_shards": len(split), "documents": sum(r["rows"] for r in done), "tokens": tokens,
            "models": len(records), "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "dtype": sorted({r["dtype"] for r in done})}


class ScoreSpec(StrictModel):
    corpus: CorpusId
    model: ModelId
    options: ScoreOptions = ScoreOptions()


def run_score(ctx: JobContext, spec: ScoreSpec) -> dict:
    ctx.corpus(spec.corpus)
    scoring = score_shards(ctx, spec.corpus, [model_record(ctx, spec.model)], spec.options)
    # score = −loss: lower loss ranks first; nothing is selected by a plain scoring job.
    result = finish_selection(ctx, "score", spec.corpus, None, "global", meta={"model": spec.model})
    result["summary"]["scoring"] = scoring
    return result


# -- CoLoR-Filter --------------------------------------------------------------------------------

class PriorSpec(StrictModel):
    model: ModelId | None = None
    train: PriorTrainOptions | None = None

    @model_validator(mode="after")
    def _one(self):
        return exactly_one(self, "model", "train")


class ConditionalFinetune(FinetuneOptions):
    """The conditional model's fine-tune: up to `epochs` passes over the target (at most
    `max_tokens`), stopped early on a held-out tenth of it, best weights kept (docs/methods.md §1)."""
    epochs: int = Field(20, ge=1, le=100, description="at most this many passes over the target")
    max_tokens: int | None = Field(2_000_000, ge=1000, description="at most this many trained tokens (and at most THRESHER_MAX_TRAIN_TOKENS)")
    holdout_fraction: float = Field(0.1, ge=0, lt=1, description="target documents held out for early stopping")


class ConditionalSpec(StrictModel):
    model: ModelId | None = None
    finetune: ConditionalFinetune | None = None

    @model_validator(mode="after")
    def _one(self):
        return exactly_one(self, "model", "finetune")


class ColorFilterSpec(TargetedSelection):
    prior: PriorSpec = PriorSpec(train=PriorTrainOptions())
    conditional: ConditionalSpec = ConditionalSpec(finetune=ConditionalFinetune())
    scoring: ScoreOptions = ScoreOptions()
    rank_by: Literal["evidence", "score"] = Field(
        "evidence", description=("evidence: the t-statistic of a document's per-token loss reduction "
                                 "(steady reductions over many tokens first); score: the mean reduction "
                                 "prior − conditional alone"))
    compare_with: Literal["dsir"] | None = Field(
        None, description="also score the pool with DSIR and report the overlap of the two selections")


def conditional_diagnostics(prior: dict, cond: dict) -> dict:
    """Did fine-tuning help? The prior's and the conditional's loss on the held-out target slice."""
    meta = cond["meta"]
    if "holdout_loss" not in meta:
        return {"note": "no held-out target slice (a given conditional model, or holdout_fraction 0)"}
    out = {"holdout_docs": meta["holdout_docs"], "prior_loss": meta["initial_holdout_loss"],
           "conditional_loss": meta["holdout_loss"], "trained_tokens": meta["finetune_tokens"],
           "best_at_tokens": meta["best_tokens"], "budget_tokens": meta["budget_tokens"],
           "stopped_early": meta["stopped_early"], "lr": meta.get("lr"), "attempts": meta.get("attempts")}
    out["loss_reduction"] = out["prior_loss"] - out["conditional_loss"]
    tried = ", ".join(f"{a['lr']:.2g}" for a in out["attempts"] or [])
    if not out["best_at_tokens"]:
        out["warning"] = (f"fine-tuning never lowered the held-out target loss (lr tried: {tried}): the conditional "
                          "model is the prior and every score is 0; give more target documents or a lower lr")
    elif len(out["attempts"] or []) > 1:
        out["note"] = f"fine-tuning helped only at a lower learning rate (lr tried: {tried})"
    return out


def compare_with_dsir(ctx: JobContext, spec: ColorFilterSpec, man_id: str, selected: int,
                      restricted: Restriction) -> dict:
    """DSIR scored inside this job (under a derived id, on the same restricted pool), its top
    documents by resampling key as many as CoLoR-Filter selected, and how many the two selections share."""
    into = derived_id("job", ctx.job_id, "dsir")
    dsir_scores_into(ctx, spec.pool, spec.target, into, DsirSpec.model_fields["buckets"].default,
                     DsirSpec.model_fields["seed"].default, stages=("dsir_fit", "dsir_score"), restricted=restricted)
    top = overlap_with_top(ctx.store, manifest_files(ctx.store, man_id), layout.score_parts(ctx.store, into),
                           "resample_key", selected)
    return {"method": "dsir", "sampling": "gumbel", "selected": selected, "overlap": top["overlap"],
            "overlap_fraction": top["overlap"] / selected if selected else None,
            "dsir_selected_by_source": top["selected_by_source"]}


def run_color_filter(ctx: JobContext, spec: ColorFilterSpec) -> dict:
    ctx.corpus(spec.pool)
    ctx.corpus(spec.target)
    pool = restriction(ctx, spec.pool, spec.restrict)
    if spec.prior.model:
        prior = model_record(ctx, spec.prior.model)
    else:
        prior = ensure_pretrained(ctx, spec.pool, spec.prior.train, "prior", "train_prior")
    if spec.conditional.model:
        cond = model_record(ctx, spec.conditional.model)
    else:
        cond = ensure_finetuned(ctx, prior, spec.target, spec.conditional.finetune, "conditional", "finetune")
    scoring = score_shards(ctx, spec.pool, [prior, cond], spec.scoring, pool)
    result = finish_selection(ctx, "color_filter", spec.pool, spec.select, spec.mode, key=spec.rank_by,
                              meta={"prior_model": prior["id"], "conditional_model": cond["id"],
                                    "rank_by": spec.rank_by}, restricted=pool)
    man_id, summary = result["manifest_id"], result["summary"]
    summary["models"] = {
        "prior": {k: prior["meta"].get(k) for k in ("preset", "params", "train_docs", "train_tokens", "budget",
                                                    "final_loss", "seconds")},
        "conditional": {k: cond["meta"].get(k) for k in ("finetune_docs", "finetune_tokens", "max_epochs",
                                                         "budget_tokens", "seconds")}}
    summary["target_holdout"] = conditional_diagnostics(prior, cond)
    summary["scoring"] = scoring
    summary["score_by_source"] = score_distribution(ctx.store, manifest_files(ctx.store, man_id))
    if spec.compare_with == "dsir":
        summary["compare_with"] = compare_with_dsir(ctx, spec, man_id, summary["num_selected"], pool)
    result["model_id"] = cond["id"]
    return result


# -- evaluate ------------------------------------------------------------------------------------

def random_subset(texts: list[str], seed: int, n_docs: int, chars: int | None = None) -> list[str]:
    """A uniform random subset of `texts` (seeded, in stored order): `n_docs` documents, or with
    `chars` the shortest prefix of a random order that holds at least `chars` characters of text."""
    rng = np.random.default_rng(seed)
    if chars is None:
        pick = rng.choice(len(texts), size=min(n_docs, len(texts)), replace=False)
    else:
        order = rng.permutation(len(texts))
        reached = np.cumsum([len(texts[i]) for i in order]) >= chars
        pick = order[:int(np.argmax(reached)) + 1 if reached.any() else len(order)]
    return [texts[i] for i in sorted(pick)]


def arm_texts(store: Store, train_parts: list, selected_only: bool, sample_seed: int | None,
              match: str) -> list[str]:
    """What one proxy trains on: the selected documents, or (`sample_seed`) a random subset of the
    pool's non-empty documents as large as the selection (`match`: in documents or characters).
    `train_parts`: per shard (corpus part, manifest part, allowed rows or None: a restricted pool)."""
    texts, selected_docs, selected_chars = [], 0, 0
    for corpus_part, manifest_part, allowed in train_parts:
        col = store.read_parquet(*corpus_part, columns=["text"])["text"]
        docs, blank = col.to_pylist(), empty_mask(col)
        keep = store.read_parquet(*manifest_part, columns=["selected"])["selected"].to_pylist()
        ok = [True] * len(docs) if allowed is None else allowed.tolist()
        selected = [t for t, k, a in zip(docs, keep, ok) if k and a]
        selected_docs, selected_chars = selected_docs + len(selected), selected_chars + sum(map(len, selected))
        texts += selected if selected_only else [t for t, a, b in zip(docs, ok, blank) if a and not b]
    if sample_seed is not None:
        texts = random_subset(texts, sample_seed, selected_docs, selected_chars if match == "characters" else None)
    return texts


@ray.remote(max_retries=2)
@measured
def proxy_task(store_root: str, train_parts: list, selected_only: bool, sample_seed: int | None,
               match: str, tokenizer_parts: list, validation_parts: list, opts: dict, threads: int,
               lifeline=None, out: tuple | None = None, job_id: str | None = None) -> dict:
    """Train a proxy from scratch on the selection, or on a random subset of the pool as large as the
    selection (`match`: in documents or characters), and measure its validation loss. Stops once
    the job's `lifeline` is gone. With `out`, its figures are also written there (with `job_id`):
    a random arm kept for later evaluations."""
    torch.set_num_threads(max(1, threads))
    store = Store(store_root)
    o = TrainOptions.model_validate(opts)
    # One tokenizer for both proxies (trained on the pool): their losses are then comparable.
    tokenizer = train_tokenizer(read_texts(store, tokenizer_parts, o.max_docs, 0), vocab_size=o.vocab_size)
    texts = arm_texts(store, train_parts, selected_only, sample_seed, match)
    model, stats = train_from_scratch(tokenizer, texts, o, on_progress=stop_when_gone(lifeline))
    val_texts = read_texts(store, validation_parts, None, 0)
    val = validation_loss(model, tokenize_documents(tokenizer, val_texts, prepend_id=eos_id(tokenizer)))
    result = {"docs": len(texts), "chars": sum(len(t) for t in texts), "train_tokens": stats["tokens"],
              "train_loss": stats["final_loss"], "validation_loss": val}
    if out is not None:
        store.write_bytes(json.dumps({**result, "job_id": job_id}).encode(), *out)
    return result


def selected_chars_task(store: Store, train_parts: list) -> int:
    """Characters of text in a selection (what a random arm matched in characters must hold);
    `train_parts`: per shard (corpus part, manifest part, allowed rows or None)."""
    total = 0
    for corpus_part, manifest_part, allowed in train_parts:
        docs = store.read_parquet(*corpus_part, columns=["text"])["text"]
        keep = store.read_parquet(*manifest_part, columns=["selected"])["selected"]
        if allowed is not None:   # a restricted pool: only the selected documents it allows
            keep = pc.and_(pc.fill_null(keep, False), pa.array(allowed))
        total += int(pc.sum(pc.utf8_length(docs.filter(keep))).as_py() or 0)
    return total


class ContaminationCheck(StrictModel):
    """How evaluate checks that the validation corpus did not leak into what the proxies train on."""
    n: int = Field(13, ge=3, le=64, description="words per n-gram compared with the validation corpus")
    max_fraction: float = Field(0.0, ge=0, le=1, description=(
        "the share of the selection's documents that may overlap the validation corpus (an exact copy or a "
        "matching n-gram) before the gain is flagged"))


class EvaluateSpec(Restricted):
    pool_field: ClassVar[str] = "selection"
    selection: ManifestId
    validation: CorpusId
    against: ManifestId | None = Field(None, description=(
        "another selection to compare with head to head instead of a random subset: proxies trained on "
        "both with the same seeds; the gain is the selection's over this one, with their overlap"))
    proxy: TrainOptions = TrainOptions()
    seed: Seed = 0
    repeats: int = Field(1, ge=1, le=16, description=(
        "proxy pairs, each with its own proxy seed and random subset: the gain's spread across them says "
        "how much of it is noise"))
    match: Literal["documents", "characters"] = Field("documents", description=(
        "what the random subset has as much of as the selection: documents, or characters of text (so "
        "a selection of longer documents is not credited for its volume alone)"))
    contamination: ContaminationCheck = ContaminationCheck()


# Bumped when a random arm's training changes: arms kept by an older version are not reused.
RANDOM_ARM_VERSION = 1


def random_arm_key(pool: str, validation: str, match: str, size: int, sample_seed: int, proxy: dict,
                   restrict: list[str] | tuple = ()) -> str:
    """What a random arm's proxy depends on, as a digest: the pool (its documents and the shared
    tokenizer) with its restriction (the evaluation pool's manifests: `restrict` and what the selection
    was built on), the validation set, the size matched (documents or characters), the subset's seed
    and the proxy's options with its seed. An unrestricted arm's key is as before restrictions."""
    what = {"v": RANDOM_ARM_VERSION, "pool": pool, "validation": validation, "match": match, "size": size,
            "sample_seed": sample_seed, "proxy": proxy}
    if restrict:
        what["restrict"] = list(restrict)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def selection_pool(ctx: JobContext, manifest_id: str, field: str) -> tuple[str, dict]:
    """(pool corpus, manifest record) of a selection with documents."""
    man = ctx.catalog.get("manifests", manifest_id, ctx.tenant)
    pool = manifest_corpus(ctx.store, manifest_id)
    if pool is None or not man["num_selected"]:
        raise JobFailed("empty_selection", f"{field}: manifest {manifest_id} selects no documents")
    ctx.corpus(pool)
    return pool, man


def selection_shards(ctx: JobContext, manifest_id: str, pool: str,
                     restricted: Restriction | None = None) -> list[tuple]:
    """[(corpus shard, manifest part, allowed rows or None)] of a selection over `pool`, the rows
    `restricted` allows (all without it)."""
    restricted = restricted or Restriction()
    return [(p, layout.manifest_part(manifest_id, s), restricted.allowed(s)) for s, p in ctx.corpus_shards(pool)]


def run_evaluate(ctx: JobContext, spec: EvaluateSpec) -> dict:
    ctx.corpus(spec.validation)
    pool, man = selection_pool(ctx, spec.selection, "spec.selection")
    restricted = evaluation_pool(ctx, spec, man, pool)
    pairs = selection_shards(ctx, spec.selection, pool, restricted)
    pool_parts = [p for p, _, _ in pairs]
    val_parts = [p for _, p in ctx.corpus_shards(spec.validation)]
    res, threads = ctx.options("train_proxies"), ctx.threads("train_proxies")
    if spec.against is not None:
        other_pool, _ = selection_pool(ctx, spec.against, "spec.against")
        # Over the same pool, the other selection is restricted like this one (the same cleaned pool).
        other = selection_shards(ctx, spec.against, other_pool, restricted if other_pool == pool else None)
    elif spec.match == "characters":
        size = ctx.run_one("measure", selected_chars_task, pairs)
    else:
        size = man["num_selected"]

    def proxy(train_parts, only, sample_seed, opts, out=None):
        return lambda: proxy_task.options(**res).remote(ctx.store.root, train_parts, only, sample_seed, spec.match,
                                                        pool_parts, val_parts, opts, threads, ctx.lifeline(),
                                                        out, ctx.job_id)
    # Per repeat r, the selection's proxy and a proxy on the other selection, or on a random subset of
    # equal size (documents or characters, `match`; subset seed seed + r), both from proxy seed
    # proxy.seed + r, side by side (one tokenizer, trained on the selection's pool). A random arm is
    # stored under a key of what it depends on: a task whose output exists is not run, so an arm an
    # earlier evaluation trained is read back instead of trained again.
    tasks = []
    for r in range(spec.repeats):
        opts = spec.proxy.model_copy(update={"seed": spec.proxy.seed + r}).model_dump()
        tasks.append(Task(out=None, key=("selection", r), submit=proxy(pairs, True, None, opts)))
        if spec.against is not None:
            tasks.append(Task(out=None, key=("against", r), submit=proxy(other, True, None, opts)))
        else:
            out = layout.random_arm(random_arm_key(pool, spec.validation, spec.match, size, spec.seed + r, opts,
                                                   restricted.built_on))
            tasks.append(Task(out=out, key=("random", r), submit=proxy(pairs, False, spec.seed + r, opts, out)))
    results = ctx.run_tasks("train_proxies", tasks, unit="proxies")
    reused = {}
    for t in tasks:
        if results[t.key] is None:  # kept from an earlier evaluation
            kept = json.loads(ctx.store.read_bytes(*t.out))
            reused[t.key[1]] = kept.pop("job_id")
            results[t.key] = kept
    summary = evaluation_summary(results, spec)
    summary["proxies_trained"] = len(tasks) - len(reused)
    if spec.against is not None:
        summary["overlap"] = selection_overlap(ctx.store, manifest_files(ctx.store, spec.selection),
                                               manifest_files(ctx.store, spec.against))
    else:
        summary["random_arm"] = random_arm_note(reused, spec.repeats)
    summary.update(restricted.summary())
    check_validity(ctx, spec, pairs, val_parts, summary)
    return {"manifest_id": spec.selection, "summary": summary}


def random_arm_note(reused: dict[int, str], repeats: int) -> str:
    """Where the random arm's proxies came from: trained by this job, or reused from which."""
    if not reused:
        return "trained"
    jobs = ", ".join(sorted(set(reused.values())))
    if len(reused) == repeats:
        return f"reused from job {jobs}"
    return (f"repeats {', '.join(str(r + 1) for r in sorted(reused))} reused from job {jobs}; "
            f"{repeats - len(reused)} trained")


def evaluation_summary(out: dict, spec: EvaluateSpec) -> dict:
    """`selection` and the arm it is compared with (`random`, or `against`): the first repeat's
    proxies, with `validation_loss` the mean over repeats; `relative_gain` (the selection's over the
    other arm) from those means. With repeats > 1 also each repeat's losses and gain, and the gain's
    standard error (the spread of the paired gains / √repeats)."""
    def gain(sel: float, rnd: float) -> float | None:
        return (rnd - sel) / rnd if rnd and math.isfinite(rnd) and math.isfinite(sel) else None

    base = "random" if spec.against is None else "against"
    arms = {arm: [out[(arm, r)] for r in range(spec.repeats)] for arm in ("selection", base)}
    summary = {arm: {**runs[0], "validation_loss": float(np.mean([x["validation_loss"] for x in runs]))}
               for arm, runs in arms.items()}
    summary.update(relative_gain=gain(summary["selection"]["validation_loss"], summary[base]["validation_loss"]),
                   compared_with="random" if spec.against is None else spec.against,
                   proxy=spec.proxy.preset, token_budget=spec.proxy.tokens, repeats=spec.repeats, match=spec.match)
    if spec.repeats > 1:
        gains = [gain(s["validation_loss"], r["validation_loss"]) for s, r in zip(arms["selection"], arms[base])]
        for arm, runs in arms.items():
            summary[arm]["validation_losses"] = [x["validation_loss"] for x in runs]
        summary["relative_gains"] = gains
        finite = [g for g in gains if g is not None]
        summary["relative_gain_se"] = (float(np.std(finite, ddof=1) / math.sqrt(len(finite)))
                                       if len(finite) > 1 else None)
    return summary


# -- evaluate: is the gain valid? ----------------------------------------------------------------

def evaluation_pool(ctx: JobContext, spec: EvaluateSpec, man: dict, pool: str) -> Restriction:
    """The pool both arms draw from: restricted by `spec.restrict` and by what the selection itself
    was built on, so that the random arm comes from the same cleaned pool as the selection."""
    built_on = (man.get("meta") or {}).get("built_on") or []
    ids = list(dict.fromkeys([*spec.restrict, *built_on]))
    return restriction(ctx, pool, ids)


def overlap_task(store: Store, arm: str, sample_seed: int | None, out: tuple | None, train_parts: list, match: str,
                 validation_parts: list, n: int) -> dict:
    """How many of one arm's documents (the `selection`'s, or a `random` subset's drawn with
    `sample_seed`) are exact copies of validation documents, or share an n-gram with one."""
    texts = arm_texts(store, train_parts, arm == "selection", sample_seed, match)
    exact, matching = overlap(texts, read_texts(store, validation_parts, None, 0), n)
    leaked = int((exact | (matching > 0)).sum())
    return {"docs": len(texts), "exact_docs": int(exact.sum()), "ngram_docs": int((matching > 0).sum()),
            "contaminated_docs": leaked, "fraction": leaked / len(texts) if texts else 0.0,
            "matching_ngrams": int(matching.sum())}


def check_validity(ctx: JobContext, spec: EvaluateSpec, pairs: list, val_parts: list, summary: dict) -> None:
    """Add to `summary` the overlap of the selection and of the (first) random arm with the validation
    corpus (`contamination`), and when the selection overlaps it past `contamination.max_fraction`,
    a warning and `relative_gain_flagged`: a leak inflates the gain (issue 29)."""
    c = spec.contamination
    arms = ctx.map_shards("check_overlap", overlap_task, [("selection", None), ("random", spec.seed)], pairs,
                          spec.match, val_parts, c.n, unit="arms")
    summary["contamination"] = {"n": c.n, "max_fraction": c.max_fraction, **arms}
    sel, rnd = arms["selection"], arms["random"]

    def said(a: dict) -> str:
        return (f"{a['contaminated_docs']:,} of {a['docs']:,} documents ({a['fraction']:.1%}: {a['exact_docs']:,} "
                f"exact copies, {a['ngram_docs']:,} with a matching {c.n}-gram)")
    flagged = sel["fraction"] > c.max_fraction
    summary["relative_gain_flagged"] = flagged
    warnings = summary.setdefault("warnings", [])
    if flagged:
        warnings.append(
            f"The selection overlaps the validation corpus {spec.validation}: {said(sel)}, against {said(rnd)} in "
            "the random arm. Its proxy was trained on validation text, so the relative gain is inflated by the "
            "leak. Decontaminate the pool against the validation corpus (kind decontaminate) and select again "
            "with restrict, or evaluate with restrict.")
    elif rnd["fraction"] > c.max_fraction:
        warnings.append(f"The random arm overlaps the validation corpus {spec.validation}: {said(rnd)}; the "
                        "random proxy was trained on validation text, so the gain is understated.")


KINDS = [
    JobKind("train_model", TrainModelSpec, run_train_model, "train an auxiliary LM, or fine-tune one",
            stages={"train": TRAINING, "finetune": TRAINING},
            skip={"train": lambda s: s.init_model is not None, "finetune": lambda s: s.init_model is None}),
    JobKind("score", ScoreSpec, run_score, "per-document loss of a corpus under a model",
            stages={"score": SCORER, "select": BOOKKEEPING}),
    JobKind("color_filter", ColorFilterSpec, run_color_filter,
            "CoLoR-Filter: select by conditional loss reduction (prior − conditional)",
            stages={"train_prior": TRAINING, "finetune": TRAINING, "score": SCORER, "select": BOOKKEEPING,
                    "dsir_fit": SHARD_TASK, "dsir_score": SHARD_TASK},
            skip={"train_prior": lambda s: s.prior.model is not None, "finetune": lambda s: s.conditional.model is not None,
                  "dsir_fit": lambda s: s.compare_with != "dsir", "dsir_score": lambda s: s.compare_with != "dsir"},
            up_to=frozenset({"finetune"})),
    JobKind("evaluate", EvaluateSpec, run_evaluate,
            "what a selection is worth: proxies trained on it and on a random subset of equal size, or on "
            "another selection (head to head)",
            stages={"measure": SHARD_TASK, "train_proxies": HALF_TRAINING, "check_overlap": SHARD_TASK},
            # Only a random arm matched in characters needs the selection's size measured.
            skip={"measure": lambda s: s.against is not None or s.match != "characters"}),
]
