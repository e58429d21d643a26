"""Verdicts on the seed paper's claims, computed from the summary numbers.

Every claim is judged per label-smoothing δ against the cross-entropy (CE) baseline, then the
per-δ verdicts are combined (:func:`combine`): ``holds`` if it holds for every δ, ``does not
hold`` if it holds for none, ``partly holds`` otherwise; ``undetermined`` where the data cannot
decide (no CE run, a metric never logged, no predictions).

(a) *LS reaches zero training error and low NC1 sooner.* Milestones: first epoch with zero
    training error, first epoch from which it stays zero to the end, first epoch with
    nc1 < 0.1 and with nc1 < 0.01 (mean over seeds; a setting where some seed never gets there
    counts as "never", i.e. +∞). Per δ: holds when LS is sooner on at least
    one milestone and later on none; partly when sooner on some and later on others; does not
    hold otherwise (later, or no difference); undetermined when neither setting reaches any.
(b) *LS ends with lower NC1 and NC2.* Final nc1 and nc2_wh (mean over seeds): holds when LS is
    lower on both, partly on one, does not hold on neither.
(c) *LS has lower NC2 at matched NC1.* On 60 log-spaced NC1 levels covered by every run of both
    settings (first-crossing interpolation, :mod:`nclab.report.analysis`), the fraction of levels
    where the seed-mean LS nc2_wh is below CE's: >= 0.9 holds, <= 0.1 does not hold, else partly;
    undetermined when the runs share no NC1 range.
(d) *Calibration differs.* ECE on the evaluation half of the test set, before and after
    temperature scaling. A difference is *material* when ``|ΔECE| >= max(0.01, 2·sqrt(s_LS² +
    s_CE²))`` (s: standard deviation over seeds, 0 for one seed). Holds when the difference
    before or after scaling is material; the text says which way and by how much.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nclab.report.analysis import MILESTONES, SeedStat

__all__ = [
    "FAILS",
    "HOLDS",
    "PARTLY",
    "UNDETERMINED",
    "ClaimVerdict",
    "DeltaVerdict",
    "claim_calibration",
    "claim_final",
    "claim_matched",
    "claim_sooner",
    "combine",
]

HOLDS = "holds"
PARTLY = "partly holds"
FAILS = "does not hold"
UNDETERMINED = "undetermined"

MATERIAL_ECE = 0.01  # absolute ECE difference (1 percentage point) counted as material
MATCHED_HOLDS = 0.9  # fraction of matched-NC1 levels where LS must be lower for "holds"

CLAIMS = {
    "a": "LS reaches zero training error and low NC1 sooner than CE",
    "b": "LS ends with lower NC1 and NC2 than CE",
    "c": "LS has lower NC2 than CE at matched NC1",
    "d": "LS and CE differ in calibration",
}


@dataclass(frozen=True)
class DeltaVerdict:
    """The verdict of one claim for one label-smoothing setting."""

    label: str
    status: str
    text: str


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim, its combined verdict and the per-δ evidence."""

    claim: str
    statement: str
    status: str
    per_delta: tuple[DeltaVerdict, ...] = field(default_factory=tuple)

    def line(self) -> str:
        """One line: ``(a) statement: status — evidence; evidence``."""
        evidence = "; ".join(f"{d.label}: {d.text}" for d in self.per_delta)
        return f"({self.claim}) {self.statement}: **{self.status}**" + (
            f" — {evidence}" if evidence else ""
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "claim": self.claim,
            "statement": self.statement,
            "status": self.status,
            "per_delta": [d.__dict__ for d in self.per_delta],
        }


def combine(statuses: Sequence[str]) -> str:
    """Combine per-δ statuses (module docstring)."""
    decided = [s for s in statuses if s != UNDETERMINED]
    if not decided:
        return UNDETERMINED
    if all(s == HOLDS for s in statuses):
        return HOLDS
    if any(s in (HOLDS, PARTLY) for s in decided):
        return PARTLY
    return FAILS


def _claim(claim: str, per_delta: Sequence[DeltaVerdict], missing_ce: bool) -> ClaimVerdict:
    if missing_ce:
        return ClaimVerdict(
            claim,
            CLAIMS[claim],
            UNDETERMINED,
            (DeltaVerdict("CE", UNDETERMINED, "no CE run to compare with"),),
        )
    if not per_delta:
        return ClaimVerdict(
            claim,
            CLAIMS[claim],
            UNDETERMINED,
            (DeltaVerdict("LS", UNDETERMINED, "no LS run to compare with"),),
        )
    return ClaimVerdict(
        claim, CLAIMS[claim], combine([d.status for d in per_delta]), tuple(per_delta)
    )


def _epoch_text(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:g}"


def claim_sooner(
    ce: Mapping[str, SeedStat] | None, ls: Mapping[str, Mapping[str, SeedStat]]
) -> ClaimVerdict:
    """Claim (a). ``ce``/``ls[label]`` map milestone names (:data:`MILESTONES`) to epochs."""
    out = []
    for label, stats in ls.items():
        if ce is None:
            break
        sooner, later, parts = 0, 0, []
        for name, (_, _, description) in MILESTONES.items():
            c, s = ce[name].comparable, stats[name].comparable
            short = description.replace("first epoch with ", "")
            if math.isinf(c) and math.isinf(s):
                parts.append(f"{short}: neither reaches it")
                continue
            if s < c:
                sooner += 1
                word = "sooner"
            elif s > c:
                later += 1
                word = "later"
            else:
                word = "same epoch"
            parts.append(f"{short}: LS {_epoch_text(s)} vs CE {_epoch_text(c)} ({word})")
        if sooner == 0 and later == 0 and all("neither" in p for p in parts):
            status = UNDETERMINED
        elif sooner and not later:
            status = HOLDS
        elif sooner and later:
            status = PARTLY
        else:
            status = FAILS
        out.append(DeltaVerdict(label, status, ", ".join(parts)))
    return _claim("a", out, ce is None)


def claim_final(
    ce: Mapping[str, SeedStat] | None, ls: Mapping[str, Mapping[str, SeedStat]]
) -> ClaimVerdict:
    """Claim (b). ``ce``/``ls[label]`` map ``nc1`` and ``nc2_wh`` to final values."""
    out = []
    for label, stats in ls.items():
        if ce is None:
            break
        lower, decided, parts = 0, 0, []
        for key in ("nc1", "nc2_wh"):
            c, s = ce[key].mean, stats[key].mean
            if math.isnan(c) or math.isnan(s):
                parts.append(f"final {key}: not logged")
                continue
            decided += 1
            lower += s < c
            word = "lower" if s < c else "not lower"
            parts.append(f"final {key} LS {s:.3g} vs CE {c:.3g} ({word})")
        if decided < 2:
            status = UNDETERMINED
        else:
            status = HOLDS if lower == 2 else PARTLY if lower == 1 else FAILS
        out.append(DeltaVerdict(label, status, ", ".join(parts)))
    return _claim("b", out, ce is None)


def claim_matched(
    fractions: Mapping[str, tuple[float | None, float | None]], has_ce: bool = True
) -> ClaimVerdict:
    """Claim (c). ``fractions[label] = (fraction of common NC1 levels where LS nc2 < CE nc2,
    mean LS - CE nc2 difference over them)``, ``(None, None)`` when no common range."""
    out = []
    for label, (frac, mean_diff) in fractions.items():
        if frac is None:
            out.append(DeltaVerdict(label, UNDETERMINED, "no NC1 range shared with CE"))
            continue
        status = HOLDS if frac >= MATCHED_HOLDS else FAILS if frac <= 1 - MATCHED_HOLDS else PARTLY
        text = f"LS nc2_wh lower on {100 * frac:.0f}% of the shared NC1 range"
        if mean_diff is not None:
            text += f" (mean LS - CE: {mean_diff:+.3g})"
        out.append(DeltaVerdict(label, status, text))
    return _claim("c", out, not has_ce)


def _material(diff: float, s_ls: float, s_ce: float) -> bool:
    spread = math.sqrt(
        (s_ls if math.isfinite(s_ls) else 0.0) ** 2 + (s_ce if math.isfinite(s_ce) else 0.0) ** 2
    )
    return abs(diff) >= max(MATERIAL_ECE, 2.0 * spread)


def claim_calibration(
    ce: Mapping[str, SeedStat] | None, ls: Mapping[str, Mapping[str, SeedStat]]
) -> ClaimVerdict:
    """Claim (d). ``ce``/``ls[label]`` map ``ece_raw`` and ``ece_ts`` (evaluation half, before
    and after temperature scaling) to values."""
    out = []
    for label, stats in ls.items():
        if ce is None:
            break
        parts, material = [], []
        for key, when in (("ece_raw", "before TS"), ("ece_ts", "after TS")):
            c, s = ce[key], stats[key]
            if math.isnan(c.mean) or math.isnan(s.mean):
                continue
            diff = s.mean - c.mean
            is_material = _material(diff, s.std, c.std)
            material.append(is_material)
            way = "lower" if diff < 0 else "higher" if diff > 0 else "equal"
            parts.append(
                f"ECE {when} LS {s.mean:.4f} vs CE {c.mean:.4f} ({way} by {100 * abs(diff):.2f} pp"
                f"{'' if is_material else ', not material'})"
            )
        if not material:
            out.append(DeltaVerdict(label, UNDETERMINED, "no test predictions"))
            continue
        out.append(DeltaVerdict(label, HOLDS if any(material) else FAILS, ", ".join(parts)))
    return _claim("d", out, ce is None)
