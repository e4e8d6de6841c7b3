"""Model-based kinds: `train_model`, `score`, `color_filter` (docs/methods.md §1) and `evaluate`.

Training runs as one Ray task per model (progress in tokens through a ProgressBoard); scoring runs
on LossScorer actors that load the models once and stream shards through them. Every product is
stored under an id derived from the job, so a restarted job reuses trained models and finished
score parts.
"""
from __future__ import annotations

import json
import math

import numpy as np
import ray
import torch
from pydantic import Field, model_validator

from scoring.lm_loss import tokenize_documents
from scoring.tokenizer import eos_id, train_tokenizer
from scoring.train import finetune, validation_loss
from storage import layout
from storage.catalog import NotFound
from storage.fs import Store
from workers.driver import lifecycle
from workers.driver.engine import JobContext, JobFailed, Task, derived_id
from workers.jobs.ingest import manifest_corpus
from workers.jobs.selection import finish_selection
from workers.kind import HALF_TRAINING, SCORER, TRAINING, JobKind
from workers.models import LossScorer, checkpoint_complete, load_for_scoring, read_texts, save_trained
from workers.runtime import cluster_cpus, cluster_gpus
from workers.specs import CorpusId, ManifestId, ModelId, StrictModel, TargetedSelection, exactly_one
from workers.training import FinetuneOptions, TrainOptions, train_config, train_from_scratch


class ScoreOptions(StrictModel):
    batch_tokens: int | None = Field(None, ge=64, description="tokens per forward batch; default: tuned per device")
    max_tokens_per_doc: int | None = Field(None, ge=2, description="score only a document's first tokens")


# -- training ------------------------------------------------------------------------------------

def _reporter(board):
    last = [0.0]

    def report(done, total):
        if done == total or done - last[0] >= total / 200:
            last[0] = done
            board.set.remote(done, total)
    return report


@ray.remote(max_retries=2)
def pretrain_task(store_root: str, opts: dict, shard_parts: list, model_id: str, board, threads: int) -> dict:
    torch.set_num_threads(max(1, threads))
    store = Store(store_root)
    o = TrainOptions.model_validate(opts)
    texts = read_texts(store, shard_parts, o.max_docs, o.seed)
    if not texts:
        raise JobFailed("empty_corpus", "the training corpus has no non-empty documents")
    tokenizer = train_tokenizer(texts, vocab_size=o.vocab_size)
    model, stats = train_from_scratch(tokenizer, texts, o, on_progress=_reporter(board))
    meta = {"preset": o.preset, "params": model.num_params(), "train_docs": len(texts),
            "train_tokens": stats["tokens"], "final_loss": stats["final_loss"],
            "tokens_per_s": stats["tokens_per_s"], "context": model.context}
    save_trained(store, model_id, model.cpu(), tokenizer, meta)
    return meta


@ray.remote(max_retries=2)
def finetune_task(store_root: str, opts: dict, init: dict, shard_parts: list, model_id: str, board, threads: int) -> dict:
    torch.set_num_threads(max(1, threads))
    store = Store(store_root)
    o = FinetuneOptions.model_validate(opts)
    if init["source"] != "trained":
        raise JobFailed("unsupported_model", "fine-tuning needs a model trained by Thresher")
    model, tokenizer, _ = load_for_scoring(store, init)
    texts = read_texts(store, shard_parts, None, o.seed)
    docs = tokenize_documents(tokenizer, texts, prepend_id=eos_id(tokenizer))
    stats = finetune(model, docs, train_config(o), on_progress=_reporter(board))
    meta = {"init_model": init["id"], "finetune_docs": len(docs), "finetune_tokens": stats["tokens"],
            "epochs": o.epochs, "final_loss": stats["final_loss"], "context": model.context}
    save_trained(store, model_id, model.cpu(), tokenizer, meta)
    return meta


def model_record(ctx: JobContext, model_id: str) -> dict:
    try:
        return ctx.catalog.get("models", model_id, ctx.tenant)
    except NotFound:
        raise JobFailed("not_found", f"model {model_id} does not exist") from None


def ensure_trained(ctx: JobContext, stage: str, role: str, name: str, corpus: str, task, *args) -> dict:
    """The job's model `role`: trained by `task` on `corpus` unless a resumed job finds its
    checkpoint complete, then registered (once) in the catalog."""
    model_id = derived_id("mdl", ctx.job_id, role)
    if not checkpoint_complete(ctx.store, model_id):
        parts = [p for _, p in ctx.corpus_shards(corpus)]
        ctx.run_long(stage, "tokens", lambda board: task.options(**ctx.options(stage)).remote(
            ctx.store.root, *args, parts, model_id, board, ctx.threads(stage)))
    meta = json.loads(ctx.store.read_bytes(*layout.model_meta(model_id)))
    return lifecycle.commit_trained_model(ctx.catalog, ctx.job, model_id, name, {**meta, "corpus": corpus})


def ensure_pretrained(ctx: JobContext, corpus: str, opts: TrainOptions, role: str, stage: str) -> dict:
    return ensure_trained(ctx, stage, role, f"{role} ({opts.preset}) of {ctx.job_id}", corpus, pretrain_task,
                          opts.model_dump())


def ensure_finetuned(ctx: JobContext, init: dict, corpus: str, opts: FinetuneOptions, role: str, stage: str) -> dict:
    return ensure_trained(ctx, stage, role, f"{role} of {ctx.job_id}", corpus, finetune_task, opts.model_dump(), init)


class TrainModelSpec(TrainOptions):
    corpus: CorpusId
    init_model: ModelId | None = Field(None, description="fine-tune this model instead of training from scratch")
    epochs: int = Field(1, ge=1, le=100, description="fine-tuning passes (with init_model)")
    warmup_steps: int = Field(20, ge=1, description="fine-tuning warm-up (with init_model)")


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

def score_shards(ctx: JobContext, corpus: str, records: list[dict], opts: ScoreOptions) -> None:
    """One LossScorer actor per GPU (or per few CPU cores); every shard scored once, resumable."""
    threads = ctx.threads("score")
    n_actors = cluster_gpus() or max(1, cluster_cpus() // threads)
    shards = ctx.corpus_shards(corpus)
    todo = [(s, p) for s, p in shards if not ctx.store.exists(*layout.score_part(ctx.job_id, s))]
    actors = [LossScorer.options(**ctx.actor_options("score")).remote(ctx.store.root, records, threads, opts.model_dump())
              for _ in range(min(n_actors, max(1, len(todo))))] if todo else []
    counts = ctx.corpus_shard_sizes(corpus)
    tasks = []
    for i, (s, p) in enumerate(shards):
        out = layout.score_part(ctx.job_id, s)
        tasks.append(Task(out=out, key=s, size=counts.get(s, 1),
                          submit=lambda s=s, p=p, out=out, i=i: actors[i % len(actors)].score_shard.remote(s, p, out)))
    try:
        ctx.run_tasks("score", tasks, unit="documents")
    finally:
        for a in actors:
            ray.kill(a)


class ScoreSpec(StrictModel):
    corpus: CorpusId
    model: ModelId
    options: ScoreOptions = ScoreOptions()


def run_score(ctx: JobContext, spec: ScoreSpec) -> dict:
    ctx.corpus(spec.corpus)
    score_shards(ctx, spec.corpus, [model_record(ctx, spec.model)], spec.options)
    # score = −loss: lower loss ranks first; nothing is selected by a plain scoring job.
    return finish_selection(ctx, "score", spec.corpus, None, "global", meta={"model": spec.model})


# -- CoLoR-Filter --------------------------------------------------------------------------------

class PriorSpec(StrictModel):
    model: ModelId | None = None
    train: TrainOptions | None = None

    @model_validator(mode="after")
    def _one(self):
        return exactly_one(self, "model", "train")


class ConditionalSpec(StrictModel):
    model: ModelId | None = None
    finetune: FinetuneOptions | None = None

    @model_validator(mode="after")
    def _one(self):
        return exactly_one(self, "model", "finetune")


class ColorFilterSpec(TargetedSelection):
    prior: PriorSpec = PriorSpec(train=TrainOptions())
    conditional: ConditionalSpec = ConditionalSpec(finetune=FinetuneOptions())
    scoring: ScoreOptions = ScoreOptions()


def run_color_filter(ctx: JobContext, spec: ColorFilterSpec) -> dict:
    ctx.corpus(spec.pool)
    ctx.corpus(spec.target)
    if spec.prior.model:
        prior = model_record(ctx, spec.prior.model)
    else:
        prior = ensure_pretrained(ctx, spec.pool, spec.prior.train, "prior", "train_prior")
    if spec.conditional.model:
        cond = model_record(ctx, spec.conditional.model)
    else:
        cond = ensure_finetuned(ctx, prior, spec.target, spec.conditional.finetune, "conditional", "finetune")
    score_shards(ctx, spec.pool, [prior, cond], spec.scoring)
    result = finish_selection(ctx, "color_filter", spec.pool, spec.select, spec.mode,
                              meta={"prior_model": prior["id"], "conditional_model": cond["id"]})
    result["model_id"] = cond["id"]
    return result


# -- evaluate ------------------------------------------------------------------------------------

@ray.remote(max_retries=2)
def proxy_task(store_root: str, train_parts: list, selected_only: bool, sample_seed: int | None,
               n_docs: int, tokenizer_parts: list, validation_parts: list, opts: dict, threads: int) -> dict:
    """Train a proxy from scratch on a document set and measure its validation loss."""
    torch.set_num_threads(max(1, threads))
    store = Store(store_root)
    o = TrainOptions.model_validate(opts)
    # One tokenizer for both proxies (trained on the pool): their losses are then comparable.
    tokenizer = train_tokenizer(read_texts(store, tokenizer_parts, o.max_docs, 0), vocab_size=o.vocab_size)
    texts = []
    for corpus_part, manifest_part in train_parts:
        docs = store.read_parquet(*corpus_part, columns=["text"])["text"]
        if selected_only:
            texts += [t for t, keep in zip(docs.to_pylist(), store.read_parquet(*manifest_part, columns=["selected"])["selected"].to_pylist()) if keep]
        else:
            texts += [t for t in docs.to_pylist() if t and t.strip()]
    if sample_seed is not None:
        pick = np.random.default_rng(sample_seed).choice(len(texts), size=min(n_docs, len(texts)), replace=False)
        texts = [texts[i] for i in sorted(pick)]
    model, stats = train_from_scratch(tokenizer, texts, o)
    val_texts = read_texts(store, validation_parts, None, 0)
    val = validation_loss(model, tokenize_documents(tokenizer, val_texts, prepend_id=eos_id(tokenizer)))
    return {"docs": len(texts), "train_tokens": stats["tokens"], "train_loss": stats["final_loss"],
            "validation_loss": val}


class EvaluateSpec(StrictModel):
    selection: ManifestId
    validation: CorpusId
    proxy: TrainOptions = TrainOptions()
    seed: int = 0


def run_evaluate(ctx: JobContext, spec: EvaluateSpec) -> dict:
    man = ctx.catalog.get("manifests", spec.selection, ctx.tenant)
    ctx.corpus(spec.validation)
    pool = manifest_corpus(ctx, spec.selection)
    if pool is None or man["num_selected"] == 0:
        raise JobFailed("empty_selection", f"manifest {spec.selection} selects no documents")
    pairs = [(p, layout.manifest_part(spec.selection, s)) for s, p in ctx.corpus_shards(pool)]
    pool_parts = [p for p, _ in pairs]
    val_parts = [p for _, p in ctx.corpus_shards(spec.validation)]
    opts, res, threads = spec.proxy.model_dump(), ctx.options("train_proxies"), ctx.threads("train_proxies")
    # The selection's proxy and a proxy on a random subset of equal size, trained side by side.
    arms = {"selection": (True, None), "random": (False, spec.seed)}
    tasks = [Task(out=None, key=arm, submit=lambda only=only, seed=seed: proxy_task.options(**res).remote(
        ctx.store.root, pairs, only, seed, man["num_selected"], pool_parts, val_parts, opts, threads))
        for arm, (only, seed) in arms.items()]
    out = ctx.run_tasks("train_proxies", tasks, unit="proxies")
    sel, rnd = out["selection"]["validation_loss"], out["random"]["validation_loss"]
    summary = {**out, "relative_gain": (rnd - sel) / rnd if rnd and math.isfinite(rnd) else None,
               "proxy": spec.proxy.preset, "token_budget": spec.proxy.tokens}
    return {"manifest_id": spec.selection, "summary": summary}


KINDS = [
    JobKind("train_model", TrainModelSpec, run_train_model, "train an auxiliary LM, or fine-tune one",
            stages={"train": TRAINING, "finetune": TRAINING}),
    JobKind("score", ScoreSpec, run_score, "per-document loss of a corpus under a model",
            stages={"score": SCORER}),
    JobKind("color_filter", ColorFilterSpec, run_color_filter,
            "CoLoR-Filter: select by conditional loss reduction (prior − conditional)",
            stages={"train_prior": TRAINING, "finetune": TRAINING, "score": SCORER}),
    JobKind("evaluate", EvaluateSpec, run_evaluate,
            "what a selection is worth: proxies trained on it and on a random subset of equal size",
            stages={"train_proxies": HALF_TRAINING}),
]
