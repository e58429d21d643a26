"""The report's numbers as data: per-setting statistics, matched-NC1 tables, calibration and the
claim verdicts (:class:`ReportSummary`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from nclab.report.analysis import (
    MILESTONES,
    SeedStat,
    covered_range,
    log_levels,
    matched_nc2,
    milestone_epoch,
    nice_levels,
    seed_stat,
)
from nclab.report.runs import GroupKey, RunData, group_runs
from nclab.report.verdicts import DENSE_LEVELS, ClaimVerdict, LSGroup, all_claims

if TYPE_CHECKING:
    from nclab.report.theory import TheoryPanel

__all__ = [
    "FINAL_KEYS",
    "Calibration",
    "GroupSummary",
    "MatchedComparison",
    "ReportSummary",
    "calibrate_run",
    "summarize",
]

#: Final-epoch metrics in the summary table (test_acc is reported as a fraction).
FINAL_KEYS = ("nc1", "nc2_wh", "nc3", "nc4", "test_acc", "ece")
TEMPERATURE_SPLIT_SEED = 0  # every run uses the same fit/eval halves of the test set
TEMPERATURE_FIT_FRACTION = 0.5


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling of one run: T fitted on the fit half, ECE on the evaluation half."""

    temperature: float
    ece_raw: float
    ece_ts: float
    ece_full: float  # ECE of the whole test set before scaling
    temperature_ece_on_test: float  # the authors' protocol: T minimising ECE on the test set
    ece_ece_on_test: float  # ECE of the whole test set at that T (optimistic)
    n_fit: int
    n_eval: int
    eval_idx: np.ndarray = field(repr=False, default_factory=lambda: np.array([], dtype=int))


def calibrate_run(run: RunData) -> Calibration | None:
    """Fit T on one half of the final test logits and measure ECE on the other half
    (:func:`nclab.calibration.split_for_temperature`, seed 0, same halves for every run)."""
    if run.test_logits is None or run.test_labels is None or len(run.test_labels) < 2:
        return None
    from nclab.calibration import (
        expected_calibration_error,
        fit_temperature,
        fit_temperature_ece,
        split_for_temperature,
    )

    z, y = run.test_logits, run.test_labels
    fit_idx, eval_idx = split_for_temperature(
        len(y), TEMPERATURE_FIT_FRACTION, seed=TEMPERATURE_SPLIT_SEED
    )
    t = fit_temperature(z[fit_idx], y[fit_idx])
    t_test = fit_temperature_ece(z, y)
    return Calibration(
        temperature=t,
        ece_raw=expected_calibration_error(z[eval_idx], y[eval_idx]),
        ece_ts=expected_calibration_error(z[eval_idx] / t, y[eval_idx]),
        ece_full=expected_calibration_error(z, y),
        temperature_ece_on_test=t_test,
        ece_ece_on_test=expected_calibration_error(z / t_test, y),
        n_fit=len(fit_idx),
        n_eval=len(eval_idx),
        eval_idx=eval_idx,
    )


@dataclass
class GroupSummary:
    """Statistics over the seeds of one loss setting."""

    key: GroupKey
    runs: list[RunData]
    milestones: dict[str, SeedStat]
    finals: dict[str, SeedStat]
    calibration: dict[str, SeedStat]
    per_run_calibration: list[Calibration | None]

    @property
    def label(self) -> str:
        """Display name of the setting."""
        return self.key.label

    @property
    def seeds(self) -> list[int]:
        """Seeds of the runs."""
        return [r.seed for r in self.runs]

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "label": self.label,
            "loss": self.key.loss,
            "smoothing": self.key.smoothing,
            "seeds": self.seeds,
            "runs": [str(r.path) for r in self.runs],
            "milestones": {k: v.as_dict() for k, v in self.milestones.items()},
            "final": {k: v.as_dict() for k, v in self.finals.items()},
            "calibration": {k: v.as_dict() for k, v in self.calibration.items()},
        }


@dataclass
class MatchedComparison:
    """NC2 (nc2_wh) of one LS setting against CE at shared NC1 levels (seed means)."""

    label: str
    nc1_range: tuple[float, float] | None
    levels: np.ndarray
    ce_nc2: np.ndarray
    ls_nc2: np.ndarray
    fraction_lower: float | None
    mean_difference: float | None

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "label": self.label,
            "nc1_range": list(self.nc1_range) if self.nc1_range else None,
            "levels": self.levels.tolist(),
            "ce_nc2_wh": self.ce_nc2.tolist(),
            "ls_nc2_wh": self.ls_nc2.tolist(),
            "fraction_lower": self.fraction_lower,
            "mean_difference": self.mean_difference,
        }


@dataclass
class ReportSummary:
    """Every number the report states."""

    groups: list[GroupSummary]
    matched: list[MatchedComparison]
    verdicts: list[ClaimVerdict]
    warnings: list[str] = field(default_factory=list)

    @property
    def ce(self) -> GroupSummary | None:
        """The cross-entropy group, if any."""
        return next((g for g in self.groups if g.key.is_ce), None)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (written as ``summary.json``)."""
        return {
            "groups": [g.as_dict() for g in self.groups],
            "matched_nc1": [m.as_dict() for m in self.matched],
            "verdicts": [v.as_dict() for v in self.verdicts],
            "warnings": list(self.warnings),
        }


def _seed_mean_matched(runs: Sequence[RunData], levels: np.ndarray) -> np.ndarray:
    curves = [matched_nc2(r.series("nc1"), r.series("nc2_wh"), levels) for r in runs]
    return np.mean(np.array(curves), axis=0)


def compare_matched(label: str, ce: Sequence[RunData], ls: Sequence[RunData]) -> MatchedComparison:
    """Matched-NC1 comparison of the seed means of ``ls`` against ``ce``: the table on 1-2-5
    levels, and the fraction of :data:`DENSE_LEVELS` log-spaced levels of the shared range where
    LS is lower, with the mean difference there (reported; claim (c) pairs seeds instead,
    :func:`nclab.report.verdicts.matched_gap`)."""
    span = covered_range([*ce, *ls])
    if span is None:
        empty = np.array([])
        return MatchedComparison(label, None, empty, empty, empty, None, None)
    levels = nice_levels(*span)
    dense = log_levels(*span, DENSE_LEVELS)
    ce_dense, ls_dense = _seed_mean_matched(ce, dense), _seed_mean_matched(ls, dense)
    ok = np.isfinite(ce_dense) & np.isfinite(ls_dense)
    frac = float(np.mean(ls_dense[ok] < ce_dense[ok])) if ok.any() else None
    diff = float(np.mean(ls_dense[ok] - ce_dense[ok])) if ok.any() else None
    return MatchedComparison(
        label,
        span,
        levels,
        _seed_mean_matched(ce, levels),
        _seed_mean_matched(ls, levels),
        frac,
        diff,
    )


def _summarize_group(key: GroupKey, runs: list[RunData]) -> GroupSummary:
    milestones = {
        name: seed_stat(runs, lambda r, n=name: milestone_epoch(r, n)) for name in MILESTONES
    }
    finals = {key_: seed_stat(runs, lambda r, k=key_: r.final(k)) for key_ in FINAL_KEYS}
    cal = [calibrate_run(r) for r in runs]
    calibration = {
        name: SeedStat(tuple(None if c is None else float(getattr(c, name)) for c in cal))
        for name in (
            "temperature",
            "ece_raw",
            "ece_ts",
            "temperature_ece_on_test",
            "ece_ece_on_test",
        )
    }
    return GroupSummary(key, runs, milestones, finals, calibration, cal)


def _config_warnings(runs: Sequence[RunData]) -> list[str]:
    """Training options that differ between runs although the comparison needs them equal
    (:data:`nclab.config.SETTING_FIELDS`: not loss, smoothing, seed or a performance knob):
    the comparison is then not like for like."""
    from nclab.config import SETTING_FIELDS

    out = []
    for k in sorted(SETTING_FIELDS & {k for r in runs for k in r.config}):
        values = {json.dumps(r.config.get(k), sort_keys=True) for r in runs}
        if len(values) > 1:
            out.append(f"runs differ in {k!r}: {', '.join(sorted(values))}")
    return out


def _duplicate_seed_warnings(groups: Sequence[GroupSummary]) -> list[str]:
    """Settings holding several runs of one seed (e.g. two comparisons under one folder): the
    verdicts pair the first run of each seed; the summary table averages them all."""
    out = []
    for g in groups:
        for seed in sorted(set(g.seeds)):
            paths = [str(r.path) for r in g.runs if r.seed == seed]
            if len(paths) > 1:
                out.append(
                    f"{g.label} has {len(paths)} runs of seed {seed} ({', '.join(paths)}): the "
                    "verdicts pair only the first with CE, the table averages all; point the "
                    "report at one comparison"
                )
    return out


def summarize(runs: Sequence[RunData], theory: TheoryPanel | None = None) -> ReportSummary:
    """All statistics, matched-NC1 comparisons and verdicts (claim (f) from ``theory``, the UFM
    panel of :func:`nclab.report.theory.theory_panel`) for ``runs``."""
    groups = [_summarize_group(k, v) for k, v in group_runs(runs).items()]
    ce = next((g for g in groups if g.key.is_ce), None)
    ls = [g for g in groups if g.key.is_ls]
    matched = [compare_matched(g.label, ce.runs, g.runs) for g in ls] if ce else []
    ece = {
        r.path: (None, None, None) if c is None else (c.ece_full, c.ece_ts, c.ece_ece_on_test)
        for g in groups
        for r, c in zip(g.runs, g.per_run_calibration, strict=True)
    }
    verdicts = all_claims(
        ce.runs if ce else [],
        [LSGroup(g.label, g.key.smoothing, g.runs) for g in ls],
        ece,
        theory,
    )
    warnings = [w for r in runs for w in r.warnings] + _config_warnings(runs)
    warnings += _duplicate_seed_warnings(groups)
    return ReportSummary(groups, matched, verdicts, warnings)
