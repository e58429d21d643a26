"""Training conditions: class imbalance and label noise on the training split.

Both act on the training split only (the test split stays balanced and clean) and are drawn
from their own ``numpy.random.Generator`` derived from the run's seed, so the CE and LS runs of
one seed train on the same images with the same noisy labels.

**Imbalance** (``--imbalance RATIO --imbalance-profile exp|step``), as in Buda, Maki &
Mazurowski (2018) and Cao et al. (2019, LDAM): ``RATIO = n_max / n_min`` and, for classes
``k = 0 .. K-1``,

* ``exp``:  ``n_k = round(n_max · RATIO^(-k/(K-1)))`` (long tail, class 0 the largest);
* ``step``: the first ``ceil(K/2)`` classes keep ``n_max``, the other ``floor(K/2)``
  (the minority, μ = 1/2 in Buda et al.) get ``round(n_max / RATIO)``.

``n_max`` is ``per_class`` when given, else the smallest class count of the training split
(so every class can supply its count exactly). The kept samples of class k are the first
``n_k`` of the same seeded per-class permutation :func:`nclab.data.class_balanced_indices`
draws, so an imbalanced subset is nested in the balanced ``per_class`` subset of its seed.

**Label noise** (``--label-noise P --label-noise-mode symmetric|pairflip``): exactly
``round(P · N)`` of the N training labels, chosen uniformly without replacement, are replaced
by

* ``symmetric``: a class drawn uniformly among the K-1 *other* classes (so P is the actual
  fraction of wrong labels; Patrini et al. 2017, Zhang & Sabuncu 2018 use this setting);
* ``pairflip``: the next class, ``(y + 1) mod K`` (the class-dependent "pair flipping" of Han
  et al. 2018, Co-teaching).

The clean labels are kept for evaluation (see docs/training.md).
"""

from __future__ import annotations

import math

import numpy as np

from nclab.names import IMBALANCE_PROFILES, LABEL_NOISE_MODES

__all__ = [
    "IMBALANCE_PROFILES",
    "LABEL_NOISE_MODES",
    "imbalanced_counts",
    "imbalanced_indices",
    "noisy_labels",
]

#: Stream numbers mixed with the run's seed, so each condition has its own generator.
_NOISE_STREAM = 0x6E6F6973  # "nois"


def imbalanced_counts(
    n_max: int, num_classes: int, ratio: float, profile: str = "exp"
) -> np.ndarray:
    """Per-class training counts (int64, length K) of a long-tailed split (module docstring)."""
    if isinstance(n_max, bool) or int(n_max) != n_max or n_max < 1:
        raise ValueError(f"n_max must be a positive integer, got {n_max!r}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio):
        raise ValueError(f"imbalance must be a finite number >= 1, got {ratio!r}")
    if ratio < 1:
        raise ValueError(f"imbalance must be >= 1 (n_max / n_min), got {ratio}")
    if profile not in IMBALANCE_PROFILES:
        raise ValueError(
            f"unknown imbalance_profile {profile!r}; use one of {', '.join(IMBALANCE_PROFILES)}"
        )
    k = int(num_classes)
    n_max = int(n_max)
    if profile == "exp":
        counts = [round(n_max * float(ratio) ** (-c / (k - 1))) for c in range(k)]
    else:
        counts = [n_max] * ((k + 1) // 2) + [round(n_max / float(ratio))] * (k // 2)
    out = np.asarray(counts, dtype=np.int64)
    if out.min() < 1:
        raise ValueError(
            f"imbalance={ratio} leaves the smallest class with {n_max}/{ratio} < 1 samples "
            f"(n_max = {n_max}); use imbalance <= {2 * n_max} or a larger per_class"
        )
    return out


def imbalanced_indices(
    labels: np.ndarray,
    ratio: float,
    profile: str = "exp",
    *,
    per_class: int | None = None,
    seed: int = 0,
    num_classes: int | None = None,
) -> np.ndarray:
    """Sorted indices of a long-tailed training subset with exactly
    :func:`imbalanced_counts` samples per class (n_max: ``per_class`` or the smallest class)."""
    y = np.asarray(labels)
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    available = np.bincount(y, minlength=k)[:k]
    n_max = int(available.min()) if per_class is None else int(per_class)
    if per_class is not None and per_class > available.min():
        c = int(np.argmin(available))
        raise ValueError(
            f"per_class={per_class} but class {c} has only {available[c]} training samples; "
            f"choose per_class <= {available[c]} or leave it unset"
        )
    counts = imbalanced_counts(n_max, k, ratio, profile)
    rng = np.random.default_rng(seed)  # the same permutations as class_balanced_indices
    chosen = [rng.permutation(np.flatnonzero(y == c))[: counts[c]] for c in range(k)]
    return np.sort(np.concatenate(chosen))


def noisy_labels(
    labels: np.ndarray, rate: float, mode: str = "symmetric", *, num_classes: int, seed: int = 0
) -> np.ndarray:
    """A copy of ``labels`` with exactly ``round(rate · N)`` labels flipped (module docstring).

    Drawn from ``numpy.random.default_rng([seed, stream])``: it depends on the seed and the
    labels only, never on the loss. Every flipped label differs from its clean label."""
    y = np.asarray(labels, dtype=np.int64)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise ValueError(f"label_noise must be a fraction in [0, 1), got {rate!r}")
    if mode not in LABEL_NOISE_MODES:
        raise ValueError(
            f"unknown label_noise_mode {mode!r}; use one of {', '.join(LABEL_NOISE_MODES)}"
        )
    k = int(num_classes)
    if k < 2:
        raise ValueError(f"label noise needs num_classes >= 2, got {num_classes!r}")
    n = int(y.shape[0])
    flips = round(float(rate) * n)
    out = y.copy()
    if flips == 0:
        return out
    rng = np.random.default_rng([int(seed), _NOISE_STREAM])
    idx = rng.choice(n, size=flips, replace=False)
    if mode == "symmetric":
        out[idx] = (y[idx] + rng.integers(1, k, size=flips)) % k
    else:
        out[idx] = (y[idx] + 1) % k
    return out
