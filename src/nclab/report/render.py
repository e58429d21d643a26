"""``summary.md`` and the self-contained ``report.html`` (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

from nclab.report.analysis import SeedStat
from nclab.report.paired import sig
from nclab.report.summary import (
    TEMPERATURE_FIT_FRACTION,
    MatchedComparison,
    ReportSummary,
)
from nclab.report.theory import TheoryPanel
from nclab.report.verdicts import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    MIXED,
    PAPER,
    PARTLY,
    UNDETERMINED,
    ClaimVerdict,
)

__all__ = [
    "hessian_table",
    "matched_table",
    "render_html",
    "render_markdown",
    "summary_table",
    "verdict_table",
]

STATS_NOTE = (
    "Values are the mean ± sample standard deviation over seeds (just the mean for one seed). "
    "Epochs: first logged epoch reaching the milestone; `never` when no seed reached it, "
    "`never (k/n …)` when only k of n seeds did. Final values are from the last logged epoch. "
    "ECE: logged ECE of the final model on the whole test set (15 bins); ECE raw / TS: on the "
    "evaluation half of the test set before / after temperature scaling with T fitted on the "
    "other half (fit fraction "
    f"{TEMPERATURE_FIT_FRACTION:g}, the same split for every run). The authors' protocol "
    "(Guo et al.'s code) instead picks T minimising ECE on the whole test set and reports ECE "
    "on that same set: shown beside it, it is optimistic (T is chosen on the data it is scored "
    "on)."
)


def _fmt(stat: SeedStat, digits: int = 3, scale: float = 1.0) -> str:
    if not stat.reached:
        return "–" if all(v is None for v in stat.values) else "never"
    mean, std = stat.mean * scale, stat.std * scale
    text = f"{mean:.{digits}g}"
    if stat.n > 1:
        text += f" ± {std:.2g}"
    return text


def _fmt_epoch(stat: SeedStat) -> str:
    return stat.format(integer=True)


def summary_table(summary: ReportSummary) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-setting table (strings)."""
    header = [
        "setting",
        "seeds",
        "zero train error (epoch)",
        "zero train error to the end (from epoch)",
        "nc1 < 0.1 (epoch)",
        "nc1 < 0.01 (epoch)",
        "final nc1",
        "final nc2_wh",
        "final nc3",
        "final nc4",
        "test acc (%)",
        "ECE",
        "ECE raw (eval half)",
        "ECE after TS (eval half)",
        "T",
        "ECE after TS, T by ECE on test (authors', optimistic)",
        "T (ECE on test)",
    ]
    rows = []
    for g in summary.groups:
        m, f, c = g.milestones, g.finals, g.calibration
        rows.append(
            [
                g.label,
                ", ".join(str(s) for s in g.seeds),
                _fmt_epoch(m["zero_train_error"]),
                _fmt_epoch(m["zero_train_error_stable"]),
                _fmt_epoch(m["nc1_below_0.1"]),
                _fmt_epoch(m["nc1_below_0.01"]),
                _fmt(f["nc1"]),
                _fmt(f["nc2_wh"]),
                _fmt(f["nc3"]),
                _fmt(f["nc4"]),
                _fmt(_as_fraction_stat(f["test_acc"]), 4, 100.0),
                _fmt(f["ece"]),
                _fmt(c["ece_raw"]),
                _fmt(c["ece_ts"]),
                _fmt(c["temperature"]),
                _fmt(c["ece_ece_on_test"]),
                _fmt(c["temperature_ece_on_test"]),
            ]
        )
    return header, rows


def _as_fraction_stat(stat: SeedStat) -> SeedStat:
    """Accuracy as a fraction (values above 1 are percentages)."""
    if any(v is not None and v > 1.0 for v in stat.values):
        return SeedStat(tuple(None if v is None else v / 100.0 for v in stat.values))
    return stat


def matched_table(m: MatchedComparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one matched-NC1 table."""
    header = ["nc1 level", "CE nc2_wh", f"{m.label} nc2_wh", "LS − CE"]
    rows = [
        [f"{lvl:g}", f"{c:.4g}", f"{s:.4g}", f"{s - c:+.4g}"]
        for lvl, c, s in zip(m.levels, m.ce_nc2, m.ls_nc2, strict=True)
        if math.isfinite(c) and math.isfinite(s)
    ]
    return header, rows


_MD_SPECIAL = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "`": "\\`", "[": "\\[", "]": "\\]"}
)


def md_escape(text: object) -> str:
    """A user-supplied string as inert Markdown text: HTML tags, links, code spans and table
    separators are escaped, line breaks become spaces (config values, loss and folder names
    and the warnings quoting them reach summary.md only through here)."""
    flat = " ".join(str(text).replace("\\", "\\\\").split())
    return flat.translate(_MD_SPECIAL)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(map(md_escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(md_escape, r)) + " |" for r in rows]
    return "\n".join(lines)


def _study_line(summary: ReportSummary) -> str:
    runs = [r for g in summary.groups for r in g.runs]
    cfg = runs[0].config
    parts = [f"{len(runs)} runs", f"dataset {cfg.get('dataset')}"]
    if cfg.get("per_class"):
        parts.append(f"{cfg['per_class']} per class")
    parts.append(f"model {cfg.get('model')}")
    if cfg.get("width") or cfg.get("depth"):
        parts.append(f"width {cfg.get('width')} depth {cfg.get('depth')}")
    parts.append(f"{int(max(r.epochs.max() for r in runs))} epochs")
    for key in ("lr", "batch_size", "weight_decay", "scheduler"):
        if key in cfg:
            parts.append(f"{key} {cfg[key]}")
    if cfg.get("ufm_penalties"):
        parts.append(
            f"UFM penalties λ_W={cfg.get('lambda_w')} λ_H={cfg.get('lambda_h')} "
            f"λ_b={cfg.get('lambda_b')}"
        )
    return ", ".join(parts)


def render_markdown(summary: ReportSummary, theory: TheoryPanel | None) -> str:
    """The text of ``summary.md``."""
    header, rows = summary_table(summary)
    out = [
        "# CE vs label smoothing: summary",
        "",
        md_escape(_study_line(summary)) + ".",
        "",
        _md_table(header, rows),
        "",
        STATS_NOTE,
        "",
        "## Claims of the paper on this data",
        "",
        f"The claims of {PAPER}, judged per δ against CE from paired seeds. {VERDICT_NOTE}",
        "",
        _md_table(*verdict_table(summary)),
        "",
        "Evidence (every measure, deciding ones first):",
        "",
    ]
    out += [f"- {md_escape(v.line())}" for v in summary.verdicts]
    out += ["", "Verdict rules: docs/report.md.", ""]
    if summary.matched:
        out += ["## NC2 at matched NC1 (first crossing, seed means)", ""]
        for m in summary.matched:
            h, r = matched_table(m)
            if r:
                out += [f"### {md_escape(m.label)} vs CE", "", _md_table(h, r), ""]
            else:
                out += [f"### {md_escape(m.label)} vs CE", "", "No NC1 range shared with CE.", ""]
    if theory is not None:
        out += ["## UFM closed form", "", _theory_text(theory), ""]
        h = ["δ", "regime", "logit gap", "p*", "κ_logit", "‖w_k‖", "‖h‖"]
        r = [
            [
                f"{row['smoothing']:g}",
                row["regime"],
                f"{row['logit_gap']:.4g}",
                f"{row['p_true']:.4g}",
                f"{row['kappa_logit']:.4g}",
                f"{row['w_norm']:.4g}",
                f"{row['h_norm']:.4g}",
            ]
            for row in theory.at_runs
        ]
        out += [_md_table(h, r), ""]
        hh, hr = hessian_table(theory)
        if hr:
            out += ["### Conditioning at the UFM minimizer (claim (f))", "", HESSIAN_NOTE, ""]
            out += [_md_table(hh, hr), ""]
    if summary.warnings:
        out += ["## Warnings", ""] + [f"- {md_escape(w)}" for w in summary.warnings] + [""]
    return "\n".join(out)


def _theory_text(theory: TheoryPanel) -> str:
    source = (
        "the runs' UFM penalties"
        if theory.ufm_mode
        else "the documented default; the runs were not trained in UFM-penalty mode"
    )
    text = (
        f"K = {theory.num_classes}, n = {theory.n_per_class} per class (training set / K), "
        f"λ_W = {theory.lambda_w:g}, λ_H = {theory.lambda_h:g} ({source})."
    )
    if theory.curves:
        cs = theory.convergence_settings
        its = ", ".join(
            f"δ={c.smoothing:g}: {_iters(c.iters_to_objective_tol)} / {_iters(c.iters_to_nc1_tol)}"
            for c in theory.curves
        )
        text += (
            f" GD on a small UFM (K={cs.get('num_classes')}, n={cs.get('n_per_class')}, "
            f"d={cs.get('dim')}, λ={cs.get('lambda_w')}, step {cs.get('lr')}, same "
            f"initialisation for every δ), iterations to relative objective gap "
            f"{cs.get('tol_objective')} / to NC1 {cs.get('tol_nc1')}: {its}."
        )
    if theory.notes:
        text += " " + " ".join(theory.notes)
    return text


HESSIAN_NOTE = (
    "Condition numbers λ_max/λ_min of the regularised UFM objective at its closed-form "
    "minimizer (d = K − 1): the full Hessian with the rotation-symmetry and bias-shift "
    "directions excluded, and its W and H diagonal blocks (`nclab ufm condition` with the same "
    "K, n, d and λ prints them). GD: iterations to the objective tolerance at the shared step "
    "and at each loss's own best step from the grid. These decide (f); κ_logit = K·p* is lower "
    "under LS for every δ > 0 by construction and never decides."
)


def hessian_table(theory: TheoryPanel) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the (f) conditioning table: one row per δ."""
    header = [
        "δ",
        "full Hessian κ",
        "W block κ",
        "H block κ",
        "κ_logit (by construction)",
        "GD iters (shared step)",
        "GD iters (best step)",
    ]
    curves = {round(c.smoothing, 12): c for c in theory.curves}
    rows = []
    for row in theory.hessian:
        c = curves.get(round(row["smoothing"], 12))
        best = "–" if c is None else f"{_iters(c.best_iters)} (step {sig(c.best_lr)})"
        rows.append(
            [
                f"{row['smoothing']:g}",
                sig(row.get("hessian_ratio")),
                sig(row.get("w_block_ratio")),
                sig(row.get("h_block_ratio")),
                sig(row.get("kappa_logit")),
                "–" if c is None else _iters(c.iters_to_objective_tol),
                best,
            ]
        )
    return header, rows


def _iters(value: int | None) -> str:
    return "never" if value is None else str(value)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STATUS_CLASS = {
    HOLDS: "holds",
    PARTLY: "partly",
    FAILS: "fails",
    INCONCLUSIVE: "inconclusive",
    MIXED: "partly",
    UNDETERMINED: "undetermined",
}


def _css(status: str, indicative: bool) -> str:
    """The colour class of a verdict; an indicative one (fewer than 3 seeds: its interval says
    almost nothing) is never drawn as established."""
    if indicative and status in (HOLDS, FAILS, PARTLY, MIXED):
        return "indicative"
    return _STATUS_CLASS.get(status, "")


def _verdict_html(v: ClaimVerdict) -> str:
    """One claim as HTML: statement, coloured verdict, per-δ evidence."""
    status = f"<strong class='{_css(v.status, v.indicative)}'>{html.escape(v.verdict)}</strong>"
    items = "".join(
        f"<li>{html.escape(d.label)}: <span class='{_css(d.status, d.indicative)}'>"
        f"{html.escape(d.verdict)}</span> — {html.escape(d.text)}</li>"
        for d in v.per_delta
    )
    return f"({v.claim}) {html.escape(v.statement)}: {status}<ul>{items}</ul>"


VERDICT_NOTE = (
    "Effect: mean over seeds of the paired difference LS − CE (same seed = same initialisation "
    "and data order) in the measure's unit; 95% CI: Student t over the paired differences. "
    "holds: every paired seed supports the claim and, with 3 or more seeds, the interval lies "
    "entirely on the claim's side of its threshold (0; −0.5 points for (e)); does not hold: the "
    "same for the opposite; inconclusive: otherwise; indicative: fewer than 3 seeds. Over δ: "
    "mixed = holds for some δ and does not hold for another."
)


def verdict_table(summary: ReportSummary) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the verdict table: one row per claim and δ (deciding measure)."""
    header = [
        "claim",
        "setting",
        "verdict",
        "seeds supporting",
        "effect (LS − CE)",
        "95% CI",
        "measure",
    ]
    rows = []
    for v in summary.verdicts:
        for d in v.per_delta:
            h = d.headline
            if h is None:
                rows.append([f"({v.claim})", d.label, d.verdict, "–", "–", "–", d.note])
                continue
            ci = (
                "–"
                if h.ci_low is None or h.ci_high is None
                else f"[{sig(h.ci_low)}, {sig(h.ci_high)}]"
            )
            seeds = "computed" if h.computed else f"{h.supporting}/{h.n}"
            rows.append(
                [
                    f"({v.claim})",
                    d.label,
                    d.verdict,
                    seeds,
                    sig(h.effect),
                    ci,
                    h.measure.label,
                ]
            )
    return header, rows


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td:first-child { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #444; } pre { font-size: 0.8em; background: #f7f7f7;
padding: 0.5em; overflow-x: auto; }
.holds { color: #06640a; } .partly { color: #a65f00; } .fails { color: #a00; }
.inconclusive { color: #555; } .undetermined { color: #888; }
.indicative { color: #555; font-style: italic; }
"""


def render_html(
    summary: ReportSummary,
    theory: TheoryPanel | None,
    figures: dict[str, Path],
    captions: dict[str, str],
) -> str:
    """The text of ``report.html`` with every PNG in ``figures`` embedded."""
    header, rows = summary_table(summary)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>nclab: CE vs label smoothing</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>CE vs label smoothing: a neural-collapse comparison</h1>",
        f"<p>{html.escape(_study_line(summary))}.</p>",
        "<h2>Summary</h2>",
        _html_table(header, rows),
        f"<p>{html.escape(STATS_NOTE)}</p>",
        "<h2>Claims of the paper on this data</h2>",
        f"<p>The claims of {html.escape(PAPER)}, judged per δ against CE from paired seeds. "
        f"{html.escape(VERDICT_NOTE)}</p>",
        _html_table(*verdict_table(summary)),
        "<p>Evidence (every measure, deciding ones first):</p><ul>",
    ]
    for v in summary.verdicts:
        parts.append(f"<li>{_verdict_html(v)}</li>")
    parts.append("</ul><p>Verdict rules: docs/report.md.</p>")
    for m in summary.matched:
        h, r = matched_table(m)
        parts.append(f"<h3>NC2 at matched NC1: {html.escape(m.label)} vs CE</h3>")
        parts.append(_html_table(h, r) if r else "<p>No NC1 range shared with CE.</p>")
    if theory is not None:
        parts.append(f"<h2>UFM theory</h2><p>{html.escape(_theory_text(theory))}</p>")
        hh, hr = hessian_table(theory)
        if hr:
            parts.append("<h3>Conditioning at the UFM minimizer (claim (f))</h3>")
            parts.append(f"<p>{html.escape(HESSIAN_NOTE)}</p>" + _html_table(hh, hr))
    parts.append("<h2>Figures</h2>")
    for stem, png in figures.items():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(
            f"<figure><img alt='{html.escape(stem)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(captions.get(stem, stem))}</figcaption></figure>"
        )
    if summary.warnings:
        parts.append("<h2>Warnings</h2><ul>")
        parts += [f"<li>{html.escape(w)}</li>" for w in summary.warnings]
        parts.append("</ul>")
    parts.append("<h2>Run configurations</h2>")
    for g in summary.groups:
        for run in g.runs:
            cfg = html.escape(json.dumps(run.config, indent=1, sort_keys=True))
            parts.append(
                f"<details><summary>{html.escape(g.label)} seed {run.seed}: "
                f"{html.escape(str(run.path))}</summary><pre>{cfg}</pre></details>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
