"""Paired comparison of a label-smoothing setting against cross-entropy over seeds.

A CE run and an LS run of the same seed start from the same weights and see the same batches
(:mod:`nclab.compare`), so the natural unit of evidence is the *paired difference*
``d_s = m(LS, seed s) - m(CE, seed s)`` of a measure ``m``. For a claim "LS is lower" (or
"higher") than a threshold ``c`` (0, or ``-margin`` for "not worse by more than the margin"):

* per seed: **supports** when ``d_s`` lies on the claim's side of ``c``, **contradicts** when it
  lies on the other side, **tie** when ``d_s == c``;
* effect: the mean paired difference ``d̄``; 95% interval: Student t over the paired
  differences, ``d̄ ± t_{0.975, n-1} · s / √n`` (``s``: sample standard deviation, ``n >= 2``);
* verdict: **holds** when every paired seed supports and, with ``n >= 3``, the interval lies
  entirely on the claim's side of ``c``; **does not hold** when every paired seed contradicts
  and, with ``n >= 3``, the interval lies entirely on the other side; **inconclusive**
  otherwise, including when some paired seed has no defined difference (a broken run must not
  drop out of the evidence); **undetermined** when no seed has a defined difference. With
  ``n < 3`` the verdict is marked *indicative*: a t interval from one or two pairs says almost
  nothing.

These are the rules of docs/report.md; :mod:`nclab.report.verdicts` applies them to the claims of
Guo et al. (2024), "Cross Entropy versus Label Smoothing: A Neural Collapse Perspective",
arXiv 2402.03979.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CONFIDENCE",
    "FAILS",
    "HOLDS",
    "INCONCLUSIVE",
    "MIN_SEEDS",
    "MIXED",
    "PARTLY",
    "UNDETERMINED",
    "Measure",
    "PairedResult",
    "combine_measures",
    "computed",
    "differences",
    "paired",
    "sig",
    "t_interval",
]

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive"
UNDETERMINED = "undetermined"
PARTLY = "partly holds"  # only when combining over δ: holds for some δ, fails for none
MIXED = "mixed"  # only when combining over δ: holds for some δ, does not hold for others

SUPPORTS, CONTRADICTS, TIE = "supports", "contradicts", "tie"
CONFIDENCE = 0.95
MIN_SEEDS = 3  # fewer paired seeds than this: the verdict is indicative


def sig(value: float | None, digits: int = 4) -> str:
    """``value`` with at most ``digits`` significant digits (``–`` for None/NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}g}"


@dataclass(frozen=True)
class Measure:
    """What a paired difference measures.

    ``better`` is ``"lower"`` or ``"higher"``: the direction the claim predicts for LS − CE;
    ``threshold`` is the value the difference is compared with (0, or ``-margin`` for a
    non-inferiority claim); ``decides`` is False for measures reported alongside the deciding
    ones; ``observation`` marks those that are not part of the claim at all (their seeds are
    counted as lower/higher, not as supporting)."""

    key: str
    description: str
    unit: str
    better: str = "lower"
    threshold: float = 0.0
    decides: bool = True
    observation: bool = False

    @property
    def label(self) -> str:
        """``description (unit)``."""
        return f"{self.description} ({self.unit})" if self.unit else self.description

    def side(self, difference: float) -> str:
        """Per-seed outcome of one difference."""
        if difference == self.threshold:
            return TIE
        lower = difference < self.threshold
        return SUPPORTS if lower == (self.better == "lower") else CONTRADICTS

    def beyond(self, low: float, high: float) -> str | None:
        """``supports``/``contradicts`` when the interval ``[low, high]`` lies entirely on one
        side of the threshold, else None."""
        if high < self.threshold:
            return SUPPORTS if self.better == "lower" else CONTRADICTS
        if low > self.threshold:
            return CONTRADICTS if self.better == "lower" else SUPPORTS
        return None


def t_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean of ``differences`` (needs at least 2 values):
    ``mean ± t_{(1+confidence)/2, n-1} · s / sqrt(n)``; a zero spread gives a zero-width
    interval."""
    from scipy import stats

    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        raise ValueError("a t interval needs at least 2 paired differences")
    mean = float(d.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * float(d.std(ddof=1))
    half /= math.sqrt(d.size)
    return mean - half, mean + half


@dataclass(frozen=True)
class PairedResult:
    """A measure compared over paired seeds, and its verdict (module docstring)."""

    measure: Measure
    seeds: tuple[int, ...]
    differences: tuple[float | None, ...]  # LS − CE per seed; None where undefined
    outcomes: tuple[str, ...]
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    status: str
    note: str = ""
    computed: bool = False  # an exact computation (theory), not a comparison over seeds

    @property
    def n(self) -> int:
        """Seeds with a defined difference (0 for a computed value)."""
        return 0 if self.computed else sum(d is not None for d in self.differences)

    @property
    def supporting(self) -> int:
        """Seeds whose difference supports the claim."""
        return self.outcomes.count(SUPPORTS)

    @property
    def undefined(self) -> list[int]:
        """Paired seeds without a defined difference."""
        return [s for s, d in zip(self.seeds, self.differences, strict=True) if d is None]

    @property
    def indicative(self) -> bool:
        """True when fewer than :data:`MIN_SEEDS` seeds decide the verdict."""
        return 0 < self.n < MIN_SEEDS

    def summary(self) -> str:
        """``description: LS − CE effect unit (95% CI lo to hi), k/n seeds support[, t ties]
        -> status`` with at most 4 significant digits (the status for deciding measures)."""
        verdict = f" → {self.status}" if self.measure.decides else ""
        if self.effect is None:
            return f"{self.measure.description}: {self.note or 'no paired seeds'}{verdict}"
        unit = f" {self.measure.unit}" if self.measure.unit else ""
        text = f"{self.measure.description}: LS − CE {sig(self.effect)}{unit}"
        if not self.computed:
            if self.ci_low is not None and self.ci_high is not None:
                text += f" (95% CI {sig(self.ci_low)} to {sig(self.ci_high)})"
            if self.measure.observation:
                lower = sum(d < 0 for d in self.differences if d is not None)
                higher = sum(d > 0 for d in self.differences if d is not None)
                text += f", LS lower in {lower}, higher in {higher} of {self.n} seeds"
            else:
                text += f", {self.supporting}/{self.n} seeds support"
                ties = self.outcomes.count(TIE)
                if ties:
                    text += f" ({ties} tied)"
            if self.undefined:
                text += f"; undefined for seed(s) {', '.join(map(str, self.undefined))}"
        if self.note:
            text += f"; {self.note}"
        return text + verdict

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "measure": self.measure.label,
            "key": self.measure.key,
            "decides": self.measure.decides,
            "better": self.measure.better,
            "threshold": self.measure.threshold,
            "seeds": list(self.seeds),
            "differences": list(self.differences),
            "outcomes": list(self.outcomes),
            "seeds_total": None if self.computed else self.n,
            "seeds_supporting": self.supporting,
            "effect": self.effect,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "status": self.status,
            "indicative": self.indicative,
            "note": self.note,
        }


def differences(
    ce: Mapping[int, float | None], ls: Mapping[int, float | None]
) -> dict[int, float | None]:
    """``ls[s] - ce[s]`` for every seed ``s`` both have (None where either value is missing)."""
    return {
        s: None if ce[s] is None or ls[s] is None else float(ls[s]) - float(ce[s])
        for s in sorted(set(ce) & set(ls))
    }


def paired(measure: Measure, per_seed: Mapping[int, float | None], note: str = "") -> PairedResult:
    """Judge the paired differences ``per_seed[seed] = m(LS) - m(CE)`` (module docstring). A
    None or non-finite difference makes that seed undefined."""
    seeds = tuple(sorted(per_seed))
    diffs = tuple(
        None if per_seed[s] is None or not math.isfinite(per_seed[s]) else float(per_seed[s])
        for s in seeds
    )
    defined = [d for d in diffs if d is not None]
    outcomes = tuple(measure.side(d) if d is not None else UNDETERMINED for d in diffs)
    if not defined:
        return PairedResult(
            measure, seeds, diffs, outcomes, None, None, None, UNDETERMINED,
            note or "no seed with a defined difference",
        )  # fmt: skip
    effect = float(np.mean(defined))
    low = high = None
    if len(defined) >= 2:
        low, high = t_interval(defined)
    beyond = measure.beyond(low, high) if low is not None and high is not None else None
    enough = len(defined) >= MIN_SEEDS
    if all(o == SUPPORTS for o in outcomes) and (not enough or beyond == SUPPORTS):
        status = HOLDS
    elif all(o == CONTRADICTS for o in outcomes) and (not enough or beyond == CONTRADICTS):
        status = FAILS
    else:
        status = INCONCLUSIVE
    return PairedResult(measure, seeds, diffs, outcomes, effect, low, high, status, note)


def computed(measure: Measure, difference: float | None, note: str = "") -> PairedResult:
    """A measure that is computed exactly (no seeds, no interval): **holds** when the difference
    lies on the claim's side of the threshold, **does not hold** otherwise (a tie included),
    **undetermined** when it could not be computed."""
    if difference is None or not math.isfinite(difference):
        return PairedResult(
            measure,
            (),
            (),
            (),
            None,
            None,
            None,
            UNDETERMINED,
            note or "not computed",
            computed=True,
        )
    side = measure.side(difference)
    status = HOLDS if side == SUPPORTS else FAILS
    return PairedResult(
        measure, (), (difference,), (side,), difference, None, None, status, note, computed=True
    )


def combine_measures(statuses: Sequence[str]) -> str:
    """One δ's verdict from the verdicts of the measures that decide a claim (all must hold):
    any *does not hold* -> does not hold; all *holds* -> holds; any *inconclusive* ->
    inconclusive; otherwise (some undetermined, the rest holding) undetermined."""
    if not statuses:
        return UNDETERMINED
    if FAILS in statuses:
        return FAILS
    if all(s == HOLDS for s in statuses):
        return HOLDS
    if INCONCLUSIVE in statuses:
        return INCONCLUSIVE
    return UNDETERMINED
