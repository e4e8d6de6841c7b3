"""Per-epoch dynamic sample pruning: SeTa (Zhou et al., CVPR 2025) and InfoBatch (Qin et al., ICLR 2024).

docs/methods.md §4. Both keep ``score[i]`` = the latest per-sample loss of sample i (initially a
constant; unseen samples keep their stale score, no moving average) and plan each epoch's sample list.

Designed to be driven by a service: construct from ``config()`` parameters, call
``epoch_plan(e)`` (a pure function of seed, epoch and the scores, so a restarted service
reproduces the same plan), ``update(indices, losses)``, and persist ``state_dict()``.

Epoch phases. The paper's "last (1 − delta) share of epochs" is mapped to integers as: epoch e
prunes iff ``e < delta·epochs``, i.e. ``pruning_epochs = ceil(delta·epochs)``; an epoch is annealed
only when it lies entirely inside the final (1 − delta) share. For integer ``delta·epochs``
(200 epochs, delta 0.875 → 175) this is exactly "after delta·epochs epochs"; the InfoBatch
reference's ``iterations > stop_prune`` test would prune one epoch more (176).
"""
from __future__ import annotations

import math

import numpy as np

STATE_VERSION = 1


def pruning_epochs(epochs: int, delta: float) -> int:
    """Number of leading pruning epochs: ceil(delta·epochs), robust to float noise (0.7·10)."""
    return min(epochs, max(0, math.ceil(round(delta * epochs, 9))))


def keep_count(num_samples: int, keep_ratio: float) -> int:
    return min(num_samples, max(1, round(keep_ratio * num_samples)))


def kmeans_1d(values: np.ndarray, k: int, max_iter: int = 300) -> list[np.ndarray]:
    """Deterministic Lloyd k-means on 1-D values; returns position arrays per cluster, easy → hard.

    In 1-D every cluster is a contiguous run of the sorted values, so each iteration is a
    searchsorted plus prefix sums. Init: k distinct values at evenly spaced quantiles of the unique
    values. k is reduced to the number of distinct values; clusters that end empty are dropped.
    """
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    x = values[order]
    uniq = np.unique(x)
    k = max(1, min(k, len(uniq)))
    centers = uniq[((np.arange(k) + 0.5) * len(uniq) / k).astype(np.int64)]
    prefix = np.concatenate([[0.0], np.cumsum(x)])
    edges = None
    for _ in range(max_iter):
        bounds = (centers[:-1] + centers[1:]) / 2
        new_edges = np.concatenate([[0], np.searchsorted(x, bounds, side="right"), [len(x)]])
        if edges is not None and np.array_equal(new_edges, edges):
            break
        edges = new_edges
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        centers = np.where(counts > 0, sums / np.maximum(counts, 1), centers)
    return [order[a:b] for a, b in zip(edges[:-1], edges[1:]) if b > a]


class _PruningScheduler:
    kind = ""

    def __init__(self, num_samples: int, epochs: int, delta: float, seed: int, initial_score: float):
        if num_samples < 1 or epochs < 1:
            raise ValueError("num_samples and epochs must be >= 1")
        if not 0.0 <= delta <= 1.0:
            raise ValueError("delta must be in [0, 1]")
        self.num_samples, self.epochs = int(num_samples), int(epochs)
        self.delta, self.seed, self.initial_score = float(delta), int(seed), float(initial_score)
        self.pruning_epochs = pruning_epochs(self.epochs, self.delta)
        self.scores = np.full(self.num_samples, self.initial_score, dtype=np.float64)
        self.planned_counts: dict[int, int] = {}  # epoch -> samples in its plan (latest plan wins)

    # --- planning -------------------------------------------------------------------------
    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def is_pruning_epoch(self, epoch: int) -> bool:
        return epoch < self.pruning_epochs

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(shuffled sample indices of this epoch, per-index loss weights aligned with them or None)."""
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"epoch {epoch} outside [0, {self.epochs})")
        indices, weights = self._plan(int(epoch), self._rng(int(epoch)))
        self.planned_counts[int(epoch)] = int(len(indices))
        return indices.astype(np.int64), weights

    def _plan(self, epoch: int, rng: np.random.Generator):
        raise NotImplementedError

    # --- scores -----------------------------------------------------------------------------
    def update(self, indices, losses) -> int:
        """Record the latest per-sample losses; non-finite losses are skipped (stale score kept).

        Accepts numpy arrays, lists or torch tensors. Returns the number of scores written.
        """
        idx = np.asarray(_to_numpy(indices), dtype=np.int64).reshape(-1)
        val = np.asarray(_to_numpy(losses), dtype=np.float64).reshape(-1)
        if idx.shape != val.shape:
            raise ValueError(f"{idx.size} indices but {val.size} losses")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise IndexError("sample index out of range")
        finite = np.isfinite(val)
        self.scores[idx[finite]] = val[finite]
        return int(finite.sum())

    # --- cost accounting --------------------------------------------------------------------
    @property
    def pruned_visits(self) -> int:
        return sum(self.num_samples - c for c in self.planned_counts.values())

    @property
    def saved_fraction(self) -> float:
        """Pruned sample-visits over the epochs planned so far, divided by N·epochs (whole run)."""
        return self.pruned_visits / (self.num_samples * self.epochs)

    def saved_cost(self) -> dict:
        return {"epochs_planned": len(self.planned_counts),
                "planned_visits": sum(self.planned_counts.values()),
                "pruned_visits": self.pruned_visits,
                "total_visits": self.num_samples * self.epochs,
                "saved_fraction": self.saved_fraction}

    # --- persistence ------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor keyword arguments: ``type(self)(**s.config())`` rebuilds an empty scheduler."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """JSON-serialisable except ``scores`` (a float64 numpy array of length N, one Parquet column)."""
        return {"kind": self.kind, "version": STATE_VERSION, "config": self.config(),
                "scores": self.scores.copy(),
                "planned_counts": {str(e): c for e, c in sorted(self.planned_counts.items())}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind or state.get("version") != STATE_VERSION:
            raise ValueError(f"state is for {state.get('kind')!r} v{state.get('version')}, "
                             f"not {self.kind!r} v{STATE_VERSION}")
        if dict(state["config"]) != self.config():
            raise ValueError(f"state config {state['config']} differs from {self.config()}")
        scores = np.asarray(state["scores"], dtype=np.float64)
        if scores.shape != (self.num_samples,):
            raise ValueError(f"scores have shape {scores.shape}, expected ({self.num_samples},)")
        self.scores = scores.copy()
        self.planned_counts = {int(e): int(c) for e, c in state["planned_counts"].items()}


class SeTaScheduler(_PruningScheduler):
    """SeTa: random de-redundancy, 1-D k-means on difficulty, cyclic sliding window over clusters."""

    kind = "seta"

    def __init__(self, num_samples: int, epochs: int, prune_ratio: float = 0.1, num_groups: int = 5,
                 window_scale: float = 0.9, delta: float = 0.875, seed: int = 0,
                 initial_score: float = 3.0):
        super().__init__(num_samples, epochs, delta, seed, initial_score)
        if num_groups < 1 or not 0.0 < window_scale <= 1.0:
            raise ValueError("num_groups must be >= 1 and window_scale in (0, 1]")
        self.prune_ratio, self.num_groups = float(prune_ratio), int(num_groups)
        self.window_scale = float(window_scale)
        self.keep_ratio = min(1.0, max(0.1, 1.0 - self.prune_ratio))

    def config(self) -> dict:
        return {"num_samples": self.num_samples, "epochs": self.epochs, "prune_ratio": self.prune_ratio,
                "num_groups": self.num_groups, "window_scale": self.window_scale, "delta": self.delta,
                "seed": self.seed, "initial_score": self.initial_score}

    def window(self, it: int, k: int) -> range:
        """Cluster ranks (easy → hard) used in pruning epoch ``it``: all at it == 0, then a cyclic
        window of w = round(k·window_scale) clusters (banker's rounding) starting at it mod (k−w+1)."""
        if it == 0:
            return range(k)
        w = min(k, max(1, round(k * self.window_scale)))
        start = it % (k - w + 1)
        return range(start, start + w)

    def clusters(self, kept: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Kept sample indices grouped by difficulty, easy → hard."""
        s = self.scores[kept]
        if s.min() == s.max():  # nothing to cluster on (first epoch): k equal random chunks
            return [c for c in np.array_split(rng.permutation(kept), self.num_groups) if len(c)]
        return [kept[pos] for pos in kmeans_1d(s, self.num_groups)]

    def _plan(self, epoch: int, rng: np.random.Generator):
        n_keep = keep_count(self.num_samples, self.keep_ratio)
        kept = np.sort(rng.choice(self.num_samples, n_keep, replace=False))
        if self.is_pruning_epoch(epoch):
            # `it` counts pruning epochs; they are the leading epochs, so it == epoch.
            groups = self.clusters(kept, rng)
            kept = np.concatenate([groups[j] for j in self.window(epoch, len(groups))])
        # Annealing epochs train on the uniform random keep_ratio subset itself.
        return rng.permutation(kept), None


class InfoBatchScheduler(_PruningScheduler):
    """InfoBatch: drop a share r of below-mean-loss samples, up-weight the kept ones by 1/(1 − r)."""

    kind = "infobatch"

    def __init__(self, num_samples: int, epochs: int, prune_ratio: float = 0.5, delta: float = 0.875,
                 seed: int = 0, initial_score: float = 3.0):
        super().__init__(num_samples, epochs, delta, seed, initial_score)
        if not 0.0 <= prune_ratio < 1.0:
            raise ValueError("prune_ratio must be in [0, 1)")
        self.prune_ratio = float(prune_ratio)

    def config(self) -> dict:
        return {"num_samples": self.num_samples, "epochs": self.epochs, "prune_ratio": self.prune_ratio,
                "delta": self.delta, "seed": self.seed, "initial_score": self.initial_score}

    def _plan(self, epoch: int, rng: np.random.Generator):
        weights = np.ones(self.num_samples, dtype=np.float64)
        if not self.is_pruning_epoch(epoch):  # weight reset: full data, weights 1
            order = rng.permutation(self.num_samples)
            return order, weights[order]
        well_learned = np.flatnonzero(self.scores < self.scores.mean())  # strict: at-mean is kept
        # Like the reference: keep exactly round((1 − r)·n) of them, chosen uniformly, so each one
        # is dropped with probability ≈ r and the kept ones' weight 1/(1 − r) is unbiased.
        n_kept = round((1.0 - self.prune_ratio) * len(well_learned))
        kept_well = rng.choice(well_learned, n_kept, replace=False)
        dropped = np.setdiff1d(well_learned, kept_well, assume_unique=True)
        weights[kept_well] = 1.0 / (1.0 - self.prune_ratio)
        order = rng.permutation(np.setdiff1d(np.arange(self.num_samples), dropped, assume_unique=True))
        return order, weights[order]


def _to_numpy(x):
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        t = x.detach().cpu()
        return (t.double() if t.is_floating_point() else t).numpy()  # bf16 has no numpy dtype
    return x


def scheduler_from_state(state: dict) -> _PruningScheduler:
    """Rebuild a scheduler (SeTa or InfoBatch) from a ``state_dict()``."""
    cls = {"seta": SeTaScheduler, "infobatch": InfoBatchScheduler}[state["kind"]]
    sched = cls(**state["config"])
    sched.load_state_dict(state)
    return sched
