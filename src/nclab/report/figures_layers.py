"""Collapse across layers: a layer x epoch heatmap of log10 NC1 (runs with ``--nc-layers``).

One panel per loss setting (CE, LS δ, ...); rows are the recorded layers in forward order (the
last, ``features``, is the penultimate features: the run's ``nc1``), columns the evaluated
epochs; a cell is the mean over seeds of log10 NC1 (``layer_nc1/<name>`` in ``metrics.jsonl``).
All panels share one colour scale.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from nclab.report.runs import RunData
from nclab.report.summary import ReportSummary

__all__ = ["LAYER_FIGURES", "layer_names", "layers_figure"]

PREFIX = "layer_nc1/"

#: File stem -> caption (joined to :data:`nclab.report.figures.FIGURES` by the builder).
LAYER_FIGURES: dict[str, str] = {
    "compare_layers": "Collapse across layers: log10 NC1 of each recorded layer (rows, input "
    "side on top; 'features' is the penultimate layer) against epoch, mean over seeds, one "
    "panel per loss setting.",
}


def layer_names(runs: list[RunData]) -> list[str]:
    """The recorded layers in the order the rows list them (first seen first)."""
    names: dict[str, None] = {}
    for run in runs:
        for row in run.rows:
            for key in row:
                if key.startswith(PREFIX):
                    names.setdefault(key[len(PREFIX) :], None)
    return list(names)


def _grid(runs: list[RunData], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Epochs (sorted union) and the (layers, epochs) mean over runs of log10 NC1."""
    epochs = np.unique(np.concatenate([r.epochs for r in runs if r.rows]))
    epochs = epochs[np.isfinite(epochs)]
    total = np.zeros((len(names), len(epochs)))
    count = np.zeros_like(total)
    for run in runs:
        col = np.searchsorted(epochs, run.epochs)
        for i, name in enumerate(names):
            values = run.series(PREFIX + name)
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = np.log10(values)
            ok = np.isfinite(logs)
            np.add.at(total[i], col[ok], logs[ok])
            np.add.at(count[i], col[ok], 1.0)
    with np.errstate(invalid="ignore"):
        return epochs, np.where(count > 0, total / np.maximum(count, 1.0), np.nan)


def layers_figure(summary: ReportSummary) -> Figure | None:
    """The heatmap, or None when no run recorded intermediate layers."""
    groups = [g for g in summary.groups if layer_names(g.runs)]
    if not groups:
        return None
    grids = []
    for g in groups:
        names = layer_names(g.runs)
        grids.append((g, names, *_grid(g.runs, names)))
    finite = np.concatenate([grid[~np.isnan(grid)].ravel() for *_, grid in grids])
    if finite.size == 0:
        return None
    vmin, vmax = float(finite.min()), float(finite.max())
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    rows = max(len(names) for _, names, *_ in grids)
    fig = Figure(figsize=(min(4.5 * len(grids), 18) + 1.0, 1.2 + 0.35 * rows), layout="constrained")
    axes = fig.subplots(1, len(grids), squeeze=False).ravel()
    image = None
    for ax, (g, names, epochs, grid) in zip(axes, grids, strict=True):
        image = ax.imshow(
            np.ma.masked_invalid(grid), aspect="auto", cmap="viridis_r", vmin=vmin, vmax=vmax,
            interpolation="nearest",
        )  # fmt: skip
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ticks = np.unique(np.linspace(0, len(epochs) - 1, min(len(epochs), 8)).round().astype(int))
        ax.set_xticks(ticks, [f"{epochs[t]:g}" for t in ticks], fontsize=7)
        ax.set_xlabel("epoch")
        ax.set_title(f"{g.label} ({len(g.runs)} seed(s))", fontsize=9)
    fig.colorbar(image, ax=list(axes), label="log10 NC1 (mean over seeds)")
    fig.suptitle("Collapse across layers: log10 NC1 by layer and epoch", fontsize=10)
    return fig
