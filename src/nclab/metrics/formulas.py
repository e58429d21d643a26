"""Pure neural-collapse (NC) formulas: numbers from class means, covariances and ``W``.

The metrics follow Papyan, Han & Donoho (2020) and the conventions of Guo et al., "Cross Entropy
versus Label Smoothing: A Neural Collapse Perspective" (arXiv 2402.03979, TMLR 2025), plus the
metrics of the public NC codebases (see ``docs/metrics.md`` for every definition and citation).
Everything here is host-side float64 numpy; the accumulator (:mod:`nclab.metrics.engine`) feeds
it sufficient statistics.

Notation: N samples, K classes, feature dimension d, class means ``mu_k``, global mean
``mu_G = (1/K) sum_k mu_k`` (mean of class means), ``Mbar`` the K x d matrix with rows
``mu_k - mu_G``, classifier weight ``W`` (K x d, as stored by ``torch.nn.Linear``), bias ``b``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nclab.metrics._inputs import as_float64, check_bias, check_num_classes, check_weight

EPS64 = float(np.finfo(np.float64).eps)

__all__ = [
    "EPS64",
    "NCMetrics",
    "NCPerClass",
    "between_class_directions",
    "bias_collapse",
    "cdnv_from_stats",
    "equiangle",
    "equinorm",
    "etf_gram_distance",
    "hyperspherical_uniformity",
    "maxangle",
    "nc1_from_directions",
    "nc1_from_stats",
    "nc1_trace_ratio",
    "nc_metrics_from_stats",
    "nearest_class_mean_predict",
    "numerical_rank_mask",
    "ood_orthogonality",
    "rank_cutoff",
    "self_duality",
    "simplex_etf_gram",
]


# --------------------------------------------------------------------------------------------
# Result containers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NCMetrics:
    """Neural-collapse metrics of one set of features (see ``docs/metrics.md``).

    Fields that need the classifier ``W`` (or ``b``) are ``None`` when it was not given; ``nc4``
    and ``ncc_acc`` are ``None`` when no nearest-class-mean pass was recorded; ``nc1_correct``
    and ``nc1_incorrect`` need that pass with classifier predictions; ``nc5`` needs
    out-of-distribution features.
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
    nc1_trace_ratio: float
    hsu_log_mean: float
    hsu_log_var: float
    hsu_riesz_mean: float
    hsu_riesz_var: float
    bias_collapse: float | None = None
    nc1_correct: float | None = None
    nc1_incorrect: float | None = None
    nc5: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        """Plain ``{name: value}`` dict (values are Python floats or ``None``)."""
        return asdict(self)


@dataclass(frozen=True)
class NCPerClass:
    """Per-class statistics (arrays of length K, float64).

    ``count`` samples per class; ``variability`` ``sigma_k^2``, the mean squared distance of
    class k's samples to ``mu_k``; ``nc1`` ``(1/K) tr(Sigma_k Sigma_B^+)`` with ``Sigma_k`` the
    class-k covariance (so ``sum_k (n_k/N) nc1_k = nc1``), ``None`` without a second pass.
    """

    count: np.ndarray
    variability: np.ndarray
    nc1: np.ndarray | None

    def as_dict(self) -> dict[str, list[float] | None]:
        """JSON-ready ``{name: list}`` (``None`` where missing)."""
        return {k: None if v is None else [float(x) for x in v] for k, v in asdict(self).items()}


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def simplex_etf_gram(num_classes: int) -> np.ndarray:
    """Normalised Gram matrix of a K-class simplex ETF, ``E = (I_K - 11^T/K) / sqrt(K-1)``.

    ``||E||_F = 1``, so it can be compared directly with a Frobenius-normalised Gram matrix.
    """
    k = check_num_classes(num_classes)
    return (np.eye(k) - np.full((k, k), 1.0 / k)) / np.sqrt(k - 1)


def _centred_means(means: np.ndarray) -> np.ndarray:
    """``Mbar``: class means minus their (unweighted) mean ``mu_G = (1/K) sum_k mu_k``."""
    return means - means.mean(axis=0, keepdims=True)


def _pow2_unit(rows: np.ndarray) -> float:
    """A power of two close to ``max |rows|`` (1 for an all-zero array).

    Dividing by it is exact and brings the entries near 1, so products such as ``W W^T`` neither
    overflow (entries ~1e200) nor underflow (entries ~1e-300); scale-invariant metrics are
    computed on the scaled rows and norms are multiplied back.
    """
    top = float(np.max(np.abs(rows))) if rows.size else 0.0
    if top == 0.0 or not math.isfinite(top):
        return 1.0
    return math.ldexp(1.0, math.frexp(top)[1])


def rank_cutoff(singular_values: np.ndarray, means: np.ndarray, input_eps: float = EPS64) -> float:
    """Smallest singular value of ``Mbar`` that counts as a real between-class direction.

    ``max(s_1 max(K, d) eps_64, 4 sqrt(K) eps_in max_k ||mu_k||)``: the first term is float64
    round-off of the SVD; the second is the resolution of the *input*: every feature was rounded
    to relative precision ``eps_in`` (2^-23 for float32, 2^-52 for float64), so each class mean
    is uncertain by about ``eps_in ||mu_k||`` and ``Mbar``'s singular values by
    ``sqrt(K) eps_in max_k ||mu_k||``. Two float32 class means that coincide up to rounding fall
    below it; two means ``1e-3 ||mu||`` apart stay far above it.
    """
    k, d = np.shape(means)
    s_max = float(singular_values[0]) if np.size(singular_values) else 0.0
    mean_norm = float(np.max(np.linalg.norm(means, axis=1))) if k else 0.0
    return max(s_max * max(k, d) * EPS64, 4.0 * math.sqrt(k) * input_eps * mean_norm)


def between_class_directions(
    means: Any, input_eps: float = EPS64, *, stacklevel: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Kept singular values ``s`` and right singular vectors ``V`` (rows) of ``Mbar``.

    The top ``r = min(K-1, d)`` directions of the thin SVD ``Mbar = U S V^T``, minus those below
    :func:`rank_cutoff` (affinely dependent class means, e.g. two identical ones), which are
    dropped with a ``UserWarning`` naming the numerical rank.
    """
    means = np.asarray(means, dtype=np.float64)
    _, s, vt = np.linalg.svd(_centred_means(means), full_matrices=False)
    rank = min(means.shape[0] - 1, means.shape[1])
    s, vt = s[:rank], vt[:rank]
    keep = numerical_rank_mask(s, means, input_eps, stacklevel=stacklevel + 1)
    return s[keep], vt[keep]


def numerical_rank_mask(
    singular_values: np.ndarray, means: np.ndarray, input_eps: float = EPS64, *, stacklevel: int = 3
) -> np.ndarray:
    """Boolean mask of the singular values above :func:`rank_cutoff`; warns when some are not."""
    s = np.asarray(singular_values, dtype=np.float64)
    keep = s > rank_cutoff(s, means, input_eps)
    if not keep.all():
        warnings.warn(
            f"between-class covariance has numerical rank {int(keep.sum())} < {s.size}: some class "
            "means are affinely dependent (e.g. identical up to the input's precision); NC1 uses "
            "the remaining directions",
            UserWarning,
            stacklevel=stacklevel,
        )
    return keep


def nc1_from_directions(quad: np.ndarray, singular_values: np.ndarray) -> float:
    """``(1/K) tr(Sigma_W Sigma_B^+) = sum_j q_j / s_j^2`` given ``q_j = v_j^T Sigma_W v_j``.

    ``Sigma_B = Mbar^T Mbar / K`` has eigenpairs ``(s_j^2 / K, v_j)``, so
    ``tr(Sigma_W Sigma_B^+) = sum_j q_j K / s_j^2``. ``inf`` when no direction is left.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    if s.size == 0:
        return float("inf")
    return float(np.sum(np.asarray(quad, dtype=np.float64) / s**2))


def nc1_from_stats(sigma_w: Any, means: Any, *, input_eps: float = EPS64) -> float:
    """NC1 = (1/K) tr(Sigma_W Sigma_B^+) (Papyan et al. 2020; Guo et al. 2025, Sec. 3).

    ``Sigma_W`` is the within-class covariance (d x d, normalised by N) and
    ``Sigma_B = (1/K) Mbar^T Mbar``. The pseudo-inverse is restricted *explicitly* to the top
    ``r = min(K-1, d)`` eigen-directions of ``Sigma_B`` (its rank for generic means), obtained
    from the thin SVD of the K x d matrix ``Mbar`` (O(K^2 d)) instead of a default ``rcond``
    that can pick up round-off directions; numerically-zero directions (relative to the input
    precision ``input_eps``, see :func:`rank_cutoff`) are dropped with a warning. The
    reference code of Guo et al. reports ``K * nc1``.
    """
    sigma_w = np.asarray(sigma_w, dtype=np.float64)
    s, vt = between_class_directions(means, input_eps)
    return nc1_from_directions(np.einsum("jd,jd->j", vt @ sigma_w, vt), s)


def nc1_trace_ratio(trace_sigma_w: float, means: Any) -> float:
    """Quotient form of NC1, ``tr(Sigma_W) / tr(Sigma_B)`` with ``tr(Sigma_B) = ||Mbar||_F^2/K``.

    Used by public NC codebases (e.g. Rangamani et al. 2023, "Feature learning in deep
    classifiers through intermediate neural collapse") as a pseudo-inverse-free proxy; ``inf``
    when all class means coincide.
    """
    mbar = _centred_means(np.asarray(means, dtype=np.float64))
    trace_b = float(np.sum(mbar * mbar)) / mbar.shape[0]
    return float(trace_sigma_w) / trace_b if trace_b > 0 else float("inf")


def cdnv_from_stats(means: Any, class_var: Any, dist_exp: float = 1.0) -> float:
    """Class-distance normalised variance (Galanti et al. 2022), with a distance exponent.

    ``cdnv = mean_{k != l} (sigma_k^2 + sigma_l^2) / (2 ||mu_k - mu_l||^(2 dist_exp))`` where
    ``sigma_k^2`` is the mean squared distance of class k's features to ``mu_k``. ``dist_exp = 1``
    is Galanti et al.'s CDNV; a larger exponent down-weights already distant pairs (the
    ``dist_exp`` of the neural-collapse package of Wu & Papyan 2024). Identical means give ``inf``.
    """
    from scipy.spatial.distance import pdist

    means, class_var = np.asarray(means, dtype=np.float64), np.asarray(class_var, dtype=np.float64)
    dist2 = pdist(means, metric="sqeuclidean")  # pairs k < l, computed from differences
    iu, ju = np.triu_indices(means.shape[0], k=1)
    num = class_var[iu] + class_var[ju]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        den = np.where(dist2 > 0, dist2, 1.0) ** dist_exp
        ratio = np.where(dist2 > 0, num / (2.0 * den), np.inf)
    return float(np.mean(ratio))  # the k<l mean equals the k!=l mean (symmetric terms)


def etf_gram_distance(gram: Any) -> float:
    """``|| G / ||G||_F - E ||_F`` with ``E`` the normalised simplex-ETF Gram (NC2)."""
    g = np.asarray(gram, dtype=np.float64)
    norm = np.linalg.norm(g)
    if norm == 0:
        return float("nan")
    return float(np.linalg.norm(g / norm - simplex_etf_gram(g.shape[0])))


def self_duality(weight: Any, means: Any) -> float:
    """NC3 = || W / ||W||_F - Mbar / ||Mbar||_F ||_F^2 (squared, as in Guo et al.'s code)."""
    weight, means = np.asarray(weight, dtype=np.float64), np.asarray(means, dtype=np.float64)
    w = weight / _pow2_unit(weight)
    mbar = _centred_means(means)
    mbar = mbar / _pow2_unit(mbar)
    diff = w / np.linalg.norm(w) - mbar / np.linalg.norm(mbar)
    return float(np.sum(diff**2))


def _row_norms(rows: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(rows, dtype=np.float64), axis=1)


def _cosine_matrix(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    rows = rows / _pow2_unit(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = rows / _row_norms(rows)[:, None]  # a zero row gives NaN cosines (NaN metrics)
    return unit @ unit.T


def _off_diagonal(square: np.ndarray) -> np.ndarray:
    return square[~np.eye(square.shape[0], dtype=bool)]


def equinorm(rows: Any) -> float:
    """std / mean of the row norms (population std, ddof=0); 0 for equal norms."""
    norms = _row_norms(np.asarray(rows, dtype=np.float64) / _pow2_unit(np.asarray(rows)))
    return float(np.std(norms) / np.mean(norms))


def equiangle(rows: Any) -> float:
    """Population std (ddof=0) of the pairwise cosines ``cos(r_k, r_l)``, k != l."""
    return float(np.std(_off_diagonal(_cosine_matrix(rows))))


def maxangle(rows: Any) -> float:
    """``mean_{k != l} |cos(r_k, r_l) + 1/(K-1)|``: distance from the simplex angle."""
    k = np.shape(rows)[0]
    return float(np.mean(np.abs(_off_diagonal(_cosine_matrix(rows)) + 1.0 / (k - 1))))


def hyperspherical_uniformity(means: Any) -> dict[str, float]:
    """Mean and variance of pairwise kernels of the normalised centred class means.

    With ``u_k = (mu_k - mu_G) / ||mu_k - mu_G||`` on the unit sphere and pairs k < l
    (Liu et al. 2023, "Generalizing and decoupling neural collapse via hyperspherical
    uniformity gap"; Wu & Papyan 2024):

    - log kernel ``-log ||u_k - u_l||`` -> ``hsu_log_mean``, ``hsu_log_var``;
    - Riesz s-kernel ``sign(s) ||u_k - u_l||^(-s)`` with ``s = d - 2`` (the log kernel when
      ``s = 0``) -> ``hsu_riesz_mean``, ``hsu_riesz_var``.

    Variances are population variances over the ``K(K-1)/2`` pairs. Uniformly spread means (a
    simplex ETF) minimise the means and give zero variances. Distances come from the cosines,
    ``||u_k - u_l||^2 = 2 - 2 cos``. For large d the Riesz values can underflow to 0.
    """
    mbar = _centred_means(np.asarray(means, dtype=np.float64))
    k, d = mbar.shape
    cos = _cosine_matrix(mbar)[np.triu_indices(k, 1)]
    dist = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        log_k = -np.log(dist)
        s = d - 2
        riesz = log_k if s == 0 else math.copysign(1.0, s) * np.exp(s * log_k)
    return {
        "hsu_log_mean": float(np.mean(log_k)),
        "hsu_log_var": float(np.var(log_k)),
        "hsu_riesz_mean": float(np.mean(riesz)),
        "hsu_riesz_var": float(np.var(riesz)),
    }


def bias_collapse(weight: Any, bias: Any, means: Any) -> float:
    """``|| W mu_G + b ||``: the logits of the global mean (0 when the bias absorbs the global
    mean, as at the UFM optimum with a free bias; "bias collapse" of the public NC codebases)."""
    w, b = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    mu_g = np.asarray(means, dtype=np.float64).mean(axis=0)
    return float(np.linalg.norm(w @ mu_g + b))


def _bias_collapse(weight: np.ndarray, bias: np.ndarray, means: np.ndarray, unit: float) -> float:
    """:func:`bias_collapse` with ``means`` in units of ``unit``, without over/underflow."""
    logits = weight @ means.mean(axis=0) * unit + bias
    scale = _pow2_unit(logits)
    return float(np.linalg.norm(logits / scale) * scale)


def ood_orthogonality(means: Any, ood_mean: Any) -> float:
    """NC5 (Ben Ammar et al. 2024, NECO, eq. 5): ``mean_k |cos(mu_k - mu_G, mu_OOD - mu_G)|``.

    ``mu_OOD`` is the mean of out-of-distribution features; 0 when the OOD mean (seen from the
    in-distribution global mean) is orthogonal to every centred class mean.
    """
    means = np.asarray(means, dtype=np.float64)
    mu_g = means.mean(axis=0)
    rows = np.vstack([means - mu_g, np.asarray(ood_mean, dtype=np.float64) - mu_g])
    cos = _cosine_matrix(rows)[-1, :-1]
    return float(np.mean(np.abs(cos)))


def nearest_class_mean_predict(features: Any, means: Any) -> np.ndarray:
    """``argmin_k ||h - mu_k||`` for each row of ``features`` (float64 arrays)."""
    # ||h - mu||^2 = ||h||^2 - 2 h.mu + ||mu||^2; centring both on mu_G first keeps the
    # expansion well conditioned when the means sit far from the origin.
    features, means = np.asarray(features, np.float64), np.asarray(means, np.float64)
    centre = means.mean(axis=0)
    m = means - centre
    scores = (features - centre) @ m.T * -2.0 + np.einsum("kd,kd->k", m, m)
    return np.argmin(scores, axis=1)


# --------------------------------------------------------------------------------------------
# All metrics
# --------------------------------------------------------------------------------------------


def assemble_metrics(
    means: np.ndarray,
    class_var: np.ndarray,
    nc1: float,
    trace_sigma_w: float,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    *,
    unit: float = 1.0,
    nc4: float | None = None,
    ncc_acc: float | None = None,
    nc1_correct: float | None = None,
    nc1_incorrect: float | None = None,
    ood_mean: np.ndarray | None = None,
    cdnv_dist_exp: float = 1.0,
) -> NCMetrics:
    """:class:`NCMetrics` from checked float64 statistics (internal; see
    :func:`nc_metrics_from_stats`). ``means``, ``class_var``, ``trace_sigma_w`` and ``ood_mean``
    may be in scaled units (features multiplied by ``1/unit``); ``h_norm`` and
    ``bias_collapse`` are returned in the original units."""
    k, d = means.shape
    if d < k - 1:
        warnings.warn(
            f"feature dimension d={d} < K-1={k - 1}: a simplex ETF cannot be reached, so NC2/NC3 "
            "cannot reach zero; metrics are computed anyway",
            UserWarning,
            stacklevel=3,
        )
    mbar = _centred_means(means)
    mbar_unit = _pow2_unit(mbar)
    mb = mbar / mbar_unit
    w = None
    if weight is not None:
        w_unit = _pow2_unit(weight)
        w = weight / w_unit
    return NCMetrics(
        nc1=nc1,
        cdnv=cdnv_from_stats(means, class_var, cdnv_dist_exp),
        nc2_h=etf_gram_distance(mb @ mb.T),
        nc2_w=None if w is None else etf_gram_distance(w @ w.T),
        nc2_wh=None if w is None else etf_gram_distance(w @ mb.T),
        nc3=None if w is None else self_duality(w, means),
        nc4=None if nc4 is None else float(nc4),
        ncc_acc=None if ncc_acc is None else float(ncc_acc),
        equinorm_h=equinorm(mb),
        equinorm_w=None if w is None else equinorm(w),
        equiangle_h=equiangle(mb),
        equiangle_w=None if w is None else equiangle(w),
        maxangle_h=maxangle(mb),
        maxangle_w=None if w is None else maxangle(w),
        w_norm=None if w is None else float(np.mean(_row_norms(w)) * w_unit),
        h_norm=float(np.mean(_row_norms(mb)) * mbar_unit * unit),
        nc1_trace_ratio=nc1_trace_ratio(trace_sigma_w, means),
        **hyperspherical_uniformity(means),
        bias_collapse=(
            None if weight is None or bias is None else _bias_collapse(weight, bias, means, unit)
        ),
        nc1_correct=nc1_correct,
        nc1_incorrect=nc1_incorrect,
        nc5=None if ood_mean is None else ood_orthogonality(means, ood_mean),
    )


def nc_metrics_from_stats(
    means: Any,
    sigma_w: Any,
    class_var: Any,
    weight: Any = None,
    *,
    bias: Any = None,
    nc4: float | None = None,
    ncc_acc: float | None = None,
    ood_mean: Any = None,
    input_eps: float = EPS64,
    cdnv_dist_exp: float = 1.0,
) -> NCMetrics:
    """All NC metrics from sufficient statistics (pure function).

    Args:
        means: (K, d) class means ``mu_k``.
        sigma_w: (d, d) within-class covariance
            ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T``.
        class_var: (K,) ``sigma_k^2``, mean squared distance of class k's samples to ``mu_k``.
        weight, bias: optional (K, d) classifier weight ``W`` and (K,) bias; metrics that need
            them are ``None`` otherwise.
        nc4, ncc_acc: values from a nearest-class-mean pass, passed through unchanged.
        ood_mean: optional (d,) mean of out-of-distribution features, for ``nc5``.
        input_eps: relative precision of the features the statistics came from (see
            :func:`rank_cutoff`).
        cdnv_dist_exp: distance exponent of the CDNV.

    ``nc1_correct`` / ``nc1_incorrect`` need per-sample predictions and are ``None`` here.
    Warns ``UserWarning`` when ``d < K - 1`` (a simplex ETF cannot be reached).
    """
    mu = as_float64(means, "means", 2)
    k, d = mu.shape
    check_num_classes(k)
    sw = as_float64(sigma_w, "sigma_w", 2)
    if sw.shape != (d, d):
        raise ValueError(f"sigma_w must have shape (d, d) = ({d}, {d}), got {tuple(sw.shape)}")
    var = as_float64(class_var, "class_var", 1)
    if var.shape != (k,):
        raise ValueError(f"class_var must have shape (K,) = ({k},), got {tuple(var.shape)}")
    w = None if weight is None else check_weight(weight, k, d)
    b = None if bias is None else check_bias(bias, k)
    ood = None if ood_mean is None else as_float64(ood_mean, "ood_mean", 1)
    if ood is not None and ood.shape != (d,):
        raise ValueError(f"ood_mean must have shape (d,) = ({d},), got {tuple(ood.shape)}")
    return assemble_metrics(
        mu,
        var,
        nc1_from_stats(sw, mu, input_eps=input_eps),
        float(np.trace(sw)),
        w,
        b,
        nc4=nc4,
        ncc_acc=ncc_acc,
        ood_mean=ood,
        cdnv_dist_exp=cdnv_dist_exp,
    )
