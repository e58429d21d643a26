"""The UFM objective, its analytic gradient and Hessian-vector product (numpy, float64).

Parameters are packed as one flat vector ``x = [vec(W) (K d), vec(H) (d N), b (K)]`` (row-major
``ravel``).  With logits ``Z = W H + b 1^T`` (K x N), softmax ``P`` (column-wise) and smoothed
targets ``T`` (column ``i`` is ``(1-delta) e_{y_i} + delta/K 1``):

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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily so that `import nclab.ufm` stays light
    import torch

from nclab.ufm.closed_form import DEFAULT_LAMBDA_B, sample_labels, validate_problem


@dataclass(frozen=True)
class UFMProblem:
    """A UFM instance: sizes, penalties, smoothing and the (balanced) labels."""

    num_classes: int
    n_per_class: int
    dim: int
    lambda_w: float
    lambda_h: float
    smoothing: float = 0.0
    lambda_b: float = DEFAULT_LAMBDA_B
    labels: np.ndarray = field(init=False, repr=False)
    targets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        validate_problem(
            self.num_classes,
            self.n_per_class,
            self.lambda_w,
            self.lambda_h,
            self.smoothing,
            self.lambda_b,
        )
        if int(self.dim) != self.dim or self.dim < 1:
            raise ValueError(f"dim must be a positive integer (got {self.dim!r})")
        K = int(self.num_classes)
        labels = sample_labels(K, self.n_per_class)
        targets = np.full((K, labels.size), self.smoothing / K)
        targets[labels, np.arange(labels.size)] += 1.0 - self.smoothing
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "targets", targets)

    @property
    def num_samples(self) -> int:
        return int(self.num_classes * self.n_per_class)

    @property
    def num_params(self) -> int:
        K, d = int(self.num_classes), int(self.dim)
        return K * d + d * self.num_samples + K

    def pack(self, W: np.ndarray, H: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flatten ``(W, H, b)`` into one float64 vector."""
        return np.concatenate(
            [np.ravel(W).astype(np.float64), np.ravel(H).astype(np.float64), np.ravel(b)]
        ).astype(np.float64)

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views ``(W (K,d), H (d,N), b (K,))`` into a flat vector."""
        K, d, N = int(self.num_classes), int(self.dim), self.num_samples
        W = x[: K * d].reshape(K, d)
        H = x[K * d : K * d + d * N].reshape(d, N)
        b = x[K * d + d * N :]
        return W, H, b

    def random_init(self, seed: int = 0, scale: float = 0.1) -> np.ndarray:
        """Gaussian initialisation with standard deviation ``scale`` (bias starts at 0)."""
        rng = np.random.default_rng(seed)
        K, d, N = int(self.num_classes), int(self.dim), self.num_samples
        W = scale * rng.standard_normal((K, d))
        H = scale * rng.standard_normal((d, N))
        return self.pack(W, H, np.zeros(K))


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


def objective(problem: UFMProblem, x: np.ndarray) -> float:
    """Value of ``f`` at the packed point ``x``."""
    W, H, b = problem.unpack(x)
    reg = 0.5 * (
        problem.lambda_w * np.sum(W * W)
        + problem.lambda_h * np.sum(H * H)
        + problem.lambda_b * np.sum(b * b)
    )
    return loss_term(problem, W, H, b) + float(reg)


def objective_and_grad(problem: UFMProblem, x: np.ndarray) -> tuple[float, np.ndarray]:
    """``f(x)`` and its analytic gradient (see the module docstring)."""
    W, H, b = problem.unpack(x)
    N = problem.num_samples
    Z = W @ H + b[:, None]
    P, lse = _softmax_lse(Z)
    T = problem.targets
    loss = float(np.mean(lse - np.sum(T * Z, axis=0)))
    reg = 0.5 * (
        problem.lambda_w * np.sum(W * W)
        + problem.lambda_h * np.sum(H * H)
        + problem.lambda_b * np.sum(b * b)
    )
    G = (P - T) / N
    gW = G @ H.T + problem.lambda_w * W
    gH = W.T @ G + problem.lambda_h * H
    gb = G.sum(axis=1) + problem.lambda_b * b
    return loss + float(reg), np.concatenate([gW.ravel(), gH.ravel(), gb])


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

    K, d, N = int(problem.num_classes), int(problem.dim), problem.num_samples
    W = x[: K * d].reshape(K, d)
    H = x[K * d : K * d + d * N].reshape(d, N)
    b = x[K * d + d * N :]
    Z = W @ H + b[:, None]
    T = torch.as_tensor(problem.targets, dtype=x.dtype)
    loss = torch.mean(torch.logsumexp(Z, dim=0) - torch.sum(T * Z, dim=0))
    reg = 0.5 * (
        problem.lambda_w * torch.sum(W * W)
        + problem.lambda_h * torch.sum(H * H)
        + problem.lambda_b * torch.sum(b * b)
    )
    return loss + reg


def smoothed_ce_torch(logits: torch.Tensor, label: int, smoothing: float) -> torch.Tensor:
    """``L_delta(z, k) = logsumexp(z) - sum_j t_j z_j`` for one logit vector (torch)."""
    import torch

    K = logits.shape[-1]
    t = torch.full((K,), smoothing / K, dtype=logits.dtype)
    t[label] += 1.0 - smoothing
    return torch.logsumexp(logits, dim=-1) - torch.sum(t * logits, dim=-1)
