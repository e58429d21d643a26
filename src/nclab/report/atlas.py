"""The claims atlas of a study (:mod:`nclab.study`): every cell × δ against the claims of the
paper, coloured by verdict, with the deciding measure's effect (mean paired LS − CE) and 95%
interval in each square.

The atlas reads each cell's own report (its ``summary.json``): the verdict shown for a cell, δ
and claim is the per-δ verdict that cell's report states, word for word; nothing is judged
again here. Outputs (all written atomically): ``atlas.png``/``atlas.pdf``, ``summary.md``,
``report.html`` (self-contained, the PNG embedded) and ``summary.json``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from nclab.report.paired import FAILS, HOLDS, INCONCLUSIVE, MIXED, PARTLY, UNDETERMINED
from nclab.report.verdicts import CLAIMS, PAPER
from nclab.runs import atomic_write
from nclab.runs.lifecycle import claim_output_folder

__all__ = ["AtlasEntry", "AtlasResult", "AtlasRow", "atlas_figure", "atlas_rows", "build_atlas"]

#: Square colours by status (an indicative verdict, fewer than 3 seeds, is drawn pale).
COLORS = {
    HOLDS: "#5cb85c",
    PARTLY: "#b5dfa0",
    FAILS: "#d9534f",
    MIXED: "#f0ad4e",
    INCONCLUSIVE: "#cfcfcf",
    UNDETERMINED: "#ffffff",
}
PALE = {HOLDS: "#d6efd6", PARTLY: "#e6f4df", FAILS: "#f5d3d2", MIXED: "#fbe6c8"}
SHORT = {
    HOLDS: "holds",
    PARTLY: "partly",
    FAILS: "does not hold",
    MIXED: "mixed",
    INCONCLUSIVE: "inconclusive",
    UNDETERMINED: "undetermined",
}
CLAIM_TITLES = {
    "a": "(a) LS converges faster",
    "b": "(b) LS collapses more",
    "c": "(c) LS lower NC2 at matched NC1",
    "d": "(d) LS better calibrated",
    "e": "(e) LS generalizes as well",
    "f": "(f) UFM: LS better conditioned",
}


@dataclass(frozen=True)
class AtlasEntry:
    """One claim in one row: the per-δ verdict of the cell's report and its headline measure."""

    claim: str
    status: str
    verdict: str
    indicative: bool
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    measure: str | None
    seeds: int | None
    qualifier: str = ""


@dataclass(frozen=True)
class AtlasRow:
    """One cell at one δ."""

    cell: str
    dataset: str
    model: str
    condition: str
    smoothing: float
    report: str
    entries: tuple[AtlasEntry, ...]

    @property
    def label(self) -> str:
        return f"{self.dataset} · {self.model} · {self.condition} · δ={self.smoothing:g}"


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _deciding(per_delta: Mapping[str, Any]) -> Mapping[str, Any]:
    """The measure whose effect the atlas prints for one claim and δ: the first deciding
    measure with the δ's own status (the one that decided it), else the headline (the first
    deciding measure, what the report's table shows)."""
    status = per_delta.get("status")
    for m in per_delta.get("measures") or []:
        if isinstance(m, Mapping) and m.get("decides") and m.get("status") == status:
            return m
    return per_delta


def atlas_rows(cells: Sequence[tuple[Mapping[str, Any], Mapping[str, Any], str]]) -> list[AtlasRow]:
    """Rows from ``(cell description, cell summary.json, cell report folder)`` triples: one per
    cell and δ, the claims in the report's order."""
    rows = []
    for info, summary, report in cells:
        verdicts = summary.get("verdicts") or []
        deltas: list[float] = []
        for v in verdicts:
            for d in v.get("per_delta") or []:
                s = _float(d.get("smoothing"))
                if s is not None and s > 0 and s not in deltas:
                    deltas.append(s)
        for delta in sorted(deltas):
            entries = []
            for v in verdicts:
                d = next(
                    (d for d in v.get("per_delta") or [] if _float(d.get("smoothing")) == delta),
                    None,
                )
                if d is None:
                    entries.append(
                        AtlasEntry(
                            str(v.get("claim")),
                            UNDETERMINED,
                            UNDETERMINED,
                            False,
                            None,
                            None,
                            None,
                            None,
                            None,
                        )  # fmt: skip
                    )
                    continue
                shown = _deciding(d)
                entries.append(
                    AtlasEntry(
                        claim=str(v.get("claim")),
                        status=str(d.get("status")),
                        verdict=str(d.get("verdict")),
                        indicative=bool(d.get("indicative")),
                        effect=_float(shown.get("effect")),
                        ci_low=_float(shown.get("ci_low")),
                        ci_high=_float(shown.get("ci_high")),
                        measure=None if shown.get("measure") is None else str(shown["measure"]),
                        seeds=shown.get("seeds_total"),
                        qualifier=str(d.get("qualifier") or ""),
                    )
                )
            rows.append(
                AtlasRow(
                    str(info["name"]),
                    str(info["dataset"]),
                    str(info["model"]),
                    str(info["condition"]),
                    delta,
                    report,
                    tuple(entries),
                )
            )
    return rows


def _claims(rows: Sequence[AtlasRow]) -> list[str]:
    out: list[str] = []
    for r in rows:
        for e in r.entries:
            if e.claim not in out:
                out.append(e.claim)
    return out


def _entry(row: AtlasRow, claim: str) -> AtlasEntry | None:
    return next((e for e in row.entries if e.claim == claim), None)


def effect_text(e: AtlasEntry) -> str:
    """``+0.012 [−0.004, 0.03]`` (3 significant digits), or the effect alone (computed (f))."""
    if e.effect is None:
        return ""
    text = f"{e.effect:+.3g}"
    if e.ci_low is not None and e.ci_high is not None:
        text += f" [{e.ci_low:.3g}, {e.ci_high:.3g}]"
    return text


def _color(e: AtlasEntry | None) -> str:
    if e is None:
        return COLORS[UNDETERMINED]
    if e.indicative and e.status in PALE:
        return PALE[e.status]
    return COLORS.get(e.status, COLORS[UNDETERMINED])


def _unit(label: str | None) -> str:
    """The unit of a measure label ``description (unit)``."""
    if not label or not label.endswith(")") or " (" not in label:
        return ""
    return label[label.rindex(" (") + 2 : -1]


def atlas_figure(rows: Sequence[AtlasRow], title: str = "") -> Figure | None:
    """Rows = cells × δ, columns = claims; each square coloured by the verdict and printing
    the verdict, the effect LS − CE and its 95% interval. None without rows."""
    from matplotlib.patches import Patch, Rectangle

    if not rows:
        return None
    claims = _claims(rows)
    n, m = len(rows), len(claims)
    fig = Figure(figsize=(3.0 + 2.05 * m, 1.9 + 0.52 * n), layout="constrained")
    ax = fig.subplots()
    for i, row in enumerate(rows):
        for j, claim in enumerate(claims):
            e = _entry(row, claim)
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=_color(e), edgecolor="#888", lw=0.6))
            if e is None:
                continue
            word = SHORT.get(e.status, e.status)
            if e.indicative and e.status != UNDETERMINED:
                word += " (ind.)"
            ax.text(j + 0.5, i + 0.36, word, ha="center", va="center", fontsize=7.5,
                    fontweight="bold", style="italic" if e.indicative else "normal")  # fmt: skip
            detail = e.qualifier if e.status == UNDETERMINED else effect_text(e)
            if detail:
                ax.text(j + 0.5, i + 0.7, textwrap.shorten(detail, 34), ha="center",
                        va="center", fontsize=6.3)  # fmt: skip
    ax.set_xlim(0, m)
    ax.set_ylim(n, 0)
    ax.set_xticks([j + 0.5 for j in range(m)])
    units = {c: m.split("; ")[0] for c, m in _measures(rows).items()}
    ax.set_xticklabels(
        [
            textwrap.fill(CLAIM_TITLES.get(c, f"({c})"), 17)
            + (f"\n[{_unit(units.get(c))}]" if _unit(units.get(c)) else "")
            for c in claims
        ],
        fontsize=7.5,
    )
    ax.xaxis.tick_top()
    ax.set_yticks([i + 0.5 for i in range(n)])
    ax.set_yticklabels([r.label for r in rows], fontsize=7.5)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    handles = [
        Patch(facecolor=COLORS[s], edgecolor="#888", label=SHORT[s])
        for s in (HOLDS, FAILS, MIXED, INCONCLUSIVE, UNDETERMINED)
    ] + [Patch(facecolor=PALE[HOLDS], edgecolor="#888", label="indicative (< 3 seeds)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=6, fontsize=7, frameon=False)
    fig.suptitle(
        (title + "\n" if title else "")
        + "verdict per cell and claim (each cell's own report); effect = mean paired LS − CE "
        "[95% t interval over seeds] of the deciding measure that decided it (summary.json "
        "names it)",
        fontsize=8.5,
    )
    return fig


# ------------------------------------------------------------------------------ tables


def _md(text: str) -> str:
    """Escape a user string for a Markdown table cell (no markup, no HTML, no line breaks)."""
    text = " ".join(str(text).split())
    text = html.escape(text, quote=False)
    for ch in "\\`*_{}[]()#+!|~":
        text = text.replace(ch, "\\" + ch)
    return text


def _cell_text(e: AtlasEntry | None) -> str:
    if e is None:
        return "–"
    detail = "" if e.status == UNDETERMINED else effect_text(e)
    return e.verdict + (f"; {detail}" if detail else "")


def _measures(rows: Sequence[AtlasRow]) -> dict[str, str]:
    """Claim -> the measures whose effects the atlas prints ("; "-joined, first seen first)."""
    out: dict[str, list[str]] = {}
    for r in rows:
        for e in r.entries:
            if e.measure and e.measure not in out.setdefault(e.claim, []):
                out[e.claim].append(e.measure)
    return {c: "; ".join(labels) for c, labels in out.items() if labels}


def render_markdown(rows: Sequence[AtlasRow], title: str, description: str) -> str:
    claims = _claims(rows)
    lines = [
        f"# {_md(title)}",
        "",
        _md(description),
        "",
        f"Claims of {_md(PAPER)}, judged in each cell's own report (paired seeds, 95% t "
        "intervals); each square: the per-δ verdict, the mean paired LS − CE of the deciding "
        "measure and its interval.",
        "",
        "![atlas](atlas.png)",
        "",
        "| dataset | model | condition | δ | "
        + " | ".join(_md(CLAIM_TITLES.get(c, c)) for c in claims)
        + " |",
        "|---|---|---|---|" + "---|" * len(claims),
    ]
    for r in rows:
        cells = [_md(_cell_text(_entry(r, c))) for c in claims]
        lines.append(
            f"| {_md(r.dataset)} | {_md(r.model)} | {_md(r.condition)} | {r.smoothing:g} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "Measures printed (each square: the deciding measure that decided it; summary.json "
        "names it per square):",
        "",
    ]
    for claim, label in _measures(rows).items():
        lines.append(f"- ({_md(claim)}) {_md(label)}: {_md(CLAIMS.get(claim, ''))}")
    lines += ["", "Cell reports:", ""]
    seen = []
    for r in rows:
        if r.cell not in seen:
            seen.append(r.cell)
            lines.append(f"- {_md(r.cell)}: {_md(r.report)}")
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.8em; }
th, td { border: 1px solid #bbb; padding: 3px 6px; }
th { background: #f0f0f0; } img { max-width: 100%; }
"""


def render_html(rows: Sequence[AtlasRow], title: str, description: str, png: Path | None) -> str:
    claims = _claims(rows)
    esc = html.escape
    head = "".join(
        f"<th>{esc(h)}</th>"
        for h in ["dataset", "model", "condition", "δ", *(CLAIM_TITLES.get(c, c) for c in claims)]
    )
    body = []
    for r in rows:
        tds = [
            f"<td>{esc(r.dataset)}</td><td>{esc(r.model)}</td><td>{esc(r.condition)}</td>"
            f"<td>{r.smoothing:g}</td>"
        ]
        for c in claims:
            e = _entry(r, c)
            style = f" style='background:{_color(e)}'"
            tds.append(f"<td{style}>{esc(_cell_text(e))}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    img = ""
    if png is not None and png.is_file():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        img = f"<figure><img alt='atlas' src='data:image/png;base64,{data}'></figure>"
    measures = "".join(
        f"<li>({esc(c)}) {esc(label)}: {esc(CLAIMS.get(c, ''))}</li>"
        for c, label in _measures(rows).items()
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><p>{esc(description)}</p>"
        f"<p>Claims of {esc(PAPER)}, judged in each cell's own report (paired seeds, 95% t "
        "intervals).</p>"
        f"{img}<table><tr>{head}</tr>{''.join(body)}</table>"
        "<p>Measures printed (each square: the deciding measure that decided it; summary.json "
        f"names it per square):</p><ul>{measures}</ul></body></html>"
    )


#: The files :func:`build_atlas` writes.
ATLAS_FILES = ("atlas.png", "atlas.pdf", "summary.md", "report.html", "summary.json")


@dataclass
class AtlasResult:
    """What :func:`build_atlas` wrote, and its rows."""

    out_dir: Path
    html: Path
    markdown: Path
    json: Path
    figures: list[Path]
    rows: list[AtlasRow]


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _save_figure(fig: Figure, path: Path, **kwargs: Any) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:], **kwargs))


def build_atlas(
    cells: Sequence[tuple[Mapping[str, Any], Mapping[str, Any], str]],
    out_dir: str | Path,
    *,
    title: str = "nclab study",
    description: str = "",
) -> AtlasResult:
    """Write the atlas of ``cells`` (see :func:`atlas_rows`) into ``out_dir``."""
    out = Path(out_dir)
    # never through a symbolic link, never over a file of these names that nclab did not write
    claim_output_folder(out, ATLAS_FILES, [])
    rows = atlas_rows(cells)
    figures: list[Path] = []
    fig = atlas_figure(rows, title)
    if fig is not None:
        for suffix, kw in ((".png", {"dpi": 130}), (".pdf", {})):
            path = out / f"atlas{suffix}"
            _save_figure(fig, path, **kw)
            figures.append(path)
    md, page, js = out / "summary.md", out / "report.html", out / "summary.json"
    _write_text(md, render_markdown(rows, title, description))
    _write_text(page, render_html(rows, title, description, figures[0] if figures else None))
    doc = {
        "title": title,
        "description": description,
        "paper": PAPER,
        "claims": {c: CLAIMS.get(c, "") for c in _claims(rows)},
        "rows": [asdict(r) for r in rows],
    }
    _write_text(js, json.dumps(doc, indent=1))
    return AtlasResult(out, page, md, js, figures, rows)
