"""Curvature of the UFM at its global minimizer: logit-space and full-parameter Hessians.

1. **Logit space.**  The Hessian of ``L_delta(z, k)`` in the logits is ``diag(p) - p p^T`` (the
   smoothed target only enters linearly).  At the minimizer ``p = (p*, q, ..., q)`` with
   ``q = (1 - p*)/(K - 1)``; on the complement of ``1`` its eigenvalues are
   ``K p* q = K p* (1 - p*)/(K - 1)`` (eigenvector ``e_k - 1/K``) and ``q`` (multiplicity
   ``K - 2``), so ``kappa_logit = K p*`` (Guo et al., arXiv 2402.03979).

2. **Full Hessian of f in (W, H, b).**  ``f`` is invariant under ``W -> W Q``, ``H -> Q^T H`` for
   orthogonal ``Q``; the tangent directions ``(W A, -A H, 0)`` (``A`` skew) are exact zero modes at
   a critical point.  Their span has dimension ``d(d-1)/2 - (d-r)(d-r-1)/2`` with
   ``r = rank [W^T, H]`` (``K - 1`` at a collapse minimizer): skew ``A`` acting only on the
   complement of the row space leave the point fixed.  With ``S = W^T W + H H^T`` the Gram
   operator of that tangent map is ``A -> (S A + A S)/2``, diagonal in the eigenbasis of ``S``,
   so the orthogonal projection onto the symmetry directions costs ``O(d^3 + d^2 N)`` and needs no
   stored basis.  With ``lambda_b = 0`` the bias shift ``b -> b + c 1`` is one more zero mode.
   The "smallest non-zero eigenvalue" is the smallest eigenvalue on the orthogonal complement of
   these symmetry directions.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from nclab.ufm.closed_form import closed_form, minimizer
from nclab.ufm.objective import HessianVectorProduct, objective_torch, smoothed_ce_torch
from nclab.ufm.problem import UFMProblem, as_problem


# --------------------------------------------------------------------------- logit space
@dataclass(frozen=True)
class LogitConditioning:
    """Spectrum of ``diag(p) - p p^T`` at the minimizer's logits, on the complement of ``1``.

    ``eigenvalues`` (ascending, numerical, from a torch autograd Hessian of the smoothed CE),
    ``predicted`` (closed form: ``q`` with multiplicity K-2 and ``K p* q``), ``kappa`` (numerical
    ratio) and ``kappa_closed_form`` (``K p*``).
    """

    smoothing: float
    p_true: float
    eigenvalues: tuple[float, ...]
    predicted: tuple[float, ...]
    kappa: float
    kappa_closed_form: float


def logit_conditioning(
    problem: UFMProblem | None = None, /, **problem_fields: Any
) -> LogitConditioning:
    """Numerical logit-Hessian spectrum at the closed-form minimizer vs the closed form.

    Takes a :class:`UFMProblem` (its ``dim`` is irrelevant: the logits do not depend on it) or
    its fields as keywords.
    """
    import torch

    pr = replace(as_problem(problem, problem_fields), dim=None)
    cf = closed_form(pr)
    K = cf.num_classes
    W, H, b = minimizer(pr)
    z = torch.as_tensor(W @ H[:, 0] + b, dtype=torch.float64)  # logits of a class-0 sample
    hess = torch.autograd.functional.hessian(
        lambda logits: smoothed_ce_torch(logits, 0, pr.smoothing), z
    ).numpy()
    evals, evecs = np.linalg.eigh(np.eye(K) - np.full((K, K), 1.0 / K))
    V = evecs[:, evals > 0.5]  # orthonormal basis of 1^perp
    eig = np.sort(np.linalg.eigvalsh(V.T @ hess @ V))
    q = (1.0 - cf.p_true) / (K - 1)
    predicted = tuple(sorted([q] * (K - 2) + [K * cf.p_true * q]))
    return LogitConditioning(
        smoothing=cf.smoothing,
        p_true=cf.p_true,
        eigenvalues=tuple(float(v) for v in eig),
        predicted=predicted,
        kappa=float(eig[-1] / eig[0]),
        kappa_closed_form=cf.kappa_logit,
    )


# ------------------------------------------------------------------- symmetry directions
class RotationSymmetry:
    """Tangent space of the orbit ``{(W Q, Q^T H, b)}`` at a point, with a cheap projector.

    The tangent map is ``L(A) = (W A, -A H, 0)`` on skew ``A``; its adjoint is
    ``L*(X, Y) = skew(W^T X - Y H^T)`` and ``L* L(A) = (S A + A S)/2`` with
    ``S = W^T W + H H^T = U diag(s) U^T``.  Hence in the basis ``U`` the skew matrices
    ``E_ij - E_ji`` map to orthogonal tangent vectors of squared norm ``s_i + s_j``; the pairs with
    ``s_i + s_j > 0`` span the tangent space.  If ``include_bias_shift`` the direction
    ``(0, 0, 1/sqrt(K))`` is added (a symmetry when ``lambda_b = 0``).
    """

    def __init__(
        self,
        problem: UFMProblem,
        x: np.ndarray,
        include_bias_shift: bool = False,
        rank_tol: float = 1e-10,
    ) -> None:
        self.problem = problem
        self.W, self.H, _ = problem.unpack(np.asarray(x, dtype=np.float64))
        S = self.W.T @ self.W + self.H @ self.H.T
        s, self.U = np.linalg.eigh(S)
        s = np.clip(s, 0.0, None)
        self.rank = int(np.sum(s > rank_tol * max(float(s.max()), 1e-300))) if s.max() > 0 else 0
        pair = (s[:, None] + s[None, :]) / 2.0
        d = problem.dim
        live = np.triu(pair > rank_tol * max(float(s.max()), 1e-300), k=1) if self.rank else None
        self._mask = np.zeros((d, d), dtype=bool) if live is None else (live | live.T)
        self._inv = np.zeros_like(pair)
        self._inv[self._mask] = 1.0 / pair[self._mask]
        self.s = s
        self.include_bias_shift = include_bias_shift

    @property
    def orbit_dim(self) -> int:
        """Number of independent rotation directions (``d(d-1)/2 - (d-r)(d-r-1)/2``)."""
        return int(np.sum(np.triu(self._mask, k=1)))

    @property
    def dim(self) -> int:
        """Dimension of the symmetry subspace (rotations plus the optional bias shift)."""
        return self.orbit_dim + int(self.include_bias_shift)

    def _apply(self, A: np.ndarray) -> np.ndarray:
        pr = self.problem
        return np.concatenate(
            [(self.W @ A).ravel(), (-A @ self.H).ravel(), np.zeros(pr.num_classes)]
        )

    def project(self, v: np.ndarray) -> np.ndarray:
        """Orthogonal projection of ``v`` onto the symmetry subspace."""
        pr = self.problem
        X, Y, c = pr.unpack(np.asarray(v, dtype=np.float64))
        M = self.W.T @ X - Y @ self.H.T
        B = (M - M.T) / 2.0  # L*(v)
        At = (self.U.T @ B @ self.U) * self._inv
        out = self._apply(self.U @ At @ self.U.T)
        if self.include_bias_shift:
            K = pr.num_classes
            out[-K:] += c.mean()
        return out

    def project_out(self, v: np.ndarray) -> np.ndarray:
        """``v`` minus its projection onto the symmetry subspace."""
        return np.asarray(v, dtype=np.float64) - self.project(v)

    def basis(self) -> np.ndarray:
        """Dense orthonormal basis (num_params x dim); only for small problems."""
        cols = []
        d = self.problem.dim
        for i in range(d):
            for j in range(i + 1, d):
                if not self._mask[i, j]:
                    continue
                A = np.outer(self.U[:, i], self.U[:, j])
                A = A - A.T
                cols.append(self._apply(A) / math.sqrt(self.s[i] + self.s[j]))
        if self.include_bias_shift:
            e = np.zeros(self.problem.num_params)
            e[-self.problem.num_classes :] = 1.0 / math.sqrt(self.problem.num_classes)
            cols.append(e)
        if not cols:
            return np.zeros((self.problem.num_params, 0))
        return np.stack(cols, axis=1)


# ------------------------------------------------------------------------ full Hessian
def dense_hessian(problem: UFMProblem, x: np.ndarray) -> np.ndarray:
    """Exact dense Hessian of ``f`` by torch autograd (float64); small problems only."""
    import torch

    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    hess = torch.autograd.functional.hessian(
        lambda z: objective_torch(problem, z), xt, vectorize=True
    )
    hess = hess.numpy()
    return (hess + hess.T) / 2.0


@dataclass(frozen=True)
class BlockSpectrum:
    """Extreme eigenvalues of one diagonal block of the Hessian (``W`` or ``H``)."""

    lambda_max: float
    lambda_min: float
    ratio: float


@dataclass(frozen=True)
class HessianConditioning:
    """Conditioning of the full UFM Hessian at the closed-form minimizer.

    Attributes:
        method: ``"dense"`` (autograd Hessian + ``eigh``) or ``"lanczos"`` (ARPACK on analytic
            Hessian-vector products with the symmetry directions projected out).
        lambda_max: largest eigenvalue.
        lambda_min_nonzero: smallest eigenvalue on the orthogonal complement of the symmetry
            directions; ``ratio = lambda_max / lambda_min_nonzero``.  For ``lambda_b > 0`` the
            bias shift ``(0, 0, 1/sqrt(K))`` is an exact eigenvector with eigenvalue ``lambda_b``
            at *every* point (softmax is shift invariant), so a small ``lambda_b`` caps this value.
        lambda_min_excl_bias_shift, ratio_excl_bias_shift: the same with the bias shift also
            excluded (equal to the above when ``lambda_b = 0``): the curvature of the NC geometry.
        orbit_dim: dimension of the rotation orbit through the minimizer (theory,
            ``d(d-1)/2 - (d-r)(d-r-1)/2``); ``symmetry_dim`` adds 1 for the bias shift when
            ``lambda_b = 0``.
        zero_modes: number of eigenvalues with ``|lambda| <= zero_tol * lambda_max`` (dense only).
        other_zero_modes: such eigenvalues on the complement of the symmetry directions, i.e.
            zero curvature not explained by the symmetry (dense only).
        min_eigenvalue: smallest eigenvalue overall (dense only; ~0 at a minimizer).
        symmetry_residual: ``max ||Hess t|| / lambda_max`` over unit symmetry directions ``t``
            (dense: all basis vectors; Lanczos: 4 random projected vectors).
        w_block, h_block: spectra of ``d^2 f/dW^2`` and ``d^2 f/dH^2`` alone.
        kappa_logit, kappa_logit_numeric: closed-form and numerical logit-space condition number.
    """

    smoothing: float
    regime: str
    num_classes: int
    n_per_class: int
    dim: int
    num_params: int
    method: str
    lambda_max: float
    lambda_min_nonzero: float
    ratio: float
    lambda_min_excl_bias_shift: float
    ratio_excl_bias_shift: float
    orbit_dim: int
    symmetry_dim: int
    zero_modes: int | None
    other_zero_modes: int | None
    min_eigenvalue: float | None
    symmetry_residual: float
    w_block: BlockSpectrum
    h_block: BlockSpectrum
    kappa_logit: float
    kappa_logit_numeric: float
    p_true: float
    seconds: float
    hvp_count: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _block_indices(problem: UFMProblem) -> tuple[slice, slice, slice]:
    K, d, N = problem.num_classes, problem.dim, problem.num_samples
    return slice(0, K * d), slice(K * d, K * d + d * N), slice(K * d + d * N, None)


def _complement(Q: np.ndarray, n: int) -> np.ndarray:
    """Orthonormal basis of the orthogonal complement of the orthonormal columns ``Q``."""
    if not Q.shape[1]:
        return np.eye(n)
    full, _ = np.linalg.qr(np.concatenate([Q, np.eye(n)], axis=1))
    return full[:, Q.shape[1] : n]


def _dense_analysis(
    problem: UFMProblem,
    x: np.ndarray,
    sym: RotationSymmetry,
    sym_all: RotationSymmetry,
    zero_tol: float,
) -> dict[str, Any]:
    hess = dense_hessian(problem, x)
    n = problem.num_params
    evals = np.linalg.eigvalsh(hess)
    lam_max = float(evals[-1])
    Q = sym.basis()
    residual = float(np.linalg.norm(hess @ Q, axis=0).max()) if Q.shape[1] else 0.0
    C = _complement(Q, n)
    comp = np.linalg.eigvalsh(C.T @ hess @ C)
    C_all = _complement(sym_all.basis(), n)
    comp_all = np.linalg.eigvalsh(C_all.T @ hess @ C_all)
    sw, sh, _ = _block_indices(problem)
    ew = np.linalg.eigvalsh(hess[sw, sw])
    eh = np.linalg.eigvalsh(hess[sh, sh])
    thresh = zero_tol * lam_max
    return dict(
        lambda_max=lam_max,
        lambda_min_nonzero=float(comp[0]),
        lambda_min_excl_bias_shift=float(comp_all[0]),
        zero_modes=int(np.sum(np.abs(evals) <= thresh)),
        other_zero_modes=int(np.sum(np.abs(comp) <= thresh)),
        min_eigenvalue=float(evals[0]),
        symmetry_residual=residual / lam_max,
        w_block=BlockSpectrum(float(ew[-1]), float(ew[0]), float(ew[-1] / ew[0])),
        h_block=BlockSpectrum(float(eh[-1]), float(eh[0]), float(eh[-1] / eh[0])),
        hvp_count=0,
    )


def lanczos_extremes(
    hvp: HessianVectorProduct,
    sym: RotationSymmetry | None,
    tol: float = 1e-12,
    ncv: int = 40,
    seed: int = 0,
    return_vectors: bool = False,
) -> tuple[Any, ...]:
    """``(lambda_max, smallest eigenvalue on the symmetry complement, #HVPs)`` by ARPACK.

    Operator ``B = P H P + sigma (I - P)`` where ``P`` projects out the symmetry directions and
    ``sigma = lambda_max`` parks the symmetry subspace at the top of the spectrum, so
    ``eigsh(B, which="SA")`` returns the smallest non-symmetry eigenvalue without shift-invert
    (the top eigenvalue is computed first on ``P H P``).  With ``return_vectors`` the two unit
    Ritz vectors are appended to the tuple.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    n = hvp.size
    count = {"n": 0}
    rng = np.random.default_rng(seed)

    def proj(v: np.ndarray) -> np.ndarray:
        return v if sym is None or sym.dim == 0 else sym.project_out(v)

    def mv_top(v: np.ndarray) -> np.ndarray:
        count["n"] += 1
        v = np.ravel(v)
        return proj(hvp.hvp(proj(v)))

    v0 = proj(rng.standard_normal(n))
    top = LinearOperator((n, n), matvec=mv_top, dtype=np.float64)
    val_top, vec_top = eigsh(top, k=1, which="LA", tol=tol, ncv=ncv, v0=v0)
    lam_max = float(val_top[0])

    def mv_bottom(v: np.ndarray) -> np.ndarray:
        count["n"] += 1
        v = np.ravel(v)
        pv = proj(v)
        return proj(hvp.hvp(pv)) + lam_max * (v - pv)

    bottom = LinearOperator((n, n), matvec=mv_bottom, dtype=np.float64)
    val_bot, vec_bot = eigsh(bottom, k=1, which="SA", tol=tol, ncv=ncv, v0=v0)
    out: tuple[Any, ...] = (lam_max, float(val_bot[0]), count["n"])
    if return_vectors:
        out = (*out, vec_top[:, 0], vec_bot[:, 0])
    return out


def _block_lanczos(
    hvp: HessianVectorProduct, block: slice, tol: float, ncv: int, seed: int
) -> BlockSpectrum:
    from scipy.sparse.linalg import LinearOperator, eigsh

    n_total = hvp.size
    idx = np.arange(n_total)[block]
    m = idx.size

    def mv(v: np.ndarray) -> np.ndarray:
        full = np.zeros(n_total)
        full[idx] = np.ravel(v)
        return hvp.hvp(full)[idx]

    op = LinearOperator((m, m), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(m)
    ncv = min(ncv, m - 1)
    if m <= 2 or ncv < 3:
        dense = np.stack([mv(e) for e in np.eye(m)], axis=1)
        ev = np.linalg.eigvalsh((dense + dense.T) / 2)
        return BlockSpectrum(float(ev[-1]), float(ev[0]), float(ev[-1] / ev[0]))
    hi = float(eigsh(op, k=1, which="LA", tol=tol, ncv=ncv, v0=v0, return_eigenvectors=False)[0])
    lo = float(eigsh(op, k=1, which="SA", tol=tol, ncv=ncv, v0=v0, return_eigenvectors=False)[0])
    return BlockSpectrum(hi, lo, hi / lo)


def condition(
    problem: UFMProblem | None = None,
    /,
    *,
    method: str = "auto",
    seed: int = 0,
    tol: float = 1e-12,
    ncv: int = 40,
    zero_tol: float = 1e-9,
    dense_limit: int = 2500,
    **problem_fields: Any,
) -> HessianConditioning:
    """Hessian conditioning of the UFM at ``minimizer(problem, seed=seed)``.

    Takes a :class:`UFMProblem` or its fields as keywords.  ``method="auto"`` uses the dense
    autograd Hessian when the problem has at most ``dense_limit`` parameters and Lanczos
    otherwise.  ``tol``/``ncv`` are ARPACK's relative tolerance and Krylov dimension;
    ``zero_tol`` (relative to ``lambda_max``) decides which dense eigenvalues count as zero.
    """
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f"method must be 'auto', 'dense' or 'lanczos' (got {method!r})")
    t0 = time.perf_counter()
    problem = as_problem(problem, problem_fields)
    lambda_b = problem.lambda_b
    cf = closed_form(problem)
    x = problem.pack(*minimizer(problem, seed=seed))
    sym = RotationSymmetry(problem, x, include_bias_shift=(lambda_b == 0))
    sym_all = RotationSymmetry(problem, x, include_bias_shift=True)
    if method == "auto":
        method = "dense" if problem.num_params <= dense_limit else "lanczos"
    logit = logit_conditioning(problem)
    if method == "dense":
        res = _dense_analysis(problem, x, sym, sym_all, zero_tol)
    else:
        hvp = HessianVectorProduct(problem, x)
        # Lanczos on the complement of rotations + bias shift; the bias shift is an exact
        # eigenvector with eigenvalue lambda_b, which is merged back in below.
        lam_max, lam_min_all, count = lanczos_extremes(hvp, sym_all, tol=tol, ncv=ncv, seed=seed)
        lam_max = max(lam_max, float(lambda_b))
        lam_min = lam_min_all if lambda_b == 0 else min(float(lambda_b), lam_min_all)
        rng = np.random.default_rng(seed + 1)
        residual = 0.0
        if sym.dim:
            for _ in range(4):
                t = sym.project(rng.standard_normal(problem.num_params))
                t /= np.linalg.norm(t)
                residual = max(residual, float(np.linalg.norm(hvp.hvp(t))))
        sw, sh, _ = _block_indices(problem)
        res = dict(
            lambda_max=lam_max,
            lambda_min_nonzero=lam_min,
            lambda_min_excl_bias_shift=lam_min_all,
            zero_modes=None,
            other_zero_modes=None,
            min_eigenvalue=None,
            symmetry_residual=residual / lam_max,
            w_block=_block_lanczos(hvp, sw, tol, ncv, seed),
            h_block=_block_lanczos(hvp, sh, tol, ncv, seed),
            hvp_count=count,
        )
    return HessianConditioning(
        smoothing=cf.smoothing,
        regime=cf.regime,
        num_classes=cf.num_classes,
        n_per_class=cf.n_per_class,
        dim=int(problem.dim),
        num_params=problem.num_params,
        method=method,
        ratio=res["lambda_max"] / res["lambda_min_nonzero"],
        ratio_excl_bias_shift=res["lambda_max"] / res["lambda_min_excl_bias_shift"],
        orbit_dim=sym.orbit_dim,
        symmetry_dim=sym.dim,
        kappa_logit=cf.kappa_logit,
        kappa_logit_numeric=logit.kappa,
        p_true=cf.p_true,
        seconds=time.perf_counter() - t0,
        **res,
    )
