"""Dynamic loss-based sample reweighting (Sow et al., ICLR 2025; docs/methods.md §3).

Per training step, the current model's per-sample losses of the (global) mini-batch are mapped to
multipliers ``N·w_i`` (mean exactly 1, so the loss scale matches the plain mean). The weights are
computed on detached losses: the gradient flows through ℓ_i only.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

STRATEGIES = ("linupper", "quadratic", "extremes", "uniform")
_SPREAD_FLOOR = 1e-6  # keeps h finite when all losses of the batch are (nearly) equal


def _strategy_values(h, strategy: str, xp):
    if strategy == "linupper":
        return xp.minimum(h + 1.0, xp.ones_like(h))  # np/torch.minimum: elementwise min(h+1, 1)
    if strategy == "quadratic":
        return 1.0 - h * h
    if strategy == "extremes":
        return xp.abs(h)
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


def sample_weights(losses, strategy: str = "linupper", r: float = 0.4):
    """Per-sample multipliers ``N·w_i`` for a batch of per-sample losses (torch tensor or numpy array).

    h_i = (2ℓ_i − (ℓ_max + ℓ_min)) / max(ℓ_max − ℓ_min, 1e-6);  f = strategy(h);
    w = softmax((f − max f) / r). Returns the same kind of array as given (torch: float32 or wider,
    detached, same device; numpy: float64). Uniform strategy → all ones.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if not r > 0:
        raise ValueError(f"temperature r must be > 0, got {r}")
    is_torch = isinstance(losses, torch.Tensor)
    if is_torch:
        xp = torch
        dtype = torch.promote_types(losses.dtype, torch.float32)
        ell = losses.detach().to(dtype).reshape(-1)
    else:
        xp = np
        ell = np.asarray(losses, dtype=np.float64).reshape(-1)
    n = ell.shape[0]
    if n == 0:
        return ell
    if strategy == "uniform":
        return xp.ones_like(ell)
    lo, hi = ell.min(), ell.max()
    spread = max(float(hi - lo), _SPREAD_FLOOR)
    h = (2.0 * ell - (hi + lo)) / spread
    f = _strategy_values(h, strategy, xp)
    # Max-subtraction: exponents are ≤ 0, so small r cannot overflow.
    e = xp.exp((f - f.max()) / r)
    return e * (n / e.sum())


def per_sample_loss(losses: torch.Tensor, mask: torch.Tensor | None = None):
    """Per-sample mean loss over valid positions, and which samples have any valid position.

    ``losses`` is ``(B,)`` (already per sample) or ``(B, T)`` per token with ``mask`` ``(B, T)``
    (bool or 0/1). The mean divides by the number of valid tokens, never by the padded length.
    Samples with no valid token get loss 0 and ``valid=False``.
    """
    if losses.dim() == 1:
        if mask is not None:
            raise ValueError("a mask only applies to per-token losses (B, T)")
        return losses, torch.ones_like(losses, dtype=torch.bool)
    if losses.dim() != 2:
        raise ValueError(f"expected losses of shape (B,) or (B, T), got {tuple(losses.shape)}")
    if mask is None:
        mask = torch.ones_like(losses, dtype=torch.bool)
    mask = mask.to(torch.bool)
    counts = mask.sum(dim=1)
    # torch.where instead of losses*mask: a NaN/inf at a padded position must not leak in.
    totals = torch.where(mask, losses, torch.zeros_like(losses)).sum(dim=1)
    return totals / counts.clamp(min=1).to(totals.dtype), counts > 0


def gather_across_ranks(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather a 1-D tensor of possibly different length per rank.

    Returns (concatenation over ranks in rank order, offset of this rank's slice). Without an
    initialised process group it returns ``(values, 0)``. Not differentiable: use on detached data.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values, 0
    world = dist.get_world_size()
    size = torch.tensor([values.numel()], dtype=torch.long, device=values.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(sizes), dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    rank = dist.get_rank()
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sum(sizes[:rank])


class ReweightedLoss:
    """Loss wrapper for a training loop: ``loss = reweighted(token_losses, mask)``.

    Warm-up (the first ``warmup_steps`` calls, or the ``step`` passed in): ``warmup="mean"`` uses
    the plain mean; ``warmup="temperature"`` uses the strategy with ``warmup_r`` (e.g. 100, ≈ plain
    mean). Under an initialised ``torch.distributed`` group the per-sample losses of all ranks are
    gathered, weights are computed on the global batch, and this rank's slice is used; the returned
    value is scaled so that DDP's gradient *averaging* over ranks yields the gradient of the global
    weighted loss ``Σ_i w_i ℓ_i``.

    After a call, ``last_sample_losses`` (detached, this rank) and ``last_multipliers`` are kept:
    feed the former to a curriculum scheduler's ``update``.
    """

    def __init__(self, strategy: str = "linupper", r: float = 0.4, warmup_steps: int = 0,
                 warmup: str = "mean", warmup_r: float = 100.0):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
        if warmup not in ("mean", "temperature"):
            raise ValueError("warmup must be 'mean' or 'temperature'")
        self.strategy, self.r = strategy, float(r)
        self.warmup_steps, self.warmup, self.warmup_r = int(warmup_steps), warmup, float(warmup_r)
        self.steps_taken = 0
        self.last_sample_losses: torch.Tensor | None = None
        self.last_multipliers: torch.Tensor | None = None

    def _strategy_and_r(self, step: int) -> tuple[str, float]:
        if step < self.warmup_steps:
            return ("uniform", self.r) if self.warmup == "mean" else (self.strategy, self.warmup_r)
        return self.strategy, self.r

    def __call__(self, losses: torch.Tensor, mask: torch.Tensor | None = None,
                 step: int | None = None) -> torch.Tensor:
        step = self.steps_taken if step is None else int(step)
        self.steps_taken = step + 1
        sample_losses, valid = per_sample_loss(losses, mask)
        detached = sample_losses.detach()
        # Invalid (empty) samples travel as NaN so every rank can drop them from the global batch.
        marked = torch.where(valid, detached, torch.full_like(detached, float("nan")))
        global_losses, offset = gather_across_ranks(marked)
        global_valid = ~torch.isnan(global_losses)
        n_valid = int(global_valid.sum())
        multipliers = torch.zeros_like(global_losses, dtype=torch.promote_types(detached.dtype, torch.float32))
        if n_valid:
            strategy, r = self._strategy_and_r(step)
            multipliers[global_valid] = sample_weights(global_losses[global_valid], strategy, r)
        local = multipliers[offset: offset + detached.numel()]
        self.last_sample_losses, self.last_multipliers = detached, local
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        # Local term (W / N_valid) Σ_local m_i ℓ_i: its average over W ranks is (1/N) Σ_global m_i ℓ_i.
        weighted = torch.where(valid, local.to(sample_losses.dtype) * sample_losses,
                               torch.zeros_like(sample_losses))
        return weighted.sum() * (world / max(n_valid, 1))

    def state_dict(self) -> dict:
        return {"steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict) -> None:
        self.steps_taken = int(state["steps_taken"])
