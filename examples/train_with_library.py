"""Minimal training loop with Thresher's training-time curation, used as a library (runs in seconds).

SeTa plans each epoch's samples from the latest per-sample losses; ReweightedLoss (LinUpper)
reweights each mini-batch. IndexedDataset + EpochSampler carry the sample indices; no DataLoader
monkey-patching.

From the checkout's root, after `make install`:

    .venv/bin/python examples/train_with_library.py
"""
import json
import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from scoring.schedulers import SeTaScheduler, scheduler_from_state
from scoring.reweight import ReweightedLoss
from scoring.torch_data import EpochSampler, IndexedDataset

EPOCHS, BATCH, LR = 8, 64, 3e-3

# A generated 4-class problem: two tight (easy) modes and one wide (hard) mode per class.
torch.manual_seed(0)
centers = torch.randn(4, 3, 8)
y = torch.randint(0, 4, (4000,))
mode = torch.multinomial(torch.tensor([0.45, 0.45, 0.10]), 4000, replacement=True)
x = centers[y, mode] + torch.randn(4000, 8) * torch.tensor([0.3, 0.3, 1.0])[mode, None]
train_set = TensorDataset(x[:3000], y[:3000])
x_val, y_val = x[3000:], y[3000:]

scheduler = SeTaScheduler(len(train_set), EPOCHS, prune_ratio=0.1, num_groups=5, window_scale=0.9, seed=0)
sampler = EpochSampler(scheduler)
loader = DataLoader(IndexedDataset(train_set), batch_size=BATCH, sampler=sampler)
reweighted = ReweightedLoss("linupper", r=1.0, warmup_steps=20)  # plain mean for the first 20 steps

model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
opt = torch.optim.AdamW(model.parameters(), lr=LR)

for epoch in range(EPOCHS):
    sampler.set_epoch(epoch)  # this epoch's plan, from the losses recorded so far
    steps = sampler.steps_in_epoch(BATCH)  # epoch length varies: tell the LR schedule
    for step, (idx, (xb, yb)) in enumerate(loader):
        for group in opt.param_groups:  # cosine over epoch progress
            group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * (epoch + step / steps) / EPOCHS))
        losses = F.cross_entropy(model(xb), yb, reduction="none")  # per-sample losses
        loss = reweighted(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
        scheduler.update(idx, reweighted.last_sample_losses)  # detached per-sample losses
    with torch.no_grad():
        val_loss = F.cross_entropy(model(x_val), y_val).item()
    print(f"epoch {epoch}: {len(sampler):5d} samples, {steps:3d} steps, val loss {val_loss:.4f}")

# Survive a restart: the state is JSON apart from the scores array (a Parquet column for a service).
print(f"saved cost {scheduler.saved_cost()['saved_fraction']:.1%} of {EPOCHS} full epochs")
state = scheduler.state_dict()
restored = scheduler_from_state(json.loads(json.dumps({**state, "scores": state["scores"].tolist()})))
same = (restored.epoch_plan(3)[0] == scheduler.epoch_plan(3)[0]).all()  # same state → same plan
print(f"restored scheduler plans identically: {bool(same)}")
