"""Training the two auxiliary models of CoLoR-Filter.

`pretrain`: the prior model from scratch on a token stream (documents joined by eos), random
windows, AdamW, linear warm-up then cosine decay to `min_lr_frac` × peak, grad clipping.
`EarlyStopping` (pretrain only): evaluate a held-out metric every so many tokens, stop when it has
not improved for `patience` evaluations, and keep the best weights: the model's loss on that data
then measures the data, not how long it was trained (the projection job's proxies use it).
`finetune`: the conditional model, ONE pass over the target documents with a fresh optimizer and a
short warm-up; the padding of each batch is masked out of the loss (the reference code forgets this).
Defaults follow the paper (docs/methods.md §1): lr 1e-3, β = (0.9, 0.95), no weight decay, clip 1.0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from scoring.device import autocast, autocast_dtype
from scoring.lm_loss import IGNORE_INDEX, DocumentLossEngine, window_layout

ProgressFn = Callable[[int, int], None]


@dataclass
class TrainConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_frac: float = 0.05
    warmup_steps: int | None = None  # overrides warmup_frac; fine-tuning wants ~20–100 steps
    min_lr_frac: float = 0.1
    grad_clip: float = 1.0
    batch_size: int = 16  # sequences per step
    seq_len: int = 128  # pretraining window; fine-tuning windows are the model context
    tokens: int = 1_000_000  # pretraining budget (seen tokens)
    epochs: int = 1  # fine-tuning passes over the target documents
    seed: int = 0


@dataclass
class EarlyStopping:
    evaluate: Callable[[], float]  # lower is better; called with the model in eval mode
    every_tokens: int
    patience: int = 3

    def __post_init__(self):
        if self.every_tokens < 1 or self.patience < 1:
            raise ValueError("early stopping needs every_tokens >= 1 and patience >= 1")


class _EarlyStopper:
    """Runs EarlyStopping's evaluations inside the training loop; remembers the best weights."""

    def __init__(self, model: torch.nn.Module, rule: EarlyStopping):
        self.model, self.rule = model, rule
        self.next_at, self.history = rule.every_tokens, []  # history: (tokens_done, value) per evaluation
        self.best_index, self.best_state = None, None

    def evaluate(self, tokens_done: int) -> None:
        training = self.model.training
        self.model.eval()
        value = float(self.rule.evaluate())
        self.model.train(training)
        self.history.append((tokens_done, value))
        if value < (self.history[self.best_index][1] if self.best_index is not None else math.inf):
            self.best_index = len(self.history) - 1
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def should_stop(self, tokens_done: int) -> bool:
        if tokens_done < self.next_at:
            return False
        self.next_at = tokens_done + self.rule.every_tokens
        self.evaluate(tokens_done)
        since_best = len(self.history) - 1 - (self.best_index if self.best_index is not None else -1)
        return since_best >= self.rule.patience

    def finish(self, tokens_done: int) -> dict:
        if not self.history or self.history[-1][0] != tokens_done:
            self.evaluate(tokens_done)  # the end of the schedule counts too
        if self.best_index is None:  # every evaluation was NaN
            return {"best_eval": math.inf, "best_tokens": None, "evaluations": self.history}
        self.model.load_state_dict(self.best_state)
        best_tokens, best_eval = self.history[self.best_index]
        return {"best_eval": best_eval, "best_tokens": best_tokens, "evaluations": self.history}


def lr_at(step: int, total_steps: int, warmup_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up reaching the peak at step warmup_steps − 1, then cosine down to
    min_lr_frac × peak exactly at the last step (total_steps − 1)."""
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps)
    min_lr = cfg.lr * cfg.min_lr_frac
    return min_lr + (cfg.lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _warmup(cfg: TrainConfig, total_steps: int) -> int:
    steps = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_frac * total_steps)
    return min(max(1, steps), total_steps)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay (if any) on matrices and embeddings only, never on norms or biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def batch_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over the non-padding targets (IGNORE_INDEX marks padding), in float32."""
    logits = model(inputs)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _run_steps(model, cfg: TrainConfig, total_steps: int, warmup: int, next_batch, tokens_total: int, on_progress,
               stopper: _EarlyStopper | None = None):
    """The shared loop: schedule, autocast forward, backward, clip, step. Returns stats."""
    device = _device_of(model)
    dtype = autocast_dtype(device)
    optimizer = make_optimizer(model, cfg)
    model.train()
    losses, lrs, tokens_done, started = [], [], 0, time.perf_counter()
    for step in range(total_steps):
        lrs.append(lr_at(step, total_steps, warmup, cfg))
        for group in optimizer.param_groups:
            group["lr"] = lrs[-1]
        inputs, targets = next_batch(step)
        with autocast(device, dtype):
            loss = batch_loss(model, inputs.to(device), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        tokens_done += int((targets != IGNORE_INDEX).sum())
        if on_progress is not None:
            on_progress(tokens_done, tokens_total)
        if stopper is not None and stopper.should_stop(tokens_done):
            break
    model.eval()
    extra = stopper.finish(tokens_done) if stopper is not None else {}
    seconds = time.perf_counter() - started
    return {
        **extra,
        "steps": len(losses),
        "warmup_steps": warmup,
        "tokens": tokens_done,
        "seconds": seconds,
        "tokens_per_s": tokens_done / max(seconds, 1e-9),
        "losses": losses,
        "lrs": lrs,
        "final_loss": float(np.mean(losses[-max(1, len(losses) // 20) :])) if losses else float("nan"),
    }


def pretrain(model: torch.nn.Module, token_ids, cfg: TrainConfig, on_progress: ProgressFn | None = None,
             early_stopping: EarlyStopping | None = None) -> dict:
    """Train on random windows of `token_ids` (1-D, documents joined by eos) for cfg.tokens tokens,
    or until `early_stopping` says so (the learning-rate schedule still spans cfg.tokens)."""
    data = torch.as_tensor(np.asarray(token_ids), dtype=torch.long)
    seq_len = min(cfg.seq_len, model.context, len(data) - 1)
    if seq_len < 1:
        raise ValueError("need at least 2 tokens to pretrain on")
    tokens_per_step = cfg.batch_size * seq_len
    total_steps = max(1, cfg.tokens // tokens_per_step)
    torch.manual_seed(cfg.seed)  # dropout
    gen = torch.Generator().manual_seed(cfg.seed)
    cols = torch.arange(seq_len + 1)

    def next_batch(step):
        starts = torch.randint(0, len(data) - seq_len, (cfg.batch_size,), generator=gen)
        window = data[starts[:, None] + cols]
        return window[:, :-1], window[:, 1:]

    stopper = _EarlyStopper(model, early_stopping) if early_stopping is not None else None
    return _run_steps(model, cfg, total_steps, _warmup(cfg, total_steps), next_batch, total_steps * tokens_per_step,
                      on_progress, stopper)


def document_windows(documents: Sequence[Sequence[int]], context: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) of every window of every document, windowed as in the loss engine."""
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    out = []
    for d, start, n in zip(*window_layout(lengths, context)):
        piece = list(documents[d][start : start + n + 1])
        out.append((piece[:-1], piece[1:]))
    return out


def pad_windows(windows: Sequence[tuple[list[int], list[int]]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of windows into (inputs, targets); padded targets are IGNORE_INDEX."""
    T = max(len(x) for x, _ in windows)
    inputs = torch.full((len(windows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(windows), T), IGNORE_INDEX, dtype=torch.long)
    for row, (x, y) in enumerate(windows):
        inputs[row, : len(x)] = torch.tensor(x)
        targets[row, : len(y)] = torch.tensor(y)
    return inputs, targets


def finetune(
    model: torch.nn.Module, documents: Sequence[Sequence[int]], cfg: TrainConfig, on_progress: ProgressFn | None = None
) -> dict:
    """cfg.epochs (default one) shuffled pass(es) over the target documents, each document a
    right-padded sequence (long ones windowed at the model context); fresh AdamW; padding masked."""
    windows = document_windows(documents, model.context)
    if not windows:
        raise ValueError("no target document has 2 or more tokens")
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.cat([torch.randperm(len(windows), generator=gen) for _ in range(cfg.epochs)]).tolist()
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    tokens_total = sum(len(windows[i][1]) for i in order)
    torch.manual_seed(cfg.seed)

    def next_batch(step):
        return pad_windows([windows[i] for i in batches[step]])

    return _run_steps(model, cfg, len(batches), _warmup(cfg, len(batches)), next_batch, tokens_total, on_progress)


def validation_loss(model, documents: Sequence[Sequence[int]], **engine_kwargs) -> float:
    """Token-weighted mean next-token loss over `documents` (the loss engine's windows)."""
    loss, n_tokens = DocumentLossEngine(model, **engine_kwargs).score(documents)
    scored = n_tokens > 0
    return float((loss[scored] * n_tokens[scored]).sum() / max(1, n_tokens[scored].sum()))
