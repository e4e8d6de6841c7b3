"""Benchmark: training-time curation (SeTa, InfoBatch, LinUpper reweighting) vs full data.

A generated 10-class problem where samples differ in difficulty: each class is a mixture of modes
in 16-d space, a few very common tight modes (easy, redundant) and many rare wide ones (hard), plus
5% label noise. An MLP is trained for E epochs with each method (input jitter as augmentation,
cosine LR over epoch progress); we report the final validation loss / accuracy on clean labels, the
sample-visits used and the wall time, averaged over seeds. Not run in CI. Wall times on a shared
CPU are noisy; samples seen is the cost measure.

    .venv/bin/python -m bench.curriculum      # from the repo root; writes bench/results/curriculum.json
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scoring.schedulers import InfoBatchScheduler, SeTaScheduler
from scoring.reweight import ReweightedLoss
from scoring.torch_data import EpochSampler

CLASSES, DIM, MODES_PER_CLASS = 10, 16, 12


def make_task(n_train: int, n_val: int, seed: int, label_noise: float = 0.05):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.6, size=(CLASSES, MODES_PER_CLASS, DIM))
    # Mode popularity falls off steeply: the first modes are common and tight (easy, redundant),
    # the tail modes are rare and wide (hard).
    popularity = 1.0 / (1 + np.arange(MODES_PER_CLASS)) ** 1.5
    popularity /= popularity.sum()
    spread = np.linspace(0.3, 1.0, MODES_PER_CLASS)

    def draw(n):
        y = rng.integers(0, CLASSES, n)
        mode = rng.choice(MODES_PER_CLASS, n, p=popularity)
        x = centers[y, mode] + rng.normal(size=(n, DIM)) * spread[mode, None]
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)

    x_tr, y_tr = draw(n_train)
    noisy = rng.random(n_train) < label_noise
    y_tr[noisy] = torch.tensor(rng.integers(0, CLASSES, int(noisy.sum())))
    return (x_tr, y_tr), draw(n_val)


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(DIM, 256), torch.nn.GELU(), torch.nn.Linear(256, 256),
                               torch.nn.GELU(), torch.nn.Linear(256, CLASSES))


class _FullData:
    """Plain shuffled full-data epochs (the baseline), with the scheduler's planning interface."""

    def __init__(self, n: int, seed: int):
        self.num_samples, self.seed = n, seed

    def epoch_plan(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples), None

    def update(self, indices, losses):
        pass


def train(method: str, params: dict, train_set, val_set, epochs: int, batch: int, lr: float, seed: int,
          aug_std: float = 0.3):
    x, y = train_set
    n = len(y)
    if method == "seta":
        sched = SeTaScheduler(n, epochs, seed=seed, **params)
    elif method == "infobatch":
        sched = InfoBatchScheduler(n, epochs, seed=seed, **params)
    else:
        sched = _FullData(n, seed)
    loss_fn = ReweightedLoss(**params) if method == "reweight" else None
    sampler = EpochSampler(sched)
    model = make_model(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    seen, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = torch.from_numpy(sampler.epoch_indices())
        steps = sampler.steps_in_epoch(batch)
        for step in range(steps):
            # Cosine over epoch *progress*: the epoch length varies, steps_in_epoch keeps it exact.
            progress = (epoch + step / steps) / epochs
            for g in opt.param_groups:
                g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
            idx = order[step * batch:(step + 1) * batch]
            # Input jitter as augmentation (a fresh view per visit), as image crops/flips do on
            # CIFAR: without it this MLP memorises the overlap region and more epochs only hurt.
            xb = x[idx] + aug_std * torch.randn(len(idx), DIM, generator=gen)
            losses = F.cross_entropy(model(xb), y[idx], reduction="none")
            if loss_fn is not None:
                loss = loss_fn(losses)
            else:
                loss = (losses * sampler.weights_for(idx)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.update(idx, losses.detach())
            seen += len(idx)
    wall = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        logits = model(val_set[0])
        val_loss = float(F.cross_entropy(logits, val_set[1]))
        val_acc = float((logits.argmax(1) == val_set[1]).float().mean())
    return {"val_loss": val_loss, "val_acc": val_acc, "samples_seen": seen, "wall_s": wall}


METHODS = [
    ("full data", "full", {}),
    ("SeTa ~30% saved", "seta", {"prune_ratio": 0.1, "num_groups": 10, "window_scale": 0.9}),
    ("SeTa ~50% saved", "seta", {"prune_ratio": 0.2, "num_groups": 10, "window_scale": 0.8}),
    ("InfoBatch r=0.5", "infobatch", {"prune_ratio": 0.5}),
    # Reference point: uniform random pruning at about SeTa-30's cost (one cluster: the window is all of it).
    ("random ~35% saved", "seta", {"prune_ratio": 0.35, "num_groups": 1, "window_scale": 0.9}),
    ("LinUpper r=1.0", "reweight", {"strategy": "linupper", "r": 1.0, "warmup_steps": 200}),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "curriculum.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows, base_losses = [], None
    for name, method, params in METHODS:
        runs = []
        for seed in range(args.seeds):
            train_set, val_set = make_task(args.n_train, 20000, seed=1000 + seed)
            runs.append(train(method, params, train_set, val_set, args.epochs, args.batch, args.lr, seed))
        row = {"method": name, "params": params, "per_seed": runs}
        for key in runs[0]:
            vals = np.array([r[key] for r in runs], dtype=np.float64)
            row[key], row[key + "_std"] = float(vals.mean()), float(vals.std())
        row["saved_fraction"] = 1 - row["samples_seen"] / (args.n_train * args.epochs)
        # Paired with full data on the same seed (same data, same init): the seed-to-seed spread of
        # the task itself cancels out.
        losses = np.array([r["val_loss"] for r in runs])
        base_losses = losses if base_losses is None else base_losses
        rel = losses / base_losses - 1
        row["val_loss_vs_full"], row["val_loss_vs_full_std"] = float(rel.mean()), float(rel.std())
        rows.append(row)

    print(f"{'method':<19}{'val loss':>16}{'vs full (paired)':>19}{'val acc':>9}{'seen':>9}{'saved':>7}{'wall s':>8}")
    for r in rows:
        print(f"{r['method']:<19}{r['val_loss']:>9.4f}±{r['val_loss_std']:.4f}"
              f"{r['val_loss_vs_full']:>+12.2%}±{r['val_loss_vs_full_std']:.2%}"
              f"{r['val_acc']:>9.4f}{r['samples_seen']:>9.0f}{r['saved_fraction']:>7.1%}{r['wall_s']:>8.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "task": {"classes": CLASSES, "dim": DIM,
                               "modes_per_class": MODES_PER_CLASS, "label_noise": 0.05, "aug_std": 0.3},
                               "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
