"""Float64 solvers for the UFM: full-batch gradient descent and L-BFGS, plus the GD
convergence experiment (CE vs label smoothing from one initialisation).

Histories record the objective ``f``, its gap to the closed-form minimum ``f*`` of
:func:`nclab.ufm.closed_form` and neural-collapse metrics from :func:`nclab.metrics.nc_metrics`
(``nc1``, ``nc2_wh``, ``nc3``) of the features ``H^T`` with classifier ``(W, b)``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nclab.ufm.closed_form import DEFAULT_LAMBDA_B, UFMClosedForm, closed_form
from nclab.ufm.objective import UFMProblem, objective_and_grad

NC_KEYS: tuple[str, ...] = ("nc1", "nc2_wh", "nc3")

#: Defaults of the convergence experiment (also used by ``nclab ufm convergence``).  With
#: ``lambda_W = lambda_H = 5e-3``, ``n = 50`` the UFM is in the collapse regime for every
#: ``delta < 0.65`` and GD with step 2.0 reaches 1e-8 relative objective gap within a few
#: thousand iterations.
CONVERGENCE_DEFAULTS: dict[str, Any] = dict(
    num_classes=10,
    n_per_class=50,
    dim=32,
    lambda_w=5e-3,
    lambda_h=5e-3,
    smoothings=(0.0, 0.05, 0.1, 0.2),
    lr=2.0,
    max_iters=3000,
    tol_objective=1e-8,
    tol_nc1=1e-3,
)


def _check_dim(problem: UFMProblem, cf: UFMClosedForm) -> None:
    if cf.regime == "collapse" and problem.dim < problem.num_classes - 1:
        raise ValueError(
            f"dim={problem.dim} < K-1={problem.num_classes - 1}: the closed form the solver is "
            "compared against needs d >= K-1 in the collapse regime; use dim >= K-1"
        )


def _class_stats(problem: UFMProblem, H: np.ndarray) -> tuple[np.ndarray, ...]:
    """Class means (K, d), within-class covariance (d, d) and per-class variance (K,) of ``H``.

    Vectorised for the sorted balanced layout ``labels = repeat(arange(K), n)``.
    """
    K, n, d = problem.num_classes, problem.n_per_class, problem.dim
    Hc = H.reshape(d, K, n)
    means = Hc.mean(axis=2)  # (d, K)
    dev = Hc - means[:, :, None]
    flat = dev.reshape(d, K * n)
    sigma_w = flat @ flat.T / (K * n)
    class_var = np.einsum("dkn,dkn->k", dev, dev) / n
    return means.T, sigma_w, class_var


def nc1_value(problem: UFMProblem, x: np.ndarray) -> float:
    """NC1 ``= (1/K) tr(Sigma_W Sigma_B^+)`` of ``H`` via :func:`nclab.metrics.nc1_from_stats`."""
    from nclab.metrics import nc1_from_stats

    means, sigma_w, _ = _class_stats(problem, problem.unpack(x)[1])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return float(nc1_from_stats(sigma_w, means))


def nc_record(problem: UFMProblem, x: np.ndarray) -> dict[str, float]:
    """``nc1``, ``nc2_wh``, ``nc3`` of the UFM point ``x`` (features ``H^T``, classifier ``W``).

    Uses :func:`nclab.metrics.nc_metrics_from_stats` on the class means and within-class
    covariance computed here in one vectorised pass (the samples are sorted by class); this
    gives the same numbers as :func:`nclab.metrics.nc_metrics` on ``(H^T, labels, W, b)`` without
    its nearest-class-mean pass, so it is cheap enough for every iteration.  Where a metric is
    undefined (all class means equal, e.g. at the trivial minimizer ``H = 0``) the value is
    ``inf``/NaN and the warning is suppressed.
    """
    from nclab.metrics import nc_metrics_from_stats

    W, H, _ = problem.unpack(x)
    means, sigma_w, class_var = _class_stats(problem, H)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        out = nc_metrics_from_stats(means, sigma_w, class_var, weight=W).as_dict()
    rec: dict[str, float] = {}
    for key in NC_KEYS:
        value = out.get(key)
        rec[key] = float("nan") if value is None else float(value)
    return rec


def _relative_gap(value: float, cf: UFMClosedForm) -> float:
    return (value - cf.objective) / abs(cf.objective)


@dataclass
class SolveResult:
    """Result of :func:`solve`.

    Attributes:
        method: ``"lbfgs"`` or ``"gd"``.
        W, H, b: the final point (float64; ``H`` columns ordered by ``repeat(arange(K), n)``).
        closed_form: the closed-form minimum it is compared against.
        objective: ``f`` at the final point; ``relative_gap = (f - f*)/|f*|``.
        w_norm, h_norm: mean ``||w_k||`` over classes and mean ``||h_i||`` over samples.
        w_norm_error, h_norm_error: relative errors against the closed form in the collapse
            regime; in the trivial regime (target 0) the *absolute* norms.
        nc: final ``nc1, nc2_wh, nc3``.
        iterations, converged, message, seconds: solver bookkeeping.
        history: arrays keyed ``iteration, objective, relative_gap, grad_norm`` (one entry per
            recorded iteration, iteration 0 = the initialisation) and ``nc_iteration, nc1,
            nc2_wh, nc3`` (every ``record_every`` iterations and at the end).
    """

    method: str
    W: np.ndarray
    H: np.ndarray
    b: np.ndarray
    closed_form: UFMClosedForm
    objective: float
    relative_gap: float
    w_norm: float
    h_norm: float
    w_norm_error: float
    h_norm_error: float
    grad_norm: float
    nc: dict[str, float]
    iterations: int
    converged: bool
    message: str
    seconds: float
    history: dict[str, np.ndarray] = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly scalars (no arrays)."""
        return {
            "method": self.method,
            "regime": self.closed_form.regime,
            "smoothing": self.closed_form.smoothing,
            "objective": self.objective,
            "objective_closed_form": self.closed_form.objective,
            "relative_gap": self.relative_gap,
            "w_norm": self.w_norm,
            "w_norm_closed_form": self.closed_form.w_norm,
            "w_norm_error": self.w_norm_error,
            "h_norm": self.h_norm,
            "h_norm_closed_form": self.closed_form.h_norm,
            "h_norm_error": self.h_norm_error,
            "grad_norm": self.grad_norm,
            **self.nc,
            "iterations": self.iterations,
            "converged": self.converged,
            "message": self.message,
            "seconds": self.seconds,
        }


class _History:
    def __init__(self, problem: UFMProblem, cf: UFMClosedForm, record_every: int, nc: bool):
        self.problem, self.cf, self.every, self.nc = problem, cf, max(1, int(record_every)), nc
        self.rows: dict[str, list[float]] = {
            k: [] for k in ("iteration", "objective", "relative_gap", "grad_norm")
        }
        self.nc_rows: dict[str, list[float]] = {k: [] for k in ("nc_iteration", *NC_KEYS)}

    def add(self, it: int, x: np.ndarray, value: float, grad_norm: float) -> None:
        self.rows["iteration"].append(it)
        self.rows["objective"].append(value)
        self.rows["relative_gap"].append(_relative_gap(value, self.cf))
        self.rows["grad_norm"].append(grad_norm)
        if it % self.every == 0:
            self.add_nc(it, x)

    def add_nc(self, it: int, x: np.ndarray) -> None:
        if not self.nc or (self.nc_rows["nc_iteration"] and self.nc_rows["nc_iteration"][-1] == it):
            return
        rec = nc_record(self.problem, x)
        self.nc_rows["nc_iteration"].append(it)
        for key in NC_KEYS:
            self.nc_rows[key].append(rec[key])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v, dtype=np.float64) for k, v in self.rows.items()}
        out.update({k: np.asarray(v, dtype=np.float64) for k, v in self.nc_rows.items()})
        out["iteration"] = out["iteration"].astype(np.int64)
        out["nc_iteration"] = out["nc_iteration"].astype(np.int64)
        return out


def _finish(
    problem: UFMProblem,
    cf: UFMClosedForm,
    method: str,
    x: np.ndarray,
    hist: _History,
    iterations: int,
    converged: bool,
    message: str,
    t0: float,
    with_nc: bool,
) -> SolveResult:
    value, grad = objective_and_grad(problem, x)
    W, H, b = (a.copy() for a in problem.unpack(x))
    w_norm = float(np.linalg.norm(W, axis=1).mean())
    h_norm = float(np.linalg.norm(H, axis=0).mean())
    if cf.regime == "collapse":
        w_err = abs(w_norm - cf.w_norm) / cf.w_norm
        h_err = abs(h_norm - cf.h_norm) / cf.h_norm
    else:
        w_err, h_err = w_norm, h_norm
    nc = nc_record(problem, x) if with_nc else {}
    return SolveResult(
        method=method,
        W=W,
        H=H,
        b=b,
        closed_form=cf,
        objective=value,
        relative_gap=_relative_gap(value, cf),
        w_norm=w_norm,
        h_norm=h_norm,
        w_norm_error=w_err,
        h_norm_error=h_err,
        grad_norm=float(np.linalg.norm(grad)),
        nc=nc,
        iterations=iterations,
        converged=converged,
        message=message,
        seconds=time.perf_counter() - t0,
        history=hist.arrays(),
    )


def solve(
    num_classes: int,
    n_per_class: int,
    dim: int,
    lambda_w: float,
    lambda_h: float,
    smoothing: float = 0.0,
    lambda_b: float = DEFAULT_LAMBDA_B,
    method: str = "lbfgs",
    lr: float = 1.0,
    max_iters: int = 20000,
    seed: int = 0,
    record_every: int = 1,
    init_scale: float = 0.1,
    tol: float | None = None,
    gtol: float = 1e-14,
    track_nc: bool = True,
    x0: np.ndarray | None = None,
) -> SolveResult:
    """Minimise the UFM objective in float64 from a random Gaussian initialisation.

    Args:
        method: ``"lbfgs"`` (``scipy.optimize.minimize``, L-BFGS-B without bounds, analytic
            gradient, ``maxcor=30``, ``ftol=0``, ``gtol=gtol``: it runs until the gradient is
            tiny or the line search can no longer make progress in float64) or ``"gd"``
            (``x <- x - lr grad f(x)``, fixed step).
        lr: GD step size (ignored by L-BFGS).  ``ValueError`` if GD diverges.
        max_iters: iteration cap.
        record_every: NC metrics are evaluated every ``record_every`` iterations (and at the
            end); the objective is recorded at every iteration.
        init_scale: standard deviation of the Gaussian initialisation of ``W`` and ``H``.
        tol: optional early stop once ``(f - f*)/|f*| <= tol``.
        gtol: stop once ``||grad f||_inf <= gtol``.
        track_nc: set False to skip NC metrics (faster).
        x0: optional packed starting point (overrides ``seed``/``init_scale``).
    """
    from scipy.optimize import minimize

    problem = UFMProblem(num_classes, n_per_class, dim, lambda_w, lambda_h, smoothing, lambda_b)
    cf = closed_form(num_classes, n_per_class, lambda_w, lambda_h, smoothing, lambda_b)
    _check_dim(problem, cf)
    if method not in ("lbfgs", "gd"):
        raise ValueError(f"method must be 'lbfgs' or 'gd' (got {method!r})")
    if int(max_iters) != max_iters or max_iters < 0:
        raise ValueError(f"max_iters must be a non-negative integer (got {max_iters!r})")
    x = problem.random_init(seed, init_scale) if x0 is None else np.array(x0, dtype=np.float64)
    if x.shape != (problem.num_params,):
        raise ValueError(f"x0 must have shape ({problem.num_params},), got {x.shape}")
    hist = _History(problem, cf, record_every, track_nc)
    t0 = time.perf_counter()
    value, grad = objective_and_grad(problem, x)
    hist.add(0, x, value, float(np.linalg.norm(grad)))

    if method == "gd":
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0 (got {lr!r})")
        it, converged, message = 0, False, "max_iters reached"
        while it < max_iters:
            x = x - lr * grad
            it += 1
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below
                value, grad = objective_and_grad(problem, x)
            if not math.isfinite(value):
                raise ValueError(f"gradient descent diverged at iteration {it}: reduce lr={lr}")
            gnorm = float(np.linalg.norm(grad))
            hist.add(it, x, value, gnorm)
            if tol is not None and _relative_gap(value, cf) <= tol:
                converged, message = True, f"relative objective gap <= {tol}"
                break
            if np.max(np.abs(grad)) <= gtol:
                converged, message = True, f"max |grad| <= {gtol}"
                break
        hist.add_nc(it, x)
        return _finish(problem, cf, "gd", x, hist, it, converged, message, t0, track_nc)

    counter = {"it": 0}
    cache: dict[str, Any] = {"x": None, "g": None}

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        fz, gz = objective_and_grad(problem, z)
        cache["x"], cache["g"] = z.copy(), gz
        return fz, gz

    def callback(intermediate_result: Any) -> None:
        counter["it"] += 1
        xk = intermediate_result.x
        fk = float(intermediate_result.fun)
        if cache["x"] is not None and np.array_equal(cache["x"], xk):
            gk = cache["g"]
        else:  # the accepted point is normally the last one evaluated
            gk = objective_and_grad(problem, xk)[1]
        hist.add(counter["it"], xk, fk, float(np.linalg.norm(gk)))
        if tol is not None and _relative_gap(fk, cf) <= tol:
            raise StopIteration

    # A callback that raises StopIteration ends the run (scipy >= 1.11 callback protocol).
    res = minimize(
        fun,
        x,
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={"maxiter": int(max_iters), "maxcor": 30, "ftol": 0.0, "gtol": gtol, "maxls": 50},
    )
    x = np.asarray(res.x, dtype=np.float64)
    message = str(res.message)
    converged = bool(res.success)
    hist.add_nc(counter["it"], x)
    return _finish(problem, cf, "lbfgs", x, hist, counter["it"], converged, message, t0, track_nc)


@dataclass
class ConvergenceResult:
    """One gradient-descent run of :func:`convergence` (one smoothing value).

    Attributes:
        smoothing: ``delta`` (0 = cross-entropy).
        closed_form: the closed-form minimum the run is measured against.
        lr, max_iters, tol_objective, tol_nc1, seed: the settings (shared by all ``delta``).
        iterations: ``0 .. max_iters`` (int array).
        objective_gap: relative objective gap ``(f_t - f*)/|f*|`` at every iteration (it
            bottoms out at float64 round-off, ~1e-16, and can be slightly negative there).
        nc1: NC1 of the features at every iteration (:func:`nclab.metrics.nc1_from_stats`).
        iters_to_objective_tol: first ``t`` with ``objective_gap[t] <= tol_objective`` (None if
            never reached).
        iters_to_nc1_tol: first ``t`` with ``nc1[t] <= tol_nc1`` (None if never reached).
        final_objective, final_w_norm, final_h_norm: at the last iterate (mean row/column norms).
        seconds: wall time of this run.
    """

    smoothing: float
    closed_form: UFMClosedForm
    lr: float
    max_iters: int
    tol_objective: float
    tol_nc1: float
    seed: int
    iterations: np.ndarray
    objective_gap: np.ndarray
    nc1: np.ndarray
    iters_to_objective_tol: int | None
    iters_to_nc1_tol: int | None
    final_objective: float
    final_w_norm: float
    final_h_norm: float
    seconds: float

    def summary(self) -> dict[str, Any]:
        """JSON-friendly scalars (no arrays)."""
        return {
            "smoothing": self.smoothing,
            "regime": self.closed_form.regime,
            "lr": self.lr,
            "max_iters": self.max_iters,
            "tol_objective": self.tol_objective,
            "tol_nc1": self.tol_nc1,
            "iters_to_objective_tol": self.iters_to_objective_tol,
            "iters_to_nc1_tol": self.iters_to_nc1_tol,
            "final_objective_gap": float(self.objective_gap[-1]),
            "final_nc1": float(self.nc1[-1]),
            "objective_closed_form": self.closed_form.objective,
            "final_objective": self.final_objective,
            "w_norm_closed_form": self.closed_form.w_norm,
            "final_w_norm": self.final_w_norm,
            "h_norm_closed_form": self.closed_form.h_norm,
            "final_h_norm": self.final_h_norm,
            "seconds": self.seconds,
        }


def _first_below(values: np.ndarray, tol: float) -> int | None:
    hits = np.flatnonzero(values <= tol)
    return int(hits[0]) if hits.size else None


def convergence(
    num_classes: int = CONVERGENCE_DEFAULTS["num_classes"],
    n_per_class: int = CONVERGENCE_DEFAULTS["n_per_class"],
    dim: int = CONVERGENCE_DEFAULTS["dim"],
    lambda_w: float = CONVERGENCE_DEFAULTS["lambda_w"],
    lambda_h: float = CONVERGENCE_DEFAULTS["lambda_h"],
    smoothings: Sequence[float] = CONVERGENCE_DEFAULTS["smoothings"],
    lambda_b: float = DEFAULT_LAMBDA_B,
    lr: float = CONVERGENCE_DEFAULTS["lr"],
    max_iters: int = CONVERGENCE_DEFAULTS["max_iters"],
    tol_objective: float = CONVERGENCE_DEFAULTS["tol_objective"],
    tol_nc1: float = CONVERGENCE_DEFAULTS["tol_nc1"],
    seed: int = 0,
    init_scale: float = 0.1,
) -> list[ConvergenceResult]:
    """Full-batch GD on the UFM for each ``delta`` in ``smoothings`` (Guo et al. Sec. on UFM
    convergence): same initialisation (drawn from ``seed``) and same fixed step ``lr`` for every
    ``delta``, ``max_iters`` steps each, recording the relative objective gap to the closed form
    and NC1 at every iteration.

    Cost is about ``0.3 ms`` per iteration for the defaults (K=10, n=50, d=32), i.e. ~1 s per
    ``delta`` for 3000 iterations on one core.  Raises ``ValueError`` if GD diverges (reduce
    ``lr``) or if ``dim < K - 1`` in the collapse regime.
    """
    if not smoothings:
        raise ValueError("smoothings is empty; pass e.g. (0.0, 0.1)")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0 (got {lr!r})")
    if int(max_iters) != max_iters or max_iters < 1:
        raise ValueError(f"max_iters must be a positive integer (got {max_iters!r})")
    results: list[ConvergenceResult] = []
    x_init: np.ndarray | None = None
    for delta in smoothings:
        t0 = time.perf_counter()
        problem = UFMProblem(
            num_classes, n_per_class, dim, lambda_w, lambda_h, float(delta), lambda_b
        )
        cf = closed_form(num_classes, n_per_class, lambda_w, lambda_h, float(delta), lambda_b)
        _check_dim(problem, cf)
        if x_init is None:
            x_init = problem.random_init(seed, init_scale)
        x = x_init.copy()
        gaps = np.empty(int(max_iters) + 1)
        nc1 = np.empty(int(max_iters) + 1)
        value, grad = objective_and_grad(problem, x)
        for it in range(int(max_iters) + 1):
            if not math.isfinite(value):
                raise ValueError(
                    f"gradient descent diverged at iteration {it} for smoothing={delta}: "
                    f"reduce lr={lr}"
                )
            gaps[it] = _relative_gap(value, cf)
            nc1[it] = nc1_value(problem, x)
            if it < max_iters:
                x = x - lr * grad
                with np.errstate(over="ignore", invalid="ignore"):  # divergence: checked above
                    value, grad = objective_and_grad(problem, x)
        W, H, _ = problem.unpack(x)
        results.append(
            ConvergenceResult(
                smoothing=float(delta),
                closed_form=cf,
                lr=float(lr),
                max_iters=int(max_iters),
                tol_objective=float(tol_objective),
                tol_nc1=float(tol_nc1),
                seed=int(seed),
                iterations=np.arange(int(max_iters) + 1),
                objective_gap=gaps,
                nc1=nc1,
                iters_to_objective_tol=_first_below(gaps, tol_objective),
                iters_to_nc1_tol=_first_below(nc1, tol_nc1),
                final_objective=float(value),
                final_w_norm=float(np.linalg.norm(W, axis=1).mean()),
                final_h_norm=float(np.linalg.norm(H, axis=0).mean()),
                seconds=time.perf_counter() - t0,
            )
        )
    return results
