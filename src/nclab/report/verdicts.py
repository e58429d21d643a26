"""Verdicts on the claims of Guo, Andriopoulos, Zhao, Dong, Ling, Ross (2024), "Cross Entropy
versus Label Smoothing: A Neural Collapse Perspective" (arXiv 2402.03979), from paired seeds.

Every claim is judged per label-smoothing δ against cross-entropy (CE) by the paired rules of
:mod:`nclab.report.paired` (per-seed outcome, k of n seeds supporting, mean paired difference
with a 95% Student-t interval, holds / does not hold / inconclusive / undetermined, indicative
with fewer than 3 seeds). Each claim has one or more *deciding* measures (all must hold) and
may report further measures as observations. Differences are always LS − CE.

(a) *LS converges faster.* Speed, not level: decides on how fast each run approaches *its own*
    limit, so a run that only ends lower (the same curve shifted down) cannot win. Per run, the
    first epoch at which ``log nc1`` has covered :data:`SPEED_FRACTION` (90%) of its way from
    the first evaluated epoch to its final value, and the same for the paper's loss-convergence
    curve ``log(train loss − min + ε)`` to its minimum (:func:`loss_convergence`); paired LS −
    CE in epochs, both deciding. Reported: the epochs of first zero training error, of zero
    training error until the end, of nc1 < 0.1 and of nc1 < 0.01 (a run that never gets there
    counts as its last epoch + 1, a censored value), and the level measure ``mean over epochs
    of log10(nc1_LS / nc1_CE)`` (an observation: level is (b)'s business).
(b) *LS ends with stronger collapse.* Decides: ``max(log10 nc1 ratio, log10 nc2_wh ratio)`` of
    the final epoch, negative exactly when LS has both lower final NC1 and lower final NC2.
    Reported: each of the two ratios; final nc3 and nc4 differences (observations).
(c) *At matched NC1, LS has lower NC2.* Decides: per seed pair, the mean over
    :data:`DENSE_LEVELS` log-spaced NC1 levels covered by both runs of ``log10(nc2_wh LS /
    nc2_wh CE)`` at matched NC1 (first crossing, :mod:`nclab.report.analysis`).
(d) *LS is better calibrated.* Decides: top-label ECE (15 bins) of the final model on the whole
    test set before temperature scaling, in ECE points (×100). Reported: the ECE difference
    after temperature scaling (T fitted on one half of the test set, ECE on the other).
(e) *LS generalizes at least as well.* Decides: final test accuracy in percentage points,
    holding when LS − CE > −:data:`ACCURACY_MARGIN` (non-inferiority).
(f) *UFM theory (for the runs' K and n).* Computed exactly by :mod:`nclab.ufm` (no seeds),
    from definitions that can come out against LS: the condition number of the full Hessian of
    the regularised UFM objective at the closed-form minimizer with the rotation-symmetry and
    bias-shift directions excluded, those of its W and H blocks
    (:func:`nclab.report.theory.hessian_rows`), and GD iterations to the objective tolerance at
    a shared step and at each loss's own best step. **holds** when all agree for LS, **does
    not hold** when all agree for CE, **mixed** when some favour each (the sentence names
    which). Reported, never deciding: ``κ_logit = K·p*``, lower under LS for every δ > 0 by
    construction.

A verdict on (a)-(c) needs the terminal phase: 100% training accuracy over at least the last
10% of the epochs in every paired run (:func:`terminal_phase`); otherwise the δ is
**undetermined (no terminal phase)** and the note says which run falls short.

Per-δ verdicts combine over δ (:func:`combine`): **holds** when every δ holds, **does not
hold** when every decided δ does not hold, **mixed** when some δ holds and another does not
hold or when a δ is itself mixed (its deciding measures disagree), **partly holds** when some
δ holds and none does not hold, **inconclusive** otherwise; **undetermined** when no δ could
be decided.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nclab.report.analysis import (
    MILESTONES,
    covered_range,
    log_levels,
    matched_nc2,
    milestone_epoch,
)
from nclab.report.paired import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    MIN_SEEDS,
    MIXED,
    PARTLY,
    UNDETERMINED,
    Measure,
    PairedResult,
    combine_measures,
    computed,
    differences,
    paired,
    sig,
)
from nclab.report.runs import RunData
from nclab.report.theory import GD_TOL

if TYPE_CHECKING:
    from nclab.report.theory import TheoryPanel

__all__ = [
    "ACCURACY_MARGIN",
    "CLAIMS",
    "FAILS",
    "HOLDS",
    "INCONCLUSIVE",
    "MIXED",
    "PAPER",
    "PARTLY",
    "UNDETERMINED",
    "ClaimVerdict",
    "DeltaVerdict",
    "LSGroup",
    "all_claims",
    "claim_calibration",
    "claim_final",
    "claim_generalization",
    "claim_matched",
    "claim_sooner",
    "claim_theory",
    "combine",
]

#: The paper whose claims the report judges (every user-facing text names it so).
PAPER = (
    'Guo, Andriopoulos, Zhao, Dong, Ling, Ross (2024), "Cross Entropy versus Label Smoothing: '
    'A Neural Collapse Perspective", arXiv 2402.03979'
)

#: Non-inferiority margin of claim (e), in test-accuracy percentage points.
ACCURACY_MARGIN = 0.5
DENSE_LEVELS = 60  # NC1 levels per seed pair for claim (c)

CLAIMS = {
    "a": "LS converges faster than CE (decided by the epochs each run needs to cover 90% of its "
    "own way to its final NC1 and to its minimum training loss; speed, not level)",
    "b": "LS ends with stronger collapse than CE (lower final NC1 and NC2)",
    "c": "LS has lower NC2 than CE at matched NC1",
    "d": "LS is better calibrated than CE (lower ECE before temperature scaling)",
    "e": f"LS generalizes at least as well as CE (test accuracy not lower by more than "
    f"{ACCURACY_MARGIN:g} points)",
    "f": "UFM theory for the runs' K: LS has a better-conditioned minimizer (full Hessian, W and "
    "H blocks) and gradient descent reaches it in fewer iterations",
}


@dataclass(frozen=True)
class LSGroup:
    """The runs of one label-smoothing δ (``label`` e.g. ``LS δ=0.05``)."""

    label: str
    smoothing: float
    runs: Sequence[RunData]


@dataclass(frozen=True)
class DeltaVerdict:
    """One claim for one δ: its status and the measures behind it (deciding ones first)."""

    label: str
    smoothing: float | None
    status: str
    measures: tuple[PairedResult, ...] = ()
    note: str = ""
    qualifier: str = ""  # e.g. "no terminal phase": why an undetermined δ is undetermined

    @property
    def headline(self) -> PairedResult | None:
        """The deciding measure shown as the δ's effect and interval: the first one whose own
        status is the δ's verdict (the measure that decided it), else the first deciding one."""
        deciding = [m for m in self.measures if m.measure.decides]
        return next((m for m in deciding if m.status == self.status), None) or next(
            iter(deciding), None
        )

    @property
    def seeds(self) -> int | None:
        """Paired seeds behind the verdict (None for a computed claim)."""
        h = self.headline
        if h is None:
            return None
        return None if h.computed else h.n

    @property
    def indicative(self) -> bool:
        """Fewer than 3 paired seeds decided it."""
        return self.seeds is not None and 0 < self.seeds < MIN_SEEDS

    @property
    def verdict(self) -> str:
        """The status, marked ``(n seed(s), indicative)`` when fewer than 3 seeds decide it, or
        with its qualifier (``undetermined (no terminal phase)``)."""
        if self.qualifier:
            return f"{self.status} ({self.qualifier})"
        return _marked(self.status, self.seeds if self.indicative else None)

    @property
    def text(self) -> str:
        """Every measure's summary, deciding ones first."""
        parts = [m.summary() for m in self.measures]
        if self.note:
            parts.insert(0, self.note)
        return "; ".join(parts)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (``summary.json``'s ``per_delta`` entries)."""
        h = self.headline
        seeds = [str(s) for s in h.seeds] if h is not None else []
        return {
            "label": self.label,
            "smoothing": self.smoothing,
            "status": self.status,
            "verdict": self.verdict,
            "indicative": self.indicative,
            "qualifier": self.qualifier,
            "seeds_total": None if h is None or h.computed else h.n,
            "seeds_supporting": None if h is None or h.computed else h.supporting,
            "effect": None if h is None else h.effect,
            "ci_low": None if h is None else h.ci_low,
            "ci_high": None if h is None else h.ci_high,
            "measure": None if h is None else h.measure.label,
            "per_seed": None
            if h is None or h.computed
            else dict(zip(seeds, h.outcomes, strict=True)),
            "text": self.text,
            "measures": [m.as_dict() for m in self.measures],
        }


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim, its verdict combined over δ and the per-δ evidence."""

    claim: str
    statement: str
    status: str
    per_delta: tuple[DeltaVerdict, ...] = field(default_factory=tuple)

    @property
    def seeds(self) -> int | None:
        """The fewest paired seeds behind any decided δ (None for computed claims)."""
        counts = [d.seeds for d in self.per_delta if d.seeds]
        return min(counts) if counts else None

    @property
    def indicative(self) -> bool:
        """Some δ rests on fewer than 3 seeds."""
        return any(d.indicative for d in self.per_delta)

    @property
    def verdict(self) -> str:
        """The status, marked indicative when fewer than 3 seeds decide some δ, or with the
        qualifier every δ shares (``undetermined (no terminal phase)``)."""
        quals = {d.qualifier for d in self.per_delta}
        if self.status == UNDETERMINED and len(quals) == 1 and "" not in quals:
            return f"{self.status} ({quals.pop()})"
        return _marked(self.status, self.seeds if self.indicative else None)

    def line(self) -> str:
        """One line: ``(a) statement: **verdict** — δ: evidence; ...``."""
        evidence = " | ".join(f"{d.label}: {d.verdict} — {d.text}" for d in self.per_delta)
        return f"({self.claim}) {self.statement}: **{self.verdict}**" + (
            f" — {evidence}" if evidence else ""
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "claim": self.claim,
            "statement": self.statement,
            "status": self.status,
            "verdict": self.verdict,
            "indicative": self.indicative,
            "per_delta": [d.as_dict() for d in self.per_delta],
        }


def _marked(status: str, seeds: int | None) -> str:
    if seeds is None or status == UNDETERMINED:
        return status
    return f"{status} ({seeds} seed{'s' if seeds != 1 else ''}, indicative)"


def combine(statuses: Sequence[str]) -> str:
    """Combine per-δ statuses (module docstring)."""
    decided = [s for s in statuses if s != UNDETERMINED]
    if not decided:
        return UNDETERMINED
    if all(s == HOLDS for s in statuses):
        return HOLDS
    if HOLDS in decided and FAILS in decided or MIXED in decided:
        return MIXED  # the evidence points both ways: across δ, or within one δ's measures
    if HOLDS in decided:
        return PARTLY
    if all(s == FAILS for s in decided):
        return FAILS
    return INCONCLUSIVE


def _claim(claim: str, ce: Sequence[RunData], per_delta: list[DeltaVerdict]) -> ClaimVerdict:
    if not ce:
        return ClaimVerdict(
            claim,
            CLAIMS[claim],
            UNDETERMINED,
            (DeltaVerdict("CE", 0.0, UNDETERMINED, note="no CE run to compare with"),),
        )
    if not per_delta:
        return ClaimVerdict(
            claim,
            CLAIMS[claim],
            UNDETERMINED,
            (DeltaVerdict("LS", None, UNDETERMINED, note="no LS run to compare with"),),
        )
    return ClaimVerdict(
        claim, CLAIMS[claim], combine([d.status for d in per_delta]), tuple(per_delta)
    )


def _delta(
    ce: Sequence[RunData],
    group: LSGroup,
    measures: list[PairedResult],
    note: str = "",
    *,
    terminal: bool = False,
) -> DeltaVerdict:
    """One δ's verdict from its measures. With ``terminal`` (claims (a)-(c)) every paired run
    must be in the terminal phase (:func:`terminal_phase`); otherwise the δ is **undetermined
    (no terminal phase)** and the note says which run falls short and why."""
    status = agree([m.status for m in measures if m.measure.decides])
    notes = [n for n in (_pairing_note(ce, group.runs), note) if n]
    qualifier = ""
    if terminal:
        a, b = _by_seed(ce), _by_seed(group.runs)
        reasons = []
        for seed in sorted(set(a) & set(b)):
            for name, run in (("CE", a[seed]), (group.label, b[seed])):
                why = terminal_phase(run)
                if why:
                    reasons.append(f"{name} seed {seed}: {why}")
        if reasons:
            status, qualifier = UNDETERMINED, NO_TERMINAL_PHASE
            notes.insert(0, "no terminal phase (" + "; ".join(reasons) + ")")
    return DeltaVerdict(
        group.label, group.smoothing, status, tuple(measures), "; ".join(notes), qualifier
    )


#: The terminal phase a verdict on (a)-(c) needs: 100% training accuracy over at least this
#: fraction of the epochs, at the end of the run.
TERMINAL_FRACTION = 0.1
NO_TERMINAL_PHASE = "no terminal phase"


def terminal_phase(run: RunData) -> str | None:
    """None when ``run`` is in the terminal phase of training (zero training error in every
    evaluated epoch of at least its last :data:`TERMINAL_FRACTION` of epochs, at least one),
    else the reason it is not."""
    if not run.rows:
        return "no logged epoch"
    error = run.train_error()
    epochs = run.epochs
    if not np.isfinite(error).any():
        return "training accuracy not logged"
    last = float(np.nanmax(epochs))
    need = max(1, math.ceil(TERMINAL_FRACTION * last))
    start = milestone_epoch(run, "zero_train_error_stable")
    if start is None:
        final = float(error[np.isfinite(error)][-1])
        return (
            f"training accuracy {100 * (1 - final):.4g}% at the last epoch ({last:g}), never "
            "100% until the end"
        )
    span = last - start + 1
    if span < need:
        return (
            f"100% training accuracy only over the last {span:g} of {last:g} epochs (from "
            f"epoch {start:g}; needs at least {need})"
        )
    return None


def agree(statuses: Sequence[str]) -> str:
    """One δ's verdict from its deciding measures (all must agree): all *holds* -> holds; all
    *does not hold* -> does not hold; some holding and some not -> **mixed**; otherwise as
    :func:`nclab.report.paired.combine_measures`."""
    if statuses and HOLDS in statuses and FAILS in statuses:
        return MIXED
    return combine_measures(statuses)


def _pairing_note(ce: Sequence[RunData], ls: Sequence[RunData]) -> str:
    """Which seeds could not be paired (they do not enter the verdict)."""
    a, b = set(_by_seed(ce)), set(_by_seed(ls))
    if not a & b:
        return (
            f"no seed in common with CE (CE seeds {_seed_list(a)}, LS seeds {_seed_list(b)}): "
            "the comparison is paired by seed"
        )
    parts = []
    if a - b:
        parts.append(f"CE seed(s) {_seed_list(a - b)} have no LS run")
    if b - a:
        parts.append(f"LS seed(s) {_seed_list(b - a)} have no CE run")
    return "; ".join(parts) + (" (not paired, left out)" if parts else "")


def _seed_list(seeds: set[int]) -> str:
    return ", ".join(map(str, sorted(seeds))) or "none"


def _by_seed(runs: Sequence[RunData]) -> dict[int, RunData]:
    out: dict[int, RunData] = {}
    for run in runs:
        out.setdefault(run.seed, run)  # duplicates of a seed: the first (sorted) run
    return out


RunValue = Callable[[RunData], float | None]
PairValue = Callable[[RunData, RunData], float | None]


def _per_seed(runs: Sequence[RunData], fn: RunValue) -> dict[int, float | None]:
    return {seed: fn(run) for seed, run in _by_seed(runs).items()}


def _run_differences(
    ce: Sequence[RunData], ls: Sequence[RunData], fn: RunValue
) -> dict[int, float | None]:
    """``fn(ls run) - fn(ce run)`` for every seed both settings have."""
    return differences(_per_seed(ce, fn), _per_seed(ls, fn))


def _pair_values(
    ce: Sequence[RunData], ls: Sequence[RunData], fn: PairValue
) -> dict[int, float | None]:
    """``fn(ce_run, ls_run)`` for every seed both settings have."""
    a, b = _by_seed(ce), _by_seed(ls)
    return {s: fn(a[s], b[s]) for s in sorted(set(a) & set(b))}


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# ------------------------------------------------------------------------------ (a)

#: Fraction of its own way (first evaluated epoch -> final value, in log space) a run must
#: cover for claim (a)'s speed measures.
SPEED_FRACTION = 0.9
#: ε of the loss-convergence curve log(loss − min loss + ε), relative to the run's own initial
#: excess loss ``loss_0 − min loss`` (so the curve spans 3 decades whatever the loss's level).
LOSS_EPS_REL = 1e-3

SPEED_NC1 = Measure(
    "nc1_speed",
    f"epochs until log nc1 covers {SPEED_FRACTION:.0%} of its way from the first evaluated "
    "epoch to its final value",
    "epochs",
    "lower",
)
SPEED_LOSS = Measure(
    "loss_speed",
    f"epochs until log(train loss − min + ε) covers {SPEED_FRACTION:.0%} of its way to its minimum",
    "epochs",
    "lower",
)
CURVE_NC1 = Measure(
    "nc1_curve",
    "mean over epochs of log10(nc1 LS / nc1 CE) (a level, not a speed: claim (b)'s side)",
    "log10 ratio",
    "lower",
    decides=False,
    observation=True,
)


def epochs_to_fraction(
    epochs: np.ndarray, values: np.ndarray, fraction: float = SPEED_FRACTION
) -> float | None:
    """First epoch at which ``values`` (a curve in log space, falling towards its limit) has
    covered ``fraction`` of its way from the first finite value to the last one; None when the
    curve does not fall (no way to cover) or has fewer than 2 finite points. Measured against
    the run's own start and end, it is unchanged when the curve is shifted (a run that only
    ends lower, at the same rate, is equally fast)."""
    epochs = np.asarray(epochs, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values) & np.isfinite(epochs)
    e, v = epochs[ok], values[ok]
    if v.size < 2:
        return None
    way = v[0] - v[-1]
    if not way > 0:
        return None
    hits = np.flatnonzero(v[0] - v >= fraction * way - 1e-12 * abs(way))
    return float(e[hits[0]])


def nc1_speed(run: RunData) -> float | None:
    """Claim (a)'s NC1 speed: :func:`epochs_to_fraction` of ``log nc1``."""
    nc1 = run.series("nc1")
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(nc1 > 0, np.log(nc1), np.nan)
    return epochs_to_fraction(run.epochs, logs)


def loss_convergence(loss: np.ndarray) -> np.ndarray:
    """The paper's loss-convergence curve ``log(loss − min loss + ε)``, with ε =
    :data:`LOSS_EPS_REL` × (first finite loss − min loss) (NaN where the loss is not finite)."""
    loss = np.asarray(loss, dtype=np.float64)
    finite = loss[np.isfinite(loss)]
    if finite.size == 0:
        return np.full(loss.shape, np.nan)
    low = float(finite.min())
    eps = LOSS_EPS_REL * max(float(finite[0]) - low, 0.0)
    if eps <= 0:
        eps = 1e-12 * max(abs(low), 1.0)
    with np.errstate(invalid="ignore"):
        return np.log(loss - low + eps)


def loss_speed(run: RunData) -> float | None:
    """Claim (a)'s loss speed: :func:`epochs_to_fraction` of :func:`loss_convergence` of the
    training loss, to its minimum."""
    curve = loss_convergence(run.series("train_loss"))
    ok = np.isfinite(curve)
    if ok.sum() < 2:
        return None
    # the way ends at the minimum (log ε), wherever that epoch is
    target = np.where(ok, curve, np.nan)
    end = int(np.nanargmin(target))
    shifted = np.append(target[: end + 1], target[end])
    epochs = np.append(run.epochs[: end + 1], run.epochs[end])
    return epochs_to_fraction(epochs, shifted)


def nc1_curve_gap(ce: RunData, ls: RunData) -> float | None:
    """Mean over the epochs both runs logged (with finite, positive NC1) of
    ``log10(nc1_LS / nc1_CE)`` (reported with (a); a level measure, it never decides)."""
    a = dict(zip(ce.epochs.tolist(), ce.series("nc1").tolist(), strict=True))
    b = dict(zip(ls.epochs.tolist(), ls.series("nc1").tolist(), strict=True))
    gaps = [
        math.log10(b[e] / a[e])
        for e in sorted(set(a) & set(b))
        if math.isfinite(a[e]) and math.isfinite(b[e]) and a[e] > 0 and b[e] > 0
    ]
    return float(np.mean(gaps)) if gaps else None


def _milestone_difference(name: str) -> PairValue:
    """Per pair, LS − CE epochs of milestone ``name``. A run that never gets there is censored
    at its last epoch + 1 (the true epoch is later still), which bounds the difference in the
    right direction only when the censored run lasted longer than the other run needed; a
    pair where it did not (e.g. an interrupted run), or where neither run gets there, is
    undefined."""

    def diff(ce: RunData, ls: RunData) -> float | None:
        a, b = milestone_epoch(ce, name), milestone_epoch(ls, name)
        if a is not None and b is not None:
            return b - a
        if a is None and b is None or not ce.rows or not ls.rows:
            return None
        if b is None:  # LS never: LS − CE >= (LS horizon + 1) − a, a lower bound if positive
            bound = float(ls.epochs.max()) + 1 - a
            return bound if bound > 0 else None
        bound = b - (float(ce.epochs.max()) + 1)  # CE never: LS − CE <= this, if negative
        return bound if bound < 0 else None

    return diff


def claim_sooner(ce: Sequence[RunData], ls: Sequence[LSGroup]) -> ClaimVerdict:
    """Claim (a) (module docstring)."""
    out = []
    for group in ls:
        measures = [
            paired(SPEED_NC1, _run_differences(ce, group.runs, nc1_speed)),
            paired(SPEED_LOSS, _run_differences(ce, group.runs, loss_speed)),
        ]
        for name, (_, _, description) in MILESTONES.items():
            m = Measure(f"epochs_{name}", description, "epochs", "lower", decides=False)
            measures.append(paired(m, _pair_values(ce, group.runs, _milestone_difference(name))))
        measures.append(paired(CURVE_NC1, _pair_values(ce, group.runs, nc1_curve_gap)))
        out.append(_delta(ce, group, measures, terminal=True))
    return _claim("a", ce, out)


# ------------------------------------------------------------------------------ (b)

FINAL_COLLAPSE = Measure(
    "final_collapse",
    "max(log10 final nc1 ratio, log10 final nc2_wh ratio)",
    "log10 ratio",
    "lower",
)


def _log_ratio(key: str) -> PairValue:
    def fn(ce: RunData, ls: RunData) -> float | None:
        a, b = ce.final(key), ls.final(key)
        if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
            return None
        return math.log10(b / a)

    return fn


def claim_final(ce: Sequence[RunData], ls: Sequence[LSGroup]) -> ClaimVerdict:
    """Claim (b) (module docstring)."""
    out = []
    for group in ls:
        r1 = _pair_values(ce, group.runs, _log_ratio("nc1"))
        r2 = _pair_values(ce, group.runs, _log_ratio("nc2_wh"))
        both = {s: None if r1[s] is None or r2[s] is None else max(r1[s], r2[s]) for s in r1}
        measures = [paired(FINAL_COLLAPSE, both)]
        for key, ratios in (("nc1", r1), ("nc2_wh", r2)):
            m = Measure(f"final_{key}", f"log10 final {key} ratio", "log10 ratio", decides=False)
            measures.append(paired(m, ratios))
        for key in ("nc3", "nc4"):
            m = Measure(f"final_{key}", f"final {key}", "", decides=False, observation=True)
            final = lambda r, k=key: _finite_or_none(r.final(k))  # noqa: E731
            measures.append(paired(m, _run_differences(ce, group.runs, final)))
        out.append(_delta(ce, group, measures, terminal=True))
    return _claim("b", ce, out)


# ------------------------------------------------------------------------------ (c)

MATCHED = Measure(
    "matched_nc2",
    "mean over shared NC1 levels of log10(nc2_wh LS / CE) at matched NC1",
    "log10 ratio",
    "lower",
)


def matched_gap(ce: RunData, ls: RunData, num: int = DENSE_LEVELS) -> float | None:
    """Mean over ``num`` log-spaced NC1 levels covered by both runs of
    ``log10(nc2_wh_LS(ℓ) / nc2_wh_CE(ℓ))`` at matched NC1 (None without a shared range)."""
    span = covered_range([ce, ls])
    if span is None:
        return None
    levels = log_levels(*span, num)
    a = matched_nc2(ce.series("nc1"), ce.series("nc2_wh"), levels)
    b = matched_nc2(ls.series("nc1"), ls.series("nc2_wh"), levels)
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    return float(np.mean(np.log10(b[ok] / a[ok]))) if ok.any() else None


def claim_matched(ce: Sequence[RunData], ls: Sequence[LSGroup]) -> ClaimVerdict:
    """Claim (c) (module docstring)."""
    out = []
    for group in ls:
        diffs = _pair_values(ce, group.runs, matched_gap)
        shared = any(d is not None for d in diffs.values()) or not diffs
        note = "" if shared else "no NC1 range shared with CE"
        out.append(_delta(ce, group, [paired(MATCHED, diffs, note)], terminal=True))
    return _claim("c", ce, out)


# ------------------------------------------------------------------------------ (d)

ECE_RAW = Measure("ece", "ECE before temperature scaling (whole test set)", "ECE points", "lower")
ECE_TS = Measure(
    "ece_ts",
    "ECE after temperature scaling (evaluation half)",
    "ECE points",
    "lower",
    decides=False,
    observation=True,
)


ECE_AUTHORS = Measure(
    "ece_ece_on_test",
    "ECE after temperature scaling with T chosen by ECE on the test set (the authors' "
    "protocol; optimistic)",
    "ECE points",
    "lower",
    decides=False,
    observation=True,
)


def claim_calibration(
    ce: Sequence[RunData],
    ls: Sequence[LSGroup],
    ece: Mapping[Path, tuple[float | None, ...]],
) -> ClaimVerdict:
    """Claim (d). ``ece[run.path] = (ECE of the whole test set before scaling, ECE of the
    evaluation half after scaling[, ECE of the whole test set at the T minimising it])``, as
    fractions; reported in points (×100)."""

    def get(i: int) -> RunValue:
        def fn(run: RunData) -> float | None:
            values = ece.get(run.path, ())
            v = values[i] if i < len(values) else None
            return None if v is None else 100.0 * v

        return fn

    out = []
    for group in ls:
        measures = [
            paired(ECE_RAW, _run_differences(ce, group.runs, get(0))),
            paired(ECE_TS, _run_differences(ce, group.runs, get(1))),
        ]
        authors = _run_differences(ce, group.runs, get(2))
        if any(v is not None for v in authors.values()):
            measures.append(paired(ECE_AUTHORS, authors))
        out.append(_delta(ce, group, measures))
    return _claim("d", ce, out)


# ------------------------------------------------------------------------------ (e)

ACCURACY = Measure(
    "test_acc",
    "final test accuracy",
    "points",
    "higher",
    threshold=-ACCURACY_MARGIN,
)


def final_test_accuracy(run: RunData) -> float | None:
    """Final test accuracy in percent: from ``predictions.npz`` (the whole test set) when
    present, else the last row's ``test_acc``."""
    if run.test_logits is not None and run.test_labels is not None and len(run.test_labels):
        return 100.0 * float(np.mean(np.argmax(run.test_logits, 1) == run.test_labels))
    acc = run.final("test_acc")
    if not math.isfinite(acc):
        return None
    return acc if acc > 1.0 else 100.0 * acc


def claim_generalization(ce: Sequence[RunData], ls: Sequence[LSGroup]) -> ClaimVerdict:
    """Claim (e) (module docstring)."""
    out = []
    for group in ls:
        result = paired(ACCURACY, _run_differences(ce, group.runs, final_test_accuracy))
        out.append(_delta(ce, group, [result], note=f"margin {ACCURACY_MARGIN:g} points"))
    return _claim("e", ce, out)


# ------------------------------------------------------------------------------ (f)

KAPPA = Measure(
    "kappa_logit",
    "log10(κ_logit LS / κ_logit CE) at the UFM minimizer (lower by construction for every "
    "δ > 0; never deciding)",
    "log10 ratio",
    "lower",
    decides=False,
    observation=True,
)
HESSIAN = Measure(
    "hessian_ratio",
    "log10 condition-number ratio LS / CE of the full UFM Hessian at the minimizer (symmetry "
    "and bias-shift directions excluded)",
    "log10 ratio",
    "lower",
)
W_BLOCK = Measure(
    "w_block_ratio", "log10 condition-number ratio LS / CE of the W block", "log10 ratio"
)
H_BLOCK = Measure(
    "h_block_ratio", "log10 condition-number ratio LS / CE of the H block", "log10 ratio"
)
GD_ITERS = Measure(
    "gd_iterations",
    "GD iterations to the objective tolerance at a shared step",
    "iterations",
    "lower",
)
GD_BEST = Measure(
    "gd_iterations_best_step",
    "GD iterations to the objective tolerance, each loss at its own best step",
    "iterations",
    "lower",
)


def _log_ratio_of(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (a > 0 and b > 0):
        return None
    return math.log10(b / a)


def _theory_sentence(measures: Sequence[PairedResult]) -> str:
    """Which deciding measure supports LS and which CE (the reason a (f) verdict is mixed)."""
    ls = [m.measure.key for m in measures if m.measure.decides and m.status == HOLDS]
    ce = [m.measure.key for m in measures if m.measure.decides and m.status == FAILS]
    if ls and ce:
        return (
            f"the deciding measures disagree: {', '.join(ls)} favour LS, {', '.join(ce)} favour CE"
        )
    return ""


def claim_theory(
    ce: Sequence[RunData], ls: Sequence[LSGroup], panel: TheoryPanel | None
) -> ClaimVerdict:
    """Claim (f): exact UFM computations of :mod:`nclab.ufm` for the runs' K and n. Decides:
    the full-Hessian, W-block and H-block condition numbers at the closed-form minimizer
    (:func:`nclab.report.theory.hessian_rows`) and GD iterations to the objective tolerance at
    a shared step and at each loss's own best step; **holds** when all agree for LS, **does
    not hold** when all agree for CE, **mixed** (naming which measure supports which side)
    otherwise. κ_logit is reported, never deciding: it is lower under LS by construction."""
    out = []
    if panel is None:
        out = [
            _delta(ce, g, [computed(HESSIAN, None, "UFM theory panel not computed")]) for g in ls
        ]
        return _claim("f", ce, out)
    hess = {round(r["smoothing"], 12): r for r in panel.hessian}
    rows = {round(r["smoothing"], 12): r for r in panel.at_runs}
    ce_h, ce_row = hess.get(0.0), rows.get(0.0)
    where_h = f"K={panel.num_classes}, n={panel.n_per_class}, λ_W={panel.lambda_w:g}, " + (
        f"λ_H={panel.lambda_h:g}, d=K−1"
    )
    for group in ls:
        key = round(group.smoothing, 12)
        h = hess.get(key)
        measures = []
        for measure, name in ((HESSIAN, "hessian_ratio"), (W_BLOCK, "w_block_ratio")) + (
            (H_BLOCK, "h_block_ratio"),
        ):
            if ce_h is None or h is None:
                measures.append(computed(measure, None, "Hessian conditioning not computed"))
                continue
            a, b = ce_h.get(name), h.get(name)
            note = f"CE {sig(a)}, LS {sig(b)} ({where_h})"
            if a is None or b is None:
                note = "trivial UFM minimizer (W = H = 0): undefined"
            measures.append(computed(measure, _log_ratio_of(a, b), note))
        for measure, name in ((GD_ITERS, "gd_shared_iters"), (GD_BEST, "gd_best_iters")):
            if ce_h is None or h is None or "gd_shared_lr" not in ce_h or "gd_shared_lr" not in h:
                note = (h or {}).get("gd_note") or "GD on the runs' UFM not computed"
                measures.append(computed(measure, None, note))
                continue
            a, b = ce_h.get(name), h.get(name)
            if name == "gd_shared_iters":
                note = f"CE {_never(a)}, LS {_never(b)} (step {sig(h['gd_shared_lr'])}"
            else:
                note = (
                    f"CE {_never(a)} at {sig(ce_h.get('gd_best_multiplier'))}/λ_max, LS "
                    f"{_never(b)} at {sig(h.get('gd_best_multiplier'))}/λ_max"
                )
            note += f", tolerance {GD_TOL:g}, {where_h})"
            diff = None if a is None or b is None else float(b - a)
            measures.append(computed(measure, diff, note))
        row = rows.get(key)
        kappa = None
        if (
            ce_row is not None
            and row is not None
            and "trivial"
            not in (
                ce_row["regime"],
                row["regime"],
            )
        ):
            kappa = _log_ratio_of(ce_row["kappa_logit"], row["kappa_logit"])
        measures.append(computed(KAPPA, kappa, "lower by construction"))
        out.append(_delta(ce, group, measures, _theory_sentence(measures)))
    return _claim("f", ce, out)


def _never(value: int | None) -> str:
    return "never" if value is None else str(value)


def all_claims(
    ce: Sequence[RunData],
    ls: Sequence[LSGroup],
    ece: Mapping[Path, tuple[float | None, ...]],
    panel: TheoryPanel | None,
) -> list[ClaimVerdict]:
    """Claims (a)-(f) in order."""
    return [
        claim_sooner(ce, ls),
        claim_final(ce, ls),
        claim_matched(ce, ls),
        claim_calibration(ce, ls, ece),
        claim_generalization(ce, ls),
        claim_theory(ce, ls, panel),
    ]
