"""PyTorch glue for per-epoch curricula, without monkey-patching the DataLoader (docs/methods.md §4).

``IndexedDataset`` makes every item carry its sample index; ``EpochSampler`` /
``DistributedEpochSampler`` yield exactly the scheduler's plan for the current epoch.

    sampler = EpochSampler(scheduler)
    loader = DataLoader(IndexedDataset(ds), batch_size=B, sampler=sampler)
    for epoch in range(E):
        sampler.set_epoch(epoch)                 # plans the epoch from the latest scores
        for idx, (x, y) in loader:
            losses = F.cross_entropy(model(x), y, reduction="none")
            loss = (losses * sampler.weights_for(idx)).mean()
            scheduler.update(idx, losses.detach())

The epoch length changes from epoch to epoch: tell a step-based LR scheduler
``sampler.steps_in_epoch(B)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from scoring.reweight import gather_across_ranks


class IndexedDataset(Dataset):
    """Wraps a map-style dataset so that item i is ``(i, dataset[i])``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index]


class EpochSampler(Sampler[int]):
    """Yields the scheduler's planned indices of the current epoch, each exactly once.

    ``set_epoch(e)`` asks the scheduler for epoch e's plan (call it after the previous epoch's
    ``update`` calls). Before any ``set_epoch`` the sampler plans epoch 0 on first use.
    """

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.epoch: int | None = None
        self.plan = np.empty(0, dtype=np.int64)
        self._weight_by_index = np.ones(scheduler.num_samples, dtype=np.float32)

    def set_epoch(self, epoch: int) -> None:
        indices, weights = self.scheduler.epoch_plan(epoch)
        self.epoch, self.plan = int(epoch), np.asarray(indices, dtype=np.int64)
        self._weight_by_index = np.ones(self.scheduler.num_samples, dtype=np.float32)
        if weights is not None:
            self._weight_by_index[self.plan] = weights

    def _ensure_planned(self) -> None:
        if self.epoch is None:
            self.set_epoch(0)

    def epoch_indices(self) -> np.ndarray:
        """The indices this sampler yields in the current epoch, in order."""
        self._ensure_planned()
        return self.plan

    def __iter__(self):
        return iter(self.epoch_indices().tolist())

    def __len__(self) -> int:
        return len(self.epoch_indices())

    def weights_for(self, indices) -> torch.Tensor:
        """Loss weights of the given sample indices this epoch (InfoBatch's 1/(1−r); else 1)."""
        self._ensure_planned()
        idx = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        return torch.from_numpy(self._weight_by_index[idx])

    def steps_in_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        """Optimizer steps this epoch (per rank for the distributed sampler): hint for LR schedules."""
        n = len(self)
        return n // batch_size if drop_last else math.ceil(n / batch_size)


class DistributedEpochSampler(EpochSampler):
    """This rank's share of the epoch plan: positions rank, rank + R, rank + 2R, … of the plan.

    Every rank must hold the same scheduler state (update it with the globally gathered
    ``gather_indexed_losses``), so all ranks compute the same plan. Ranks need equal lengths
    (DDP steps in lockstep):
    - ``drop_last=False`` (default) pads the plan with its own first ``R − len % R`` entries, so
      the whole plan is covered; a padded index is seen by two ranks, never twice by one rank.
    - ``drop_last=True`` drops the last ``len % R`` entries (random, the plan is shuffled): the
      shares are disjoint, and the dropped samples simply keep their stale score.
    """

    def __init__(self, scheduler, num_replicas: int | None = None, rank: int | None = None,
                 drop_last: bool = False):
        super().__init__(scheduler)
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.num_replicas, self.rank, self.drop_last = int(num_replicas), int(rank), drop_last

    def epoch_indices(self) -> np.ndarray:
        plan = super().epoch_indices()
        r = self.num_replicas
        if self.drop_last:
            plan = plan[: len(plan) - len(plan) % r]
        elif len(plan) % r:
            pad = r - len(plan) % r
            plan = np.concatenate([plan, np.resize(plan, pad)])  # np.resize repeats cyclically
        return plan[self.rank:: r]


def gather_indexed_losses(indices: torch.Tensor, losses: torch.Tensor):
    """All ranks' (indices, detached per-sample losses) of this step, for ``scheduler.update``.

    Without an initialised process group, returns the inputs (detached).
    """
    all_idx, _ = gather_across_ranks(indices.detach().to(losses.device, torch.long).reshape(-1))
    all_loss, _ = gather_across_ranks(losses.detach().to(torch.float32).reshape(-1))
    return all_idx, all_loss
