"""CoLoR-Filter's conditional model and budgets: early-stopped fine-tuning keeps its best weights,
the prior's default budget scales with the pool, scoring work is cut so every actor has some."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoring.gpt import GPT, GPTConfig
from scoring.train import EarlyStopping, TrainConfig, finetune, validation_loss
from workers.jobs.lm import (AUTO_PRIOR_MAX_TOKENS, AUTO_PRIOR_MIN_TOKENS, ColorFilterSpec, PriorTrainOptions,
                             prior_budget, score_pieces)
from workers.training import FinetuneOptions, finetune_docs, split_holdout

VOCAB = 64


@pytest.fixture(autouse=True)
def one_thread_fp32(monkeypatch):
    monkeypatch.setenv("THRESHER_NO_BF16", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, context=16, n_layer=2, n_head=2, n_embd=32)).eval()


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def scripted(model, values, snapshots):
    values = iter(values)

    def evaluate():
        assert not model.training
        snapshots.append(weights(model))
        return next(values)
    return evaluate


TARGET = [[5, 6, 7, 8, 9, 10, 11, 12][:n] for n in (3, 5, 8)] * 20  # 60 documents, 13 targets per 3


def test_finetune_stops_early_and_keeps_the_best_weights():
    model, snapshots = tiny_model(), []
    rule = EarlyStopping(scripted(model, [4.0, 3.0, 2.0, 2.5, 2.4, 2.3, 0.1], snapshots), every_tokens=40,
                         patience=3, at_start=True)
    stats = finetune(model, TARGET, TrainConfig(lr=3e-3, batch_size=4, warmup_steps=3, epochs=10), early_stopping=rule)
    assert [t for t, _ in stats["evaluations"]][0] == 0  # the initial model is evaluated too
    assert len(stats["evaluations"]) == 6 and stats["best_eval"] == 2.0  # 3 without gain after the 3rd
    assert stats["steps"] < stats["planned_steps"] == 150
    for kept, p in zip(snapshots[2], model.parameters()):
        torch.testing.assert_close(kept, p.detach(), rtol=0, atol=0)
    assert not any(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[-1]))  # it did train past the best


def test_finetune_that_never_helps_returns_the_initial_weights():
    model, snapshots = tiny_model(), []
    initial = weights(model)
    rule = EarlyStopping(scripted(model, [1.0, 2.0, 2.0, 2.0], snapshots), every_tokens=40, patience=3, at_start=True)
    stats = finetune(model, TARGET, TrainConfig(lr=3e-3, batch_size=4, warmup_steps=3, epochs=10), early_stopping=rule)
    assert stats["best_tokens"] == 0 and stats["best_eval"] == 1.0
    for a, b in zip(initial, model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def test_finetune_budget_cuts_the_passes():
    stats = finetune(tiny_model(), TARGET, TrainConfig(lr=3e-3, batch_size=4, warmup_steps=3, epochs=10, max_tokens=400))
    assert 400 <= stats["tokens"] < 400 + 4 * 7 and stats["planned_tokens"] == stats["tokens"]


def test_finetune_docs_on_a_real_holdout_reports_the_kept_models_loss():
    rng = np.random.default_rng(0)
    docs = [[1, *(5 + (np.arange(12) * k) % 9).tolist()] for k in rng.integers(1, 4, size=80)]
    model = tiny_model()
    opts = FinetuneOptions(epochs=15, lr=3e-3, warmup_steps=3, batch_size=4, holdout_fraction=0.2, patience=2)
    stats = finetune_docs(model, docs, opts)
    train, held = split_holdout(docs, 0.2, opts.seed)
    assert stats["holdout_docs"] == len(held) == 16 and stats["train_docs"] == 64
    assert stats["holdout_loss"] == pytest.approx(validation_loss(model, held), abs=1e-9)
    assert stats["holdout_loss"] < 0.8 * stats["initial_holdout_loss"]
    assert stats["holdout_loss"] == min(v for _, v in stats["evaluations"])


def test_split_holdout_is_seeded_and_disjoint():
    docs = [[i, i + 1] for i in range(10)]
    train, held = split_holdout(docs, 0.25, 3)
    assert (train, held) == split_holdout(docs, 0.25, 3)
    assert len(held) == 2 and len(train) == 8 and sorted(train + held) == docs  # round(2.5) = 2
    assert split_holdout(docs[:2], 0.5, 0) == (docs[:2], [])  # too few to hold any out
    assert split_holdout(docs, 0.0, 0) == (docs, [])


def test_prior_budget_scales_with_the_pool_within_bounds():
    auto = PriorTrainOptions()
    assert prior_budget(auto, 50_000, 100, 100)["tokens"] == AUTO_PRIOR_MIN_TOKENS
    mid = prior_budget(auto, 300_000, 1000, 4000)  # ~1.2M pool tokens estimated from a quarter
    assert mid["tokens"] == 600_000 and mid["pool_tokens_estimate"] == 1_200_000 and "0.5 ×" in mid["rule"]
    assert prior_budget(auto, 10**8, 10**4, 10**5)["tokens"] == AUTO_PRIOR_MAX_TOKENS
    assert prior_budget(PriorTrainOptions(tokens=7000), 10**8, 1, 1) == {"tokens": 7000, "rule": "given"}
    # What a user gets with only pool, target and select.
    spec = ColorFilterSpec.model_validate({"pool": "p", "target": "t", "select": {"fraction": 0.1}})
    assert spec.prior.train.tokens is None and spec.conditional.finetune.holdout_fraction == 0.1


@pytest.mark.parametrize("shards,actors", [([10_000] * 2, 16), ([200] * 5, 4), ([100], 4), ([5000, 37], 8), ([70], 3)])
def test_score_pieces_cover_every_row_once_and_feed_every_actor(shards, actors):
    todo = [(s, ("p", str(s))) for s in range(len(shards))]
    pieces = score_pieces(todo, dict(enumerate(shards)), actors)
    for s, n in enumerate(shards):
        ranges = sorted((a, b) for t, _, a, b in pieces if t == s)
        assert ranges[0][0] == 0 and ranges[-1][1] == n and all(x[1] == y[0] for x, y in zip(ranges, ranges[1:]))
    if sum(shards) >= 64 * actors:
        assert len(pieces) >= actors


def test_a_finetune_that_never_helps_is_retried_at_a_lower_learning_rate(monkeypatch):
    """The first try never beats the start (held-out 1.0, then worse); the retry, from the same
    initial weights at a third of the rate, does: its best weights are kept and both tries reported."""
    import workers.training as training
    model = tiny_model()
    initial = weights(model)
    values = iter([1.0, 2.0, 2.0, 2.0] + [1.0, 0.5, 0.7, 0.8, 0.9] + [9.0] * 100)
    starts = []

    def scripted_loss(m, held):
        value = next(values)
        if value == 1.0:  # each try starts from the initial weights
            starts.append([p.detach().clone() for p in m.parameters()])
        return value
    monkeypatch.setattr(training, "validation_loss", scripted_loss)
    docs = [[1, *range(5, 5 + 12)] for _ in range(20)]
    opts = FinetuneOptions(epochs=20, lr=3e-3, warmup_steps=3, batch_size=4, holdout_fraction=0.1, patience=3)
    stats = finetune_docs(model, docs, opts)
    assert [a["lr"] for a in stats["attempts"]] == pytest.approx([3e-3, 1e-3])
    assert stats["attempts"][0]["best_tokens"] == 0 and stats["attempts"][1]["best_tokens"] > 0
    assert stats["lr"] == pytest.approx(1e-3) and stats["holdout_loss"] == 0.5 and stats["initial_holdout_loss"] == 1.0
    assert len(starts) == 2
    for a, b in zip(starts[1], initial):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not all(torch.equal(a, b.detach()) for a, b in zip(initial, model.parameters()))  # the retry's best


def test_a_finetune_that_never_helps_at_any_rate_keeps_the_initial_weights(monkeypatch):
    import workers.training as training
    model = tiny_model()
    initial = weights(model)
    values = iter([1.0, 2.0, 2.0, 2.0] * 3)
    monkeypatch.setattr(training, "validation_loss", lambda m, held: next(values))
    docs = [[1, *range(5, 5 + 12)] for _ in range(20)]
    opts = FinetuneOptions(epochs=20, lr=3e-3, warmup_steps=3, batch_size=4, holdout_fraction=0.1, patience=3)
    stats = finetune_docs(model, docs, opts)
    assert [a["lr"] for a in stats["attempts"]] == pytest.approx([3e-3, 1e-3, 1e-3 / 3])
    assert stats["best_tokens"] == 0 and stats["holdout_loss"] == 1.0
    for a, b in zip(initial, model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
