"""Calibration: ECE and its variants, NLL, Brier score, top-k accuracy, temperature scaling.

All functions take ``logits`` (N, K) and integer ``labels`` (N,) as torch tensors or numpy
arrays and compute in float64. With ``p_i = softmax(z_i)``, the confidence is
``c_i = max_k p_ik`` and the prediction ``ŷ_i = argmax_k p_ik`` (first index on ties).

Bins: ``n_bins`` equal-width bins ``B_b = (b/n, (b+1)/n]`` for ``b = 0..n-1`` (open on the left,
closed on the right; a confidence of exactly 0 would go to the first bin). Then

    ECE = Σ_b (|B_b| / N) · |acc(B_b) - conf(B_b)|,
    acc(B_b) = mean_{i∈B_b} [ŷ_i = y_i],   conf(B_b) = mean_{i∈B_b} c_i.

Temperature scaling (Guo et al. 2017) picks ``T > 0`` minimising the mean negative log-likelihood
``NLL(T) = mean_i [logsumexp(z_i / T) - z_iy / T]``.

The rest of the calibration set (see ``docs/metrics.md``):

- MCE ``max_b |acc(B_b) - conf(B_b)|`` over non-empty equal-width bins (Naeini et al. 2015);
- adaptive ECE: the ECE formula over ``n_bins`` equal-mass bins of the sorted confidences
  (Nixon et al. 2019; Mukhoti et al. 2020);
- classwise ECE ``(1/K) sum_k sum_b (|B_kb|/N) |mean_{B_kb} [y_i = k] - mean_{B_kb} p_ik|``
  with equal-width bins of ``p_ik`` over all samples (Kull et al. 2019);
- Brier score ``mean_i sum_k (p_ik - [y_i = k])^2`` (Brier 1950, multi-class form);
- top-k accuracy ``mean_i [y_i among the k largest logits]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ReliabilityBins",
    "adaptive_calibration_error",
    "brier_score",
    "calibration_metrics",
    "classwise_calibration_error",
    "expected_calibration_error",
    "maximum_calibration_error",
    "top_k_accuracy",
    "fit_temperature",
    "fit_temperature_ece",
    "nll",
    "reliability_bins",
    "split_for_temperature",
]

ArrayLike = np.ndarray | torch.Tensor

_T_BOUNDS = (0.05, 20.0)
_LOG_T_BOUNDS = (float(np.log(_T_BOUNDS[0])), float(np.log(_T_BOUNDS[1])))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics for a reliability diagram.

    ``edges`` (n_bins + 1,), bin b is ``(edges[b], edges[b+1]]``; ``count`` (n_bins,) int64;
    ``confidence`` and ``accuracy`` (n_bins,) float64 means over the bin, NaN where ``count == 0``.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def n_bins(self) -> int:
        return int(self.count.shape[0])

    @property
    def ece(self) -> float:
        """``Σ_b (count_b / N) |accuracy_b - confidence_b|`` over non-empty bins."""
        n = self.count.sum()
        if n == 0:
            return 0.0
        nz = self.count > 0
        gap = np.abs(self.accuracy[nz] - self.confidence[nz])
        return float((self.count[nz] / n * gap).sum())


def _as_numpy(logits: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    z = logits.detach().cpu().double().numpy() if isinstance(logits, torch.Tensor) else logits
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2, got {z.shape}")
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise ValueError(f"labels must have shape ({z.shape[0]},) to match logits, got {y.shape}")
    if z.shape[0] == 0:
        raise ValueError("need at least one sample; got empty logits")
    if y.dtype.kind not in "ui":
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {z.shape[1]}) (the number of logit columns), "
            f"found [{y.min()}, {y.max()}]"
        )
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    return z, y.astype(np.int64)


def _check_bins(n_bins: int) -> int:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def reliability_bins(logits: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> ReliabilityBins:
    """Top-label confidence/accuracy/count in ``n_bins`` equal-width bins ``(b/n, (b+1)/n]``."""
    n_bins = _check_bins(n_bins)
    z, y = _as_numpy(logits, labels)
    return _reliability(_softmax(z), y, n_bins)


def _top_label(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence ``max_k p_ik`` and correctness ``[argmax_k p_ik = y_i]`` (float64)."""
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _reliability(p: np.ndarray, y: np.ndarray, n_bins: int) -> ReliabilityBins:
    conf, correct = _top_label(p, y)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = _equal_width_bin(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, acc_sum / count, np.nan)
    return ReliabilityBins(edges=edges, confidence=confidence, accuracy=accuracy, count=count)


def expected_calibration_error(logits: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Top-label ECE ``Σ_b (|B_b|/N) |acc(B_b) - conf(B_b)|`` with bins ``(b/n, (b+1)/n]``."""
    return reliability_bins(logits, labels, n_bins).ece


def maximum_calibration_error(logits: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """MCE ``max_b |acc(B_b) - conf(B_b)|`` over the non-empty equal-width bins of the ECE."""
    return _mce(reliability_bins(logits, labels, n_bins))


def _mce(bins: ReliabilityBins) -> float:
    nz = bins.count > 0
    return float(np.max(np.abs(bins.accuracy[nz] - bins.confidence[nz])))


def _binned_gap(
    values: np.ndarray, targets: np.ndarray, bin_index: np.ndarray, n_bins: int
) -> float:
    """``sum_b (|B_b|/N) |mean_{B_b} targets - mean_{B_b} values|``, i.e.
    ``sum_b |sum_{B_b} targets - sum_{B_b} values| / N``."""
    value_sum = np.bincount(bin_index, weights=values, minlength=n_bins)
    target_sum = np.bincount(bin_index, weights=targets, minlength=n_bins)
    return float(np.sum(np.abs(target_sum - value_sum)) / len(values))


def _equal_width_bin(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Index of the bin ``(b/n, (b+1)/n]`` holding each value (0 goes to the first bin)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted 'left': first j with edges[j] >= c, so edges[j-1] < c <= edges[j] -> bin j-1
    return np.clip(np.searchsorted(edges, values, side="left") - 1, 0, n_bins - 1)


def adaptive_calibration_error(logits: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Top-label ECE over ``n_bins`` equal-mass bins: the samples sorted by confidence (stable
    order) are split into ``n_bins`` consecutive groups whose sizes differ by at most one
    (``numpy.array_split``); ``sum_b (|B_b|/N) |acc(B_b) - conf(B_b)|``."""
    n_bins = _check_bins(n_bins)
    z, y = _as_numpy(logits, labels)
    return _adaptive(_softmax(z), y, n_bins)


def _adaptive(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    conf, correct = _top_label(p, y)
    order = np.argsort(conf, kind="stable")
    bin_index = np.empty(len(conf), dtype=np.int64)
    for b, members in enumerate(np.array_split(order, min(n_bins, len(conf)))):
        bin_index[members] = b
    return _binned_gap(conf, correct, bin_index, n_bins)


def classwise_calibration_error(logits: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Classwise ECE: for each class k, equal-width bins of ``p_ik`` over all samples and the gap
    between the frequency of class k and the mean ``p_ik`` per bin, weighted by ``|B_kb|/N``;
    averaged over the K classes."""
    n_bins = _check_bins(n_bins)
    z, y = _as_numpy(logits, labels)
    return _classwise(_softmax(z), y, n_bins)


def _classwise(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    n, k = p.shape
    # bin (class c, equal-width bin b of p_ic) -> one index c * n_bins + b for all classes at once
    bins = _equal_width_bin(p, n_bins) + n_bins * np.arange(k)
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1.0
    # the mean over classes of sum_b |...| / N is the sum over all (class, bin) pairs / (N K)
    return _binned_gap(p.ravel(), onehot.ravel(), bins.ravel(), k * n_bins)


def brier_score(logits: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score ``mean_i sum_k (p_ik - [y_i = k])^2`` (0 best, 2 worst)."""
    z, y = _as_numpy(logits, labels)
    return _brier(_softmax(z), y)


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    p = p.copy()
    p[np.arange(len(y)), y] -= 1.0
    return float(np.mean(np.sum(p * p, axis=1)))


def top_k_accuracy(logits: ArrayLike, labels: ArrayLike, k: int = 5) -> float:
    """Fraction of samples whose label is among the ``min(k, K)`` largest logits (a label tied
    with the k-th largest logit counts as a hit)."""
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    z, y = _as_numpy(logits, labels)
    return _top_k(z, y, int(k))


def _top_k(z: np.ndarray, y: np.ndarray, k: int) -> float:
    k = min(k, z.shape[1])
    true = z[np.arange(len(y)), y]
    above = np.sum(z > true[:, None], axis=1)  # logits strictly larger than the label's
    return float(np.mean(above < k))


def calibration_metrics(logits: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> dict[str, float]:
    """The calibration set in one call: ``ece``, ``mce``, ``ece_adaptive``, ``ece_classwise``,
    ``nll``, ``brier``, ``top5_acc`` (float64, see the module docstring); the inputs are checked
    and the probabilities computed once for all of them."""
    n_bins = _check_bins(n_bins)
    z, y = _as_numpy(logits, labels)
    p = _softmax(z)
    bins = _reliability(p, y, n_bins)
    return {
        "ece": bins.ece,
        "mce": _mce(bins),
        "ece_adaptive": _adaptive(p, y, n_bins),
        "ece_classwise": _classwise(p, y, n_bins),
        "nll": _nll(z, y),
        "brier": _brier(p, y),
        "top5_acc": _top_k(z, y, 5),
    }


def nll(logits: ArrayLike, labels: ArrayLike, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z, y = _as_numpy(logits, labels)
    return _nll(z / temperature, y)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    """Row-wise ``log sum_k exp(z_ik)``, shifted by the row maximum (no overflow)."""
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(_logsumexp(z) - z[np.arange(len(y)), y]))


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> float:
    """The ``T`` in [0.05, 20] minimising ``NLL(T) = mean_i [logsumexp(z_i/T) - z_iy/T]``.

    In ``β = 1/T`` the NLL is convex: ``f(β) = mean_i logsumexp(β g_i) - β mean_i g_iy`` (with
    ``g = z - max_k z_k``), ``f'(β) = mean_i E_p[g_i] - mean_i g_iy`` and
    ``f''(β) = mean_i Var_p(g_i) >= 0`` under ``p = softmax(β g_i)``. Newton's method on
    ``f'(β) = 0``, kept inside a bracket that every step shrinks (a step leaving it bisects
    instead), stops when a step moves β by less than 1e-10 relative; the result is on a bound
    only if the optimum lies beyond it. ``T > 1`` softens over-confident predictions, ``T < 1``
    sharpens under-confident ones.
    """
    z, y = _as_numpy(logits, labels)
    with np.errstate(over="ignore"):  # -inf from logits near ±1.8e308: clipped below
        gap = z - z.max(axis=1, keepdims=True)  # <= 0: exp(β g) never overflows
    # a gap beyond -1e100 weighs exactly 0 at every β >= 0.05
    np.maximum(gap, -1e100, out=gap)
    gap_y = float(np.mean(gap[np.arange(len(y)), y]))

    def slope_and_curvature(beta: float) -> tuple[float, float]:
        e = np.exp(beta * gap)
        p = e / e.sum(axis=1, keepdims=True)
        mean = (p * gap).sum(axis=1)
        var = (p * gap * gap).sum(axis=1) - mean * mean
        return float(np.mean(mean)) - gap_y, float(np.mean(np.maximum(var, 0.0)))

    lo, hi = 1.0 / _T_BOUNDS[1], 1.0 / _T_BOUNDS[0]
    if slope_and_curvature(lo)[0] >= 0.0:  # NLL increasing in β from the smallest β: T = 20
        return _T_BOUNDS[1]
    if slope_and_curvature(hi)[0] <= 0.0:  # still decreasing at the largest β: T = 0.05
        return _T_BOUNDS[0]
    beta = min(max(1.0, lo), hi)
    for _ in range(200):
        slope, curvature = slope_and_curvature(beta)
        if slope > 0.0:
            hi = beta
        else:
            lo = beta
        step = slope / curvature if curvature > 0.0 else np.inf
        target = beta - step
        if not lo < target < hi:
            target = 0.5 * (lo + hi)
        if abs(target - beta) <= 1e-10 * beta or hi - lo <= 1e-10 * hi:
            beta = target
            break
        beta = target
    return float(1.0 / beta)


def fit_temperature_ece(
    logits: ArrayLike, labels: ArrayLike, n_bins: int = 15, points: int = 401
) -> float:
    """The ``T`` in [0.05, 20] minimising the top-label ECE of ``softmax(logits / T)`` on these
    same samples: the protocol of Guo et al. (2024)'s code, which picks T on the test set it
    then reports. ECE is piecewise constant in T, so the search is a grid of ``points``
    log-spaced values followed by a finer grid around the best one; the smallest T among ties.
    Measured on the set it was chosen on, the resulting ECE is optimistic (a lower bound on what
    a held-out fit, :func:`fit_temperature` on another split, achieves)."""
    z, y = _as_numpy(logits, labels)
    if int(points) != points or points < 3:
        raise ValueError(f"points must be an integer >= 3, got {points!r}")

    def best(grid: np.ndarray) -> tuple[float, float]:
        eces = [expected_calibration_error(z / t, y, n_bins) for t in grid]
        i = int(np.argmin(eces))
        return float(grid[i]), float(eces[i])

    coarse = np.exp(np.linspace(*_LOG_T_BOUNDS, int(points)))
    t, _ = best(coarse)
    step = (_LOG_T_BOUNDS[1] - _LOG_T_BOUNDS[0]) / (int(points) - 1)
    lo = max(_LOG_T_BOUNDS[0], float(np.log(t)) - step)
    hi = min(_LOG_T_BOUNDS[1], float(np.log(t)) + step)
    fine = np.exp(np.linspace(lo, hi, 41))
    t_fine, _ = best(np.concatenate([[t], fine]))
    return t_fine


def split_for_temperature(
    n: int, fraction: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into ``(fit_idx, eval_idx)``, both sorted, disjoint and covering it.

    ``fit_idx`` has ``round(n · fraction)`` indices (at least 1, at most n - 1) drawn by
    ``numpy.random.default_rng(seed).permutation(n)``; fit T on one part, report ECE on the other.
    """
    if int(n) != n or n < 2:
        raise ValueError(f"need n >= 2 samples to split, got {n!r}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    n = int(n)
    n_fit = min(max(int(round(n * fraction)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_fit]), np.sort(perm[n_fit:])
