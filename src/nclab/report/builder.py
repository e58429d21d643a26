""":func:`build_report`: figures, ``summary.md``, ``summary.json`` and ``report.html`` from run
directories."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from nclab.report.figures import (
    FIGURES,
    calibration_figure,
    convergence_figure,
    delta_sweep_figure,
    forest_figure,
    loss_convergence_figure,
    matched_figure,
    norms_figure,
    save_figure,
    test_nc1_split_figure,
    test_nc_figure,
    trajectory_figure,
    ufm_figure,
)
from nclab.report.figures_layers import LAYER_FIGURES, layers_figure
from nclab.report.render import render_html, render_markdown
from nclab.report.runs import load_runs
from nclab.report.summary import ReportSummary, summarize
from nclab.report.theory import TheoryPanel, theory_panel
from nclab.runs.files import atomic_write
from nclab.runs.lifecycle import claim_output_folder

__all__ = ["ReportResult", "build_report"]


@dataclass
class ReportResult:
    """What :func:`build_report` wrote, and the numbers it reported.

    ``figures`` maps a figure's stem (see :data:`nclab.report.figures.FIGURES`) to its PNG and
    PDF paths; ``summary`` holds every number of the tables and the verdicts."""

    out_dir: Path
    html: Path
    markdown: Path
    json: Path
    figures: dict[str, list[Path]]
    summary: ReportSummary
    theory: TheoryPanel | None = None
    run_dirs: list[Path] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        """Every file written."""
        return [
            self.html,
            self.markdown,
            self.json,
            *(p for ps in self.figures.values() for p in ps),
        ]


def _figures(summary: ReportSummary, theory: TheoryPanel | None) -> dict[str, Figure | None]:
    return {
        "compare_forest": forest_figure(summary),
        "compare_convergence": convergence_figure(summary),
        "compare_nc1_nc2": trajectory_figure(summary),
        "compare_matched_nc1": matched_figure(summary),
        "compare_calibration": calibration_figure(summary),
        "compare_norms": norms_figure(summary),
        "compare_ufm": ufm_figure(theory, summary) if theory is not None else None,
        "compare_loss_convergence": loss_convergence_figure(summary),
        "compare_test_nc": test_nc_figure(summary),
        "compare_test_nc1_split": test_nc1_split_figure(summary),
        "compare_delta_sweep": delta_sweep_figure(summary, theory),
        "compare_layers": layers_figure(summary),
    }


def build_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    theory: bool = True,
    ufm_convergence: bool = True,
    ufm_max_iters: int | None = None,
) -> ReportResult:
    """Build the CE-vs-LS report from run directories (or directories containing them).

    Writes into ``out_dir``: ``report.html`` (self-contained), ``summary.md``, ``summary.json``
    and every figure as PNG and PDF. ``theory=False`` skips the UFM panel; ``ufm_convergence=
    False`` keeps its closed-form part only; ``ufm_max_iters`` caps the GD iterations.
    Raises FileNotFoundError when no run directory with metrics is found."""
    runs = load_runs(run_dirs)
    out = Path(out_dir)
    panel, theory_warning = None, None
    if theory:
        try:
            panel = theory_panel(runs, convergence=ufm_convergence, max_iters=ufm_max_iters)
        except (ImportError, ValueError) as err:
            theory_warning = f"UFM theory panel omitted: {err}"
    summary = summarize(runs, panel)
    if theory_warning:
        summary.warnings.append(theory_warning)
    written: dict[str, list[Path]] = {}
    # Plotting libraries' warnings (empty log axes, glyphs, layout) go to the report's warnings
    # list, not to the user's terminal.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures = {stem: fig for stem, fig in _figures(summary, panel).items() if fig is not None}
        names = [*_REPORT_FILES, *(f"{stem}.{ext}" for stem in figures for ext in ("png", "pdf"))]
        # never into a run folder, never over a file nclab did not write (checked before any
        # write; every file below is written atomically: a failure leaves the previous one)
        claim_output_folder(out, names, [r.path for r in runs])
        for stem, fig in figures.items():
            written[stem] = save_figure(fig, out, stem)
    notes = dict.fromkeys(f"figures: {w.message}" for w in caught)
    summary.warnings.extend(notes)
    md = out / "summary.md"
    _write_text(md, render_markdown(summary, panel, out))
    js = out / "summary.json"
    data = summary.as_dict()
    data["theory"] = panel.as_dict() if panel is not None else None
    _write_text(js, json.dumps(data, indent=1, default=_json_default))
    page = out / "report.html"
    pngs = {stem: paths[0] for stem, paths in written.items()}
    _write_text(page, render_html(summary, panel, pngs, {**FIGURES, **LAYER_FIGURES}, out))
    return ReportResult(out, page, md, js, written, summary, panel, [r.path for r in runs])


_REPORT_FILES = ("summary.md", "summary.json", "report.html")


def _write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def _json_default(value: object) -> object:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
