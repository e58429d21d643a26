"""One UFM instance, :class:`UFMProblem`: sizes, penalties, smoothing, labels and packing.

Every function of :mod:`nclab.ufm` takes a problem, ``f(problem, *, options)``, or, as a thin
convenience, the problem's fields as keywords, ``f(num_classes=10, n_per_class=50, ...)`` (see
:func:`as_problem`).

Sample ordering used throughout :mod:`nclab.ufm`: ``labels = np.repeat(np.arange(K), n)``, i.e.
column ``k n + i`` of ``H`` is sample ``i`` of class ``k``.  Parameters are packed as one flat
float64 vector ``x = [vec(W) (K d), vec(H) (d N), b (K)]`` (row-major ``ravel``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

#: Default bias penalty.  Any ``lambda_b > 0`` gives the same minimizer (``b = 0``) and the same
#: objective value; a small positive value keeps the minimizer unique up to the rotation symmetry
#: (with ``lambda_b = 0`` the objective is also invariant under ``b -> b + c 1``).
DEFAULT_LAMBDA_B: float = 1e-3


def sample_labels(num_classes: int, n_per_class: int) -> np.ndarray:
    """Labels in the order used by the minimizer and the solvers: ``repeat(arange(K), n)``."""
    return np.repeat(np.arange(int(num_classes)), int(n_per_class))


@dataclass(frozen=True, kw_only=True)
class UFMProblem:
    """A regularized UFM instance with ``N = n K`` balanced samples (Guo et al., arXiv 2402.03979).

    Attributes:
        num_classes: ``K >= 2``.
        n_per_class: ``n >= 1`` samples per class.
        lambda_w, lambda_h: classifier and feature penalties (> 0).
        smoothing: label smoothing ``delta`` in ``[0, 1)``; 0 is cross-entropy.
        lambda_b: bias penalty (>= 0).
        dim: feature dimension ``d``; ``None`` means ``K - 1``, the smallest ``d`` that holds a
            simplex ETF.  The closed form does not depend on it.
        labels, targets: ``repeat(arange(K), n)`` and the smoothed targets (K, N), column ``i``
            ``(1 - delta) e_{y_i} + delta/K 1`` (derived, not arguments).

    Construction validates every field and raises ``ValueError`` with what to change.
    """

    num_classes: int
    n_per_class: int
    lambda_w: float
    lambda_h: float
    smoothing: float = 0.0
    lambda_b: float = DEFAULT_LAMBDA_B
    dim: int | None = None
    labels: np.ndarray = field(init=False, repr=False, compare=False)
    targets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()
        K = int(self.num_classes)
        fixed = {
            "num_classes": K,
            "n_per_class": int(self.n_per_class),
            "lambda_w": float(self.lambda_w),
            "lambda_h": float(self.lambda_h),
            "smoothing": float(self.smoothing),
            "lambda_b": float(self.lambda_b),
            "dim": K - 1 if self.dim is None else int(self.dim),
        }
        for name, value in fixed.items():
            object.__setattr__(self, name, value)
        labels = sample_labels(K, self.n_per_class)
        targets = np.full((K, labels.size), self.smoothing / K)
        targets[labels, np.arange(labels.size)] += 1.0 - self.smoothing
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "targets", targets)

    def _validate(self) -> None:
        if int(self.num_classes) != self.num_classes or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2 (got {self.num_classes!r})")
        if int(self.n_per_class) != self.n_per_class or self.n_per_class < 1:
            raise ValueError(f"n_per_class must be an integer >= 1 (got {self.n_per_class!r})")
        for name in ("lambda_w", "lambda_h"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(
                    f"{name} must be a finite number > 0 (got {value!r}); the UFM without weight "
                    "decay has no minimizer"
                )
        if not math.isfinite(self.lambda_b) or self.lambda_b < 0:
            raise ValueError(f"lambda_b must be a finite number >= 0 (got {self.lambda_b!r})")
        if not math.isfinite(self.smoothing) or not 0.0 <= self.smoothing < 1.0:
            raise ValueError(
                f"smoothing (delta) must lie in [0, 1) (got {self.smoothing!r}); 0 is cross-entropy"
            )
        if self.dim is not None and (int(self.dim) != self.dim or self.dim < 1):
            raise ValueError(f"dim must be a positive integer (got {self.dim!r})")

    @property
    def num_samples(self) -> int:
        """``N = n K``."""
        return int(self.num_classes * self.n_per_class)

    @property
    def num_params(self) -> int:
        """``K d + d N + K``, the length of a packed point."""
        K, d = self.num_classes, int(self.dim)
        return K * d + d * self.num_samples + K

    @property
    def beta(self) -> float:
        """``beta = sqrt(n lambda_W lambda_H)``; it collapses iff ``beta < (1 - delta)/K``."""
        return math.sqrt(self.n_per_class * self.lambda_w * self.lambda_h)

    @property
    def collapses(self) -> bool:
        """True in the collapse regime ``beta < (1 - delta)/K`` (else the minimizer is 0)."""
        return self.beta < (1.0 - self.smoothing) / self.num_classes

    def require_etf_dim(self) -> None:
        """``ValueError`` when the minimizer collapses but ``d < K - 1`` cannot hold its ETF."""
        K = self.num_classes
        if self.collapses and int(self.dim) < K - 1:
            raise ValueError(
                f"dim={self.dim} < K-1={K - 1}: in the collapse regime the minimizer's simplex "
                f"ETF of {K} classes needs at least K-1 dimensions; use dim >= K-1"
            )

    def pack(self, W: np.ndarray, H: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flatten ``(W, H, b)`` into one float64 vector."""
        return np.concatenate([np.ravel(a).astype(np.float64) for a in (W, H, b)])

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views ``(W (K,d), H (d,N), b (K,))`` into a flat vector (numpy or torch)."""
        K, d, N = self.num_classes, int(self.dim), self.num_samples
        shape = tuple(getattr(x, "shape", ()))
        if shape != (self.num_params,):
            raise ValueError(
                f"x must be the packed point of shape ({self.num_params},) = K·d + d·N + K for "
                f"K={K}, d={d}, N={N} (see UFMProblem.pack), got shape {shape}"
            )
        W = x[: K * d].reshape(K, d)
        H = x[K * d : K * d + d * N].reshape(d, N)
        b = x[K * d + d * N :]
        return W, H, b

    def random_init(self, seed: int = 0, scale: float = 0.1) -> np.ndarray:
        """Gaussian initialisation with standard deviation ``scale`` (bias starts at 0)."""
        rng = np.random.default_rng(seed)
        K, d, N = self.num_classes, int(self.dim), self.num_samples
        W = scale * rng.standard_normal((K, d))
        H = scale * rng.standard_normal((d, N))
        return self.pack(W, H, np.zeros(K))


#: Names of the :class:`UFMProblem` arguments (what the keyword convenience accepts).
PROBLEM_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(UFMProblem) if f.init)


def as_problem(problem: UFMProblem | None, problem_fields: dict[str, Any]) -> UFMProblem:
    """``problem`` itself, or ``UFMProblem(**problem_fields)`` when it is None (not both).

    The one place that turns the keyword convenience of every :mod:`nclab.ufm` function into a
    problem object; unknown keywords raise ``TypeError`` naming the accepted ones.
    """
    unknown = sorted(set(problem_fields) - set(PROBLEM_FIELDS))
    if unknown:
        raise TypeError(
            f"unknown UFM argument(s) {', '.join(unknown)}; the problem's fields are "
            f"{', '.join(PROBLEM_FIELDS)}"
        )
    if problem is None:
        return UFMProblem(**problem_fields)
    if problem_fields:
        raise TypeError(
            "pass either a UFMProblem or its fields as keywords, not both (got the problem and "
            f"{', '.join(sorted(problem_fields))}); use dataclasses.replace(problem, ...)"
        )
    if not isinstance(problem, UFMProblem):
        raise TypeError(
            f"expected a UFMProblem (got {type(problem).__name__}); pass the fields as keywords, "
            "e.g. closed_form(num_classes=10, n_per_class=50, lambda_w=5e-3, lambda_h=5e-3)"
        )
    return problem
