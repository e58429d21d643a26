"""Neural-collapse (NC) metrics: a device-resident accumulator, pure formulas, one-shot helpers.

- :class:`NCAccumulator` (:mod:`nclab.metrics.engine`): float64 torch state on the input's
  device, two exact modes (``streaming``: one pass, O(d^2) memory; ``projected``: two passes,
  O(N d K) work), ``merge`` / ``all_reduce`` / ``state_dict``.
- Pure formulas (:mod:`nclab.metrics.formulas`): numbers from class means, covariances and ``W``.
- :func:`nc_metrics` (one shot, the projected path), :func:`nc_metrics_ufm`, :func:`collect`.

See ``docs/metrics.md`` for every definition, citation and convention.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from nclab.metrics._inputs import as_float64, as_tensor, to_numpy
from nclab.metrics.engine import MODES, NCAccumulator, _nonfinite_error
from nclab.metrics.formulas import (
    NCMetrics,
    NCPerClass,
    between_class_directions,
    bias_collapse,
    cdnv_from_stats,
    equiangle,
    equinorm,
    etf_gram_distance,
    hyperspherical_uniformity,
    maxangle,
    nc1_from_stats,
    nc1_trace_ratio,
    nc_metrics_from_stats,
    nearest_class_mean_predict,
    ood_orthogonality,
    rank_cutoff,
    self_duality,
    simplex_etf_gram,
)

__all__ = [
    "MODES",
    "NCAccumulator",
    "NCMetrics",
    "NCPerClass",
    "between_class_directions",
    "bias_collapse",
    "cdnv_from_stats",
    "collect",
    "equiangle",
    "equinorm",
    "etf_gram_distance",
    "hyperspherical_uniformity",
    "maxangle",
    "nc1_from_stats",
    "nc1_trace_ratio",
    "nc_metrics",
    "nc_metrics_from_stats",
    "nc_metrics_ufm",
    "nearest_class_mean_predict",
    "one_shot_accumulator",
    "ood_orthogonality",
    "rank_cutoff",
    "self_duality",
    "simplex_etf_gram",
]

#: Features whose largest magnitude lies outside [2^-64, 2^64] are rescaled by a power of two.
_SAFE_EXPONENT = 64


def _power_of_two_scale(x: torch.Tensor, name: str) -> float:
    """``2^-e`` with ``2^(e-1) <= max |x| < 2^e`` when ``max |x|`` is extreme, else 1.

    Multiplying by a power of two is exact, and every NC metric except ``h_norm`` (which is
    scaled back) is invariant to it; squares of features near 1e-300 or 1e200 would otherwise
    underflow or overflow in float64. Raises the non-finite-features error for NaN/Inf.
    """
    if x.numel() == 0:
        return 1.0
    low, high = torch.aminmax(x)  # NaN propagates; much faster than vector_norm(ord=inf)
    top = max(abs(float(low)), abs(float(high)))
    if not math.isfinite(top):
        raise _nonfinite_error(x, name)
    if top == 0.0:
        return 1.0
    exponent = math.frexp(top)[1]
    return 1.0 if abs(exponent) <= _SAFE_EXPONENT else math.ldexp(1.0, -exponent)


def nc_metrics(
    features: Any, labels: Any, weight: Any = None, bias: Any = None, **options: Any
) -> NCMetrics:
    """NC metrics of ``features`` (N, d) with ``labels`` (N,) in one call.

    ``one_shot_accumulator(features, labels, weight, bias, num_classes=..., ood_features=...)``
    followed by ``compute(weight, bias, cdnv_dist_exp=...)``: keyword ``options`` are
    ``num_classes``, ``ood_features`` and ``cdnv_dist_exp`` (see :func:`one_shot_accumulator`
    and :meth:`NCAccumulator.compute`).
    """
    cdnv_dist_exp = options.pop("cdnv_dist_exp", 1.0)
    acc = one_shot_accumulator(features, labels, weight, bias, **options)
    return acc.compute(weight, bias, cdnv_dist_exp=cdnv_dist_exp)


def one_shot_accumulator(
    features: Any,
    labels: Any,
    weight: Any = None,
    bias: Any = None,
    *,
    num_classes: int | None = None,
    ood_features: Any = None,
) -> NCAccumulator:
    """A projected :class:`NCAccumulator` that has seen both passes over ``features``.

    Runs the exact two-pass ``projected`` engine on the features' device (class means, then the
    within-class statistics along the class-mean directions and the nearest-class-mean tallies
    against the features' own means), so ``ncc_acc`` is always filled and ``nc4`` when
    ``weight`` is given. K is ``num_classes`` if given, else the rows of ``weight``, else
    ``max(labels) + 1``. ``ood_features`` (M, d) adds ``nc5``. Features of extreme magnitude
    (float64 only) are rescaled by a power of two first (the metrics do not depend on the scale).
    """
    x = as_tensor(features, "features")
    if x.dim() != 2:
        raise ValueError(f"features must be 2-dimensional, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.double()
    d = int(x.shape[1])
    if weight is not None:
        shape = tuple(to_numpy(weight, "weight").shape)
        if len(shape) != 2 or shape[1] != d:
            raise ValueError(
                f"weight has shape {shape} but features have d={d} columns; weight must "
                "be (K, d) as stored by torch.nn.Linear (pass classifier.weight, not its transpose)"
            )
    if num_classes is None:
        if weight is not None:
            num_classes = int(to_numpy(weight, "weight").shape[0])
        else:
            y = as_tensor(labels, "labels")
            if y.numel() == 0:
                raise ValueError("labels are empty; pass at least one sample per class")
            top = y.max()
            if y.is_floating_point() and not bool(torch.isfinite(top)):
                raise ValueError(
                    f"labels must be integer class indices, got a {top.item()} label; pass class "
                    "indices (or num_classes=K)"
                )
            num_classes = int(top) + 1
    # Features narrower than float64 (float32, float16, bfloat16) cannot under- or overflow
    # the float64 statistics (|x| <= 3.4e38, squares >= 1e-90): no scale, and no separate pass
    # over the features for the check, since NaN/Inf features make their class sums non-finite.
    narrow = x.dtype != torch.float64
    scale = 1.0 if narrow else _power_of_two_scale(x, "features")
    acc = NCAccumulator(num_classes, d, mode="projected", device=x.device)
    y = acc._labels(labels, int(x.shape[0]))  # validated once here, not per pass
    acc.validate = False
    acc.scale = scale
    acc.update(x, y)
    if narrow and not bool(torch.isfinite(acc.shifted_sums).all()):
        raise _nonfinite_error(x, "features")
    if ood_features is not None:
        ood = as_tensor(ood_features, "ood_features")
        if ood.dim() != 2 or ood.shape[1] != d:
            raise ValueError(
                f"ood_features must have shape (M, d) with d = {d}, got {tuple(ood.shape)}"
            )
        if ood.numel() and not bool(torch.isfinite(ood).all()):
            raise _nonfinite_error(ood, "ood_features")
        acc.update_ood(ood)
    acc.update_ncc(x, y, weight=weight, bias=bias)
    return acc


def nc_metrics_ufm(weight: Any, features_dn: Any, labels: Any, bias: Any = None) -> NCMetrics:
    """NC metrics of an unconstrained-feature-model solution ``(W (K, d), H (d, N), labels)``.

    ``H`` is laid out as in the UFM literature, one column per sample; this is
    :func:`nc_metrics` on ``H^T``.
    """
    w = to_numpy(weight, "weight")
    h = as_float64(features_dn, "H", 2)
    if w.ndim != 2 or h.shape[0] != w.shape[1]:
        raise ValueError(
            f"H must have shape (d, N) with d = weight.shape[1] = "
            f"{w.shape[1] if w.ndim == 2 else '?'}, got {tuple(h.shape)}; transpose H if needed"
        )
    return nc_metrics(np.ascontiguousarray(h.T), labels, weight, bias)


def collect(
    model: nn.Module,
    loader: Iterable[tuple[Any, Any]],
    layer: nn.Module,
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

    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    from nclab.hooks import capture, eval_mode

    with capture({"layer": layer}, inputs=True) as captured, eval_mode(model):
        for x, y in loader:
            captured.clear()
            # no_grad only around the forward: a generator suspended inside the context would
            # leave gradients disabled in the caller's code between batches.
            with torch.no_grad():
                logits = model(x.to(device))
            if "layer" not in captured:
                raise ValueError(
                    "the given layer was not called during model(x); pass the classifier module "
                    "whose input is the feature vector (e.g. model.classifier)"
                )
            yield captured["layer"].flatten(1), logits, y
