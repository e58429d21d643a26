"""The UFM objective, its analytic gradient and Hessian-vector product (numpy, float64).

Parameters are packed as one flat vector ``x = [vec(W) (K d), vec(H) (d N), b (K)]``
(:meth:`nclab.ufm.problem.UFMProblem.pack`).  With logits ``Z = W H + b 1^T`` (K x N), softmax
``P`` (column-wise) and smoothed targets ``T`` (column ``i`` is ``(1-delta) e_{y_i} + delta/K 1``):

    f = (1/N) sum_i [logsumexp(Z_i) - T_i . Z_i] + lambda_W/2 ||W||^2 + lambda_H/2 ||H||^2
        + lambda_b/2 ||b||^2
    G := dF/dZ = (P - T)/N,   grad_W = G H^T + lambda_W W,   grad_H = W^T G + lambda_H H,
    grad_b = G 1 + lambda_b b.

Hessian-vector product along ``(V_W, V_H, v_b)``: with ``dZ = V_W H + W V_H + v_b 1^T`` and
``dG_i = (diag(p_i) - p_i p_i^T) dZ_i / N``,

    Hv_W = dG H^T + G V_H^T + lambda_W V_W,   Hv_H = W^T dG + V_W^T G + lambda_H V_H,
    Hv_b = dG 1 + lambda_b v_b.

(The ``G V_H^T`` / ``V_W^T G`` terms come from the bilinear coupling ``Z = W H``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily so that `import nclab.ufm` stays light
    import torch

from nclab.ufm.problem import UFMProblem


def _softmax_lse(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise softmax and log-sum-exp of a (K, N) array, computed stably."""
    m = Z.max(axis=0)
    E = np.exp(Z - m)
    s = E.sum(axis=0)
    return E / s, m + np.log(s)


def loss_term(problem: UFMProblem, W: np.ndarray, H: np.ndarray, b: np.ndarray) -> float:
    """Mean smoothed cross-entropy ``(1/N) sum_i L_delta(W h_i + b, y_i)``."""
    Z = W @ H + b[:, None]
    _, lse = _softmax_lse(Z)
    return float(np.mean(lse - np.sum(problem.targets * Z, axis=0)))


def penalty(problem: UFMProblem, W: Any, H: Any, b: Any) -> Any:
    """``lambda_W/2 ||W||^2 + lambda_H/2 ||H||^2 + lambda_b/2 ||b||^2`` (numpy or torch arrays)."""
    return 0.5 * (
        problem.lambda_w * (W * W).sum()
        + problem.lambda_h * (H * H).sum()
        + problem.lambda_b * (b * b).sum()
    )


def objective(problem: UFMProblem, x: np.ndarray) -> float:
    """Value of ``f`` at the packed point ``x``."""
    W, H, b = problem.unpack(x)
    return loss_term(problem, W, H, b) + float(penalty(problem, W, H, b))


def objective_and_grad(problem: UFMProblem, x: np.ndarray) -> tuple[float, np.ndarray]:
    """``f(x)`` and its analytic gradient (see the module docstring)."""
    W, H, b = problem.unpack(x)
    N = problem.num_samples
    Z = W @ H + b[:, None]
    P, lse = _softmax_lse(Z)
    T = problem.targets
    value = float(np.mean(lse - np.sum(T * Z, axis=0)) + penalty(problem, W, H, b))
    G = (P - T) / N
    gW = G @ H.T + problem.lambda_w * W
    gH = W.T @ G + problem.lambda_h * H
    gb = G.sum(axis=1) + problem.lambda_b * b
    return value, np.concatenate([gW.ravel(), gH.ravel(), gb])


class HessianVectorProduct:
    """Analytic Hessian-vector products of ``f`` at a fixed point (softmax cached).

    ``hvp(v)`` costs three (K x d x N) matrix products, so Lanczos on problems with ~10^5
    parameters needs milliseconds per product.
    """

    def __init__(self, problem: UFMProblem, x: np.ndarray) -> None:
        self.problem = problem
        self.x = np.array(x, dtype=np.float64)
        self.W, self.H, self.b = problem.unpack(self.x)
        Z = self.W @ self.H + self.b[:, None]
        self.P, _ = _softmax_lse(Z)
        self.G = (self.P - problem.targets) / problem.num_samples
        self.size = problem.num_params

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return self.hvp(v)

    def hvp(self, v: np.ndarray) -> np.ndarray:
        pr = self.problem
        VW, VH, vb = pr.unpack(np.asarray(v, dtype=np.float64))
        dZ = VW @ self.H + self.W @ VH + vb[:, None]
        PdZ = self.P * dZ
        dG = (PdZ - self.P * PdZ.sum(axis=0)) / pr.num_samples
        hW = dG @ self.H.T + self.G @ VH.T + pr.lambda_w * VW
        hH = self.W.T @ dG + VW.T @ self.G + pr.lambda_h * VH
        hb = dG.sum(axis=1) + pr.lambda_b * vb
        return np.concatenate([hW.ravel(), hH.ravel(), hb])


def objective_torch(problem: UFMProblem, x: torch.Tensor) -> torch.Tensor:
    """``f`` as a differentiable torch function of the packed float64 tensor ``x``.

    Used for autograd checks of the analytic gradient / HVP and for dense Hessians.
    """
    import torch

    W, H, b = problem.unpack(x)
    Z = W @ H + b[:, None]
    T = torch.as_tensor(problem.targets, dtype=x.dtype)
    loss = torch.mean(torch.logsumexp(Z, dim=0) - torch.sum(T * Z, dim=0))
    return loss + penalty(problem, W, H, b)


def smoothed_ce_torch(logits: torch.Tensor, label: int, smoothing: float) -> torch.Tensor:
    """``L_delta(z, k) = logsumexp(z) - sum_j t_j z_j`` for one logit vector (torch)."""
    import torch

    K = logits.shape[-1]
    t = torch.full((K,), smoothing / K, dtype=logits.dtype)
    t[label] += 1.0 - smoothing
    return torch.logsumexp(logits, dim=-1) - torch.sum(t * logits, dim=-1)
