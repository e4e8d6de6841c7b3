"""How Thresher trains its auxiliary models, once for every job kind that trains one: the options a
spec exposes and the one recipe for a model from scratch (train_model, CoLoR-Filter's prior,
`evaluate`'s proxies, Projektor's pilot proxies) or a fine-tune (CoLoR-Filter's conditional).

A model trained from scratch sees its documents each preceded by eos and concatenated into one
token stream, a GPT of the preset (with architecture overrides), and `tokens` of training.
A fine-tune with `holdout_fraction` keeps that share of its documents apart, evaluates the model on
them as it trains (and before), stops once they stop improving and keeps the best weights; one that
never improves is tried again at a lower learning rate.
"""
from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from scoring.device import pick_device
from scoring.gpt import GPT, GPTConfig, config_from_preset, param_count
from scoring.lm_loss import tokenize_documents
from scoring.tokenizer import eos_id
from scoring.train import EarlyStopping, TrainConfig, finetune, pretrain, validation_loss
from workers.specs import LimitExceeded, Seed, SpecLimits, StrictModel

Preset = Literal["tiny", "small", "base", "150m"]
# Tokens in one optimizer step (batch_size × sequence length): activations grow with it, and eight
# times the base preset's 16 × 512 is far more than a model of the sizes allowed here needs.
MAX_BATCH_TOKENS = 65_536
MAX_TRAIN_DOCS = 1_000_000  # documents a training holds in a worker's memory, with their tokens


class Architecture(StrictModel):
    n_layer: int | None = Field(None, ge=1, le=48)
    n_head: int | None = Field(None, ge=1, le=64)
    n_embd: int | None = Field(None, ge=16, le=8192)
    context: int | None = Field(None, ge=8, le=8192)


class TrainOptions(StrictModel):
    """Pretraining from scratch (defaults finish in about a minute on a laptop CPU)."""
    preset: Preset = "tiny"
    architecture: Architecture | None = None
    tokens: int = Field(1_000_000, ge=1_000, description=(
        "training budget in tokens (at most THRESHER_MAX_TRAIN_TOKENS)"))
    seq_len: int | None = Field(None, ge=8, le=8192, description="default: the model's context")
    lr: float = Field(1e-3, gt=0, le=1)
    batch_size: int = Field(16, ge=1, le=4096)
    vocab_size: int = Field(4096, ge=256, le=262_144)
    max_docs: int | None = Field(20_000, ge=1, le=MAX_TRAIN_DOCS, description="documents sampled from the corpus")
    seed: Seed = 0

    def model_config_for(self, vocab_size: int | None = None) -> GPTConfig:
        """The GPT this trains (with `vocab_size`, the tokenizer's, or at most the one asked for)."""
        arch = self.architecture.model_dump(exclude_none=True) if self.architecture else {}
        return config_from_preset(self.preset, vocab_size or self.vocab_size, **arch)

    @model_validator(mode="after")
    def _shape(self):
        cfg = self.model_config_for()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"architecture: n_embd {cfg.n_embd} is not a multiple of n_head {cfg.n_head}")
        step = self.batch_size * min(self.seq_len or cfg.context, cfg.context)
        if step > MAX_BATCH_TOKENS:
            raise ValueError(f"batch_size × sequence length is {step:,} tokens a step; at most {MAX_BATCH_TOKENS:,}")
        return self

    def check_limits(self, limits: SpecLimits, field: str) -> None:
        check_train_tokens(self.tokens, limits, f"{field}.tokens")
        check_model_params(param_count(self.model_config_for()), limits, f"{field}.architecture")


class FinetuneOptions(StrictModel):
    """Fine-tuning: a fresh optimizer, `epochs` passes over the documents (at most `max_tokens`),
    padding masked out; with `holdout_fraction` > 0, early stopping on the held-out documents."""
    epochs: int = Field(1, ge=1, le=100, description="passes over the documents (a maximum with early stopping)")
    max_tokens: int | None = Field(None, ge=1000, description=(
        "budget in trained tokens (default and at most: THRESHER_MAX_TRAIN_TOKENS)"))
    lr: float = Field(1e-3, gt=0, le=1)
    warmup_steps: int = Field(20, ge=1, le=10**9)
    batch_size: int = Field(8, ge=1, le=4096)
    holdout_fraction: float = Field(0.0, ge=0, lt=1, description="documents held out for early stopping")
    evals_per_epoch: int = Field(2, ge=1, le=100, description="held-out evaluations per pass")
    patience: int = Field(3, ge=1, le=100, description="evaluations without improvement before stopping")
    seed: Seed = 0

    def check_limits(self, limits: SpecLimits, field: str) -> None:
        check_train_tokens(self.max_tokens, limits, f"{field}.max_tokens")

    def within(self, limits: SpecLimits) -> "FinetuneOptions":
        """These options with the server's token budget when they set none (a budget of passes over
        a corpus is otherwise as large as the corpus)."""
        return self if self.max_tokens is not None else self.model_copy(update={"max_tokens": limits.max_train_tokens})


def check_train_tokens(tokens: int | None, limits: SpecLimits, field: str) -> None:
    if tokens is not None and tokens > limits.max_train_tokens:
        raise LimitExceeded(field, f"a training budget of {tokens:,} tokens is too large", limits.max_train_tokens,
                            "THRESHER_MAX_TRAIN_TOKENS")


def check_model_params(params: int, limits: SpecLimits, field: str) -> None:
    """A model of `params` parameters is refused above THRESHER_MAX_MODEL_PARAMS: training holds
    16 bytes a parameter (float32 weights, gradients and Adam's two moments), scoring 4."""
    if params > limits.max_model_params:
        raise LimitExceeded(field, f"the model has {params:,} parameters (about {16 * params / 2**30:.1f} GiB to "
                            f"train, {4 * params / 2**30:.1f} GiB to load)", limits.max_model_params,
                            "THRESHER_MAX_MODEL_PARAMS")


def train_config(opts: TrainOptions | FinetuneOptions) -> TrainConfig:
    if isinstance(opts, FinetuneOptions):
        return TrainConfig(lr=opts.lr, warmup_steps=opts.warmup_steps, batch_size=opts.batch_size,
                           epochs=opts.epochs, max_tokens=opts.max_tokens, seed=opts.seed)
    return TrainConfig(lr=opts.lr, batch_size=opts.batch_size, tokens=opts.tokens,
                       seq_len=opts.seq_len or 10**9, seed=opts.seed)


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """Documents each preceded by eos, concatenated: what a model from scratch trains on."""
    eos = eos_id(tokenizer)
    return np.fromiter((t for doc in tokenize_documents(tokenizer, texts, prepend_id=eos) for t in doc),
                       dtype=np.int64)


def train_from_scratch(tokenizer, texts: list[str], opts: TrainOptions, *, epochs: float | None = None,
                       max_tokens: int | None = None,
                       early_stopping: Callable[[torch.nn.Module], EarlyStopping] | None = None,
                       on_progress=None, stream: np.ndarray | None = None) -> tuple[GPT, dict]:
    """A GPT of `opts.preset` trained on `texts` for `opts.tokens` (or `epochs` passes over them,
    at most `max_tokens`).

    `early_stopping(model)` builds the rule that evaluates the model as it trains. The stats are
    pretrain's, plus `stream_tokens`, the length of the training stream (`stream`: already built)."""
    stream = token_stream(tokenizer, texts) if stream is None else stream
    if epochs is not None:
        tokens = max(1000, int(epochs * len(stream)))
        opts = opts.model_copy(update={"tokens": min(tokens, max_tokens) if max_tokens else tokens})
    torch.manual_seed(opts.seed)
    model = GPT(opts.model_config_for(tokenizer.get_vocab_size())).to(pick_device())
    rule = early_stopping(model) if early_stopping else None
    stats = pretrain(model, stream, train_config(opts), on_progress=on_progress, early_stopping=rule)
    return model, {**stats, "stream_tokens": int(len(stream))}


def split_holdout(docs: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): round(fraction · n) documents held out (seeded), at least one when
    fraction > 0, none when fewer than two documents are left to train on."""
    n_held = min(max(1, round(fraction * len(docs))), len(docs) - 2) if fraction > 0 else 0
    if n_held <= 0:
        return docs, []
    held = set(np.random.default_rng(seed).choice(len(docs), size=n_held, replace=False).tolist())
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


# A fine-tune that never lowers the held-out loss is tried again from the same start at a third of
# the learning rate, at most this many times: a fresh optimizer at the prior's peak rate can knock a
# well-trained prior out of its basin for longer than the patience (seen with a prior trained for
# one pass of its pool: lr 1e-3 never helped, 5e-4 and 3e-4 did).
LR_RETRIES, LR_RETRY_FACTOR = 2, 1 / 3


def finetune_docs(model, docs: list[list[int]], opts: FinetuneOptions, on_progress=None) -> dict:
    """Fine-tune `model` on token lists `docs`. With a holdout: the initial model and every
    1/evals_per_epoch of a pass are evaluated on the held-out documents, training stops after
    `patience` evaluations without improvement, and the best weights are kept; a fine-tune that never
    improved on the initial model is retried at a lower learning rate (LR_RETRIES), and the initial
    weights are kept when none helped. Stats are the last attempt's finetune stats plus `holdout_docs`,
    `initial_holdout_loss`, `holdout_loss` (the kept model's), `lr` and `attempts` (one per try)."""
    train, held = split_holdout(docs, opts.holdout_fraction, opts.seed)
    if not held:
        stats = finetune(model, train, train_config(opts), on_progress=on_progress)
        stats.update(train_docs=len(train), holdout_docs=0, lr=opts.lr, attempts=[])
        return stats
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    epoch_tokens = sum(max(0, len(d) - 1) for d in train)
    attempts, lr = [], opts.lr
    for _ in range(LR_RETRIES + 1):
        rule = EarlyStopping(evaluate=lambda: validation_loss(model, held),
                             every_tokens=max(1, epoch_tokens // opts.evals_per_epoch),
                             patience=opts.patience, at_start=True)
        stats = finetune(model, train, train_config(opts.model_copy(update={"lr": lr})), on_progress=on_progress,
                         early_stopping=rule)
        attempts.append({"lr": lr, "tokens": stats["tokens"], "best_tokens": stats["best_tokens"],
                         "holdout_loss": stats["best_eval"]})
        if stats["best_tokens"]:
            break
        model.load_state_dict(initial)
        lr *= LR_RETRY_FACTOR
    stats.update(train_docs=len(train), holdout_docs=len(held), lr=attempts[-1]["lr"], attempts=attempts,
                 initial_holdout_loss=stats["evaluations"][0][1], holdout_loss=stats["best_eval"],
                 stopped_early=stats["steps"] < stats["planned_steps"])
    return stats
