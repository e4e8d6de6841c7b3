"""Projektor (docs/methods.md §5): OT, its gradient, the pilot fits, Stage 2, the optimiser, the planner,
and the embeddings behind them."""
import hashlib
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import torch

from scoring.embed import Embedder, mean_pooled_embeddings
from scoring.projektor import (
    MixtureOT,
    PseudoQuadraticNoOT,
    PseudoQuadraticOT,
    SizeProjection,
    mixture_weights,
    optimise_mixture,
    ot_gradient,
    plan_purchase,
    project_feasible,
    project_log_n,
    project_simplex,
    sinkhorn_divergence,
)

REPO = Path(__file__).resolve().parents[1]


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _toy_sources(seed=0, d=8, sizes=(15, 20, 12)):
    """Unit-norm clouds around different axes (like L2-normalised embeddings); validation between
    sources 0 and 1."""
    rng = np.random.default_rng(seed)
    sources = [_unit(rng.normal(size=(n, d)) + 1.5 * np.eye(d)[i]) for i, n in enumerate(sizes)]
    validation = _unit(rng.normal(size=(25, d)) + 0.8 * np.eye(d)[0] + 0.8 * np.eye(d)[1])
    return sources, validation


def _simplex_grid(m, step):
    k = round(1 / step)
    return np.array([c for c in itertools.product(range(k + 1), repeat=m) if sum(c) == k], dtype=float) / k


# ---------------------------------------------------------------- Sinkhorn divergence and its gradient

@pytest.mark.filterwarnings("error")  # Sinkhorn must converge
def test_divergence_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    Y = _unit(rng.normal(size=(60, 3)))
    shifts = [sinkhorn_divergence(Y, _unit(Y + s * np.eye(3)[0]), reg=5e-2) for s in (0.0, 0.3, 1.0)]
    assert abs(shifts[0]) < 1e-9
    assert 0 < shifts[1] < shifts[2]


@pytest.mark.parametrize("reg", [5e-2, 1e-2])
@pytest.mark.parametrize("p", [(0.5, 0.3, 0.2), (0.68, 0.3, 0.02)])
def test_ot_gradient_matches_finite_differences(reg, p):
    sources, validation = _toy_sources()
    fresh = lambda: MixtureOT(sources, validation, reg=reg, tol=1e-13, max_iter=100_000)
    p = np.array(p)
    _, grad = fresh()(p)
    assert abs(grad.sum()) < 1e-12  # calibrated to the simplex
    h = 1e-6
    for i, j in [(0, 1), (1, 2), (0, 2)]:
        d = np.zeros(3)
        d[i], d[j] = 1.0, -1.0
        fd = (fresh()(p + h * d)[0] - fresh()(p - h * d)[0]) / (2 * h)
        assert grad @ d == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_divergence_potential_is_the_gradient_in_the_point_masses():
    sources, validation = _toy_sources(seed=3)
    X = np.concatenate(sources)
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 1.5, len(X))
    a[:5] = 0.0  # mass-free points still get a potential
    a /= a.sum()
    kw = {"reg": 3e-2, "cost_scale": 1.0, "tol": 1e-13, "max_iter": 100_000}
    value, phi = sinkhorn_divergence(X, validation, a=a, return_potentials=True, **kw)
    assert value == pytest.approx(sinkhorn_divergence(X, validation, a=a, **kw), abs=1e-14)
    d = np.zeros(len(X))
    d[7], d[30] = 1.0, -1.0  # move mass between two points of different sources
    h = 1e-6
    fd = (sinkhorn_divergence(X, validation, a=a + h * d, **kw) - sinkhorn_divergence(X, validation, a=a - h * d, **kw)) / (2 * h)
    assert phi @ d == pytest.approx(fd, rel=1e-5)
    # The mixture gradient is the per-source mean of the same potential.
    p = np.array([0.2, 0.5, 0.3])
    sizes = [len(s) for s in sources]
    _, phi_p = sinkhorn_divergence(X, validation, a=mixture_weights(p, sizes), return_potentials=True, **kw)
    mot = MixtureOT(sources, validation, reg=3e-2, cost_scale=1.0, tol=1e-13, max_iter=100_000)
    np.testing.assert_allclose(mot(p)[1], ot_gradient(phi_p, sizes), atol=1e-9)


# ---------------------------------------------------------------- projections onto the simplex / polytope

def test_project_simplex_known_examples_and_properties():
    cases = {(0.5, 0.5): (0.5, 0.5), (1.0, 1.0): (0.5, 0.5), (2.0, 0.0): (1.0, 0.0),
             (0.6, 0.6, -1.0): (0.5, 0.5, 0.0), (-1.0, -1.0, -1.0): (1 / 3, 1 / 3, 1 / 3), (0.4, 0.0, 0.9): (0.25, 0.0, 0.75)}
    for v, expected in cases.items():
        np.testing.assert_allclose(project_simplex(v), expected, atol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.normal(size=5) * 3
        p = project_simplex(v)
        assert p.min() >= 0 and p.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(project_simplex(p), p, atol=1e-12)  # idempotent
        # Optimality (KKT): v − p is the same constant on the support and no larger off it.
        shift = (v - p)[p > 0]
        assert np.ptp(shift) < 1e-9 and np.all((v - p)[p == 0] <= shift[0] + 1e-9)


def test_project_feasible_matches_a_generic_solver():
    rng = np.random.default_rng(2)
    upper, prices, budget = np.array([0.5, 0.6, 0.4, 0.7]), np.array([1.0, 3.0, 2.0, 0.5]), 1.2
    for _ in range(5):
        v = rng.normal(size=4)
        p = project_feasible(v, upper, prices, budget)
        ref = scipy.optimize.minimize(
            lambda x, v=v: 0.5 * np.sum((x - v) ** 2), np.full(4, 0.25), jac=lambda x, v=v: x - v, method="SLSQP",
            bounds=[(0, u) for u in upper], options={"ftol": 1e-14, "maxiter": 500},
            constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1},
                         {"type": "ineq", "fun": lambda x: budget - prices @ x}])
        np.testing.assert_allclose(p, ref.x, atol=1e-6)
        assert p.sum() == pytest.approx(1.0, abs=1e-9) and prices @ p <= budget + 1e-12 and np.all(p <= upper + 1e-12)
    # Slack constraints: the plain simplex projection.
    v = np.array([0.2, 0.9, -0.3])
    np.testing.assert_allclose(project_feasible(v, np.ones(3), np.ones(3), 5.0), project_simplex(v), atol=1e-12)


# ---------------------------------------------------------------- Stage 2

def test_project_log_n_hand_values_and_pilots():
    # [log(3000/1000)·2.8 − log(3000/1500)·3.0] / log(1.5) = 3.0 − 0.2·log 3 / log 1.5
    assert project_log_n(3000, 1000, 1500, 3.0, 2.8) == pytest.approx(2.458097741729709, abs=1e-12)
    assert project_log_n(2000, 1000, 1500, 3.0, 2.8) == pytest.approx(2.658097741729709, abs=1e-12)
    assert project_log_n(1000, 1000, 1500, 3.0, 2.8) == pytest.approx(3.0, abs=1e-12)
    assert project_log_n(1500, 1000, 1500, 3.0, 2.8) == pytest.approx(2.8, abs=1e-12)
    g0, g1 = np.array([0.1, -0.3, 0.2]), np.array([0.3, -0.1, -0.2])  # the same rule for gradients
    np.testing.assert_allclose(project_log_n(3000, 1000, 1500, g0, g1), g0 + (g1 - g0) * np.log(3) / np.log(1.5))


# ---------------------------------------------------------------- Stage 1 predictors

TRUE = {"b2": np.array([0.8, -0.5, 0.3]), "b1": np.array([1.2, 0.4, -0.7]),
        "c2": np.array([0.6, 0.2, -0.9]), "c1": np.array([-0.3, 0.5, 0.1]), "c0": 3.0}


def _synthetic_ot(P):
    """A smooth, non-polynomial stand-in for OT(p), so its products with p are not collinear."""
    return 0.5 + 0.4 * np.exp(-2.0 * P[:, 0]) + 0.3 * np.sin(2.0 * P[:, 1]) * P[:, 2]


def _true_metric(P, o):
    k = TRUE
    return ((P ** 2 @ k["b2"] + P @ k["b1"]) * o + P ** 2 @ k["c2"] + P @ k["c1"] + k["c0"])


def test_least_squares_recovers_known_coefficients():
    P = _simplex_grid(3, 0.1)  # the reference's 66 pilot mixtures
    o = _synthetic_ot(P)
    fit = PseudoQuadraticOT(ridge="auto").fit(P, _true_metric(P, o), o)
    assert fit.lam == 0.0 and fit.r2 == pytest.approx(1.0, abs=1e-12)
    for name in ("b2", "b1", "c2"):
        np.testing.assert_allclose(fit.coef[name], TRUE[name], atol=1e-8)
    # On the simplex c0 and the c1_i are tied (Σp = 1): only c1_i + c0 is identifiable.
    np.testing.assert_allclose(fit.coef["c1"] + fit.coef["c0"], TRUE["c1"] + TRUE["c0"], atol=1e-8)
    P_new = np.array([[0.15, 0.55, 0.30], [0.9, 0.05, 0.05]])
    np.testing.assert_allclose(fit.predict(P_new, _synthetic_ot(P_new)), _true_metric(P_new, _synthetic_ot(P_new)), atol=1e-8)
    assert fit.loo_error() < 1e-8  # a perfect fit leaves no leave-one-out error


def test_loo_error_matches_the_hat_matrix_shortcut_for_ols():
    rng = np.random.default_rng(4)
    P = _simplex_grid(3, 0.25)  # 15 mixtures, 6 features: OLS
    y = 3.0 - P @ np.array([0.5, 0.1, 0.3]) + 0.05 * rng.normal(size=len(P))
    fit = PseudoQuadraticNoOT(ridge=0.0).fit(P, y)
    X = np.hstack([np.ones((len(P), 1)), P ** 2, P])
    H = X @ np.linalg.pinv(X)
    resid = y - H @ y
    assert fit.loo_error() == pytest.approx(np.mean(np.abs(resid / (1 - np.diag(H)))), rel=1e-8)
    assert fit.r2 == pytest.approx(1 - resid @ resid / np.sum((y - y.mean()) ** 2), rel=1e-10)


def test_ridge_path_with_few_pilots():
    rng = np.random.default_rng(5)
    P = rng.dirichlet(np.ones(3), size=8)  # 8 pilots for 12 features
    o = _synthetic_ot(P)
    y = _true_metric(P, o) + 0.01 * rng.normal(size=len(P))
    fit = PseudoQuadraticOT(ridge="auto").fit(P, y, o)
    ols = PseudoQuadraticOT(ridge=0.0).fit(P, y, o)
    assert fit.lam > 0  # the pilots alone would be interpolated: LOO picks a penalty
    assert np.isfinite(fit.loo_error()) and fit.loo_error() < ols.loo_error()
    assert np.all(np.isfinite(fit.predict(P, o))) and fit.r2 <= 1.0
    assert PseudoQuadraticOT(ridge="auto", drop_c2=True).fit(P, y, o).coef["c2"].tolist() == [0.0, 0.0, 0.0]


def test_prediction_gradients_match_finite_differences():
    P = _simplex_grid(3, 0.1)
    w = np.array([0.2, 0.5, 0.1])
    ot_value = lambda p: float(0.3 + (p @ w) ** 2 + 0.4 * p[0] * p[2])
    ot_grad = lambda p: 2 * (p @ w) * w + 0.4 * np.array([p[2], 0, p[0]])
    o = np.array([ot_value(p) for p in P])
    fits = {}
    for N, shift in [(1000, 0.0), (1500, -0.2)]:
        fits[N] = PseudoQuadraticOT(ridge=0.0).fit(P, _true_metric(P, o) + shift * (1 + P[:, 0]), o)
    proj = SizeProjection(1000, fits[1000], 1500, fits[1500], lambda p: (ot_value(p), ot_grad(p)))
    p, h = np.array([0.25, 0.45, 0.3]), 1e-6
    for N in (1000, 4000):
        g = proj.grad(N, p)
        for i, j in [(0, 1), (1, 2)]:
            d = np.zeros(3)
            d[i], d[j] = 1.0, -1.0
            fd = (proj.predict(N, p + h * d) - proj.predict(N, p - h * d)) / (2 * h)
            assert g @ d == pytest.approx(fd, rel=1e-6, abs=1e-9)
    assert proj.predict(1000, p) == pytest.approx(fits[1000].predict(p, ot_value(p)), abs=1e-12)


# ---------------------------------------------------------------- Stage 3 and the planner

@pytest.mark.parametrize("q", [(0.2, 0.5, 0.3), (0.9, 0.4, -0.6)])
def test_optimiser_finds_the_optimum_of_a_convex_function(q):
    q = np.array(q)
    target = project_simplex(q)  # argmin of ‖p − q‖² over the simplex
    loss = lambda p: (float(np.sum((p - q) ** 2)), 2 * (p - q))
    p, value = optimise_mixture(loss, 3, maximise=False)
    np.testing.assert_allclose(p, target, atol=1e-4)
    accuracy = lambda p: (-float(np.sum((p - q) ** 2)), -2 * (p - q))
    p_up, _ = optimise_mixture(accuracy, 3, maximise=True)
    np.testing.assert_allclose(p_up, target, atol=1e-4)
    assert value == pytest.approx(np.sum((target - q) ** 2), abs=1e-7)


def test_optimiser_ascends_a_linear_accuracy_to_its_best_vertex():
    gain = np.array([0.2, 0.7, 0.5])
    p, value = optimise_mixture(lambda p: (float(p @ gain), gain), 3, maximise=True, lr=0.5)
    np.testing.assert_allclose(p, [0.0, 1.0, 0.0], atol=1e-4)  # lr·0.9^t: the steps sum to 10·lr
    assert value == pytest.approx(0.7, abs=1e-4)


def _toy_projection(N, p):
    """Loss falls with log N; source 1 is the best single source, a blend of 0 and 1 is better."""
    p = np.asarray(p)
    return float(4.0 - 0.1 * np.log(N) + 2.0 * (p[0] - 0.35) ** 2 + 2.0 * (p[1] - 0.6) ** 2 + 0.5 * p[2] ** 2)


def _toy_grad(N, p):
    p = np.asarray(p)
    return np.array([4.0 * (p[0] - 0.35), 4.0 * (p[1] - 0.6), 1.0 * p[2]])


@pytest.mark.parametrize("budget,available", [(5000.0, [3000, 3000, 3000]), (2000.0, [300, 5000, 5000]), (1e9, [400, 900, 2000])])
def test_planner_respects_constraints_and_beats_its_baselines(budget, available):
    prices = np.array([2.0, 1.0, 0.5])
    plan = plan_purchase(_toy_projection, _toy_grad, prices, available, budget, candidate_sizes=[500, 1000, 2000, 4000])
    docs = np.array(plan["docs_per_source"])
    assert plan["cost"] == pytest.approx(docs @ prices) and plan["cost"] <= budget
    assert np.all(docs <= np.array(available))
    p = np.array(plan["mixture"])
    assert p.sum() == pytest.approx(1.0) and p.min() >= 0
    assert np.all(p * plan["size"] <= np.array(available) + 1e-6) and p @ prices * plan["size"] <= budget + 1e-6
    assert plan["predicted"] == pytest.approx(_toy_projection(plan["size"], p))
    base = plan["baselines"]
    assert plan["predicted"] <= base["uniform"]["predicted"] and plan["predicted"] <= base["best_single_source"]["predicted"]
    singles = [_toy_projection(min(budget / prices[i], available[i]) // 1, np.eye(3)[i]) for i in range(3)]
    assert base["best_single_source"]["source"] == int(np.argmin(singles))
    assert base["best_single_source"]["predicted"] == pytest.approx(min(singles))


def test_planner_ascends_for_accuracy():
    acc = lambda N, p: -_toy_projection(N, p)
    acc_grad = lambda N, p: -_toy_grad(N, p)
    plan = plan_purchase(acc, acc_grad, [1.0, 1.0, 1.0], [5000] * 3, 3000.0, [1000, 3000], maximise=True)
    assert plan["size"] == 3000
    # Lagrange: 4(p0 − .35) = 4(p1 − .6) = p2 = λ, Σp = 1 → λ = 1/30
    np.testing.assert_allclose(plan["mixture"], [0.35 + 1 / 120, 0.6 + 1 / 120, 1 / 30], atol=1e-3)
    assert plan["predicted"] >= plan["baselines"]["uniform"]["predicted"]


def test_end_to_end_with_measured_ot():
    """Pilots from a known rule on the real MixtureOT; the plan must favour the validation's sources."""
    sources, validation = _toy_sources(seed=7, sizes=(12, 12, 12))
    mot = MixtureOT(sources, validation, reg=5e-2)
    P = _simplex_grid(3, 0.25)
    o = np.array([mot(p)[0] for p in P])
    fits = {N: PseudoQuadraticOT().fit(P, 2.0 + o * (1.0 + 1000.0 / N), o) for N in (1000, 1500)}
    proj = SizeProjection(1000, fits[1000], 1500, fits[1500], mot)
    plan = plan_purchase(proj.predict, proj.grad, [1.0, 1.0, 1.0], [3000] * 3, 2500.0, [1000, 2000], iters=30)
    # The metric grows with OT, so the plan must sit at OT's minimum: below every pilot's OT and
    # stationary on the simplex.
    ot_plan, grad_plan = mot(np.array(plan["mixture"]))
    assert ot_plan <= o.min() and np.abs(grad_plan).max() < 5e-3
    assert plan["size"] == 2500 and plan["cost"] <= 2500.0
    assert plan["predicted"] <= plan["baselines"]["uniform"]["predicted"]


# ---------------------------------------------------------------- embeddings

TEXTS = ["The cat sat on the mat.", "A dog ran through the park!", "", "the cat and the dog, on the mat",
         "Stock markets fell sharply on Tuesday as stock prices dropped.",
         "Stock markets rallied on Wednesday as stock prices rose."]
_EMBED_SCRIPT = """
import hashlib, sys
from scoring.embed import Embedder
texts = {texts!r}
e = Embedder(dim=64, num_buckets=2**16, seed=3).fit(texts[:4]).transform(texts)
sys.stdout.write(hashlib.sha256(e.tobytes()).hexdigest())
"""


def test_embeddings_are_deterministic_across_processes():
    local = Embedder(dim=64, num_buckets=2**16, seed=3).fit(TEXTS[:4]).transform(TEXTS)
    out = subprocess.run([sys.executable, "-c", _EMBED_SCRIPT.format(texts=TEXTS)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == hashlib.sha256(local.tobytes()).hexdigest()
    assert local.dtype == np.float32 and local.shape == (6, 64)
    norms = np.linalg.norm(local, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 3, 4, 5]], 1.0, atol=1e-6)
    assert norms[2] == 0.0  # empty document
    other_seed = Embedder(dim=64, num_buckets=2**16, seed=4).fit(TEXTS[:4]).transform(TEXTS)
    assert not np.allclose(other_seed, local)


def test_tfidf_embeddings_share_the_reference_idf_and_reflect_content():
    emb = Embedder(dim=256, num_buckets=2**16).fit(TEXTS)
    whole = emb.transform(TEXTS)
    np.testing.assert_array_equal(emb.transform(TEXTS[3:5]), whole[3:5])  # batch-independent
    assert whole[0] @ whole[3] > whole[0] @ whole[4]  # cat/mat texts are closer than cat vs markets
    assert whole[4] @ whole[5] > whole[4] @ whole[1]
    with pytest.raises(RuntimeError):
        Embedder().transform(TEXTS)


def test_mean_pooled_embeddings_average_valid_tokens_only():
    table = torch.nn.Embedding(50, 6)
    torch.nn.init.normal_(table.weight, generator=torch.Generator().manual_seed(0))
    docs = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9]]
    got = mean_pooled_embeddings(lambda idx: table(idx), docs, batch_size=2, pad_id=0, autocast_bf16=False)
    w = table.weight.detach().numpy()
    for row, doc in zip(got, docs):
        if doc:
            expected = w[doc].mean(0)
            np.testing.assert_allclose(row, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)
        else:
            assert np.all(row == 0)
    again = mean_pooled_embeddings(lambda idx: table(idx), docs, batch_size=3, pad_id=49, autocast_bf16=False)
    np.testing.assert_allclose(again, got, atol=1e-6)  # neither the batching nor the pad id matters
    bf16 = mean_pooled_embeddings(lambda idx: table(idx) @ torch.eye(6), docs, batch_size=2)
    np.testing.assert_allclose(bf16, got, atol=2e-2)
