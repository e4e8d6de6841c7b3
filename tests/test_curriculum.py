import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from scoring.schedulers import (InfoBatchScheduler, SeTaScheduler, keep_count, kmeans_1d,
                                pruning_epochs, scheduler_from_state)
from scoring.torch_data import DistributedEpochSampler, EpochSampler, IndexedDataset

ALL = "all"


def window_sequence(k, window_scale, n):
    sched = SeTaScheduler(100, 50, prune_ratio=0.0, num_groups=k, window_scale=window_scale)
    return [ALL if it == 0 else list(sched.window(it, k)) for it in range(n)]


def test_window_sequence_k10_ws06():
    # docs/methods.md §4: all, [1..6], [2..7], [3..8], [4..9], [0..5], [1..6], ...
    assert window_sequence(10, 0.6, 8) == [ALL, [1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7], [3, 4, 5, 6, 7, 8],
                                           [4, 5, 6, 7, 8, 9], [0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6],
                                           [2, 3, 4, 5, 6, 7]]


def test_window_sequence_k5_ws09_uses_bankers_rounding():
    # w = round(4.5) = 4 (not 5): all, [1..4], [0..3], [1..4], [0..3], ...
    assert window_sequence(5, 0.9, 5) == [ALL, [1, 2, 3, 4], [0, 1, 2, 3], [1, 2, 3, 4], [0, 1, 2, 3]]


def leveled_scores(levels, per_level):
    """Scores with `levels` well-separated difficulty levels; returns (scores, level of each sample)."""
    level = np.repeat(np.arange(levels), per_level)
    return level * 10.0 + np.tile(np.linspace(0, 1, per_level), levels), level


@pytest.mark.parametrize("k, window_scale, expected", [
    (10, 0.6, {1: range(1, 7), 4: range(4, 10), 5: range(0, 6)}),
    (5, 0.9, {1: range(1, 5), 2: range(0, 4), 3: range(1, 5)}),
])
def test_plan_takes_the_windowed_difficulty_clusters(k, window_scale, expected):
    scores, level = leveled_scores(k, 20)
    sched = SeTaScheduler(len(scores), 40, prune_ratio=0.0, num_groups=k, window_scale=window_scale, seed=3)
    sched.update(np.arange(len(scores)), scores)
    assert sorted(sched.epoch_plan(0)[0]) == list(range(len(scores)))  # it == 0: all clusters
    for epoch, levels in expected.items():
        indices, weights = sched.epoch_plan(epoch)
        assert weights is None and len(set(indices)) == len(indices)
        assert sorted(indices) == sorted(np.flatnonzero(np.isin(level, list(levels))))


def test_kmeans_1d_sorted_easy_to_hard_and_deterministic():
    values = np.array([9.0, 1.0, 5.1, 1.2, 5.0, 1.1])
    clusters = kmeans_1d(values, 3)
    assert [sorted(values[c]) for c in clusters] == [[1.0, 1.1, 1.2], [5.0, 5.1], [9.0]]
    assert len(kmeans_1d(np.array([2.0, 2.0, 7.0]), 5)) == 2  # k capped by the distinct values


def test_equal_scores_split_into_equal_chunks():
    sched = SeTaScheduler(100, 10, prune_ratio=0.0, num_groups=10, window_scale=0.6)
    assert len(sched.epoch_plan(0)[0]) == 100
    assert len(sched.epoch_plan(1)[0]) == 60  # 6 of 10 equal chunks of 10


@pytest.mark.parametrize("epochs, delta, expected", [(10, 0.875, 9), (8, 0.875, 7), (200, 0.875, 175),
                                                     (10, 0.7, 7), (10, 1.0, 10), (10, 0.0, 0)])
def test_pruning_epochs_is_ceil_of_delta_times_epochs(epochs, delta, expected):
    assert pruning_epochs(epochs, delta) == expected


def test_seta_first_and_annealing_epochs_are_random_keep_ratio_subsets():
    scores, level = leveled_scores(10, 100)
    sched = SeTaScheduler(1000, 10, prune_ratio=0.3, num_groups=10, window_scale=0.3, seed=1)
    assert sched.pruning_epochs == 9 and not sched.is_pruning_epoch(9)
    assert len(set(sched.epoch_plan(0)[0])) == 700  # keep_ratio 0.7, all equal scores, all clusters
    sched.update(np.arange(1000), scores)
    windowed = sched.epoch_plan(1)[0]
    assert set(level[windowed]) == {1, 2, 3}  # w = round(3.0) = 3 clusters
    annealed, weights = sched.epoch_plan(9)
    assert weights is None and len(set(annealed)) == len(annealed) == 700
    assert set(level[annealed]) == set(range(10))  # drawn from the WHOLE data set
    tiny = SeTaScheduler(1000, 10, prune_ratio=0.95)  # keep_ratio clamped to 0.1
    assert tiny.keep_ratio == 0.1 and len(tiny.epoch_plan(9)[0]) == keep_count(1000, 0.1) == 100


def test_infobatch_strict_mean_threshold_and_weights():
    scores = np.arange(9.0)  # mean 4.0: samples 0..3 are below it, sample 4 sits exactly on it
    sched = InfoBatchScheduler(9, 8, prune_ratio=0.5, seed=0)
    assert sched.pruning_epochs == 7
    sched.update(np.arange(9), scores)
    weight_sum_low = []
    for epoch in range(7):
        indices, weights = sched.epoch_plan(epoch)
        w = dict(zip(indices.tolist(), weights.tolist()))
        assert set(range(4, 9)) <= set(w) and all(w[i] == 1.0 for i in range(4, 9))
        low = [i for i in w if i < 4]
        assert len(low) == 2 and all(w[i] == 2.0 for i in low)  # 1 / (1 − 0.5)
        weight_sum_low.append(sum(w[i] for i in low))
    assert weight_sum_low == [4.0] * 7  # the up-weighting keeps the low-loss total unbiased
    indices, weights = sched.epoch_plan(7)  # after delta·epochs: full data, weights reset to 1
    assert sorted(indices) == list(range(9)) and np.all(weights == 1.0)


def test_infobatch_first_epoch_prunes_nothing():
    indices, weights = InfoBatchScheduler(50, 4, seed=2).epoch_plan(0)
    assert sorted(indices) == list(range(50)) and np.all(weights == 1.0)


def test_update_skips_nonfinite_and_accepts_torch():
    sched = SeTaScheduler(4, 2)
    written = sched.update(torch.tensor([0, 1, 2]), torch.tensor([1.5, float("nan"), 2.5], dtype=torch.bfloat16))
    assert written == 2 and sched.scores.tolist() == [1.5, 3.0, 2.5, 3.0]  # unseen/NaN: stale score
    with pytest.raises(IndexError):
        sched.update([4], [1.0])


def test_saved_fraction_counts_each_planned_epoch_once():
    sched = SeTaScheduler(200, 4, prune_ratio=0.5, num_groups=4, window_scale=0.5, seed=5)
    sched.update(np.arange(200), np.random.default_rng(0).random(200))
    sizes = [len(sched.epoch_plan(e)[0]) for e in range(2)]
    sched.epoch_plan(1)  # planning the same epoch again replaces, not adds
    cost = sched.saved_cost()
    assert cost["pruned_visits"] == sum(200 - s for s in sizes) and cost["total_visits"] == 800
    assert sched.saved_fraction == pytest.approx(sum(200 - s for s in sizes) / 800)


@pytest.mark.parametrize("make", [
    lambda seed: SeTaScheduler(300, 6, prune_ratio=0.2, num_groups=5, window_scale=0.6, seed=seed),
    lambda seed: InfoBatchScheduler(300, 6, prune_ratio=0.5, seed=seed),
])
def test_determinism_and_state_round_trip(make):
    rng = np.random.default_rng(11)
    a, b = make(4), make(4)
    for epoch in range(3):
        pa, pb = a.epoch_plan(epoch), b.epoch_plan(epoch)
        assert np.array_equal(pa[0], pb[0])
        losses = rng.gamma(2.0, 1.0, size=len(pa[0]))
        a.update(pa[0], losses)
        b.update(pb[0], losses)
    assert not np.array_equal(make(5).epoch_plan(1)[0], make(4).epoch_plan(1)[0])
    state = a.state_dict()
    as_json = json.dumps({**state, "scores": state["scores"].tolist()})  # everything else is plain JSON
    restored = scheduler_from_state(json.loads(as_json))
    expected = a.epoch_plan(3)
    got = restored.epoch_plan(3)
    assert np.array_equal(expected[0], got[0])
    assert (expected[1] is None and got[1] is None) or np.array_equal(expected[1], got[1])
    assert restored.saved_cost() == a.saved_cost()
    with pytest.raises(ValueError):
        make(99).load_state_dict(state)  # a different seed is a different run


def test_epoch_sampler_with_dataloader_yields_plan_once_and_weights():
    sched = InfoBatchScheduler(40, 3, prune_ratio=0.5, delta=0.5, seed=0)  # epoch 2 is full data
    sched.update(np.arange(40), np.arange(40.0))
    sampler = EpochSampler(sched)
    data = TensorDataset(torch.arange(40.0) * 10)
    loader = DataLoader(IndexedDataset(data), batch_size=7, sampler=sampler)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        plan, weights = sched.epoch_plan(epoch)
        seen, seen_w = [], []
        for idx, (x,) in loader:
            assert torch.equal(x, idx.float() * 10)  # items carry their own index
            seen += idx.tolist()
            seen_w += sampler.weights_for(idx).tolist()
        assert seen == plan.tolist() and seen_w == weights.tolist()
        assert sampler.steps_in_epoch(7) == -(-len(plan) // 7) and len(sampler) == len(plan)
    assert len(seen) == 40 and 0 < len(sched.epoch_plan(0)[0]) < 40


@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_sampler_splits_plan(drop_last):
    sched = SeTaScheduler(103, 5, prune_ratio=0.0, num_groups=5, window_scale=0.6, seed=2)
    plan = sched.epoch_plan(0)[0]
    assert len(plan) % 3 != 0
    shares = []
    for rank in range(3):
        sampler = DistributedEpochSampler(sched, num_replicas=3, rank=rank, drop_last=drop_last)
        sampler.set_epoch(0)
        shares.append(list(sampler))
        assert len(set(shares[-1])) == len(shares[-1])  # no index twice within a rank
    assert len({len(s) for s in shares}) == 1  # equal lengths for lockstep DDP steps
    union = [i for s in shares for i in s]
    if drop_last:
        assert len(set(union)) == len(union) and set(union) == set(plan[: len(plan) - len(plan) % 3])
    else:
        assert set(union) == set(plan) and len(union) - len(set(union)) == 3 - len(plan) % 3
