"""``summary.md`` and the self-contained ``report.html`` (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from nclab.report.analysis import SeedStat
from nclab.report.paired import sig
from nclab.report.runs import RunData
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
    "html_table",
    "inline_html",
    "matched_table",
    "render_html",
    "render_markdown",
    "run_table",
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


RUN_NOTE = (
    "Final values are from each run's last logged epoch; accuracies in %. Wall time: the sum of "
    "the per-epoch times the run logged in metrics.jsonl (training and evaluation; a resumed "
    "run's epochs counted once). Folder: the run's directory, relative to this report."
)


def _final_text(run: RunData, key: str, scale: float = 1.0, digits: int = 4) -> str:
    value = run.final(key)
    if key.endswith("_acc") and math.isfinite(value) and value <= 1.0:
        value *= 100.0  # accuracies are stored as fractions
    return "–" if not math.isfinite(value) else f"{value * scale:.{digits}g}"


def run_folder(run: RunData, out_dir: Path | None) -> str:
    """The run's folder relative to the report's folder (``out_dir``), POSIX-style; the path as
    loaded when there is no report folder or no relative path (another drive)."""
    if out_dir is not None:
        try:
            rel = os.path.relpath(Path(run.path).absolute(), Path(out_dir).absolute())
            return Path(rel).as_posix()
        except ValueError:
            pass
    return Path(run.path).as_posix()


def run_link(run: RunData, out_dir: Path | None) -> str:
    """The run's folder as a URL relative to the report (percent-encoded, so spaces, ``#``,
    ``?``, quotes and brackets in a folder name stay part of the path)."""
    return quote(run_folder(run, out_dir)) + "/"


def run_table(summary: ReportSummary) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-run table (the folder column holds the run's path)."""
    header = [
        "run",
        "seed",
        "setting",
        "train acc (%)",
        "test acc (%)",
        "final nc1",
        "final nc2_wh",
        "ECE",
        "wall time (s)",
        "folder",
    ]
    rows = []
    for g in summary.groups:
        for run in g.runs:
            seconds = run.series("seconds")
            seconds = seconds[np.isfinite(seconds)]
            rows.append(
                [
                    run.name,
                    str(run.seed),
                    g.label,
                    _final_text(run, "train_acc"),
                    _final_text(run, "test_acc"),
                    _final_text(run, "nc1"),
                    _final_text(run, "nc2_wh"),
                    _final_text(run, "ece"),
                    f"{float(seconds.sum()):.1f}" if seconds.size else "–",
                    str(run.path),
                ]
            )
    return header, rows


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
    parts = [f"{len(runs)} runs"]
    if cfg.get("dataset") is not None:  # an NCTracker run records no dataset name
        parts.append(f"dataset {cfg['dataset']}")
    if cfg.get("per_class"):
        parts.append(f"{cfg['per_class']} per class")
    model = cfg.get("model") or cfg.get("model_class")
    if model:
        parts.append(f"model {model}")
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


def _md_run_table(summary: ReportSummary, out_dir: Path | None) -> str:
    header, rows = run_table(summary)
    runs = [run for g in summary.groups for run in g.runs]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, row in zip(runs, rows, strict=True):
        link = f"[{md_escape(run_folder(run, out_dir))}]({run_link(run, out_dir)})"
        lines.append("| " + " | ".join([*map(md_escape, row[:-1]), link]) + " |")
    return "\n".join(lines)


def render_markdown(
    summary: ReportSummary, theory: TheoryPanel | None, out_dir: Path | None = None
) -> str:
    """The text of ``summary.md`` (``out_dir``: the report's folder, for relative run links)."""
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
        "## Runs",
        "",
        _md_run_table(summary, out_dir),
        "",
        RUN_NOTE,
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
    rows = []
    for row in theory.hessian:
        best = row.get("gd_best_iters")
        best_text = "–" if "gd_shared_lr" not in row else _iters(best)
        if best is not None:
            best_text += f" (step {sig(row.get('gd_best_multiplier'))}/λ_max)"
        rows.append(
            [
                f"{row['smoothing']:g}",
                sig(row.get("hessian_ratio")),
                sig(row.get("w_block_ratio")),
                sig(row.get("h_block_ratio")),
                sig(row.get("kappa_logit")),
                "–" if "gd_shared_lr" not in row else _iters(row.get("gd_shared_iters")),
                best_text,
            ]
        )
    return header, rows


def _iters(value: int | None) -> str:
    return "never" if value is None else str(value)


class Markup(str):
    """A table cell that is already HTML (built from escaped parts): inserted as is."""


_INLINE_CODE = re.compile(r"`([^`<>]+)`")
_INLINE_BOLD = re.compile(r"\*\*([^*<>]+)\*\*")


def inline_html(text: object) -> str:
    """Prose as HTML: every character escaped, then ``code`` spans as <code> and **bold** as
    <strong> (so the report's notes show no literal backticks or asterisks; a user string
    passes through the same escaping first, so it can never open a tag)."""
    out = html.escape(str(text))
    out = _INLINE_CODE.sub(r"<code>\1</code>", out)
    return _INLINE_BOLD.sub(r"<strong>\1</strong>", out)


#: A numeric cell: a number, an interval, a mean ± sd, a count k/n, or a milestone never reached.
_NUMERIC_CELL = re.compile(r"^(?:[-+−]?[\d.]|\[|never\b)")
_NEUTRAL_CELLS = {"–", "-", "", "computed"}


def short_columns(rows: Sequence[Sequence[str]], limit: int = 16) -> list[bool]:
    """Per column: True when every cell has at most ``limit`` characters (a label such as
    ``LS δ=0.05``, kept on one line)."""
    if not rows:
        return []
    return [all(len(str(r[c])) <= limit for r in rows) for c in range(len(rows[0]))]


def numeric_columns(rows: Sequence[Sequence[str]]) -> list[bool]:
    """Per column: True when every cell that is not a placeholder (–, computed) reads as a
    number (right-aligned, never wrapped), False for text (left-aligned)."""
    if not rows:
        return []
    flags = []
    for col in range(len(rows[0])):
        cells = [str(r[col]).strip() for r in rows if str(r[col]).strip() not in _NEUTRAL_CELLS]
        flags.append(bool(cells) and all(_NUMERIC_CELL.match(c) for c in cells))
    return flags


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> str:
    """An HTML table: text columns left-aligned, number columns right-aligned and unwrapped
    (class ``num``); every cell escaped unless it is :class:`Markup`."""
    numeric = numeric_columns(rows) or [False] * len(header)
    classes = [
        "num" if num else ("nw" if short else "")
        for num, short in zip(numeric, short_columns(rows) or numeric, strict=True)
    ]

    def cell(tag: str, text: str, cls: str) -> str:
        body = text if isinstance(text, Markup) else inline_html(text)
        return f"<{tag} class='{cls}'>{body}</{tag}>" if cls else f"<{tag}>{body}</{tag}>"

    head = "".join(cell("th", h, c) for h, c in zip(header, classes, strict=True))
    body = "".join(
        "<tr>" + "".join(cell("td", x, c) for x, c in zip(row, classes, strict=True)) + "</tr>"
        for row in rows
    )
    cap = f"<caption>{inline_html(caption)}</caption>" if caption else ""
    return (
        f"<div class='table'><table>{cap}<thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


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
        f"{html.escape(d.verdict)}</span> — {inline_html(d.text)}</li>"
        for d in v.per_delta
    )
    return f"({v.claim}) {inline_html(v.statement)}: {status}<ul>{items}</ul>"


VERDICT_NOTE = (
    "Effect: mean over seeds of the paired difference LS − CE (same seed = same initialisation "
    "and data order) in the measure's unit; 95% CI: Student t over the paired differences. "
    "holds: every paired seed supports the claim and, with 3 or more seeds, the interval lies "
    "entirely on the claim's side of its threshold (0; −0.5 points for (e)); does not hold: the "
    "same for the opposite; inconclusive: otherwise; indicative: fewer than 3 seeds. Over δ: "
    "mixed = holds for some δ and does not hold for another, or a δ whose deciding measures "
    "disagree."
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
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
padding: 0 1em; line-height: 1.4; }
div.table { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
caption { caption-side: bottom; text-align: left; font-size: 0.9em; color: #444;
padding-top: 0.3em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num, td.nw { white-space: nowrap; }
code { font-size: 0.92em; background: #f3f3f3; padding: 0 0.2em; border-radius: 3px; }
nav.toc { background: #fafafa; border: 1px solid #ddd; padding: 0.5em 1.5em;
display: inline-block; }
nav.toc ol { margin: 0.3em 0; padding-left: 1.2em; } nav.toc ol ol { font-size: 0.92em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #444; } pre { font-size: 0.8em; background: #f7f7f7;
padding: 0.5em; overflow-x: auto; }
.holds { color: #06640a; } .partly { color: #a65f00; } .fails { color: #a00; }
.inconclusive { color: #555; } .undetermined { color: #888; }
.indicative { color: #555; font-style: italic; }
"""


def _figure_title(stem: str, caption: str) -> str:
    """A short contents entry for a figure: its caption's first clause."""
    text = re.split(r"(?<=[a-z)])[.:;] | \(", caption or stem, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= 70 else text[:67].rstrip() + "…"


def render_html(
    summary: ReportSummary,
    theory: TheoryPanel | None,
    figures: dict[str, Path],
    captions: dict[str, str],
    out_dir: Path | None = None,
) -> str:
    """The text of ``report.html`` with every PNG in ``figures`` embedded; ``out_dir`` (the
    report's folder) makes the run folders relative links."""
    toc: list[tuple[str, str, list[tuple[str, str]]]] = []  # (id, title, sub-entries)

    def section(anchor: str, title: str, level: int = 2) -> str:
        if level == 2:
            toc.append((anchor, title, []))
        else:
            toc[-1][2].append((anchor, title))
        return f"<h{level} id='{anchor}'>{html.escape(title)}</h{level}>"

    header, rows = summary_table(summary)
    split = header.index("ECE")  # two tables: each fits the page without wrapping a value
    body = [
        f"<p>{inline_html(_study_line(summary))}.</p>",
        section("summary", "Summary per setting"),
        html_table(header[:split], [r[:split] for r in rows], "Training, collapse and accuracy."),
        html_table(
            [header[0], *header[split:]],
            [[r[0], *r[split:]] for r in rows],
            "Calibration: ECE before and after temperature scaling (T).",
        ),
        f"<p>{inline_html(STATS_NOTE)}</p>",
        section("runs", "Runs"),
        _run_table_html(summary, out_dir),
        section("claims", "Claims of the paper on this data"),
        f"<p>The claims of {inline_html(PAPER)}, judged per δ against CE from paired seeds. "
        f"{inline_html(VERDICT_NOTE)}</p>",
        html_table(*verdict_table(summary)),
        section("evidence", "Evidence", 3),
        "<p>Every measure, deciding ones first.</p><ul>",
    ]
    for v in summary.verdicts:
        body.append(f"<li>{_verdict_html(v)}</li>")
    body.append("</ul><p>Verdict rules: <code>docs/report.md</code>.</p>")
    for i, m in enumerate(summary.matched):
        h, r = matched_table(m)
        body.append(section(f"matched-{i}", f"NC2 at matched NC1: {m.label} vs CE", 3))
        body.append(html_table(h, r) if r else "<p>No NC1 range shared with CE.</p>")
    if theory is not None:
        body.append(section("theory", "UFM theory"))
        body.append(f"<p>{inline_html(_theory_text(theory))}</p>")
        hh, hr = hessian_table(theory)
        if hr:
            body.append(section("conditioning", "Conditioning at the UFM minimizer (claim (f))", 3))
            body.append(f"<p>{inline_html(HESSIAN_NOTE)}</p>" + html_table(hh, hr))
    if figures:
        body.append(section("figures", "Figures"))
    for stem, png in figures.items():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        caption = captions.get(stem, stem)
        body.append(
            section(f"fig-{_anchor(stem)}", _figure_title(stem, caption), 3)
            + f"<figure><img alt='{html.escape(stem)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{inline_html(caption)}</figcaption></figure>"
        )
    if summary.warnings:
        body.append(section("warnings", "Warnings"))
        body.append("<ul>" + "".join(f"<li>{inline_html(w)}</li>" for w in summary.warnings))
        body.append("</ul>")
    body.append(section("configurations", "Run configurations"))
    for g in summary.groups:
        for run in g.runs:
            cfg = html.escape(json.dumps(run.config, indent=1, sort_keys=True))
            href = html.escape(run_link(run, out_dir), quote=True)
            body.append(
                f"<details><summary>{html.escape(g.label)} seed {run.seed}: "
                f"<a href='{href}'>{html.escape(str(run.path))}</a></summary>"
                f"<pre>{cfg}</pre></details>"
            )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>nclab: CE vs label smoothing</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>CE vs label smoothing: a neural-collapse comparison</h1>",
        _toc_html(toc),
        *body,
        "</body></html>",
    ]
    return "\n".join(parts)


def _anchor(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def _toc_html(toc: Sequence[tuple[str, str, Sequence[tuple[str, str]]]]) -> str:
    """The contents list: one link per section, figures and sub-tables nested."""
    items = []
    for anchor, title, subs in toc:
        sub = "".join(f"<li><a href='#{a}'>{html.escape(t)}</a></li>" for a, t in subs)
        items.append(
            f"<li><a href='#{anchor}'>{html.escape(title)}</a>"
            + (f"<ol>{sub}</ol>" if sub else "")
            + "</li>"
        )
    return (
        f"<nav class='toc' id='contents'><strong>Contents</strong><ol>{''.join(items)}</ol></nav>"
    )


def _run_table_html(summary: ReportSummary, out_dir: Path | None) -> str:
    """The per-run table with each folder as a relative link."""
    header, rows = run_table(summary)
    runs = [run for g in summary.groups for run in g.runs]
    linked = []
    for run, row in zip(runs, rows, strict=True):
        href = html.escape(run_link(run, out_dir), quote=True)
        text = html.escape(run_folder(run, out_dir))
        linked.append([*row[:-1], Markup(f"<a href='{href}'>{text}</a>")])
    return html_table(header, linked, RUN_NOTE)
