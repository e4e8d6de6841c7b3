import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scoring.reweight import ReweightedLoss, gather_across_ranks, per_sample_loss, sample_weights
from scoring.torch_data import gather_indexed_losses

WORKED_LOSSES = [2.0, 2.5, 3.0, 3.5, 4.0]
WORKED = {  # docs/methods.md §3, multipliers N·w_i at r = 0.4
    "linupper": [0.12, 0.43, 1.48, 1.48, 1.48],
    "quadratic": [0.18, 1.20, 2.24, 1.20, 0.18],
    "extremes": [1.88, 0.54, 0.15, 0.54, 1.88],
}


@pytest.mark.parametrize("strategy", sorted(WORKED))
def test_worked_examples_numpy_and_torch(strategy):
    expected = np.array(WORKED[strategy])
    got_np = sample_weights(np.array(WORKED_LOSSES), strategy, 0.4)
    got_t = sample_weights(torch.tensor(WORKED_LOSSES), strategy, 0.4)
    assert isinstance(got_np, np.ndarray) and isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_np, expected, atol=1e-2)
    np.testing.assert_allclose(got_t.numpy(), expected, atol=1e-2)


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes", "uniform"])
def test_large_temperature_is_nearly_uniform(strategy):
    np.testing.assert_allclose(sample_weights(np.array(WORKED_LOSSES), strategy, 100.0), 1.0, atol=1e-2)


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes"])
@pytest.mark.parametrize("r", [0.1, 0.4, 1.0])
def test_mean_one_and_bounded_ratio(strategy, r):
    losses = np.random.default_rng(7).gamma(2.0, 1.5, size=257)
    m = sample_weights(losses, strategy, r)
    assert m.mean() == pytest.approx(1.0, abs=1e-12)
    assert m.max() / m.min() <= math.exp(1.0 / r) * (1 + 1e-9)
    mt = sample_weights(torch.tensor(losses, dtype=torch.float32), strategy, r)
    assert mt.dtype == torch.float32 and float(mt.mean()) == pytest.approx(1.0, abs=1e-5)


def test_small_temperature_does_not_overflow():
    m = sample_weights(np.array(WORKED_LOSSES), "linupper", 1e-3)
    assert np.all(np.isfinite(m)) and m.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(m, [0, 0, 5 / 3, 5 / 3, 5 / 3], atol=1e-9)


def test_equal_losses_give_all_ones():
    for strategy in ["linupper", "quadratic", "extremes"]:
        np.testing.assert_allclose(sample_weights(np.full(6, 2.7), strategy, 0.4), 1.0)
        np.testing.assert_allclose(sample_weights(np.array([1.0]), strategy, 0.4), 1.0)


def test_rejects_unknown_strategy_and_bad_temperature():
    with pytest.raises(ValueError):
        sample_weights(np.ones(3), "upper", 0.4)  # the naming trap: only "linupper" is accepted
    with pytest.raises(ValueError):
        sample_weights(np.ones(3), "linupper", 0.0)


def test_per_sample_loss_divides_by_valid_tokens():
    token = torch.tensor([[1.0, 3.0, 100.0], [2.0, float("nan"), float("nan")], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    per, valid = per_sample_loss(token, mask)
    assert per[:2].tolist() == [2.0, 2.0] and valid.tolist() == [True, True, False]


def test_loss_value_and_gradient_do_not_flow_through_weights():
    losses = torch.tensor(WORKED_LOSSES, requires_grad=True)
    loss = ReweightedLoss("linupper", r=0.4)(losses)
    m = sample_weights(np.array(WORKED_LOSSES), "linupper", 0.4)
    assert float(loss.detach()) == pytest.approx(float(np.mean(m * np.array(WORKED_LOSSES))), rel=1e-6)
    loss.backward()
    np.testing.assert_allclose(losses.grad.numpy(), m / 5, rtol=1e-5)  # d/dℓ_i of Σ w_i ℓ_i = w_i


def test_token_losses_with_mask_and_empty_sample():
    token = torch.tensor([[2.0, 2.0, 9.0], [3.0, 5.0, 9.0], [1.0, 1.0, 1.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, False], [False, False, False]])
    fn = ReweightedLoss("extremes", r=0.4)
    loss = fn(token, mask)
    m = sample_weights(np.array([2.0, 4.0]), "extremes", 0.4)  # the empty sample is left out
    assert float(loss.detach()) == pytest.approx(float((m * [2.0, 4.0]).sum() / 2), rel=1e-6)
    assert fn.last_multipliers[2] == 0 and fn.last_sample_losses[:2].tolist() == [2.0, 4.0]
    loss.backward()
    assert token.grad[:, 2].abs().sum() == 0 and token.grad[2].abs().sum() == 0


def test_warmup_plain_mean_then_strategy():
    losses = torch.tensor(WORKED_LOSSES)
    fn = ReweightedLoss("linupper", r=0.4, warmup_steps=2, warmup="mean")
    assert [float(fn(losses)) for _ in range(2)] == pytest.approx([3.0, 3.0])
    assert float(fn(losses)) > 3.1  # LinUpper favours the high losses once warm-up ends
    assert float(fn(losses, step=0)) == pytest.approx(3.0)  # explicit step overrides the counter


def test_warmup_with_large_temperature():
    losses = torch.tensor(WORKED_LOSSES)
    fn = ReweightedLoss("linupper", r=0.4, warmup_steps=1, warmup="temperature", warmup_r=100.0)
    fn(losses)
    np.testing.assert_allclose(fn.last_multipliers.numpy(), sample_weights(np.array(WORKED_LOSSES), "linupper", 100.0), rtol=1e-6)
    fn(losses)
    np.testing.assert_allclose(fn.last_multipliers.numpy(), WORKED["linupper"], atol=1e-2)
    fn.load_state_dict({"steps_taken": 0})
    assert fn.state_dict() == {"steps_taken": 0}


# --- torch.distributed: 2 gloo processes on CPU --------------------------------------------------
GLOBAL_LOSSES = [2.0, 2.5, 3.0, 3.5, 4.0]
RANK_SLICES = [(0, 3), (3, 5)]  # unequal per-rank batch sizes exercise the variable-length gather


def _distributed_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        a, b = RANK_SLICES[rank]
        local = torch.tensor(GLOBAL_LOSSES[a:b], requires_grad=True)
        loss = ReweightedLoss("quadratic", r=0.4)(local)
        loss.backward()
        gathered, offset = gather_across_ranks(local.detach())
        idx, losses = gather_indexed_losses(torch.arange(a, b), local)
        torch.save({"loss": loss.detach(), "grad": local.grad, "gathered": gathered, "offset": offset,
                    "idx": idx, "losses": losses}, f"{out_dir}/r{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_weights_use_the_global_batch(tmp_path):
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    m = sample_weights(np.array(GLOBAL_LOSSES), "quadratic", 0.4)
    ell = np.array(GLOBAL_LOSSES)
    outs = [torch.load(tmp_path / f"r{rank}.pt") for rank in range(2)]
    for rank, ((a, b), out) in enumerate(zip(RANK_SLICES, outs)):
        # This rank's term: (W / N) Σ_local m_i ℓ_i, so the ranks' average is the global weighted loss.
        assert float(out["loss"]) == pytest.approx(2 / 5 * float((m[a:b] * ell[a:b]).sum()), rel=1e-5)
        # DDP averages gradients over W ranks: each sample then gets its global weight w_i = m_i / N.
        np.testing.assert_allclose(out["grad"].numpy() / 2, m[a:b] / 5, rtol=1e-5)
        assert out["gathered"].tolist() == GLOBAL_LOSSES and out["offset"] == a
        assert out["idx"].tolist() == [0, 1, 2, 3, 4] and out["losses"].tolist() == GLOBAL_LOSSES
    assert (float(outs[0]["loss"]) + float(outs[1]["loss"])) / 2 == pytest.approx(float((m * ell).mean()), rel=1e-5)
