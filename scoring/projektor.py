"""Projektor: project a model's metric for a data mixture from a few pilot runs (docs/methods.md §5).

Pure compute. The pieces, in the order a `projection` job uses them:

1. ``MixtureOT(sources, validation)`` — the mixture's debiased Sinkhorn divergence to the validation
   set as a function of p, with its gradient: ``ot_value, dOT_dp = mixture_ot(p)``.
   Construction of D(N, p): *weighted points* — every revealed point of source i carries mass
   p_i / n_i (n_i = its number of revealed points). Subsampling p_i·N points would make OT(p) a
   noisy step function of p; weighting makes it smooth, so its derivative exists and is exact:
   ∂S/∂p_i = mean over source i's points of φ = f_ab − f_aa (the debiased Sinkhorn potential).
   It does not depend on N (the pilot sizes differ only through the fitted coefficients).
   The gradient is *calibrated* to the simplex: its mean over sources is subtracted, so it sums to
   zero (only the tangent part is meaningful on Σp = 1), and grad·d is the exact derivative of
   OT along any direction d with Σd = 0 (tested against finite differences). The paper's
   ``(1/n_i)(Σ_{x∈i} f − n_i/(N−n_i)·Σ_{x∉i} f)`` is the subsampled-set analogue: the mean
   potential over source i minus the mean over the other points, i.e. the derivative along
   "move mass onto i from the rest of the mixture".
2. ``PseudoQuadraticOT`` (and the ``PseudoQuadraticNoOT`` baseline): one least-squares fit per pilot
   size N_k of measured metric against (p, OT(p)).
3. ``project_log_n`` — Stage 2, a straight line in log N through the two pilot sizes;
   ``SizeProjection`` bundles two fits + the OT function into ``predict(N, p)`` / ``grad(N, p)``.
4. ``optimise_mixture`` (projected gradient, Stage 3) and ``plan_purchase`` (size and mixture under
   price, availability and budget constraints, compared with uniform and best-single-source buys).

Cost scaling for Sinkhorn: squared Euclidean cost, and ``reg`` is relative — the entropic
regularisation is ε = reg × (mean squared distance between the X and Y points, unweighted). With
reg = 1e-2 the blur is 1% of a typical cost whatever the embedding's scale. Divergences and
potentials are returned in the original cost units. In ``MixtureOT`` the scale is computed once
from all revealed points, so it does not change with p. Cost: O(n·m) memory and time per Sinkhorn
iteration for n mixture points and m validation points — keep them to a few thousand each.
"""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import ot
from scipy.special import logsumexp

_MAX_EXPONENT = 600.0  # exp(-600) ≈ 1e-261: above this C/ε the plain kernel would underflow


# ---------------------------------------------------------------- Sinkhorn divergence

def _sqdist(X, Y) -> np.ndarray:
    return ot.dist(np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64), metric="sqeuclidean")


def _softmin(eps: float, C: np.ndarray, log_w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Row-wise −ε·log Σ_j w_j·exp((h_j − C_ij)/ε): the Sinkhorn update, defined at any point."""
    return -eps * logsumexp(log_w[None, :] + (h[None, :] - C) / eps, axis=1)


def _entropic_ot(a, b, C, eps, tol, max_iter):
    """OT_ε(a, b) with the KL(P | a⊗b) entropy (a, b > 0); returns (value, g) where g is the
    potential on b's points. The value is the dual objective <a, f> + <b, g>, with f the exact
    softmin of g so that the first marginal holds exactly. Stops when the second marginal's error
    is below tol·‖b‖₂ (a relative tolerance)."""
    log_b = np.log(b)
    plain = C.max() / eps < _MAX_EXPONENT  # scaling-vector Sinkhorn is ~10× faster than log-domain
    _, log = ot.sinkhorn(a, b, C, eps, method="sinkhorn" if plain else "sinkhorn_log",
                         numItermax=max_iter, stopThr=tol * np.linalg.norm(b), log=True)
    log_v = np.log(log["v"]) if plain else log["log_v"]
    g = eps * (log_v - log_b)
    f = _softmin(eps, C, log_b, g)
    return float(a @ f + b @ g), g


def _symmetric_ot(a, C, eps, tol, max_iter):
    """OT_ε(a, a) and its symmetric potential f (f = softmin_a(f)), by the averaged iteration
    f ← ½(f + softmin_a(f)) (Feydy et al. 2019). The generic Sinkhorn pair (f, g) is not used here:
    when groups of points barely interact, each group's f can shift against its g with the marginals
    unchanged, so f alone would be arbitrary per group. The symmetric fixed point is unique.
    Stops when the marginal violation ‖a·(exp((f − T f)/ε) − 1)‖₂ < tol·‖a‖₂, as ``_entropic_ot``."""
    log_a = np.log(a)
    kernel = np.exp(-C / eps) if C.max() / eps < _MAX_EXPONENT else None
    f = np.zeros(len(a))
    for _ in range(max_iter):
        if kernel is None:
            t = _softmin(eps, C, log_a, f)
        else:  # the same softmin through a matrix–vector product, shifted against overflow
            top = f.max()
            t = -top - eps * np.log(kernel @ (a * np.exp((f - top) / eps)))
        done = np.linalg.norm(a * np.expm1((f - t) / eps)) < tol * np.linalg.norm(a)
        f = 0.5 * (f + t)
        if done:
            break
    else:
        warnings.warn("symmetric Sinkhorn did not converge; raise max_iter or reg")
    return 2.0 * float(a @ f), f


def _debiased(a, Cxy, Cxx, b, ot_bb, eps, tol, max_iter):
    """S(a, b) and φ = ∂S/∂a on every X point (mass-0 points included, via the softmin extension).
    ∂OT(a,b)/∂a = f_ab and ∂OT(a,a)/∂a = 2·f_aa (envelope theorem), so φ = f_ab − f_aa."""
    live = a > 0
    a_s = a[live]
    ot_ab, g_ab = _entropic_ot(a_s, b, Cxy[live], eps, tol, max_iter)
    ot_aa, f_sym = _symmetric_ot(a_s, Cxx[np.ix_(live, live)], eps, tol, max_iter)
    f_ab = _softmin(eps, Cxy, np.log(b), g_ab)
    f_aa = _softmin(eps, Cxx[:, live], np.log(a_s), f_sym)
    return ot_ab - 0.5 * ot_aa - 0.5 * ot_bb, f_ab, f_aa


def _uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def sinkhorn_divergence(X, Y, a=None, b=None, reg: float = 1e-2, cost_scale: float | None = None,
                        return_potentials: bool = False, tol: float = 1e-6, max_iter: int = 10_000):
    """Debiased Sinkhorn divergence S = OT_ε(a,b) − ½OT_ε(a,a) − ½OT_ε(b,b), squared Euclidean cost.

    ``a``, ``b``: weights of the rows of X and Y (uniform if None; zeros allowed in a).
    ε = reg × cost_scale, cost_scale defaulting to the mean squared distance between X and Y rows.
    With ``return_potentials``: (S, φ) where φ(x) = ∂S/∂a_x on every row of X (the potential of
    OT(a,b) minus the symmetric potential of OT(a,a)); φ is defined up to a constant on Σa = 1.
    """
    a = _uniform(len(X)) if a is None else np.asarray(a, dtype=np.float64)
    b = _uniform(len(Y)) if b is None else np.asarray(b, dtype=np.float64)
    Cxy, Cxx, Cyy = _sqdist(X, Y), _sqdist(X, X), _sqdist(Y, Y)
    eps = reg * (float(Cxy.mean()) if cost_scale is None else cost_scale)
    ot_bb, _ = _symmetric_ot(b[b > 0], Cyy[np.ix_(b > 0, b > 0)], eps, tol, max_iter)
    value, f_ab, f_aa = _debiased(a, Cxy[:, b > 0], Cxx, b[b > 0], ot_bb, eps, tol, max_iter)
    return (value, f_ab - f_aa) if return_potentials else value


def mixture_weights(p, source_sizes) -> np.ndarray:
    """Point masses of the weighted-points mixture: p_i / n_i on each of source i's n_i points."""
    p, sizes = np.asarray(p, dtype=np.float64), np.asarray(source_sizes)
    return np.repeat(p / sizes, sizes)


def ot_gradient(potential, source_sizes) -> np.ndarray:
    """∂S/∂p_i = mean of the potential over source i's points, calibrated to sum to zero."""
    bounds = np.concatenate([[0], np.cumsum(source_sizes)])
    per_source = np.array([potential[lo:hi].mean() for lo, hi in itertools.pairwise(bounds)])
    return per_source - per_source.mean()


class MixtureOT:
    """OT(p) = S(mixture of the revealed sources with ratio p, validation set), and ∂OT/∂p.

    ``MixtureOT(sources, validation)(p) -> (value, grad)``; cost matrices are computed once and the
    last result is cached (planners ask for the value and the gradient at the same p for several
    N). Every call starts Sinkhorn afresh, so the result for a p does not depend on earlier calls.
    """

    def __init__(self, sources, validation, reg: float = 1e-2, cost_scale: float | None = None,
                 tol: float = 1e-6, max_iter: int = 10_000):
        X = np.concatenate([np.asarray(s, dtype=np.float64) for s in sources])
        self.source_sizes = np.array([len(s) for s in sources])
        self.tol, self.max_iter = tol, max_iter
        self._Cxy, self._Cxx = _sqdist(X, validation), _sqdist(X, X)
        self.eps = reg * (float(self._Cxy.mean()) if cost_scale is None else cost_scale)
        self._b = _uniform(len(validation))
        self._ot_bb, _ = _symmetric_ot(self._b, _sqdist(validation, validation), self.eps, tol, max_iter)
        self._cache: tuple[bytes, float, np.ndarray] | None = None

    def __call__(self, p) -> tuple[float, np.ndarray]:
        p = np.asarray(p, dtype=np.float64)
        if self._cache is not None and self._cache[0] == p.tobytes():
            return self._cache[1], self._cache[2].copy()
        a = mixture_weights(p, self.source_sizes)
        value, f_ab, f_aa = _debiased(a, self._Cxy, self._Cxx, self._b, self._ot_bb, self.eps,
                                      self.tol, self.max_iter)
        grad = ot_gradient(f_ab - f_aa, self.source_sizes)
        self._cache = (p.tobytes(), value, grad)
        return value, grad.copy()


# ---------------------------------------------------------------- Stage 1 predictors

class _PolyFit:
    """Least squares on features of (p, OT), centred target (the mean is an unpenalised intercept c0).

    ``ridge``: a penalty λ on column-standardised features, ``0`` for OLS, ``"loo"``: the λ of a
    small grid (0 included) with the lowest leave-one-out MAE, or ``"auto"``: OLS when there are at
    least ``num_features + 3`` pilots, otherwise as ``"loo"``. Rank-deficient designs (e.g. two sources, where p_1 + p_2 = 1) get
    the minimum-norm solution, which predicts identically on the simplex.
    """

    uses_ot = False
    _LAMBDAS = (0.0,) + tuple(10.0 ** np.arange(-6.0, 1.5, 0.5))

    def __init__(self, ridge: float | str = "auto"):
        self.ridge = ridge

    def _features(self, P, ot_values) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def _solve(X, y, lam):
        scale = np.sqrt((X ** 2).mean(axis=0))
        scale[scale == 0] = 1.0
        Z = X / scale
        gram = Z.T @ Z / len(y) + lam * np.eye(Z.shape[1])
        beta = np.linalg.pinv(gram, rcond=1e-12, hermitian=True) @ (Z.T @ (y - y.mean())) / len(y)
        return beta / scale, float(y.mean())

    def _loo(self, X, y, lam) -> np.ndarray:
        """Exact leave-one-out errors by refitting (pilots are few, so this is cheap)."""
        keep = ~np.eye(len(y), dtype=bool)
        errs = []
        for i in range(len(y)):
            beta, c0 = self._solve(X[keep[i]], y[keep[i]], lam)
            errs.append(y[i] - (X[i] @ beta + c0))
        return np.abs(np.array(errs))

    def fit(self, mixtures, metrics, ot_values=None):
        P = np.atleast_2d(np.asarray(mixtures, dtype=np.float64))
        self.num_sources = P.shape[1]
        X, y = self._features(P, ot_values), np.asarray(metrics, dtype=np.float64)
        if self.ridge in ("auto", "loo"):
            if len(y) < 3 or (self.ridge == "auto" and len(y) >= X.shape[1] + 3):
                self.lam = 0.0
            else:
                self.lam = min(self._LAMBDAS, key=lambda lam: self._loo(X, y, lam).mean())
        else:
            self.lam = float(self.ridge)
        self.beta, self.c0 = self._solve(X, y, self.lam)
        self._X, self._y = X, y
        resid = y - (X @ self.beta + self.c0)
        total = ((y - y.mean()) ** 2).sum()
        self.r2 = float(1.0 - (resid ** 2).sum() / total) if total > 0 else 1.0
        return self

    def loo_error(self) -> float:
        """Leave-one-out mean absolute error of the pilots (λ held at its chosen value)."""
        return float(self._loo(self._X, self._y, self.lam).mean()) if len(self._y) > 1 else float("nan")

    def predict(self, p, ot_value=None):
        P = np.asarray(p, dtype=np.float64)
        out = self._features(np.atleast_2d(P), ot_value) @ self.beta + self.c0
        return float(out[0]) if P.ndim == 1 else out

    @property
    def num_pilots(self) -> int:
        return len(self._y)

    @property
    def num_coefficients(self) -> int:
        """The numbers the fit chooses: one per feature, and the intercept."""
        return len(self.beta) + 1

    def diagnostics(self) -> dict:
        """How far the fit can be trusted. With fewer pilots than coefficients the fit can pass
        through every pilot whatever the truth (6 pilots for 13 coefficients gave R² = 1.0), so R²
        is not reported then (None): the leave-one-out error is the figure to judge it by."""
        under = self.num_pilots < self.num_coefficients
        loo = self.loo_error()
        return {"num_pilots": self.num_pilots, "num_coefficients": self.num_coefficients, "underdetermined": under,
                "r2": None if under else self.r2, "loo_mae": loo if math.isfinite(loo) else None}

    def state_dict(self) -> dict:
        """What predicting and differentiating need, as plain JSON-able values (no pickle)."""
        return {"kind": type(self).__name__, "ridge": self.ridge, "lam": self.lam, "beta": self.beta.tolist(),
                "c0": self.c0, "r2": self.r2, "num_sources": self.num_sources,
                "drop_c2": getattr(self, "drop_c2", False)}


def fit_from_state(state: dict) -> "_PolyFit":
    """A fitted predictor back from its state_dict (it predicts; it cannot report LOO errors)."""
    cls = {c.__name__: c for c in (PseudoQuadraticOT, PseudoQuadraticNoOT)}[state["kind"]]
    fit = cls(state["ridge"], state["drop_c2"]) if cls is PseudoQuadraticOT else cls(state["ridge"])
    fit.lam, fit.beta, fit.c0 = state["lam"], np.asarray(state["beta"], dtype=np.float64), state["c0"]
    fit.r2, fit.num_sources = state["r2"], state["num_sources"]
    return fit


class PseudoQuadraticOT(_PolyFit):
    """L̂(p) = Σ_i (b2_i p_i² + b1_i p_i)·OT + Σ_i (c2_i p_i² + c1_i p_i) + c0, one fit per pilot size.

    The paper also lists b0·OT and c0 terms. On the simplex Σ p_i = 1, so b0·OT = Σ_i b0·p_i·OT
    is absorbed into b1 exactly; the intercept c0 is kept (it is the pilots' mean, unpenalised).
    ``drop_c2`` removes the c2_i terms as the reference notebook does with few pilots.
    """

    uses_ot = True

    def __init__(self, ridge: float | str = "auto", drop_c2: bool = False):
        super().__init__(ridge)
        self.drop_c2 = drop_c2

    def _features(self, P, ot_values):
        if ot_values is None:
            raise ValueError("PseudoQuadraticOT needs the OT value of every mixture")
        o = np.broadcast_to(np.asarray(ot_values, dtype=np.float64), (len(P),))[:, None]
        cols = [P ** 2 * o, P * o] + ([] if self.drop_c2 else [P ** 2]) + [P]
        return np.hstack(cols)

    @property
    def coef(self) -> dict:
        m = self.num_sources
        parts = np.split(self.beta, 3 if self.drop_c2 else 4)
        b2, b1 = parts[0], parts[1]
        c2 = np.zeros(m) if self.drop_c2 else parts[2]
        return {"b2": b2, "b1": b1, "b0": 0.0, "c2": c2, "c1": parts[-1], "c0": self.c0}

    def grad_p(self, p, ot_value, dOT_dp) -> np.ndarray:
        """∂L̂/∂p (calibrated to sum to zero). The OT gradient is scaled by the whole factor
        A(p) = Σ_j (b2_j p_j² + b1_j p_j) that multiplies OT — the chain rule; the paper writes
        the i-th term alone there."""
        k, p = self.coef, np.asarray(p, dtype=np.float64)
        factor = float(np.sum(k["b2"] * p ** 2 + k["b1"] * p))
        g = factor * np.asarray(dOT_dp) + (2 * k["b2"] * p + k["b1"]) * ot_value + 2 * k["c2"] * p + k["c1"]
        return g - g.mean()


class PseudoQuadraticNoOT(_PolyFit):
    """Baseline without OT: L̂(p) = Σ_i (c2_i p_i² + c1_i p_i) + c0."""

    def _features(self, P, ot_values=None):
        return np.hstack([P ** 2, P])

    @property
    def coef(self) -> dict:
        c2, c1 = np.split(self.beta, 2)
        return {"c2": c2, "c1": c1, "c0": self.c0}

    def grad_p(self, p, ot_value=None, dOT_dp=None) -> np.ndarray:
        g = 2 * self.coef["c2"] * np.asarray(p, dtype=np.float64) + self.coef["c1"]
        return g - g.mean()


# ---------------------------------------------------------------- Stage 2: projection in N

def project_log_n(N, N0, N1, L0, L1):
    """[log(N/N0)·L1 − log(N/N1)·L0] / log(N1/N0): the line in log N through (N0, L0), (N1, L1).
    Linear in (L0, L1), so it projects gradients by the same rule."""
    N = np.asarray(N, dtype=np.float64)
    return (np.log(N / N0) * np.asarray(L1) - np.log(N / N1) * np.asarray(L0)) / math.log(N1 / N0)


class SizeProjection:
    """Stage 2 over two pilot-size fits: ``predict(N, p)`` and ``grad(N, p)``.

    ``ot_fn(p) -> (OT, ∂OT/∂p)`` (e.g. a ``MixtureOT``); unused when the fits are ``NoOT``.
    """

    def __init__(self, N0, fit0, N1, fit1, ot_fn=None):
        if not N1 > N0:
            raise ValueError("need two pilot sizes N0 < N1")
        if fit0.uses_ot and ot_fn is None:
            raise ValueError("OT-based fits need ot_fn")
        self.N0, self.N1, self.fit0, self.fit1, self.ot_fn = N0, N1, fit0, fit1, ot_fn

    def _ot(self, p):
        return self.ot_fn(p) if self.fit0.uses_ot else (None, None)

    def predict(self, N, p) -> float:
        o, _ = self._ot(p)
        return float(project_log_n(N, self.N0, self.N1, self.fit0.predict(p, o), self.fit1.predict(p, o)))

    def grad(self, N, p) -> np.ndarray:
        o, do = self._ot(p)
        return project_log_n(N, self.N0, self.N1, self.fit0.grad_p(p, o, do), self.fit1.grad_p(p, o, do))


# ---------------------------------------------------------------- Stage 3: choose the mixture

def project_simplex(v) -> np.ndarray:
    """Euclidean projection onto {p ≥ 0, Σp = 1} (Duchi et al. 2008, sort-based)."""
    v = np.asarray(v, dtype=np.float64)
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    rho = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


def _min_cost(upper, prices) -> float:
    """Cheapest c·p over {simplex, p ≤ upper}: fill the cheapest sources first."""
    left, cost = 1.0, 0.0
    for i in np.argsort(prices, kind="stable"):
        take = min(upper[i], left)
        cost, left = cost + take * prices[i], left - take
    return cost if left <= 1e-12 else math.inf


def _feasible(upper, prices, budget) -> bool:
    if np.minimum(upper, 1.0).sum() < 1.0 - 1e-12:
        return False
    return prices is None or _min_cost(upper, prices) <= budget * (1 + 1e-12)


def project_feasible(v, upper=None, prices=None, budget=None, iters: int = 60) -> np.ndarray:
    """Euclidean projection onto {simplex, p_i ≤ upper_i, prices·p ≤ budget} (any part optional).

    KKT: p = clip(v − τ − μ·prices, 0, upper). For a fixed μ, τ is exact (Σp is piecewise linear
    in τ); prices·p(μ) is non-increasing in μ (it is the derivative of the concave dual), so μ ≥ 0
    is found by bisection. The set must be non-empty (see ``plan_purchase``).
    """
    v = np.asarray(v, dtype=np.float64)
    if upper is None and prices is None:
        return project_simplex(v)
    hi_cap = np.full(len(v), np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    c = np.zeros(len(v)) if prices is None else np.asarray(prices, dtype=np.float64)

    def at(mu):  # the capped-simplex projection of v − μ·c: Σ clip(w − τ, 0, cap) = 1 is
        w = v - mu * c  # piecewise linear in τ, so τ is interpolated between its breakpoints
        taus = np.unique(np.concatenate([w, (w - hi_cap)[np.isfinite(hi_cap)], [w.min() - 1.0]]))
        mass = np.clip(w[None, :] - taus[:, None], 0, hi_cap).sum(axis=1)  # decreasing in τ
        if mass[0] < 1.0:
            raise ValueError("empty feasible set: the caps sum to less than 1")
        k = np.nonzero(mass >= 1.0)[0][-1]
        tau = taus[k] if mass[k] == 1.0 else taus[k] + (mass[k] - 1.0) * (taus[k + 1] - taus[k]) / (mass[k] - mass[k + 1])
        return np.clip(w - tau, 0, hi_cap)

    p = at(0.0)
    if prices is None or budget is None or c @ p <= budget:
        return p
    mu_lo, mu_hi = 0.0, 1.0
    while c @ at(mu_hi) > budget and mu_hi < 1e12:
        mu_lo, mu_hi = mu_hi, 2.0 * mu_hi
    for _ in range(iters):
        mid = 0.5 * (mu_lo + mu_hi)
        mu_lo, mu_hi = (mid, mu_hi) if c @ at(mid) > budget else (mu_lo, mid)
    return at(mu_hi)  # the upper end keeps the budget


def optimise_mixture(value_and_grad, m: int, maximise: bool = False, lr: float | str = "auto",
                     iters: int = 100, decay: float = 0.9, p0=None, project=project_simplex):
    """Projected gradient on the simplex (or any convex set via ``project``): p ← Π(p ∓ lr·decay^t·∇).

    ``value_and_grad(p) -> (value, grad)`` must give the gradient *projected to the target N*
    (``SizeProjection.grad``), not a pilot size's. ``lr="auto"`` makes the first step 1.0 long in
    p (the simplex's edges are √2 long), so the step does not depend on the metric's units. Returns
    (best p seen, its value), the start included.
    """
    p = project(np.full(m, 1.0 / m) if p0 is None else np.asarray(p0, dtype=np.float64))
    sign = 1.0 if maximise else -1.0
    best_p, best_v = p, None
    for t in range(iters + 1):
        value, grad = value_and_grad(p)
        if best_v is None or (value > best_v if maximise else value < best_v):
            best_p, best_v = p, float(value)
        if t == iters:
            break
        grad = np.asarray(grad, dtype=np.float64)
        if lr == "auto":
            norm = np.linalg.norm(grad - grad.mean())
            if norm == 0:
                break
            lr = 1.0 / norm
        p = project(p + sign * lr * decay ** t * grad)
    return best_p, best_v


def _max_affordable(p, prices, available, budget, fallback: int) -> int:
    """Largest N with N·Σp_i·price_i ≤ budget and N·p_i ≤ available_i (``fallback`` if unbounded)."""
    n = math.inf
    if budget is not None and prices is not None and prices @ p > 0:
        n = budget / (prices @ p)
    if available is not None:
        used = p > 0
        n = min(n, float(np.min(available[used] / p[used])))
    return math.floor(n + 1e-9) if math.isfinite(n) else int(fallback)


def plan_purchase(predict_fn, grad_fn, prices=None, available=None, budget=None, candidate_sizes=(),
                  maximise: bool = False, lr: float | str = "auto", iters: int = 100) -> dict:
    """Choose the size N and mixture p with the best projected metric under the constraints
    cost Σ p_i·N·price_i ≤ budget and p_i·N ≤ available_i (``None`` = unconstrained).

    For each candidate N: projected gradient over the feasible polytope (``project_feasible``)
    from the uniform mixture, then the same p stretched to the largest N it can afford. The uniform
    mixture and each single source at their own largest affordable N (the largest candidate size if
    nothing bounds it) are candidates too, so the plan is never worse than those baselines on its
    own projection. ``predict_fn(N, p) -> metric``; ``grad_fn(N, p) -> ∂metric/∂p`` (e.g. a
    ``SizeProjection``'s methods). Returns the best entry ``{size, mixture, predicted,
    docs_per_source, cost}`` plus ``baselines: {uniform: entry, best_single_source: entry + source}``
    (a baseline is None when it cannot buy a single document). Documents are rounded down.
    """
    prices = None if prices is None else np.asarray(prices, dtype=np.float64)
    available = None if available is None else np.asarray(available, dtype=np.float64)
    if prices is None and available is None:
        raise ValueError("give prices or available (one entry per source)")
    prices_for_budget = prices if budget is not None else None
    m = len(prices) if prices is not None else len(available)
    fallback = max(candidate_sizes, default=0)
    better = (lambda x, y: x > y) if maximise else (lambda x, y: x < y)

    def entry(N, p):
        p = np.asarray(p, dtype=np.float64)
        docs = np.floor(p * N + 1e-9).astype(int)
        cost = float(docs @ prices) if prices is not None else 0.0
        return {"size": int(N), "mixture": p.tolist(), "predicted": float(predict_fn(N, p)),
                "docs_per_source": docs.tolist(), "cost": cost}

    def at_own_size(p, **extra):
        n = _max_affordable(p, prices_for_budget, available, budget, fallback)
        return {**extra, **entry(n, p)} if n >= 1 else None

    def best_of(entries):
        entries = [e for e in entries if e is not None]
        best = entries[0] if entries else None
        for e in entries[1:]:
            if better(e["predicted"], best["predicted"]):
                best = e
        return best

    uniform = at_own_size(np.full(m, 1.0 / m))
    best_single = best_of([at_own_size(np.eye(m)[i], source=i) for i in range(m)])
    candidates = [uniform, best_single]
    for N in sorted(candidate_sizes):
        upper = None if available is None else available / N
        b = None if prices_for_budget is None else budget / N
        if not _feasible(np.full(m, np.inf) if upper is None else upper, prices_for_budget, b):
            continue

        def project(v, upper=upper, b=b):
            return project_feasible(v, upper, prices_for_budget, b)

        def value_and_grad(p, N=N):
            return predict_fn(N, p), grad_fn(N, p)

        p_opt, _ = optimise_mixture(value_and_grad, m, maximise, lr, iters, project=project)
        candidates.append(entry(N, p_opt))
        stretched = at_own_size(p_opt)
        if stretched is not None and stretched["size"] > N:
            candidates.append(stretched)
    best = best_of(candidates)
    if best is None:
        raise ValueError("no affordable purchase: every size breaks the budget or the availability")
    best = {k: v for k, v in best.items() if k != "source"}
    return {**best, "baselines": {"uniform": uniform, "best_single_source": best_single}}
