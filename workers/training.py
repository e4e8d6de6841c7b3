"""How Thresher trains its auxiliary models, once for every job kind that trains one: the options a
spec exposes and the one recipe for a model from scratch (train_model, CoLoR-Filter's prior,
`evaluate`'s proxies, Projektor's pilot proxies) or a fine-tune (CoLoR-Filter's conditional).

A model trained from scratch sees its documents each preceded by eos and concatenated into one
token stream, a GPT of the preset (with architecture overrides), and `tokens` of training.
"""
from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field

from scoring.device import pick_device
from scoring.gpt import GPT, config_from_preset
from scoring.lm_loss import tokenize_documents
from scoring.tokenizer import eos_id
from scoring.train import EarlyStopping, TrainConfig, pretrain
from workers.specs import StrictModel

Preset = Literal["tiny", "small", "base", "150m"]


class Architecture(StrictModel):
    n_layer: int | None = Field(None, ge=1, le=48)
    n_head: int | None = Field(None, ge=1, le=64)
    n_embd: int | None = Field(None, ge=16, le=8192)
    context: int | None = Field(None, ge=8, le=8192)


class TrainOptions(StrictModel):
    """Pretraining from scratch (defaults finish in about a minute on a laptop CPU)."""
    preset: Preset = "tiny"
    architecture: Architecture | None = None
    tokens: int = Field(1_000_000, ge=1_000, description="training budget in tokens")
    seq_len: int | None = Field(None, ge=8, description="default: the model's context")
    lr: float = Field(1e-3, gt=0, le=1)
    batch_size: int = Field(16, ge=1, le=4096)
    vocab_size: int = Field(4096, ge=256, le=262_144)
    max_docs: int | None = Field(20_000, ge=1, description="documents sampled from the corpus")
    seed: int = 0


class FinetuneOptions(StrictModel):
    """Fine-tuning: a fresh optimizer, `epochs` passes over the target, padding masked out."""
    epochs: int = Field(1, ge=1, le=100)
    lr: float = Field(1e-3, gt=0, le=1)
    warmup_steps: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1, le=4096)
    seed: int = 0


def train_config(opts: TrainOptions | FinetuneOptions) -> TrainConfig:
    if isinstance(opts, FinetuneOptions):
        return TrainConfig(lr=opts.lr, warmup_steps=opts.warmup_steps, batch_size=opts.batch_size,
                           epochs=opts.epochs, seed=opts.seed)
    return TrainConfig(lr=opts.lr, batch_size=opts.batch_size, tokens=opts.tokens,
                       seq_len=opts.seq_len or 10**9, seed=opts.seed)


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """Documents each preceded by eos, concatenated: what a model from scratch trains on."""
    eos = eos_id(tokenizer)
    return np.fromiter((t for doc in tokenize_documents(tokenizer, texts, prepend_id=eos) for t in doc),
                       dtype=np.int64)


def train_from_scratch(tokenizer, texts: list[str], opts: TrainOptions, *, epochs: float | None = None,
                       early_stopping: Callable[[torch.nn.Module], EarlyStopping] | None = None,
                       on_progress=None) -> tuple[GPT, dict]:
    """A GPT of `opts.preset` trained on `texts` for `opts.tokens` (or `epochs` passes over them).

    `early_stopping(model)` builds the rule that evaluates the model as it trains. The stats are
    pretrain's, plus `stream_tokens`, the length of the training stream."""
    stream = token_stream(tokenizer, texts)
    if epochs is not None:
        opts = opts.model_copy(update={"tokens": max(1000, int(epochs * len(stream)))})
    torch.manual_seed(opts.seed)
    arch = opts.architecture.model_dump(exclude_none=True) if opts.architecture else {}
    model = GPT(config_from_preset(opts.preset, tokenizer.get_vocab_size(), **arch)).to(pick_device())
    rule = early_stopping(model) if early_stopping else None
    stats = pretrain(model, stream, train_config(opts), on_progress=on_progress, early_stopping=rule)
    return model, {**stats, "stream_tokens": int(len(stream))}
