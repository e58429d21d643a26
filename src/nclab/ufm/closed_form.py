"""Closed-form global minimizer of the regularized unconstrained feature model (UFM).

The UFM with ``N = n K`` balanced samples (``n`` per class), free features ``H`` (d x N),
classifier ``W`` (K x d) and bias ``b`` (K,) minimises

    f(W, H, b) = (1/N) sum_{k,i} L_delta(W h_{k,i} + b, k)
                 + lambda_W/2 ||W||_F^2 + lambda_H/2 ||H||_F^2 + lambda_b/2 ||b||^2,

where ``L_delta(z, k) = -sum_j t_j log softmax(z)_j`` is the cross-entropy against the smoothed
target ``t = (1 - delta) e_k + delta/K 1`` (``delta = 0`` is plain cross-entropy).  Guo et al.,
"Cross Entropy versus Label Smoothing: A Neural Collapse Perspective" (arXiv 2402.03979, TMLR
2025) characterise its global minimizers; the derivation used here is written out in
``docs/theory.md``.  With ``beta = sqrt(n lambda_W lambda_H)``:

* ``beta >= (1 - delta)/K`` ("trivial" regime): the only global minimizer is ``W = H = 0``,
  ``b = 0`` (for ``lambda_b > 0``) and the objective is ``log K``.
* otherwise ("collapse" regime, needs ``d >= K - 1``): ``h_{k,i} = sqrt(lambda_W/(n lambda_H)) w_k``
  (NC1 + self-duality), the rows of ``W`` form a simplex ETF with equal norms, ``b = 0`` and
  the logit gap (true minus any other logit) is ``g* = log(1/(beta + delta/K) - (K - 1))``.

Sample ordering and packing: :mod:`nclab.ufm.problem`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nclab.ufm.problem import PROBLEM_FIELDS, UFMProblem, as_problem


@dataclass(frozen=True)
class UFMClosedForm:
    """Closed-form global minimum of the regularized UFM (Guo et al., arXiv 2402.03979).

    Attributes:
        regime: ``"collapse"`` if ``beta < (1 - delta)/K`` else ``"trivial"``.
        logit_gap: ``g* = log(1/(beta + delta/K) - (K - 1))`` (0 in the trivial regime): true-class
            logit minus any other logit, identical for every sample.
        w_norm: ``||w_k|| = sqrt( sqrt(n lambda_H / lambda_W) (K - 1) g* / K )`` for every class.
        h_norm: ``||h_{k,i}|| = sqrt(lambda_W / (n lambda_H)) ||w_k||`` for every sample.
        p_true: softmax probability of the true class, ``1 - (K - 1)(beta + delta/K)``
            (``1/K`` in the trivial regime).
        q_other: probability of each wrong class, ``(1 - p_true)/(K - 1)``.
        loss: the mean smoothed cross-entropy term, ``log(1 + (K-1) e^{-g*}) + delta (K-1) g*/K``.
        objective: ``loss + lambda_W/2 ||W||^2 + lambda_H/2 ||H||^2 = loss + (K - 1) beta g*``.
        kappa_logit: condition number of the per-sample logit Hessian ``diag(p) - p p^T`` on the
            complement of ``1``: ``K p_true`` for ``K >= 3`` (1 for ``K = 2``, where that subspace
            is one-dimensional).
        beta: ``sqrt(n lambda_W lambda_H)``.
        threshold: ``(1 - delta)/K``, the value of ``beta`` at which the collapse disappears.
    """

    regime: str
    logit_gap: float
    w_norm: float
    h_norm: float
    p_true: float
    q_other: float
    loss: float
    objective: float
    kappa_logit: float
    beta: float
    threshold: float
    num_classes: int
    n_per_class: int
    smoothing: float
    lambda_w: float
    lambda_h: float
    lambda_b: float

    @property
    def feature_scale(self) -> float:
        """``alpha = sqrt(lambda_W / (n lambda_H))`` with ``h_{k,i} = alpha w_k``."""
        return math.sqrt(self.lambda_w / (self.n_per_class * self.lambda_h))

    def as_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields (JSON friendly)."""
        return asdict(self)


def closed_form(problem: UFMProblem | None = None, /, **problem_fields: Any) -> UFMClosedForm:
    """Global minimum of the regularized UFM in closed form.

    Reduction (docs/theory.md): on the ETF/self-dual family the objective is the 1-D convex
    function ``phi(g) = log(1 + (K-1) e^{-g}) + delta (K-1) g/K + (K-1) beta g`` of the logit gap
    ``g >= 0``, whose stationarity condition ``e^{-g}/(1 + (K-1) e^{-g}) = beta + delta/K`` gives
    ``g*``; ``phi(g*)`` is also a lower bound of ``f`` everywhere, so it is the global minimum.
    ``lambda_b`` and ``dim`` do not change the value (the bias is 0 at the minimizer).  Takes a
    :class:`UFMProblem` or its fields as keywords.
    """
    pr = as_problem(problem, problem_fields)
    K, n, delta = pr.num_classes, pr.n_per_class, pr.smoothing
    lambda_w, lambda_h = pr.lambda_w, pr.lambda_h
    beta = pr.beta
    if pr.collapses:
        q = beta + delta / K  # probability of each wrong class at the optimum
        gap = math.log(1.0 / q - (K - 1))
        p_true = 1.0 - (K - 1) * q
        w_norm = math.sqrt(math.sqrt(n * lambda_h / lambda_w) * (K - 1) * gap / K)
        h_norm = math.sqrt(lambda_w / (n * lambda_h)) * w_norm
        # -log p_true = log(1 + (K-1) e^{-g}); log1p keeps precision for large gaps.
        loss = math.log1p((K - 1) * math.exp(-gap)) + delta * (K - 1) * gap / K
        kappa = K * p_true if K >= 3 else 1.0
    else:  # W = H = 0: every logit is 0
        q = p_true = 1.0 / K
        gap = w_norm = h_norm = 0.0
        loss = math.log(K)
        kappa = 1.0
    return UFMClosedForm(
        regime="collapse" if pr.collapses else "trivial",
        logit_gap=gap,
        w_norm=w_norm,
        h_norm=h_norm,
        p_true=p_true,
        q_other=q,
        loss=loss,
        objective=loss + (K - 1) * beta * gap,
        kappa_logit=kappa,
        beta=beta,
        threshold=(1.0 - delta) / K,
        **{name: getattr(pr, name) for name in PROBLEM_FIELDS if name != "dim"},  # d: no effect
    )


def simplex_etf(num_classes: int) -> np.ndarray:
    """Unit-norm simplex ETF in ``R^{K-1}``: rows ``m_k`` with ``m_k . m_j = -1/(K-1)``, sum 0.

    Built from an orthonormal basis ``V`` (K x (K-1)) of the complement of ``1`` as
    ``M = sqrt(K/(K-1)) V`` so that ``M M^T = K/(K-1) (I - 1 1^T / K)``.
    """
    K = int(num_classes)
    centered = np.eye(K) - np.full((K, K), 1.0 / K)
    # Eigenvectors of the centering projector with eigenvalue 1 span 1^perp.
    evals, evecs = np.linalg.eigh(centered)
    basis = evecs[:, evals > 0.5]
    return math.sqrt(K / (K - 1)) * basis


def minimizer(
    problem: UFMProblem | None = None, /, *, seed: int = 0, **problem_fields: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One global minimizer ``(W* (K, d), H* (d, N), b* (K,))`` in float64.

    ``W* = ||w|| M R^T`` with ``M`` the unit simplex ETF (:func:`simplex_etf`) and ``R`` a random
    ``d x (K-1)`` matrix with orthonormal columns drawn from ``seed`` (every minimizer is such a
    rotation of another); ``H*`` has column ``k n + i`` equal to ``sqrt(lambda_W/(n lambda_H)) w_k``
    (labels ``np.repeat(np.arange(K), n)``); ``b* = 0``.  ``d = problem.dim`` must be at least
    ``K - 1`` in the collapse regime.  In the trivial regime all three are zero.
    """
    pr = as_problem(problem, problem_fields)
    cf = closed_form(pr)
    K, n, d = pr.num_classes, pr.n_per_class, int(pr.dim)
    if cf.regime == "trivial":
        return np.zeros((K, d)), np.zeros((d, K * n)), np.zeros(K)
    pr.require_etf_dim()
    rng = np.random.default_rng(seed)
    rot, _ = np.linalg.qr(rng.standard_normal((d, K - 1)))
    W = cf.w_norm * simplex_etf(K) @ rot.T
    H = np.repeat(cf.feature_scale * W.T, n, axis=1)
    return W, H, np.zeros(K)
