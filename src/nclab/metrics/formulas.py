"""Neural-collapse (NC) metrics: a streaming accumulator plus pure formulas.

The metrics follow Papyan, Han & Donoho (2020) and the conventions of Guo et al., "Cross Entropy
versus Label Smoothing: A Neural Collapse Perspective" (arXiv 2402.03979, TMLR 2025). See
``docs/metrics.md`` for every definition and for how other codebases differ.

Design
------
*Accumulating* and *measuring* are separate:

- :class:`NCAccumulator` keeps float64 sufficient statistics (per-class counts and sums, the total
  within-class scatter matrix, per-class scalar scatter, and NCC tallies). Memory is
  O(d^2 + K d) whatever the number of samples. Batches are merged with Chan et al.'s pairwise
  update of centred scatter, which stays accurate near collapse where the naive
  ``E[h h^T] - mu mu^T`` cancels catastrophically.
- Pure functions (:func:`nc_metrics_from_stats` and the per-metric helpers) take class means,
  the within-class covariance and optionally the classifier ``W`` and return numbers; they can
  be called on anything, e.g. an unconstrained-feature-model solution (:func:`nc_metrics_ufm`).

Notation: N samples, K classes, feature dimension d, class means ``mu_k``, global mean
``mu_G = (1/K) sum_k mu_k`` (mean of class means), ``Mbar`` the K x d matrix with rows
``mu_k - mu_G``, classifier weight ``W`` (K x d, as stored by ``torch.nn.Linear``), bias ``b``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily so that `import nclab.metrics` stays light
    import torch

__all__ = [
    "NCMetrics",
    "NCAccumulator",
    "nc_metrics",
    "nc_metrics_from_stats",
    "nc_metrics_ufm",
    "collect",
    "simplex_etf_gram",
    "nc1_from_stats",
    "cdnv_from_stats",
    "etf_gram_distance",
    "self_duality",
    "equinorm",
    "equiangle",
    "maxangle",
    "nearest_class_mean_predict",
]


# --------------------------------------------------------------------------------------------
# Result container
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NCMetrics:
    """Neural-collapse metrics of one set of features (see ``docs/metrics.md``).

    Fields that need the classifier ``W`` are ``None`` when no ``W`` was given; ``nc4`` and
    ``ncc_acc`` are ``None`` when no nearest-class-mean pass was recorded.
    """

    nc1: float
    cdnv: float
    nc2_h: float
    nc2_w: float | None
    nc2_wh: float | None
    nc3: float | None
    nc4: float | None
    ncc_acc: float | None
    equinorm_h: float
    equinorm_w: float | None
    equiangle_h: float
    equiangle_w: float | None
    maxangle_h: float
    maxangle_w: float | None
    w_norm: float | None
    h_norm: float

    def as_dict(self) -> dict[str, float | None]:
        """Plain ``{name: value}`` dict (values are Python floats or ``None``)."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Input conversion and validation
# --------------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Torch tensor (any device/dtype) or array-like -> numpy array, without gradient."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        t = x.detach().cpu()
        if t.is_floating_point() and str(t.dtype) not in ("torch.float32", "torch.float64"):
            t = t.double()  # float16 / bfloat16 have no (or no exact) numpy equivalent
        return t.numpy()
    try:
        return np.asarray(x)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} could not be converted to an array: {err}") from err


def _raise_nonfinite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if not bad.any():
        raise ValueError(f"{name} are too large: their sums overflow float64; rescale the {name}")
    where = f" in {int(bad.any(axis=1).sum())} of {arr.shape[0]} rows" if arr.ndim == 2 else ""
    raise ValueError(
        f"{name} contains {int(bad.sum())} non-finite value(s) (NaN/Inf){where}; "
        "drop or fix those samples (e.g. lower the learning rate if training diverged)"
    )


def _as_real(x: Any, name: str, ndim: int) -> np.ndarray:
    """Array of real numbers with ``ndim`` dimensions, dtype kept (no finiteness check)."""
    arr = _to_numpy(x, name)
    if arr.dtype.kind not in "fiu":
        raise ValueError(
            f"{name} must hold real numbers, got dtype {arr.dtype}; convert it to float32/float64"
        )
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {tuple(arr.shape)}")
    return arr


def _as_float64(x: Any, name: str, ndim: int) -> np.ndarray:
    """Finite float64 array with ``ndim`` dimensions; ``ValueError`` otherwise."""
    arr = np.asarray(_as_real(x, name, ndim), dtype=np.float64)
    if not np.isfinite(arr).all():
        _raise_nonfinite(arr, name)
    return arr


def _as_labels(y: Any, num_classes: int, n: int, name: str = "labels") -> np.ndarray:
    arr = _to_numpy(y, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional (N,), got shape {tuple(arr.shape)}")
    if arr.shape[0] != n:
        raise ValueError(
            f"{name} has {arr.shape[0]} entries but features have {n} rows; "
            "pass one label per feature row"
        )
    if arr.dtype.kind not in "iu":
        integral = (
            arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))
        )
        if not integral:
            raise ValueError(
                f"{name} must be integer class indices in [0, {num_classes}), got dtype "
                f"{arr.dtype} with non-integer values; pass class indices, not one-hot vectors"
            )
    arr = arr.astype(np.int64, copy=False)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_classes:
            bad = int(((arr < 0) | (arr >= num_classes)).sum())
            raise ValueError(
                f"{name} must lie in [0, {num_classes}) but {bad} label(s) fall outside "
                f"(min {lo}, max {hi}); check num_classes (it is {num_classes})"
            )
    return arr


def _check_weight(weight: Any, num_classes: int, dim: int) -> np.ndarray:
    w = _as_float64(weight, "weight", 2)
    if w.shape != (num_classes, dim):
        raise ValueError(
            f"weight must have shape (K, d) = ({num_classes}, {dim}) as stored by "
            f"torch.nn.Linear, got {tuple(w.shape)}; pass classifier.weight, not its transpose"
        )
    return w


def _check_bias(bias: Any, num_classes: int) -> np.ndarray:
    b = _as_float64(bias, "bias", 1)
    if b.shape != (num_classes,):
        raise ValueError(f"bias must have shape (K,) = ({num_classes},), got {tuple(b.shape)}")
    return b


def _check_num_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


# --------------------------------------------------------------------------------------------
# Pure formulas
# --------------------------------------------------------------------------------------------


def simplex_etf_gram(num_classes: int) -> np.ndarray:
    """Normalised Gram matrix of a K-class simplex ETF, ``E = (I_K - 11^T/K) / sqrt(K-1)``.

    ``||E||_F = 1``, so it can be compared directly with a Frobenius-normalised Gram matrix.
    """
    k = _check_num_classes(num_classes)
    return (np.eye(k) - np.full((k, k), 1.0 / k)) / np.sqrt(k - 1)


def _centred_means(means: np.ndarray) -> np.ndarray:
    """``Mbar``: class means minus their (unweighted) mean ``mu_G = (1/K) sum_k mu_k``."""
    return means - means.mean(axis=0, keepdims=True)


def nc1_from_stats(sigma_w: np.ndarray, means: np.ndarray) -> float:
    """NC1 = (1/K) tr(Sigma_W Sigma_B^+) (Papyan et al. 2020; Guo et al. 2025, Sec. 3).

    ``Sigma_W`` is the within-class covariance (d x d, normalised by N) and
    ``Sigma_B = (1/K) Mbar^T Mbar``. The pseudo-inverse is restricted *explicitly* to the top
    ``r = min(K-1, d)`` eigen-directions of ``Sigma_B`` (its rank for generic means), obtained
    from the thin SVD of the K x d matrix ``Mbar`` (cheap: O(K^2 d)), instead of a default
    ``rcond`` that can pick up round-off directions. With ``Mbar = U S V^T`` the eigenpairs are
    ``(s_j^2 / K, v_j)`` and ``tr(Sigma_W Sigma_B^+) = sum_j v_j^T Sigma_W v_j * K / s_j^2``.
    Directions whose singular value is numerically zero (affinely dependent class means) are
    dropped with a warning. The seed paper's code reports ``K * nc1``.
    """
    means, sigma_w = np.asarray(means, dtype=np.float64), np.asarray(sigma_w, dtype=np.float64)
    k, d = means.shape
    mbar = _centred_means(means)
    _, s, vt = np.linalg.svd(mbar, full_matrices=False)
    rank = min(k - 1, d)
    s, vt = s[:rank], vt[:rank]
    tol = (s[0] if s.size else 0.0) * max(k, d) * np.finfo(np.float64).eps
    keep = s > tol
    if not keep.all():
        warnings.warn(
            f"between-class covariance has numerical rank {int(keep.sum())} < {rank}: some class "
            "means are affinely dependent (e.g. identical); NC1 uses the remaining directions",
            UserWarning,
            stacklevel=3,
        )
        s, vt = s[keep], vt[keep]
    if s.size == 0:
        return float("inf")
    projected = np.einsum("jd,jd->j", vt @ sigma_w, vt)  # v_j^T Sigma_W v_j
    lam = s**2 / k  # non-zero eigenvalues of Sigma_B
    return float(np.sum(projected / lam) / k)


def cdnv_from_stats(means: np.ndarray, class_var: np.ndarray) -> float:
    """Class-distance normalised variance (Galanti et al. 2022).

    ``cdnv = mean_{k != l} (sigma_k^2 + sigma_l^2) / (2 ||mu_k - mu_l||^2)``, where
    ``sigma_k^2`` is the mean squared distance of class k's features to ``mu_k``. Identical
    class means give ``inf``.
    """
    from scipy.spatial.distance import pdist

    means, class_var = np.asarray(means, dtype=np.float64), np.asarray(class_var, dtype=np.float64)
    dist2 = pdist(means, metric="sqeuclidean")  # pairs k < l, computed from differences
    iu, ju = np.triu_indices(means.shape[0], k=1)
    num = class_var[iu] + class_var[ju]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(dist2 > 0, num / (2.0 * np.where(dist2 > 0, dist2, 1.0)), np.inf)
    return float(np.mean(ratio))  # the k<l mean equals the k!=l mean (symmetric terms)


def etf_gram_distance(gram: np.ndarray) -> float:
    """``|| G / ||G||_F - E ||_F`` with ``E`` the normalised simplex-ETF Gram (NC2)."""
    g = np.asarray(gram, dtype=np.float64)
    norm = np.linalg.norm(g)
    if norm == 0:
        return float("nan")
    return float(np.linalg.norm(g / norm - simplex_etf_gram(g.shape[0])))


def self_duality(weight: np.ndarray, means: np.ndarray) -> float:
    """NC3 = || W / ||W||_F - Mbar / ||Mbar||_F ||_F^2 (squared, as in the seed paper)."""
    weight, means = np.asarray(weight, dtype=np.float64), np.asarray(means, dtype=np.float64)
    mbar = _centred_means(means)
    diff = weight / np.linalg.norm(weight) - mbar / np.linalg.norm(mbar)
    return float(np.sum(diff**2))


def _row_norms(rows: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(rows, dtype=np.float64), axis=1)


def _off_diagonal_cosines(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    norms = _row_norms(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = rows / norms[:, None]  # a zero row gives NaN cosines, reported as NaN metrics
    cos = unit @ unit.T
    return cos[~np.eye(rows.shape[0], dtype=bool)]


def equinorm(rows: np.ndarray) -> float:
    """std / mean of the row norms (population std, ddof=0); 0 for equal norms."""
    norms = _row_norms(rows)
    return float(np.std(norms) / np.mean(norms))


def equiangle(rows: np.ndarray) -> float:
    """Population std (ddof=0) of the pairwise cosines ``cos(r_k, r_l)``, k != l."""
    return float(np.std(_off_diagonal_cosines(rows)))


def maxangle(rows: np.ndarray) -> float:
    """``mean_{k != l} |cos(r_k, r_l) + 1/(K-1)|``: distance from the simplex angle."""
    k = np.shape(rows)[0]
    return float(np.mean(np.abs(_off_diagonal_cosines(rows) + 1.0 / (k - 1))))


def nearest_class_mean_predict(features: np.ndarray, means: np.ndarray) -> np.ndarray:
    """``argmin_k ||h - mu_k||`` for each row of ``features`` (float64 arrays)."""
    # ||h - mu||^2 = ||h||^2 - 2 h.mu + ||mu||^2; centring both on mu_G first keeps the
    # expansion well conditioned when the means sit far from the origin.
    features, means = np.asarray(features, np.float64), np.asarray(means, np.float64)
    centre = means.mean(axis=0)
    m = means - centre
    scores = (features - centre) @ m.T * -2.0 + np.einsum("kd,kd->k", m, m)
    return np.argmin(scores, axis=1)


def nc_metrics_from_stats(
    means: Any,
    sigma_w: Any,
    class_var: Any,
    weight: Any = None,
    *,
    nc4: float | None = None,
    ncc_acc: float | None = None,
) -> NCMetrics:
    """All NC metrics from sufficient statistics (pure function).

    Args:
        means: (K, d) class means ``mu_k``.
        sigma_w: (d, d) within-class covariance
            ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T``.
        class_var: (K,) ``sigma_k^2``, mean squared distance of class k's samples to ``mu_k``.
        weight: optional (K, d) classifier weight ``W``; metrics that need it are ``None``
            otherwise.
        nc4, ncc_acc: values from a nearest-class-mean pass, passed through unchanged.

    Warns ``UserWarning`` when ``d < K - 1`` (a simplex ETF cannot be reached).
    """
    mu = _as_float64(means, "means", 2)
    k, d = mu.shape
    _check_num_classes(k)
    sw = _as_float64(sigma_w, "sigma_w", 2)
    if sw.shape != (d, d):
        raise ValueError(f"sigma_w must have shape (d, d) = ({d}, {d}), got {tuple(sw.shape)}")
    var = _as_float64(class_var, "class_var", 1)
    if var.shape != (k,):
        raise ValueError(f"class_var must have shape (K,) = ({k},), got {tuple(var.shape)}")
    w = None if weight is None else _check_weight(weight, k, d)
    if d < k - 1:
        warnings.warn(
            f"feature dimension d={d} < K-1={k - 1}: a simplex ETF cannot be reached, so NC2/NC3 "
            "cannot reach zero; metrics are computed anyway",
            UserWarning,
            stacklevel=2,
        )

    mbar = _centred_means(mu)
    return NCMetrics(
        nc1=nc1_from_stats(sw, mu),
        cdnv=cdnv_from_stats(mu, var),
        nc2_h=etf_gram_distance(mbar @ mbar.T),
        nc2_w=None if w is None else etf_gram_distance(w @ w.T),
        nc2_wh=None if w is None else etf_gram_distance(w @ mbar.T),
        nc3=None if w is None else self_duality(w, mu),
        nc4=None if nc4 is None else float(nc4),
        ncc_acc=None if ncc_acc is None else float(ncc_acc),
        equinorm_h=equinorm(mbar),
        equinorm_w=None if w is None else equinorm(w),
        equiangle_h=equiangle(mbar),
        equiangle_w=None if w is None else equiangle(w),
        maxangle_h=maxangle(mbar),
        maxangle_w=None if w is None else maxangle(w),
        w_norm=None if w is None else float(np.mean(_row_norms(w))),
        h_norm=float(np.mean(_row_norms(mbar))),
    )


# --------------------------------------------------------------------------------------------
# Streaming accumulator
# --------------------------------------------------------------------------------------------

_TALLIES = ("ncc_total", "ncc_correct", "nc4_total", "nc4_mismatch")


class NCAccumulator:
    """Streaming float64 sufficient statistics for NC metrics; O(d^2 + K d) memory.

    State: per-class counts ``n_k`` and sums ``s_k``, the total within-class scatter
    ``S = sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`` (d x d), the per-class scalar scatter
    ``ss_k = sum_{i: y_i=k} ||h_i - mu_k||^2`` and nearest-class-mean tallies.

    Each batch is centred on its *own* class means in float64 and merged with Chan et al.'s
    pairwise rule, per class ``S = S_a + S_b + n_a n_b / (n_a + n_b) (mu_a - mu_b)(mu_a - mu_b)^T``,
    so no large second moments are ever subtracted.

    Example::

        acc = NCAccumulator(num_classes=10, dim=512)
        for feats, logits, y in collect(model, train_loader, model.classifier):
            acc.update(feats, y)
        for feats, logits, y in collect(model, train_loader, model.classifier):
            acc.update_ncc(feats, y, logits=logits)
        metrics = acc.compute(model.classifier.weight, model.classifier.bias)
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        self.num_classes = _check_num_classes(num_classes)
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.reset()

    # -- state -----------------------------------------------------------------------------

    def reset(self) -> NCAccumulator:
        """Forget every sample and tally. Returns ``self``."""
        k, d = self.num_classes, self.dim
        self.counts = np.zeros(k, dtype=np.float64)  # float64 holds integers exactly to 2^53
        self.sums = np.zeros((k, d), dtype=np.float64)
        self.scatter = np.zeros((d, d), dtype=np.float64)
        self.class_scatter = np.zeros(k, dtype=np.float64)
        self.tallies = dict.fromkeys(_TALLIES, 0)
        return self

    @property
    def num_samples(self) -> int:
        """Number of samples accumulated by :meth:`update`."""
        return int(self.counts.sum())

    def state_dict(self) -> dict[str, Any]:
        """Copy of the state (numpy arrays and ints), e.g. for checkpoints."""
        return {
            "num_classes": self.num_classes,
            "dim": self.dim,
            "counts": self.counts.copy(),
            "sums": self.sums.copy(),
            "scatter": self.scatter.copy(),
            "class_scatter": self.class_scatter.copy(),
            **{name: int(v) for name, v in self.tallies.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> NCAccumulator:
        """Restore a :meth:`state_dict`; sizes must match this accumulator. Returns ``self``."""
        if int(state["num_classes"]) != self.num_classes or int(state["dim"]) != self.dim:
            raise ValueError(
                f"state is for K={state['num_classes']}, d={state['dim']} but this accumulator "
                f"has K={self.num_classes}, d={self.dim}; create a matching NCAccumulator"
            )
        k, d = self.num_classes, self.dim
        shapes = {"counts": (k,), "sums": (k, d), "scatter": (d, d), "class_scatter": (k,)}
        for name, shape in shapes.items():
            arr = np.array(_to_numpy(state[name], name), dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"state[{name!r}] has shape {arr.shape}, expected {shape}")
            setattr(self, name, arr)
        self.tallies = {name: int(state.get(name, 0)) for name in _TALLIES}
        return self

    # -- accumulation ----------------------------------------------------------------------

    def _check_batch(
        self, features: Any, labels: Any, *, check_finite: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        x = _as_real(features, "features", 2)
        if x.shape[1] != self.dim:
            raise ValueError(
                f"features have dimension {x.shape[1]} but the accumulator was built with "
                f"dim={self.dim}; pass (N, {self.dim}) features"
            )
        y = _as_labels(labels, self.num_classes, x.shape[0])
        if check_finite:
            x = _as_float64(x, "features", 2)
        return x, y

    def update(self, features: Any, labels: Any) -> NCAccumulator:
        """Add a batch: ``features`` (B, d) and integer ``labels`` (B,), torch or numpy.

        Inputs are moved to CPU float64. Returns ``self``.
        """
        # Finiteness is checked on the per-class batch sums (any NaN/Inf reaches them), which is
        # much cheaper than scanning every entry.
        x, y = self._check_batch(features, labels, check_finite=False)
        n = x.shape[0]
        if n == 0:
            return self
        k, d = self.num_classes, self.dim
        n_b = np.bincount(y, minlength=k)
        present = np.flatnonzero(n_b)
        both = present[self.counts[present] > 0]  # classes needing Chan's correction

        # One buffer holds the batch-centred samples and the correction rows, so that the whole
        # scatter update is a single symmetric rank-k product (numpy calls BLAS syrk for A.T @ A).
        buf = np.empty((n + both.size, d))
        xs = buf[:n]
        # Sort by class so that each class is a contiguous slice; summing slices in a loop over
        # the classes present beats a one-hot product or ufunc.reduceat for any K.
        xs[...] = np.take(x, np.argsort(y, kind="stable"), axis=0)  # gather, then cast
        sizes = n_b[present]
        ends = np.cumsum(sizes)
        starts = ends - sizes
        s_b = np.empty((present.size, d))
        for j in range(present.size):
            s_b[j] = xs[starts[j] : ends[j]].sum(axis=0)
        if not np.isfinite(s_b).all():
            _raise_nonfinite(np.asarray(x, dtype=np.float64), "features")
        nb = sizes.astype(np.float64)
        mean_b = s_b / nb[:, None]
        xs -= np.repeat(mean_b, sizes, axis=0)
        ss_b = np.add.reduceat(np.einsum("ij,ij->i", xs, xs), starts)
        if both.size:
            na = self.counts[both]
            nbb = n_b[both].astype(np.float64)
            delta = self.sums[both] / na[:, None] - mean_b[np.searchsorted(present, both)]
            c = na * nbb / (na + nbb)
            buf[n:] = delta * np.sqrt(c)[:, None]
            self.class_scatter[both] += c * np.einsum("kd,kd->k", delta, delta)
        self.scatter += buf.T @ buf
        self.class_scatter[present] += ss_b
        self.counts[present] += nb
        self.sums[present] += s_b
        return self

    def _merge_stats(
        self, n_b: np.ndarray, s_b: np.ndarray, scatter_b: np.ndarray, ss_b: np.ndarray
    ) -> None:
        """Chan et al. pairwise merge of another set of statistics into ``self``."""
        n_a = self.counts
        both = np.flatnonzero((n_a > 0) & (n_b > 0))
        self.scatter += scatter_b
        self.class_scatter += ss_b
        if both.size:
            na, nb = n_a[both], n_b[both]
            delta = self.sums[both] / na[:, None] - s_b[both] / nb[:, None]
            c = na * nb / (na + nb)
            scaled = delta * np.sqrt(c)[:, None]
            self.scatter += scaled.T @ scaled
            self.class_scatter[both] += c * np.einsum("kd,kd->k", delta, delta)
        self.counts = n_a + n_b
        self.sums += s_b

    def merge(self, other: NCAccumulator) -> NCAccumulator:
        """Fold another accumulator's samples and tallies into this one. Returns ``self``."""
        if not isinstance(other, NCAccumulator):
            raise ValueError(f"merge expects an NCAccumulator, got {type(other).__name__}")
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                f"cannot merge an accumulator with K={other.num_classes}, d={other.dim} into one "
                f"with K={self.num_classes}, d={self.dim}"
            )
        self._merge_stats(
            other.counts.copy(), other.sums.copy(), other.scatter.copy(), other.class_scatter.copy()
        )
        for name in _TALLIES:
            self.tallies[name] += other.tallies[name]
        return self

    def all_reduce(
        self, group: Any = None, *, stats: bool = True, tallies: bool = True
    ) -> NCAccumulator:
        """Combine the state of every ``torch.distributed`` rank, in place, on all ranks.

        No-op when ``torch.distributed`` is unavailable or not initialised. Works with gloo (CPU)
        and NCCL (tensors are staged on the current CUDA device). Must be called on every rank
        of ``group`` with the same arguments.

        ``stats``: sum the sample statistics. Two sum-reductions are used: first counts and sums;
        then each rank adds its correction ``n_kr (mu_kr - mu_k)(mu_kr - mu_k)^T`` towards the
        *global* means to its scatter, so the summed scatters equal the scatter of the union
        (the K-way form of Chan's merge). ``tallies``: sum the NCC tallies.

        After a reduction every rank holds the *global* state, so reducing the same part twice
        counts it twice. The usual two-pass recipe is::

            acc.update(h, y) ...; acc.all_reduce()        # global means on every rank
            acc.update_ncc(h, y, logits=z) ...; acc.all_reduce(stats=False)  # tallies only

        Returns ``self``.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        k, d = self.num_classes, self.dim

        def reduce(arr: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64)).to(device)
            dist.all_reduce(t, group=group)  # default op: SUM
            return t.cpu().numpy()

        if tallies:
            t_glob = reduce(np.array([self.tallies[name] for name in _TALLIES], dtype=np.float64))
            self.tallies = {name: int(round(v)) for name, v in zip(_TALLIES, t_glob, strict=True)}
        if not stats:
            return self

        first = reduce(np.concatenate([self.counts, self.sums.ravel()]))
        n_glob = first[:k]
        s_glob = first[k:].reshape(k, d)
        local = np.flatnonzero(self.counts > 0)
        scatter = self.scatter.copy()
        class_scatter = self.class_scatter.copy()
        if local.size:
            nl = self.counts[local]
            delta = self.sums[local] / nl[:, None] - s_glob[local] / n_glob[local, None]
            scaled = delta * np.sqrt(nl)[:, None]
            scatter += scaled.T @ scaled
            class_scatter[local] += nl * np.einsum("kd,kd->k", delta, delta)
        second = reduce(np.concatenate([scatter.ravel(), class_scatter]))
        self.counts = n_glob.copy()
        self.sums = s_glob.copy()
        self.scatter = second[: d * d].reshape(d, d).copy()
        self.class_scatter = second[d * d :].copy()
        return self

    # -- NCC pass --------------------------------------------------------------------------

    def update_ncc(
        self,
        features: Any,
        labels: Any,
        means: Any = None,
        logits: Any = None,
        weight: Any = None,
        bias: Any = None,
    ) -> NCAccumulator:
        """Second-pass tallies for ``ncc_acc`` and ``nc4``.

        Nearest-class-mean predictions ``argmin_k ||h - mu_k||`` use ``means`` (K, d) when given
        (pass the *train* means when this accumulator holds *test* features), else this
        accumulator's current class means. Classifier predictions ``argmax_k`` come from
        ``logits`` (B, K) if given, else from ``features @ weight.T + bias``; with neither, only
        the NCC accuracy is tallied. Tallies are summed by :meth:`merge` and :meth:`all_reduce`.
        Returns ``self``.
        """
        x, y = self._check_batch(features, labels)
        k, d = self.num_classes, self.dim
        if means is None:
            mu = self.class_means()
        else:
            mu = _as_float64(means, "means", 2)
            if mu.shape != (k, d):
                raise ValueError(f"means must have shape (K, d) = ({k}, {d}), got {mu.shape}")
        pred_cls = None
        if logits is not None:
            z = _as_float64(logits, "logits", 2)
            if z.shape != (x.shape[0], k):
                raise ValueError(
                    f"logits must have shape (B, K) = ({x.shape[0]}, {k}), got {tuple(z.shape)}"
                )
            pred_cls = np.argmax(z, axis=1)
        elif weight is not None:
            w = _check_weight(weight, k, d)
            z = x @ w.T
            if bias is not None:
                z += _check_bias(bias, k)
            pred_cls = np.argmax(z, axis=1)
        elif bias is not None:
            raise ValueError("bias was given without weight; pass weight (and bias) or logits")
        if x.shape[0] == 0:
            return self
        pred_ncc = nearest_class_mean_predict(x, mu)
        self.tallies["ncc_total"] += int(x.shape[0])
        self.tallies["ncc_correct"] += int(np.sum(pred_ncc == y))
        if pred_cls is not None:
            self.tallies["nc4_total"] += int(x.shape[0])
            self.tallies["nc4_mismatch"] += int(np.sum(pred_cls != pred_ncc))
        return self

    # -- results ---------------------------------------------------------------------------

    def _check_complete(self) -> None:
        empty = np.flatnonzero(self.counts == 0)
        if empty.size:
            shown = ", ".join(str(int(c)) for c in empty[:20]) + (" ..." if empty.size > 20 else "")
            raise ValueError(
                f"class(es) {shown} have no samples ({empty.size} of {self.num_classes} classes "
                "empty); NC metrics need every class: feed all classes or lower num_classes"
            )

    def class_means(self) -> np.ndarray:
        """(K, d) float64 class means; raises ``ValueError`` naming any empty class."""
        self._check_complete()
        return self.sums / self.counts[:, None]

    def within_class_covariance(self) -> np.ndarray:
        """``Sigma_W`` (d, d) = total within-class scatter / N."""
        self._check_complete()
        return self.scatter / self.counts.sum()

    def class_variances(self) -> np.ndarray:
        """(K,) ``sigma_k^2``: mean squared distance of class k's samples to ``mu_k``."""
        self._check_complete()
        return self.class_scatter / self.counts

    def compute(self, weight: Any = None, bias: Any = None) -> NCMetrics:
        """All NC metrics of the accumulated features (see :func:`nc_metrics_from_stats`).

        ``weight`` (K, d) enables the W-metrics; ``bias`` is only shape-checked (``nc4`` comes
        from the :meth:`update_ncc` tallies). ``nc4`` / ``ncc_acc`` are ``None`` when no such
        tallies were recorded.
        """
        if weight is not None:
            _check_weight(weight, self.num_classes, self.dim)
        if bias is not None:
            _check_bias(bias, self.num_classes)
        t = self.tallies
        return nc_metrics_from_stats(
            self.class_means(),
            self.within_class_covariance(),
            self.class_variances(),
            weight,
            nc4=t["nc4_mismatch"] / t["nc4_total"] if t["nc4_total"] else None,
            ncc_acc=t["ncc_correct"] / t["ncc_total"] if t["ncc_total"] else None,
        )

    def __repr__(self) -> str:
        return (
            f"NCAccumulator(num_classes={self.num_classes}, dim={self.dim}, "
            f"num_samples={self.num_samples})"
        )


# --------------------------------------------------------------------------------------------
# One-shot helpers
# --------------------------------------------------------------------------------------------


def nc_metrics(
    features: Any,
    labels: Any,
    weight: Any = None,
    bias: Any = None,
    *,
    num_classes: int | None = None,
) -> NCMetrics:
    """NC metrics of ``features`` (N, d) with ``labels`` (N,) in one call (two passes).

    Pass 1 accumulates statistics; pass 2 tallies nearest-class-mean predictions against the
    same features' own class means, so ``ncc_acc`` is always filled and ``nc4`` is filled when
    ``weight`` is given. K is ``num_classes`` if given, else the rows of ``weight``, else
    ``max(labels) + 1``.
    """
    x = _as_float64(features, "features", 2)
    if weight is not None:
        shape = tuple(_to_numpy(weight, "weight").shape)
        if len(shape) != 2 or shape[1] != x.shape[1]:
            raise ValueError(
                f"weight has shape {shape} but features have d={x.shape[1]} columns; weight must "
                "be (K, d) as stored by torch.nn.Linear (pass classifier.weight, not its transpose)"
            )
    if num_classes is None:
        if weight is not None:
            num_classes = int(_to_numpy(weight, "weight").shape[0])
        else:
            y = _to_numpy(labels, "labels")
            if y.size == 0:
                raise ValueError("labels are empty; pass at least one sample per class")
            num_classes = int(np.max(y)) + 1
    acc = NCAccumulator(num_classes, x.shape[1])
    acc.update(x, labels)
    acc.update_ncc(x, labels, weight=weight, bias=bias)
    return acc.compute(weight, bias)


def nc_metrics_ufm(weight: Any, features_dn: Any, labels: Any, bias: Any = None) -> NCMetrics:
    """NC metrics of an unconstrained-feature-model solution ``(W (K, d), H (d, N), labels)``.

    ``H`` is laid out as in the UFM literature, one column per sample; this is
    :func:`nc_metrics` on ``H^T``.
    """
    w = _to_numpy(weight, "weight")
    h = _as_float64(features_dn, "H", 2)
    if w.ndim != 2 or h.shape[0] != w.shape[1]:
        raise ValueError(
            f"H must have shape (d, N) with d = weight.shape[1] = "
            f"{w.shape[1] if w.ndim == 2 else '?'}, got {tuple(h.shape)}; transpose H if needed"
        )
    return nc_metrics(h.T, labels, weight, bias)


def collect(
    model: torch.nn.Module,
    loader: Iterable[tuple[Any, Any]],
    layer: torch.nn.Module,
    *,
    device: Any = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(features, logits, labels)`` per batch of ``loader`` (pairs ``(x, y)``).

    ``features`` is the input of ``layer`` (normally the final ``nn.Linear``), captured by a
    forward pre-hook; ``logits`` is ``model(x)``. The model runs in eval mode under
    ``torch.no_grad()``; its previous train/eval mode is restored and the hook removed when the
    generator finishes or is closed (also on early ``break``; wrap it in
    ``contextlib.closing`` to make that deterministic outside CPython). ``x`` is moved to
    ``device`` (default: the device of the model's first parameter); tensors are yielded
    where the model produced them.
    """
    import torch

    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        captured.append(inputs[0].detach())

    modes = [(m, m.training) for m in model.modules()]  # restore per module, not just the root
    handle = layer.register_forward_pre_hook(hook)
    try:
        model.eval()
        for x, y in loader:
            captured.clear()
            # no_grad only around the forward: a generator suspended inside the context would
            # leave gradients disabled in the caller's code between batches.
            with torch.no_grad():
                logits = model(x.to(device))
            if not captured:
                raise ValueError(
                    "the given layer was not called during model(x); pass the classifier module "
                    "whose input is the feature vector (e.g. model.classifier)"
                )
            yield captured[-1].flatten(1), logits, y
    finally:
        handle.remove()
        for module, mode in modes:
            module.training = mode
