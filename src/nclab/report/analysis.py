"""Numbers behind the report: milestones, seed statistics and the matched-NC1 comparison.

Matched NC1 (definition used throughout)
----------------------------------------
NC1 is not monotone in the epoch, so "NC2 at NC1 level ℓ" needs a definition. We use the
**first crossing**: walk the trajectory ``(nc1_t, nc2_t)`` in epoch order and find the first
segment ``t-1 -> t`` with ``nc1_{t-1} > ℓ >= nc1_t``; on that segment interpolate NC2
linearly in ``log nc1``::

    f = (log nc1_{t-1} - log ℓ) / (log nc1_{t-1} - log nc1_t),
    nc2(ℓ) = nc2_{t-1} + f · (nc2_t - nc2_{t-1}).

``nc2(nc1_0) = nc2_0``. This is the same as walking along the running minimum of NC1: ℓ is
reached when the running minimum first gets to ℓ. A level is *covered* by a run when
``min_t nc1_t <= ℓ <= nc1_0``; outside that range the value is NaN. Two settings are compared
only on levels covered by every run of both.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nclab.report.runs import RunData

__all__ = [
    "MILESTONES",
    "SeedStat",
    "aggregate_curve",
    "common_epochs",
    "covered_range",
    "first_epoch",
    "log_levels",
    "matched_nc2",
    "milestone_epoch",
    "nice_levels",
    "seed_stat",
]

# name -> (column, threshold, description); "train_error" reaches the threshold when it is 0.
MILESTONES: dict[str, tuple[str, float, str]] = {
    "zero_train_error": ("train_error", 0.0, "first epoch with zero training error"),
    "zero_train_error_stable": (
        "train_error",
        0.0,
        "first epoch with zero training error until the end",
    ),
    "nc1_below_0.1": ("nc1", 0.1, "first epoch with nc1 < 0.1"),
    "nc1_below_0.01": ("nc1", 0.01, "first epoch with nc1 < 0.01"),
}


@dataclass(frozen=True)
class SeedStat:
    """A quantity over the seeds of one setting. ``values`` holds None for a seed that never
    reached a milestone; ``mean``/``std`` are over the seeds that did (std: sample standard
    deviation, ddof = 1; 0 for a single seed)."""

    values: tuple[float | None, ...]

    @property
    def reached(self) -> list[float]:
        """Values of the seeds that have one."""
        return [v for v in self.values if v is not None and math.isfinite(v)]

    @property
    def n(self) -> int:
        """Number of seeds."""
        return len(self.values)

    @property
    def all_reached(self) -> bool:
        """True when every seed has a value."""
        return len(self.reached) == self.n and self.n > 0

    @property
    def mean(self) -> float:
        """Mean over the seeds with a value (NaN if none)."""
        r = self.reached
        return float(np.mean(r)) if r else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over the seeds with a value (0 for one value)."""
        r = self.reached
        return float(np.std(r, ddof=1)) if len(r) >= 2 else (0.0 if r else math.nan)

    @property
    def comparable(self) -> float:
        """The mean when every seed has a value, else +inf ("never") (the verdicts pair seeds
        instead, :mod:`nclab.report.verdicts`)."""
        return self.mean if self.all_reached else math.inf

    def format(self, digits: int = 3, integer: bool = False) -> str:
        """``mean ± std`` (just the mean for one seed); ``never`` / ``never (k/n)`` when not
        every seed reached the value."""
        if not self.reached:
            return "never"
        fmt = (
            (lambda x: f"{x:.1f}" if self.n > 1 else f"{x:.0f}")
            if integer
            else (lambda x: f"{x:.{digits}g}")
        )
        text = fmt(self.mean)
        if self.n > 1:
            text += f" ± {fmt(self.std)}" if not integer else f" ± {self.std:.1f}"
        if not self.all_reached:
            text = f"never ({len(self.reached)}/{self.n} reached; mean of those {text})"
        return text

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "values": list(self.values),
            "mean": None if math.isnan(self.mean) else self.mean,
            "std": None if math.isnan(self.std) else self.std,
            "all_reached": self.all_reached,
        }


def seed_stat(runs: Sequence[RunData], fn: Callable[[RunData], float | None]) -> SeedStat:
    """Apply ``fn`` to every run (NaN is stored as None)."""
    values: list[float | None] = []
    for run in runs:
        v = fn(run)
        values.append(None if v is None or not math.isfinite(v) else float(v))
    return SeedStat(tuple(values))


def first_epoch(epochs: np.ndarray, mask: np.ndarray) -> float | None:
    """The first epoch where ``mask`` is true, or None."""
    idx = np.flatnonzero(mask)
    return float(epochs[idx[0]]) if idx.size else None


def milestone_epoch(run: RunData, name: str) -> float | None:
    """Epoch at which ``run`` first reaches milestone ``name`` (see :data:`MILESTONES`)."""
    column, threshold, _ = MILESTONES[name]
    if column == "train_error":
        values = run.train_error()
        zero = np.isfinite(values) & (values <= 1e-12)
        if name.endswith("_stable"):  # the start of the zero streak that lasts to the end
            zero = np.flip(np.logical_and.accumulate(np.flip(zero)))
        return first_epoch(run.epochs, zero)
    values = run.series(column)
    return first_epoch(run.epochs, np.isfinite(values) & (values < threshold))


def matched_nc2(nc1: np.ndarray, nc2: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """NC2 at each NC1 level by first crossing, linear in log NC1 (module docstring).

    Rows where either value is not finite, or NC1 <= 0, are dropped first. Levels outside
    ``[min nc1, nc1_0]`` give NaN."""
    nc1 = np.asarray(nc1, dtype=np.float64)
    nc2 = np.asarray(nc2, dtype=np.float64)
    keep = np.isfinite(nc1) & np.isfinite(nc2) & (nc1 > 0)
    a, b = np.log(nc1[keep]), nc2[keep]
    out = np.full(np.shape(levels), np.nan, dtype=np.float64)
    if a.size == 0:
        return out
    running_min = np.minimum.accumulate(a)
    for i, level in enumerate(np.asarray(levels, dtype=np.float64).ravel()):
        if not level > 0:
            continue
        l = math.log(level)
        if l > a[0] or l < running_min[-1]:
            continue
        if l == a[0]:
            out.flat[i] = b[0]
            continue
        t = int(np.argmax(running_min <= l))  # first index whose running min reaches l
        f = (a[t - 1] - l) / (a[t - 1] - a[t])
        out.flat[i] = b[t - 1] + f * (b[t] - b[t - 1])
    return out


def covered_range(runs: Sequence[RunData], key: str = "nc1") -> tuple[float, float] | None:
    """The NC1 interval ``[lo, hi]`` covered by every run (None if empty)."""
    lo, hi = 0.0, math.inf
    for run in runs:
        v = run.series(key)
        v = v[np.isfinite(v) & (v > 0)]
        if v.size == 0:
            return None
        lo, hi = max(lo, float(v.min())), min(hi, float(v[0]))
    return (lo, hi) if lo < hi else None


def nice_levels(lo: float, hi: float) -> np.ndarray:
    """The 1-2-5 levels (…, 0.01, 0.02, 0.05, 0.1, …) inside ``[lo, hi]``, descending; when
    fewer than two fall inside, ``hi``, the geometric mean and ``lo`` instead."""
    levels = []
    for exponent in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for mantissa in (1.0, 2.0, 5.0):
            v = float(f"{mantissa}e{exponent}")
            if lo <= v <= hi:
                levels.append(v)
    if len(levels) < 2:
        levels = [lo, math.sqrt(lo * hi), hi]
    return np.array(sorted(levels, reverse=True))


def log_levels(lo: float, hi: float, num: int = 60) -> np.ndarray:
    """``num`` log-spaced levels from ``hi`` down to ``lo``."""
    return np.geomspace(hi, lo, num)


def common_epochs(runs: Sequence[RunData]) -> np.ndarray:
    """Epochs logged by every run."""
    common: set[float] | None = None
    for run in runs:
        e = set(run.epochs.tolist())
        common = e if common is None else common & e
    return np.array(sorted(common or ()))


def aggregate_curve(
    runs: Sequence[RunData], fn: Callable[[RunData], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, minimum and maximum over seeds of a per-epoch quantity on the common epochs:
    returns ``(epochs, mean, lo, hi)``."""
    epochs = common_epochs(runs)
    stack = []
    for run in runs:
        index = {e: i for i, e in enumerate(run.epochs.tolist())}
        values = fn(run)
        stack.append([values[index[e]] for e in epochs.tolist()])
    arr = np.array(stack, dtype=np.float64).reshape(len(runs), epochs.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN columns
        return epochs, np.nanmean(arr, 0), np.nanmin(arr, 0), np.nanmax(arr, 0)
