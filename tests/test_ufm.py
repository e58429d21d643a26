"""Tests of nclab.ufm: closed form vs solvers, Hessians, symmetry modes, convergence, CLI.

Every check compares against an independent computation: a numerical optimiser, a 1-D
minimisation of the reduced objective, torch autograd, dense eigendecompositions or the matrix
exponential of the rotation symmetry.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from scipy.optimize import minimize_scalar

from nclab.cli import main
from nclab.metrics import nc_metrics
from nclab.ufm import (
    CONVERGENCE_DEFAULTS,
    DEFAULT_LAMBDA_B,
    SOLVERS,
    HessianVectorProduct,
    RotationSymmetry,
    UFMProblem,
    closed_form,
    condition,
    convergence,
    dense_hessian,
    logit_conditioning,
    minimizer,
    nc_record,
    objective,
    objective_and_grad,
    objective_torch,
    simplex_etf,
    solve_gd,
    solve_lbfgs,
)


def ufm(K, n, lam_w, lam_h, delta=0.0, lam_b=DEFAULT_LAMBDA_B, d=None) -> UFMProblem:
    """The UFM problem with these values (the order of the paper's notation, d last)."""
    return UFMProblem(
        num_classes=K,
        n_per_class=n,
        lambda_w=lam_w,
        lambda_h=lam_h,
        smoothing=delta,
        lambda_b=lam_b,
        dim=d,
    )


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=0))
    return e / e.sum(axis=0)


# ----------------------------------------------------------------------------- closed form
def test_closed_form_matches_1d_reduction_and_regime_threshold() -> None:
    """g* and f* against a numerical minimisation of phi(g) on g >= 0."""
    for K, n, lam, delta in [(10, 500, 5e-4, 0.0), (10, 500, 5e-4, 0.2), (5, 3, 0.05, 0.1)]:
        cf = closed_form(ufm(K, n, lam, lam, delta))
        beta = math.sqrt(n * lam * lam)

        def phi(g: float, K: int = K, delta: float = delta, beta: float = beta) -> float:
            return math.log1p((K - 1) * math.exp(-g)) + delta * (K - 1) * g / K + (K - 1) * beta * g

        res = minimize_scalar(phi, bounds=(0.0, 50.0), method="bounded", options={"xatol": 1e-12})
        assert cf.regime == "collapse"
        assert cf.logit_gap == pytest.approx(res.x, rel=1e-6)
        assert cf.objective == pytest.approx(res.fun, rel=1e-12)
        assert cf.p_true == pytest.approx(1 / (1 + (K - 1) * math.exp(-cf.logit_gap)), rel=1e-12)
    # Threshold beta = (1 - delta)/K: just below collapses, at/above is trivial.
    K, n, delta = 4, 2, 0.2
    lam_star = (1 - delta) / K / math.sqrt(n)  # beta = lam sqrt(n) when lambda_W = lambda_H
    assert closed_form(ufm(K, n, lam_star * 0.999, lam_star * 0.999, delta)).regime == "collapse"
    trivial = closed_form(ufm(K, n, lam_star, lam_star, delta))
    assert trivial.regime == "trivial"
    assert trivial.objective == pytest.approx(math.log(K))
    assert trivial.w_norm == 0.0 and trivial.p_true == pytest.approx(1 / K)


def test_ls_has_smaller_gap_norms_and_confidence_than_ce() -> None:
    ce = closed_form(ufm(10, 500, 5e-4, 5e-4, 0.0))
    prev = ce
    for delta in (0.05, 0.1, 0.2):
        ls = closed_form(ufm(10, 500, 5e-4, 5e-4, delta))
        assert ls.logit_gap < prev.logit_gap
        assert ls.w_norm < prev.w_norm and ls.h_norm < prev.h_norm
        assert ls.p_true < prev.p_true and ls.kappa_logit < prev.kappa_logit
        prev = ls


#: (K, n, d, lambda_W, lambda_H, lambda_b, delta) in the collapse regime: d = K-1 and d > K-1,
#: lambda_b = 0 and > 0, CE and several delta.
COLLAPSE_CASES = [
    (4, 3, 5, 1e-2, 1e-2, 1e-3, 0.0),
    (4, 3, 3, 1e-2, 2e-2, 1e-3, 0.1),
    (4, 3, 5, 1e-2, 1e-2, 1e-3, 0.2),
    (5, 2, 6, 5e-3, 2e-2, 0.0, 0.2),
    (5, 4, 6, 5e-3, 2e-2, 0.0, 0.1),
    (3, 4, 2, 2e-2, 1e-2, 0.1, 0.05),
    (3, 5, 2, 2e-2, 5e-3, 0.1, 0.05),
    (6, 2, 8, 3e-3, 3e-3, 1e-3, 0.3),
    (2, 3, 3, 1e-2, 1e-2, 1e-3, 0.3),
    (2, 4, 3, 1e-2, 1e-2, 1e-3, 0.0),
]
#: The same in the trivial regime (beta >= (1 - delta)/K: the minimizer is 0).
TRIVIAL_CASES = [
    (3, 2, 3, 0.3, 0.3, 1e-2, 0.0),
    (4, 5, 4, 0.1, 0.1, 1e-3, 0.3),
    (5, 3, 4, 0.2, 0.1, 0.0, 0.1),
]


@pytest.mark.parametrize("K,n,d,lam_w,lam_h,lam_b,delta", COLLAPSE_CASES)
def test_minimizer_structure(K, n, d, lam_w, lam_h, lam_b, delta) -> None:
    """minimizer(): objective value, logit gap, p_true, NC1/ETF/self-duality, stationarity."""
    pr = ufm(K, n, lam_w, lam_h, delta, lam_b, d=d)
    cf = closed_form(pr)
    assert cf.regime == "collapse"
    W, H, b = minimizer(pr, seed=3)
    assert W.shape == (K, d) and H.shape == (d, K * n) and b.shape == (K,)
    x = pr.pack(W, H, b)
    f, g = objective_and_grad(pr, x)
    assert f == pytest.approx(cf.objective, rel=1e-13)
    assert np.linalg.norm(g) <= 1e-13 * max(1.0, np.linalg.norm(x))  # stationary
    Z = W @ H + b[:, None]
    labels = np.repeat(np.arange(K), n)
    true = Z[labels, np.arange(K * n)]
    wrong = np.arange(K)[:, None] != labels[None, :]
    gaps = (true[None, :] - Z)[wrong]
    assert gaps.size == K * n * (K - 1)
    np.testing.assert_allclose(gaps, cf.logit_gap, rtol=1e-12)
    np.testing.assert_allclose(_softmax(Z)[labels, np.arange(K * n)], cf.p_true, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), cf.w_norm, rtol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(H, axis=0), cf.h_norm, rtol=1e-13)
    gram = W @ W.T / cf.w_norm**2
    np.testing.assert_allclose(gram, (K * np.eye(K) - 1) / (K - 1), atol=1e-13)
    nc = nc_metrics(H.T, labels, weight=W, bias=b).as_dict()
    assert nc["nc1"] < 1e-20 and nc["nc3"] < 1e-20 and nc["nc2_wh"] < 1e-7


def test_trivial_minimizer_is_zero_and_stationary() -> None:
    K, n, lam, delta = 3, 2, 0.3, 0.1
    pr = ufm(K, n, lam, lam, delta, d=1)  # d < K-1 is fine in this regime
    cf = closed_form(pr)
    assert cf.regime == "trivial"
    W, H, b = minimizer(pr)
    assert not W.any() and not H.any() and not b.any()
    f, g = objective_and_grad(pr, pr.pack(W, H, b))
    assert f == pytest.approx(math.log(K), rel=1e-15)
    assert np.abs(g).max() < 1e-15


def test_simplex_etf() -> None:
    for K in (2, 3, 7):
        M = simplex_etf(K)
        assert M.shape == (K, K - 1)
        np.testing.assert_allclose(M @ M.T, (K * np.eye(K) - 1) / (K - 1), atol=1e-14)


# --------------------------------------------------------------------------------- solvers
@pytest.mark.parametrize("K,n,d,lam_w,lam_h,lam_b,delta", COLLAPSE_CASES + TRIVIAL_CASES)
def test_lbfgs_reaches_closed_form(K, n, d, lam_w, lam_h, lam_b, delta) -> None:
    pr = ufm(K, n, lam_w, lam_h, delta, lam_b, d=d)
    cf = closed_form(pr)
    res = solve_lbfgs(pr, seed=1, record_every=5)
    assert abs(res.objective - cf.objective) <= 1e-9 * abs(cf.objective)
    if cf.regime == "collapse":
        assert res.w_norm == pytest.approx(cf.w_norm, rel=1e-6)
        assert res.h_norm == pytest.approx(cf.h_norm, rel=1e-6)
        assert res.nc["nc1"] < 1e-10
        if lam_b > 0:
            assert np.abs(res.b).max() < 1e-6
    else:  # the target is exactly zero: absolute tolerance
        assert res.w_norm < 1e-6 and res.h_norm < 1e-6 and np.abs(res.b).max() < 1e-6
    # History is consistent with the returned point and starts at the initialisation.
    hist = res.history
    assert hist["iteration"][0] == 0 and hist["objective"][0] > res.objective
    assert hist["objective"][-1] == pytest.approx(res.objective, rel=1e-12)
    assert hist["nc_iteration"][-1] == res.iterations


def test_gd_reaches_closed_form_and_history_is_monotone() -> None:
    pr = ufm(4, 3, 1e-2, 1e-2, 0.1, d=5)
    cf = closed_form(pr)
    res = solve_gd(pr, lr=5.0, max_iters=6000, tol=1e-12)
    assert res.converged and res.relative_gap <= 1e-12
    assert res.w_norm == pytest.approx(cf.w_norm, rel=1e-5)
    gaps = res.history["relative_gap"]
    assert np.all(np.diff(res.history["objective"]) <= 1e-15)  # small fixed step: descent
    assert gaps[-1] <= 1e-12 < gaps[0]
    with pytest.raises(ValueError, match="diverged"):
        solve_gd(replace(pr, smoothing=0.0), lr=1e4, max_iters=50, nc_fn=None)


def test_nc_record_matches_nc_metrics() -> None:
    pr = ufm(5, 7, 1e-2, 1e-2, 0.1, d=6)
    x = pr.random_init(seed=4, scale=0.5)
    W, H, b = pr.unpack(x)
    ref = nc_metrics(H.T, pr.labels, weight=W, bias=b).as_dict()
    rec = nc_record(pr, x)
    for key in ("nc1", "nc2_wh", "nc3"):
        assert rec[key] == pytest.approx(ref[key], rel=1e-10)


# ------------------------------------------------------------------ gradient / HVP / Hessian
@pytest.mark.parametrize("delta,lam_b", [(0.0, 1e-3), (0.15, 0.0)])
def test_analytic_gradient_and_hvp_match_autograd(delta, lam_b) -> None:
    pr = ufm(4, 3, 1e-2, 3e-2, delta, lam_b, d=5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(pr.num_params)
    x[-4:] = rng.standard_normal(4)  # non-zero bias
    f, g = objective_and_grad(pr, x)
    xt = torch.tensor(x, requires_grad=True)
    ft = objective_torch(pr, xt)
    (gt,) = torch.autograd.grad(ft, xt)
    assert f == pytest.approx(ft.item(), rel=1e-14) and f == pytest.approx(objective(pr, x))
    np.testing.assert_allclose(g, gt.numpy(), rtol=1e-11, atol=1e-14)
    hess = dense_hessian(pr, x)
    hvp = HessianVectorProduct(pr, x)
    for _ in range(3):
        v = rng.standard_normal(pr.num_params)
        np.testing.assert_allclose(hvp(v), hess @ v, rtol=1e-10, atol=1e-13)
    # finite-difference check of the gradient along a random direction
    v = rng.standard_normal(pr.num_params)
    eps = 1e-6
    fd = (objective(pr, x + eps * v) - objective(pr, x - eps * v)) / (2 * eps)
    assert fd == pytest.approx(g @ v, rel=1e-6)


def test_logit_hessian_kappa() -> None:
    K, n, lam = 10, 500, 5e-4
    kappas = []
    for delta in (0.0, 0.05, 0.1, 0.2):
        cf = closed_form(ufm(K, n, lam, lam, delta))
        lc = logit_conditioning(ufm(K, n, lam, lam, delta))
        q = (1 - cf.p_true) / (K - 1)
        # independent: eigenvalues of diag(p) - p p^T built from the closed-form p
        p = np.full(K, q)
        p[0] = cf.p_true
        evals, evecs = np.linalg.eigh(np.eye(K) - 1.0 / K)
        V = evecs[:, evals > 0.5]
        direct = np.linalg.eigvalsh(V.T @ (np.diag(p) - np.outer(p, p)) @ V)
        np.testing.assert_allclose(lc.eigenvalues, direct, rtol=1e-9)
        np.testing.assert_allclose(lc.eigenvalues, lc.predicted, rtol=1e-9)
        assert lc.eigenvalues[-1] == pytest.approx(K * cf.p_true * (1 - cf.p_true) / (K - 1))
        assert lc.kappa == pytest.approx(K * cf.p_true, rel=1e-9)
        assert lc.kappa_closed_form == pytest.approx(K * cf.p_true, rel=1e-15)
        kappas.append(lc.kappa)
    assert kappas == sorted(kappas, reverse=True)  # LS is better conditioned in logit space


def _orbit_dim(d: int, r: int) -> int:
    return d * (d - 1) // 2 - (d - r) * (d - r - 1) // 2


@pytest.mark.parametrize("K,n,d,lam_b", [(4, 3, 6, 1e-3), (4, 2, 3, 1e-3), (3, 3, 5, 0.0)])
def test_symmetry_zero_modes_counted_and_excluded(K, n, d, lam_b) -> None:
    lam, delta = 1e-2, 0.1
    pr = ufm(K, n, lam, lam, delta, lam_b, d=d)
    W, H, b = minimizer(pr, seed=2)
    x = pr.pack(W, H, b)
    sym = RotationSymmetry(pr, x, include_bias_shift=(lam_b == 0))
    assert sym.rank == K - 1 and sym.orbit_dim == _orbit_dim(d, K - 1)
    hess = dense_hessian(pr, x)
    evals, evecs = np.linalg.eigh(hess)
    zero = np.abs(evals) <= 1e-9 * evals[-1]
    assert zero.sum() == sym.dim == _orbit_dim(d, K - 1) + (lam_b == 0)
    assert evals[0] > -1e-12  # a minimizer: PSD
    # The numerical null space is exactly the span of the symmetry basis.
    Q = sym.basis()
    np.testing.assert_allclose(Q.T @ Q, np.eye(sym.dim), atol=1e-12)
    null = evecs[:, zero]
    sv = np.linalg.svd(Q.T @ null, compute_uv=False)
    np.testing.assert_allclose(sv, 1.0, atol=1e-8)
    # The rotation orbit itself: f(W e^{tA}, e^{-tA} H, b) = f* for a random skew A.
    A = np.random.default_rng(0).standard_normal((d, d))
    A = A - A.T
    Qt = expm(0.3 * A)
    assert objective(pr, pr.pack(W @ Qt, Qt.T @ H, b)) == pytest.approx(objective(pr, x), rel=1e-13)
    # The projector: idempotent, self-adjoint, fixes tangent vectors (W A, -A H, 0).
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal((2, pr.num_params))
    Pu = sym.project(u)
    np.testing.assert_allclose(sym.project(Pu), Pu, atol=1e-12)
    assert Pu @ v == pytest.approx(u @ sym.project(v), rel=1e-10)
    t = np.concatenate([(W @ A).ravel(), (-A @ H).ravel(), np.zeros(K)])
    np.testing.assert_allclose(sym.project(t), t, atol=1e-12)
    # condition(): no other zero modes, and the smallest non-zero eigenvalue is that of the
    # Hessian restricted to the complement of the symmetry basis.
    res = condition(pr, method="dense", seed=2)
    assert res.zero_modes == sym.dim and res.other_zero_modes == 0
    assert res.lambda_min_nonzero == pytest.approx(np.min(evals[~zero]), rel=1e-9)
    assert res.lambda_max == pytest.approx(evals[-1], rel=1e-12)
    # W block >= lambda_W with equality when d > K-1 (directions outside the feature span).
    if d > K - 1:
        assert res.w_block.lambda_min == pytest.approx(lam, rel=1e-10)


@pytest.mark.parametrize("lam_b", [1e-3, 0.0])
def test_lanczos_matches_dense(lam_b) -> None:
    pr = ufm(4, 3, 1e-2, 1e-2, 0.1, lam_b, d=6)
    dense = condition(pr, method="dense")
    lanczos = condition(pr, method="lanczos", tol=1e-13)
    for key in ("lambda_max", "lambda_min_nonzero", "lambda_min_excl_bias_shift"):
        assert getattr(lanczos, key) == pytest.approx(getattr(dense, key), rel=1e-8), key
    for block in ("w_block", "h_block"):
        for key in ("lambda_max", "lambda_min"):
            got = getattr(getattr(lanczos, block), key)
            assert got == pytest.approx(getattr(getattr(dense, block), key), rel=1e-8)
    assert lanczos.symmetry_residual < 1e-12
    assert dense.kappa_logit == pytest.approx(dense.kappa_logit_numeric, rel=1e-9)
    if lam_b > 0:  # the bias shift (0, 0, 1) is an exact eigenvector with eigenvalue lambda_b
        assert dense.lambda_min_nonzero == pytest.approx(lam_b, rel=1e-9)


def test_observed_coupled_mode_eigenvalue() -> None:
    """Empirical identity (docs/theory.md, 7.2): for lambda_W = lambda_H = lambda and K = 10 the
    smallest non-zero eigenvalue (bias shift excluded) is 2 lambda g* q / (K beta) when that is
    below lambda; q = beta + delta/K."""
    K, n, d, lam = 10, 10, 9, 1e-2
    for delta in (0.0, 0.1):
        pr = ufm(K, n, lam, lam, delta, d=d)
        cf = closed_form(pr)
        res = condition(pr, method="lanczos")
        predicted = 2 * lam * cf.logit_gap * cf.q_other / (K * cf.beta)
        assert predicted < lam
        assert res.lambda_min_excl_bias_shift == pytest.approx(predicted, rel=1e-9)


# ------------------------------------------------------------------------------ convergence
def test_convergence_experiment() -> None:
    kw = dict(num_classes=4, n_per_class=5, dim=5, lambda_w=1e-2, lambda_h=1e-2, lr=4.0)
    results = convergence(**kw, smoothings=(0.0, 0.2), max_iters=1500, tol_nc1=1e-6)
    assert [r.smoothing for r in results] == [0.0, 0.2]
    # same initialisation for every delta: identical features at t = 0
    assert results[0].nc1[0] == results[1].nc1[0]
    for r in results:
        cf = closed_form(ufm(4, 5, 1e-2, 1e-2, r.smoothing))
        assert r.iterations.shape == r.objective_gap.shape == r.nc1.shape == (1501,)
        t = r.iters_to_objective_tol
        assert t is not None and r.objective_gap[t] <= 1e-8 < r.objective_gap[t - 1]
        assert np.all(r.objective_gap[:t] > 1e-8)
        t1 = r.iters_to_nc1_tol
        assert t1 is not None and r.nc1[t1] <= 1e-6 and np.all(r.nc1[:t1] > 1e-6)
        assert r.final_w_norm == pytest.approx(cf.w_norm, rel=1e-6)
        # Asymptotic GD rate: the gap contracts by at most (1 - lr * lambda_min)^2 per step,
        # lambda_min = smallest Hessian eigenvalue off the symmetry and bias-shift modes (GD
        # never excites the bias shift: sum_k df/db_k = 0 along the path).  For CE the slowest
        # mode dominates and the rate is matched to ~1e-5; for LS it is excited more weakly.
        hc = condition(ufm(4, 5, 1e-2, 1e-2, r.smoothing, d=5), method="dense")
        rate = (1 - 4.0 * hc.lambda_min_excl_bias_shift) ** 2
        g = r.objective_gap
        i0 = int(np.flatnonzero(g < 1e-8)[0])  # past the transient, above round-off
        observed = (g[i0 + 100] / g[i0]) ** (1 / 100)
        assert observed <= rate * (1 + 1e-4)
        if r.smoothing == 0.0:
            assert observed == pytest.approx(rate, rel=1e-4)
    # iters_to_* is None when the tolerance is never reached
    short = convergence(**kw, smoothings=(0.1,), max_iters=3)
    assert short[0].iters_to_objective_tol is None and short[0].iters_to_nc1_tol is None


def test_convergence_equals_a_plain_gd_loop() -> None:
    """convergence() (built on solve_gd) against GD written out here with nc_metrics."""
    pr = ufm(3, 4, 1e-2, 1e-2, d=3)
    (res,) = convergence(pr, smoothings=(0.1,), lr=3.0, max_iters=40, seed=5)
    pr = replace(pr, smoothing=0.1)
    f_star = closed_form(pr).objective
    x = pr.random_init(seed=5, scale=0.1)
    gaps, nc1 = [], []
    for it in range(41):
        f, g = objective_and_grad(pr, x)
        gaps.append((f - f_star) / abs(f_star))
        nc1.append(nc_metrics(pr.unpack(x)[1].T, pr.labels).nc1)
        x = x - 3.0 * g if it < 40 else x
    np.testing.assert_array_equal(res.iterations, np.arange(41))
    np.testing.assert_allclose(res.objective_gap, gaps, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(res.nc1, nc1, rtol=1e-9)
    assert res.final_w_norm == pytest.approx(np.linalg.norm(pr.unpack(x)[0], axis=1).mean())


def test_both_solvers_share_one_result_type_and_reach_the_same_minimum() -> None:
    pr = ufm(4, 3, 1e-2, 1e-2, 0.1, d=4)
    gd = SOLVERS["gd"](pr, lr=5.0, max_iters=8000, tol=1e-12)
    lbfgs = SOLVERS["lbfgs"](pr)
    assert type(gd) is type(lbfgs) and (gd.method, lbfgs.method) == ("gd", "lbfgs")
    assert gd.history.keys() == lbfgs.history.keys()
    assert gd.objective == pytest.approx(lbfgs.objective, rel=1e-11)
    # W W^T is invariant under the rotation symmetry, so both minimizers give the same Gram
    np.testing.assert_allclose(gd.W @ gd.W.T, lbfgs.W @ lbfgs.W.T, atol=1e-5)


def test_keyword_convenience_equals_the_problem_object() -> None:
    fields = dict(num_classes=4, n_per_class=3, lambda_w=1e-2, lambda_h=2e-2, smoothing=0.1)
    pr = UFMProblem(**fields, dim=5)
    assert closed_form(**fields) == closed_form(pr)
    W1, H1, b1 = minimizer(pr, seed=2)
    W2, H2, b2 = minimizer(**fields, dim=5, seed=2)
    assert np.array_equal(W1, W2) and np.array_equal(H1, H2) and np.array_equal(b1, b2)
    assert condition(pr, method="dense").ratio == condition(**fields, dim=5, method="dense").ratio
    assert solve_lbfgs(pr).objective == solve_lbfgs(**fields, dim=5).objective
    assert pr.dim == 5 and UFMProblem(**fields).dim == 3  # default d = K - 1
    with pytest.raises(TypeError, match="not both"):
        closed_form(pr, smoothing=0.2)
    with pytest.raises(TypeError, match="lambda_x"):
        closed_form(**fields, lambda_x=1.0)
    with pytest.raises(TypeError, match="UFMProblem"):
        closed_form(4)
    with pytest.raises(TypeError):
        UFMProblem(4, 3, 1e-2, 1e-2)  # keywords only: positional orders differed historically


def test_cli_problem_defaults_are_the_convergence_defaults() -> None:
    from nclab.commands import ufm as ufm_command

    for key, value in ufm_command._DEFAULTS.items():
        expected = CONVERGENCE_DEFAULTS.get(key, DEFAULT_LAMBDA_B if key == "lambda_b" else None)
        assert value == expected, key


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(n_per_class=0), "n_per_class"),
        (dict(lambda_w=0.0), "lambda_w"),
        (dict(lambda_h=-1e-3), "lambda_h"),
        (dict(smoothing=1.0), "smoothing"),
        (dict(smoothing=-0.1), "smoothing"),
        (dict(lambda_b=-1.0), "lambda_b"),
        (dict(dim=0), "dim"),
    ],
)
def test_bad_inputs(kwargs, match) -> None:
    base = dict(num_classes=4, n_per_class=3, lambda_w=1e-2, lambda_h=1e-2)
    for function in (closed_form, solve_gd, solve_lbfgs, condition, convergence):
        with pytest.raises(ValueError, match=match):
            function(**{**base, **kwargs})


def test_dim_too_small_for_collapse() -> None:
    with pytest.raises(ValueError, match="K-1"):
        minimizer(ufm(5, 2, 1e-2, 1e-2, d=3))
    for solver in (solve_gd, solve_lbfgs, convergence):
        with pytest.raises(ValueError, match="K-1"):
            solver(ufm(5, 2, 1e-2, 1e-2, d=3))


# ------------------------------------------------------------------------------------ CLI
def _json_out(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[dict]:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_closed_form_and_solve(capsys) -> None:
    rows = _json_out(
        capsys,
        ["ufm", "closed-form", "-K", "10", "-n", "500", "--lambda-w", "5e-4", "--lambda-h", "5e-4",
         "--smoothing", "0", "0.1", "--json"],
    )  # fmt: skip
    assert [r["smoothing"] for r in rows] == [0.0, 0.1]
    ref = closed_form(ufm(10, 500, 5e-4, 5e-4, 0.1))
    assert rows[1]["logit_gap"] == pytest.approx(ref.logit_gap) and rows[1]["regime"] == "collapse"
    rows = _json_out(
        capsys,
        ["ufm", "solve", "-K", "3", "-n", "2", "-d", "3", "--lambda-w", "1e-2", "--lambda-h",
         "1e-2", "--smoothing", "0.1", "--json"],
    )  # fmt: skip
    assert rows[0]["relative_gap"] <= 1e-9 and rows[0]["method"] == "lbfgs"
    rows = _json_out(
        capsys,
        ["ufm", "solve", "-K", "3", "-n", "2", "-d", "3", "--method", "gd", "--lr", "5",
         "--max-iters", "40", "--smoothing", "0.1", "--json"],
    )  # fmt: skip
    direct = solve_gd(ufm(3, 2, 5e-3, 5e-3, 0.1, d=3), lr=5.0, max_iters=40)
    assert rows[0]["method"] == "gd" and rows[0]["iterations"] == 40
    assert rows[0]["objective"] == pytest.approx(direct.objective, rel=1e-12)
    assert main(["ufm", "closed-form"]) == 0
    assert "kappa_logit" in capsys.readouterr().out


def test_cli_condition_and_convergence(capsys, tmp_path) -> None:
    rows = _json_out(
        capsys,
        ["ufm", "condition", "-K", "3", "-n", "2", "-d", "3", "--lambda-w", "1e-2",
         "--lambda-h", "1e-2", "--smoothing", "0", "0.2", "--json"],
    )  # fmt: skip
    assert len(rows) == 2 and rows[0]["orbit_dim"] == _orbit_dim(3, 2)
    assert rows[0]["kappa_logit"] > rows[1]["kappa_logit"]
    plot = tmp_path / "conv.png"
    rows = _json_out(
        capsys,
        ["ufm", "convergence", "-K", "3", "-n", "2", "-d", "3", "--lambda-w", "1e-2",
         "--lambda-h", "1e-2", "--max-iters", "300", "--lr", "5", "--smoothing", "0", "0.1",
         "--json", "--plot", str(plot)],
    )  # fmt: skip
    assert [r["smoothing"] for r in rows] == [0.0, 0.1]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    splot = tmp_path / "solve.png"
    assert main(["ufm", "solve", "-K", "3", "-n", "2", "-d", "3", "--plot", str(splot)]) == 0
    assert splot.stat().st_size > 0
    # bad input: one-line error, exit code 2
    assert main(["ufm", "closed-form", "--smoothing", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "smoothing" in err and "Traceback" not in err
    assert main(["ufm", "solve", "-K", "10", "-d", "4"]) == 2
    assert "K-1" in capsys.readouterr().err
