"""UFM theory for the report: closed-form quantities and GD convergence curves per δ.

Closed form (:func:`nclab.ufm.closed_form`) for the runs' K and δ values, with

* in UFM-penalty mode (``ufm_penalties`` in the runs' config): the runs' λ_W, λ_H, λ_b;
* otherwise the documented default λ_W = λ_H = :data:`DEFAULT_LAMBDA` (= 5e-4, the usual weight
  decay) and the default λ_b;

and ``n`` = training-set size / K (``per_class`` when set, else the logged train size / K).
The GD convergence curves come from :func:`nclab.ufm.convergence` on a small UFM
(:data:`nclab.ufm.CONVERGENCE_DEFAULTS`: n, d and λ chosen so GD converges in seconds) with the
runs' K and δ values, at the shared step ``lr`` and, per δ, at the step of :data:`LR_GRID`
that reaches the objective tolerance in the fewest iterations (its own best step).

Claim (f) is decided on definitions that can come out against LS (:func:`hessian_rows`): at the
runs' K, n and the λ above, the full-Hessian condition number of the regularised UFM objective at
the closed-form minimizer with the rotation-symmetry and bias-shift directions excluded
(:func:`nclab.ufm.condition`, ``ratio_excl_bias_shift``, feature dimension d = K − 1), and the
condition numbers of its W and H diagonal blocks; ``nclab ufm condition -K K -n n -d K-1
--lambda-w λ_W --lambda-h λ_H --lambda-b λ_b`` prints the same numbers. κ_logit = K·p* is lower
under LS for every δ > 0 by construction and is reported, never deciding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from nclab.report.runs import RunData

if TYPE_CHECKING:
    from nclab.ufm import UFMProblem

__all__ = [
    "DEFAULT_LAMBDA",
    "LR_GRID",
    "ConvergenceCurve",
    "TheoryPanel",
    "hessian_rows",
    "theory_panel",
]

DEFAULT_LAMBDA = 5e-4
DELTA_GRID = 81  # points of the continuous δ axis in the closed-form panels


@dataclass(frozen=True)
class ConvergenceCurve:
    """GD on the UFM from one initialisation, for one δ."""

    smoothing: float
    iteration: np.ndarray
    relative_gap: np.ndarray
    nc_iteration: np.ndarray
    nc1: np.ndarray
    iters_to_objective_tol: int | None = None
    iters_to_nc1_tol: int | None = None
    best_lr: float | None = None  # the step of LR_GRID reaching the tolerance soonest
    best_iters: int | None = None  # iterations to the objective tolerance at best_lr
    iters_by_lr: dict[float, int | None] = field(default_factory=dict)


@dataclass
class TheoryPanel:
    """Closed-form UFM quantities over δ and at the runs' δ values, plus GD curves."""

    num_classes: int
    n_per_class: int
    lambda_w: float
    lambda_h: float
    lambda_b: float | None
    ufm_mode: bool
    deltas: list[float]
    delta_grid: np.ndarray
    grid: dict[str, np.ndarray]
    at_runs: list[dict[str, Any]]
    curves: list[ConvergenceCurve] = field(default_factory=list)
    convergence_settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    hessian: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (without the curves)."""
        return {
            "num_classes": self.num_classes,
            "n_per_class": self.n_per_class,
            "lambda_w": self.lambda_w,
            "lambda_h": self.lambda_h,
            "lambda_b": self.lambda_b,
            "ufm_mode": self.ufm_mode,
            "closed_form": self.at_runs,
            "convergence_settings": self.convergence_settings,
            "convergence": [
                {
                    "smoothing": c.smoothing,
                    "iters_to_objective_tol": c.iters_to_objective_tol,
                    "iters_to_nc1_tol": c.iters_to_nc1_tol,
                    "best_lr": c.best_lr,
                    "best_iters": c.best_iters,
                    "iters_by_lr": {str(k): v for k, v in c.iters_by_lr.items()},
                }
                for c in self.curves
            ],
            "hessian": self.hessian,
            "notes": self.notes,
        }


def _num_classes(runs: Sequence[RunData]) -> int:
    for run in runs:
        if run.test_logits is not None:
            return int(run.test_logits.shape[1])
    return int(runs[0].config.get("num_classes", 10) or 10)


# Training examples per class of the balanced built-in datasets (used when a run has no
# per_class and logs no train size).
_KNOWN_PER_CLASS = {"fashion-mnist": 6000, "mnist": 6000, "cifar10": 5000, "cifar100": 500}


def _n_per_class(runs: Sequence[RunData], k: int) -> tuple[int, str | None]:
    """n for the closed form, and a note when it had to be assumed."""
    cfg = runs[0].config
    if cfg.get("per_class"):
        return int(cfg["per_class"]), None
    if cfg.get("dataset") == "synthetic":
        return int(cfg.get("synthetic_train_per_class", 100)), None
    size = runs[0].train_size
    if size:
        return max(1, round(size / k)), None
    known = _KNOWN_PER_CLASS.get(str(cfg.get("dataset")))
    if known:
        return known, None
    return 500, "training-set size unknown: n = 500 per class assumed for the closed form"


def hessian_rows(base: UFMProblem, deltas: Sequence[float]) -> list[dict[str, Any]]:
    """Per δ, the conditioning of the regularised UFM ``base`` with label smoothing δ at its
    closed-form minimizer (:func:`nclab.ufm.condition`, d = K − 1): ``hessian_ratio`` (full
    Hessian, symmetry and bias-shift directions excluded), ``w_block_ratio``, ``h_block_ratio``,
    ``kappa_logit``, the regime and the method. A trivial minimizer (W = H = 0) gives None
    ratios."""
    from nclab.ufm import closed_form, condition

    rows = []
    for d in deltas:
        problem = replace(base, smoothing=float(d))
        cf = closed_form(problem)
        row: dict[str, Any] = {"smoothing": problem.smoothing, "regime": cf.regime}
        row["lambda_b"] = problem.lambda_b
        if cf.regime == "trivial":
            row.update(hessian_ratio=None, w_block_ratio=None, h_block_ratio=None, kappa_logit=None)
        else:
            c = condition(problem)
            row.update(
                hessian_ratio=c.ratio_excl_bias_shift,
                hessian_lambda_max=c.lambda_max,
                hessian_lambda_min=c.lambda_min_excl_bias_shift,
                w_block_ratio=c.w_block.ratio,
                h_block_ratio=c.h_block.ratio,
                kappa_logit=c.kappa_logit,
                method=c.method,
                dim=c.dim,
            )
        rows.append(row)
    _add_gd_rows(rows, base)
    return rows


#: GD step multipliers of 1/λ_max (each δ's own largest Hessian eigenvalue at its minimizer)
#: for "each loss at its own best step"; 2/λ_max is the local stability limit.
GD_STEP_MULTIPLIERS = (0.5, 1.0, 1.5)
#: Iteration cap and relative objective tolerance of the deciding GD runs of claim (f).
GD_MAX_ITERS = 20000
GD_TOL = 1e-8
#: Largest N·d·K (samples × feature dimension × classes, the cost of one GD step) for which
#: the deciding GD runs are made: K = 10 up to about n = 10,000 per class; K = 100 is not.
GD_MAX_WORK = 1e7


def _add_gd_rows(rows: list[dict[str, Any]], base: UFMProblem) -> None:
    """GD on the runs' own UFM (the problem whose Hessian the rows describe, d = K − 1, the same
    initialisation for every δ): iterations to the relative objective gap :data:`GD_TOL` at a
    shared step (the largest that is stable for every δ: min over δ of 1/λ_max) and at each
    δ's own best step from :data:`GD_STEP_MULTIPLIERS` / λ_max. None where not reached within
    :data:`GD_MAX_ITERS`; nothing when one step would cost more than :data:`GD_MAX_WORK`."""
    from nclab.ufm import solve_gd

    live = [r for r in rows if r.get("hessian_lambda_max")]
    if not live:
        return
    k, n = base.num_classes, base.n_per_class
    if k * n * (k - 1) * k > GD_MAX_WORK:
        for r in live:
            r["gd_note"] = (
                f"GD on the runs' UFM not run: one step costs N·d·K = {k * n * (k - 1) * k:.3g} "
                f"> {GD_MAX_WORK:.0e}; `nclab ufm convergence -K {k} -n {n} -d {k - 1} --lr "
                "1/lambda_max` runs it"
            )
        return
    shared = min(1.0 / r["hessian_lambda_max"] for r in live)

    def iterations(problem: UFMProblem, lr: float) -> int | None:
        try:
            res = solve_gd(
                problem, lr=lr, max_iters=GD_MAX_ITERS, tol=GD_TOL, nc_fn=None,
                record_every=GD_MAX_ITERS + 1, gtol=None,
            )  # fmt: skip
        except ValueError:  # diverged at this step: no candidate
            return None
        return int(res.iterations) if res.relative_gap <= GD_TOL else None

    for r in live:
        problem = replace(base, smoothing=r["smoothing"])
        r["gd_shared_lr"] = shared
        r["gd_shared_iters"] = iterations(problem, shared)
        tried = {m: iterations(problem, m / r["hessian_lambda_max"]) for m in GD_STEP_MULTIPLIERS}
        reached = {m: v for m, v in tried.items() if v is not None}
        best = min(reached, key=lambda m: (reached[m], m)) if reached else None
        r["gd_best_multiplier"] = best
        r["gd_best_lr"] = None if best is None else best / r["hessian_lambda_max"]
        r["gd_best_iters"] = None if best is None else reached[best]


def theory_panel(
    runs: Sequence[RunData],
    *,
    convergence: bool = True,
    max_iters: int | None = None,
    hessian: bool = True,
) -> TheoryPanel:
    """Closed-form values and (optionally) GD convergence curves for the runs' K and δ."""
    from nclab.ufm import UFMProblem, closed_form

    k = _num_classes(runs)
    n, n_note = _n_per_class(runs, k)
    cfg = runs[0].config
    ufm_mode = bool(cfg.get("ufm_penalties"))
    if ufm_mode:
        lw, lh, lb = float(cfg["lambda_w"]), float(cfg["lambda_h"]), float(cfg["lambda_b"])
    else:
        lw = lh = DEFAULT_LAMBDA
        lb = None
    extra = {} if lb is None else {"lambda_b": lb}
    deltas = sorted({r.group.smoothing for r in runs if r.group.is_ce or r.group.is_ls})
    notes: list[str] = [n_note] if n_note else []
    beta = math.sqrt(n * lw * lh)
    top = min(0.95, max(0.5, 1.2 * max(deltas, default=0.0)))
    grid_deltas = np.linspace(0.0, top, DELTA_GRID)
    names = ("logit_gap", "p_true", "kappa_logit", "w_norm", "h_norm")
    base = UFMProblem(num_classes=k, n_per_class=n, lambda_w=lw, lambda_h=lh, **extra)
    rows = [closed_form(replace(base, smoothing=float(d))) for d in grid_deltas]
    grid = {name: np.array([getattr(r, name) for r in rows]) for name in names}
    at_runs = []
    for d in deltas:
        cf = closed_form(replace(base, smoothing=d))
        at_runs.append(
            {"smoothing": d, **{name: getattr(cf, name) for name in names}, "regime": cf.regime}
        )
        if cf.regime == "trivial":
            notes.append(
                f"δ={d:g}: β = sqrt(n λ_W λ_H) = {beta:.3g} >= (1-δ)/K, the UFM "
                "minimizer is trivial (W = H = 0)"
            )
    panel = TheoryPanel(k, n, lw, lh, lb, ufm_mode, deltas, grid_deltas, grid, at_runs, notes=notes)
    if hessian and deltas:
        panel.hessian = hessian_rows(base, deltas)
    if convergence and deltas:
        _add_convergence(panel, k, deltas, max_iters)
    return panel


#: Largest K for the report's GD curves: the default small UFM (n = 50, λ = 5e-3, step 2) is in
#: the collapse regime and converges in seconds for K up to about this; K = 100 would be trivial
#: (β >= (1-δ)/K) and ~100x costlier per iteration.
MAX_CONVERGENCE_CLASSES = 20
#: Step sizes of the "each loss at its own best step" GD comparison (a step that diverges is
#: skipped).
LR_GRID = (0.5, 1.0, 2.0, 4.0)


def _add_convergence(
    panel: TheoryPanel, k: int, deltas: list[float], max_iters: int | None
) -> None:
    """Fill ``panel.curves`` from :func:`nclab.ufm.convergence` (a note when unavailable)."""
    try:
        from nclab.ufm import CONVERGENCE_DEFAULTS, convergence
    except ImportError:
        panel.notes.append("nclab.ufm.convergence is not available: GD curves omitted")
        return
    if k > MAX_CONVERGENCE_CLASSES:
        panel.notes.append(
            f"GD curves are computed for K <= {MAX_CONVERGENCE_CLASSES} only (K = {k} would take "
            "minutes and needs its own λ and step): run `nclab ufm convergence -K "
            f"{k} --lambda-w ... --lambda-h ... --lr ... --plot FILE` for them"
        )
        return
    settings = dict(CONVERGENCE_DEFAULTS)
    settings.update(num_classes=k, smoothings=tuple(deltas))
    settings["dim"] = max(int(settings.get("dim", k)), k)
    if max_iters is not None:
        settings["max_iters"] = max_iters
    panel.convergence_settings = {
        key: (list(v) if isinstance(v, tuple) else v) for key, v in settings.items()
    }
    result = convergence(**settings)
    panel.curves = [_curve(item, d) for item, d in zip(_results(result), deltas, strict=False)]
    shared = float(settings["lr"])
    by_lr: dict[float, list[int | None]] = {
        shared: [c.iters_to_objective_tol for c in panel.curves]
    }
    for lr in LR_GRID:
        if lr == shared:
            continue
        try:
            other = _results(convergence(**{**settings, "lr": lr}))
        except ValueError:  # GD diverges at this step: it is no candidate
            continue
        by_lr[lr] = [item.iters_to_objective_tol for item in other]
    panel.convergence_settings["lr_grid"] = sorted(by_lr)
    for i, curve in enumerate(panel.curves):
        iters = {lr: values[i] for lr, values in sorted(by_lr.items()) if i < len(values)}
        reached = {lr: v for lr, v in iters.items() if v is not None}
        best = min(reached, key=lambda lr: (reached[lr], lr)) if reached else None
        panel.curves[i] = replace(
            curve,
            iters_by_lr=iters,
            best_lr=best,
            best_iters=None if best is None else reached[best],
        )


def _results(result: Any) -> list[Any]:
    """The per-δ results of :func:`nclab.ufm.convergence` (a list in δ order)."""
    if isinstance(result, dict):
        return [result[k] for k in sorted(result)]
    return list(result)


def _curve(item: Any, delta: float) -> ConvergenceCurve:
    """A :class:`ConvergenceCurve` from one ``nclab.ufm.ConvergenceResult``."""
    it = np.asarray(item.iterations, dtype=np.float64)
    gap = np.asarray(item.objective_gap, dtype=np.float64)
    nc1 = np.asarray(item.nc1, dtype=np.float64)
    return ConvergenceCurve(
        smoothing=float(getattr(item, "smoothing", delta)),
        iteration=it,
        relative_gap=gap,
        nc_iteration=it if nc1.shape == it.shape else np.arange(nc1.size, dtype=np.float64),
        nc1=nc1,
        iters_to_objective_tol=getattr(item, "iters_to_objective_tol", None),
        iters_to_nc1_tol=getattr(item, "iters_to_nc1_tol", None),
    )
