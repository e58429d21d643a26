"""Unconstrained feature model (UFM) under cross-entropy and label smoothing.

Every function takes one problem object, :class:`UFMProblem` (or its fields as keywords): the
closed form of the global minimizer, float64 solvers (:func:`solve_gd`, :func:`solve_lbfgs`, one
:class:`SolveResult`), Hessian conditioning at the minimizer and the GD convergence experiment
of Guo et al., "Cross Entropy versus Label Smoothing: A Neural Collapse Perspective" (arXiv
2402.03979).  Derivation: ``docs/theory.md``.
"""

from nclab.ufm.closed_form import UFMClosedForm, closed_form, minimizer, simplex_etf
from nclab.ufm.conditioning import (
    BlockSpectrum,
    HessianConditioning,
    LogitConditioning,
    RotationSymmetry,
    condition,
    dense_hessian,
    lanczos_extremes,
    logit_conditioning,
)
from nclab.ufm.objective import HessianVectorProduct, objective, objective_and_grad, objective_torch
from nclab.ufm.problem import DEFAULT_LAMBDA_B, UFMProblem, sample_labels
from nclab.ufm.solver import (
    CONVERGENCE_DEFAULTS,
    SOLVERS,
    ConvergenceResult,
    SolveResult,
    convergence,
    nc1_value,
    nc_record,
    solve_gd,
    solve_lbfgs,
)

__all__ = [
    "BlockSpectrum",
    "CONVERGENCE_DEFAULTS",
    "ConvergenceResult",
    "HessianConditioning",
    "LogitConditioning",
    "RotationSymmetry",
    "condition",
    "convergence",
    "dense_hessian",
    "lanczos_extremes",
    "logit_conditioning",
    "nc1_value",
    "DEFAULT_LAMBDA_B",
    "HessianVectorProduct",
    "SolveResult",
    "UFMClosedForm",
    "UFMProblem",
    "closed_form",
    "minimizer",
    "nc_record",
    "objective",
    "objective_and_grad",
    "objective_torch",
    "sample_labels",
    "simplex_etf",
    "SOLVERS",
    "solve_gd",
    "solve_lbfgs",
]
