"""The report's figures, drawn on :class:`matplotlib.figure.Figure` objects (no pyplot state).

Conventions: one colour per loss setting (CE black, label smoothing δ on the sequential
``plasma`` colormap, darker = smaller δ), one marker per setting; lines are the mean over seeds
and shaded bands span the minimum to the maximum over seeds. A y axis is logarithmic when its
positive values span more than a decade (symmetric-log with a linear part below the smallest
positive value when the data also contain zeros, e.g. a training error that reaches 0).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from nclab.report.analysis import aggregate_curve, covered_range, log_levels, matched_nc2
from nclab.report.runs import GroupKey, RunData
from nclab.report.summary import GroupSummary, ReportSummary
from nclab.report.theory import ConvergenceCurve, TheoryPanel

__all__ = [
    "FIGURES",
    "calibration_figure",
    "convergence_figure",
    "delta_sweep_figure",
    "forest_figure",
    "loss_convergence_figure",
    "group_colors",
    "matched_figure",
    "norms_figure",
    "save_figure",
    "test_nc1_split_figure",
    "test_nc_figure",
    "trajectory_figure",
    "ufm_figure",
]

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
BAND_NOTE = "lines: mean over seeds; bands: min–max over seeds"

#: File stem -> what the figure shows (also the captions in report.html).
FIGURES: dict[str, str] = {
    "compare_forest": "Verdicts at a glance: for each claim and δ, the mean paired difference "
    "LS − CE over seeds with its 95% Student-t interval and the line of no effect.",
    "compare_convergence": "Convergence: training/test error and NC metrics against epoch.",
    "compare_nc1_nc2": "NC1 against NC2 (nc2_wh) along training, points coloured by test error.",
    "compare_matched_nc1": "NC2 at matched NC1 (first crossing of each NC1 level).",
    "compare_calibration": "Reliability diagrams before/after temperature scaling "
    "(evaluation half of the test set).",
    "compare_norms": "Mean classifier norm ‖w_k‖ and feature norm ‖h_k − h_G‖ against epoch.",
    "compare_ufm": "UFM theory: closed-form logit gap, p* and norms over δ; conditioning at the "
    "minimizer (full Hessian without symmetry/bias-shift directions, W and H blocks, and κ_logit, "
    "lower by construction); GD convergence of the UFM per δ.",
    "compare_loss_convergence": "Training-loss convergence, log(loss − min loss + ε) per epoch "
    "(the paper's loss-convergence figure).",
    "compare_test_nc": "NC1-NC4 of the test features against epoch.",
    "compare_test_nc1_split": "Per-epoch test NC1 of correctly and incorrectly classified "
    "samples, and per-epoch ECE after temperature scaling.",
    "compare_delta_sweep": "δ sweep: final NC1/NC2/NC3, norms (UFM closed form dashed in "
    "UFM-penalty mode), test error, ECE before/after temperature scaling and fitted T against δ.",
}


def group_colors(keys: Sequence[GroupKey]) -> dict[GroupKey, tuple[float, ...]]:
    """CE black, LS δ's on ``plasma`` (0.1-0.8, by rank), anything else on ``tab10``."""
    from matplotlib import colormaps

    ls = sorted(k for k in keys if k.is_ls)
    plasma, tab = colormaps["plasma"], colormaps["tab10"]
    colors: dict[GroupKey, tuple[float, ...]] = {}
    for key in keys:
        if key.is_ce:
            colors[key] = (0.0, 0.0, 0.0, 1.0)
        elif key.is_ls:
            pos = ls.index(key)
            colors[key] = plasma(0.45 if len(ls) == 1 else 0.1 + 0.7 * pos / (len(ls) - 1))
        else:
            colors[key] = tab((len(colors) + 2) % 10)
    return colors


def _markers(keys: Sequence[GroupKey]) -> dict[GroupKey, str]:
    return {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(keys)}


def set_value_scale(ax: Axes, values: np.ndarray) -> str:
    """Pick the y scale for ``values`` (module docstring); returns the scale's name."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    pos = v[v > 0]
    if pos.size == 0 or pos.max() / pos.min() <= 10.0 or (v < 0).any():
        return "linear"
    if (v == 0).any():
        ax.set_yscale("symlog", linthresh=float(pos.min()), linscale=0.4)
        return "symlog"
    ax.set_yscale("log")
    return "log"


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` (120 dpi) and ``stem.pdf``, each atomically (a full disk or a signal
    leaves the previous file, never a torn one); returns both paths."""
    from nclab.runs.files import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    atomic_write(paths[0], lambda f: fig.savefig(f, format="png", dpi=120))
    atomic_write(paths[1], lambda f: fig.savefig(f, format="pdf"))
    return paths


def _plot_band(
    ax: Axes, runs: Sequence[RunData], fn: Callable[[RunData], np.ndarray], color, label: str
) -> np.ndarray:
    """Mean line and min-max band over seeds; returns all plotted values (for scaling)."""
    epochs, mean, lo, hi = aggregate_curve(runs, fn)
    ax.plot(epochs, mean, color=color, lw=1.6, label=label)
    if len(runs) > 1:
        ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, lw=0)
    return np.concatenate([mean, lo, hi])


CONVERGENCE_PANELS: tuple[tuple[str, str, Callable[[RunData], np.ndarray]], ...] = (
    ("train_error", "training error", lambda r: r.train_error()),
    ("test_error", "test error", lambda r: r.test_error()),
    ("nc1", r"NC1  $\mathrm{tr}(\Sigma_W \Sigma_B^{+})/K$", lambda r: r.series("nc1")),
    ("nc2_wh", "NC2  (nc2_wh)", lambda r: r.series("nc2_wh")),
    ("nc3", "NC3  (nc3)", lambda r: r.series("nc3")),
    ("nc4", "NC4  (nc4)", lambda r: r.series("nc4")),
)


def convergence_figure(summary: ReportSummary) -> Figure:
    """Figure 1: error and NC metrics against epoch, one line per setting."""
    runs = [r for g in summary.groups for r in g.runs]
    panels = [p for p in CONVERGENCE_PANELS if any(np.isfinite(p[2](r)).any() for r in runs)]
    colors = group_colors([g.key for g in summary.groups])
    ncols = 3
    nrows = max(1, -(-len(panels) // ncols))
    fig = Figure(figsize=(4.2 * ncols, 3.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (_, title, fn) in zip(axes, panels, strict=False):
        values = [_plot_band(ax, g.runs, fn, colors[g.key], g.label) for g in summary.groups]
        set_value_scale(ax, np.concatenate(values))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both", lw=0.5)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"CE vs label smoothing: convergence ({BAND_NOTE})", fontsize=10)
    return fig


def trajectory_figure(summary: ReportSummary) -> Figure:
    """Figure 2: x = nc2_wh, y = nc1 (log) along training; colour = test error; marker per
    setting; the final epoch is drawn larger."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    keys = [g.key for g in summary.groups]
    colors, markers = group_colors(keys), _markers(keys)
    all_err = np.concatenate([r.test_error() for g in summary.groups for r in g.runs])
    finite = all_err[np.isfinite(all_err)]
    norm = Normalize(
        float(finite.min()) if finite.size else 0.0, float(finite.max()) if finite.size else 1.0
    )
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(7.0, 5.2), layout="constrained")
    ax = fig.subplots()
    for g in summary.groups:
        for run in g.runs:
            x, y, c = run.series("nc2_wh"), run.series("nc1"), run.test_error()
            ok = np.isfinite(x) & np.isfinite(y) & (y > 0)
            ax.plot(x[ok], y[ok], color=colors[g.key], lw=0.8, alpha=0.6)
            style = dict(cmap=cmap, norm=norm, marker=markers[g.key], edgecolors=colors[g.key])
            ax.scatter(x[ok], y[ok], c=c[ok], s=22, linewidths=0.6, **style)
            if ok.any():  # the final epoch's point, larger
                last = np.flatnonzero(ok)[-1]
                ax.scatter([x[last]], [y[last]], c=[c[last]], s=110, linewidths=1.6, **style)
    ax.set_yscale("log")
    ax.set_xlabel("NC2 (nc2_wh)")
    ax.set_ylabel("NC1 (log)")
    ax.grid(alpha=0.3, which="both", lw=0.5)
    handles = [
        Line2D(
            [],
            [],
            color=colors[k],
            marker=markers[k],
            lw=0.8,
            markerfacecolor="white",
            label=k.label,
        )
        for k in keys
    ]
    ax.legend(
        handles=handles, fontsize=8, title="setting (large marker: final epoch)", title_fontsize=8
    )
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="test error")
    ax.set_title("NC1 vs NC2 trajectories (every seed)", fontsize=10)
    return fig


def _matched_band(runs: Sequence[RunData], levels: np.ndarray) -> np.ndarray:
    return np.array([matched_nc2(r.series("nc1"), r.series("nc2_wh"), levels) for r in runs])


def matched_figure(summary: ReportSummary) -> Figure:
    """Figure 3: left, nc2_wh at each NC1 level per setting (seed mean, min-max band, first
    crossing); right, LS - CE difference on the NC1 range shared with CE."""
    colors = group_colors([g.key for g in summary.groups])
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for g in summary.groups:
        span = covered_range(g.runs)
        if span is None:
            continue
        levels = log_levels(*span, 80)
        band = _matched_band(g.runs, levels)
        left.plot(levels, band.mean(0), color=colors[g.key], lw=1.6, label=g.label)
        if len(g.runs) > 1:
            left.fill_between(
                levels, band.min(0), band.max(0), color=colors[g.key], alpha=0.2, lw=0
            )
    left.set_xscale("log")
    log_ticks(left.xaxis, [g.runs for g in summary.groups])
    left.invert_xaxis()
    left.set_xlabel("NC1 level (first crossing; training proceeds to the right)")
    left.set_ylabel("NC2 (nc2_wh) at that NC1")
    left.legend(fontsize=8)
    left.grid(alpha=0.3, which="both", lw=0.5)
    ce = summary.ce
    right.axhline(0.0, color="black", lw=0.8)
    for m in summary.matched:
        if m.nc1_range is None or ce is None:
            continue
        key = next(g.key for g in summary.groups if g.label == m.label)
        ls_runs = next(g.runs for g in summary.groups if g.label == m.label)
        levels = log_levels(*m.nc1_range, 80)
        diff = _matched_band(ls_runs, levels).mean(0) - _matched_band(ce.runs, levels).mean(0)
        right.plot(levels, diff, color=colors[key], lw=1.6, label=f"{m.label} − CE")
        right.plot(m.levels, m.ls_nc2 - m.ce_nc2, ls="none", marker="o", color=colors[key], ms=4)
    right.set_xscale("log")
    log_ticks(right.xaxis, [g.runs for g in summary.groups])
    right.invert_xaxis()
    right.set_xlabel("NC1 level (range shared with CE)")
    right.set_ylabel("Δ NC2 = LS − CE (below 0: LS lower)")
    right.grid(alpha=0.3, which="both", lw=0.5)
    if summary.matched:
        right.legend(fontsize=8)
    fig.suptitle(f"Matched-NC1 comparison ({BAND_NOTE}; dots: table levels)", fontsize=10)
    return fig


def log_ticks(axis: object, run_groups: Sequence[Sequence[RunData]] | None = None) -> None:
    """Readable labels on a log axis at any range: plain numbers (0.05, not 5×10⁻²) at 1, 2, 5
    of each decade over less than two decades, at the decades over more, and no minor-tick
    labels (matplotlib labels minor ticks on short ranges, where they collide). The range is
    the NC1 range the runs cover when ``run_groups`` is given, else the axis' view."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())  # type: ignore[attr-defined]
    if run_groups is not None:
        spans = [s for s in (covered_range(runs) for runs in run_groups) if s is not None]
        if spans:
            lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    decades = float(np.log10(hi / lo)) if lo > 0 and hi > lo else 1.0
    subs: tuple[float, ...] = (1.0, 2.0, 5.0) if decades < 2.0 else (1.0,)
    if decades < 0.5:
        subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
    axis.set_major_locator(LogLocator(base=10.0, subs=subs))  # type: ignore[attr-defined]
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # type: ignore[attr-defined]
    axis.set_minor_formatter(NullFormatter())  # type: ignore[attr-defined]


def _pooled_eval_logits(g: GroupSummary, scaled: bool) -> tuple[np.ndarray, np.ndarray] | None:
    zs, ys = [], []
    for run, cal in zip(g.runs, g.per_run_calibration, strict=True):
        if cal is None or run.test_logits is None or run.test_labels is None:
            continue
        z = run.test_logits[cal.eval_idx]
        zs.append(z / cal.temperature if scaled else z)
        ys.append(run.test_labels[cal.eval_idx])
    return (np.concatenate(zs), np.concatenate(ys)) if zs else None


def calibration_figure(summary: ReportSummary) -> Figure | None:
    """Figure 4: reliability diagrams per setting, before (top) and after (bottom) temperature
    scaling, on the evaluation half of the test set, seeds pooled. None without predictions."""
    from nclab.calibration import reliability_bins

    groups = [g for g in summary.groups if _pooled_eval_logits(g, False) is not None]
    if not groups:
        return None
    colors = group_colors([g.key for g in summary.groups])
    fig = Figure(figsize=(max(3.3 * len(groups), 6.6), 8.6), layout="constrained")
    # per state (before / after TS): the diagram, and under it the samples per bin
    axes = fig.subplots(
        4, len(groups), squeeze=False, sharex=True, gridspec_kw={"height_ratios": [3, 1, 3, 1]}
    )
    for col, g in enumerate(groups):
        for state, (scaled, when, key) in enumerate(
            ((False, "before TS", "ece_raw"), (True, "after TS", "ece_ts"))
        ):
            ax, counts = axes[2 * state, col], axes[2 * state + 1, col]
            z, y = _pooled_eval_logits(g, scaled)  # type: ignore[misc]
            bins = reliability_bins(z, y)
            width = np.diff(bins.edges)
            centers = bins.edges[:-1] + width / 2
            acc = np.nan_to_num(bins.accuracy)
            ax.bar(centers, acc, width=width, color=colors[g.key], alpha=0.75,
                   edgecolor="white", label="accuracy per bin")  # fmt: skip
            ax.plot(bins.confidence, bins.accuracy, "o", color="tab:red", ms=3,
                    label="(mean confidence, accuracy)")  # fmt: skip
            ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="perfect calibration")
            stat = g.calibration[key]
            text = f"ECE {stat.mean:.4f}" + (f" ± {stat.std:.4f}" if stat.n > 1 else "")
            if scaled:
                t = g.calibration["temperature"]
                text += f", T = {t.mean:.3g}"
            ax.set_title(f"{g.label} — {when}\n{text}", fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.tick_params(labelbottom=False)
            counts.bar(centers, bins.count, width=width, color="gray", edgecolor="white")
            counts.yaxis.set_major_locator(MaxNLocator(2, integer=True))
            counts.tick_params(labelsize=7)
            counts.grid(alpha=0.3, axis="y", lw=0.5)
            if col == 0:
                ax.set_ylabel("accuracy")
                counts.set_ylabel("samples", fontsize=8)
            if state == 1:
                counts.set_xlabel("confidence")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    # outside every diagram: a legend inside one would cover a bin
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle(
        textwrap.fill(
            "Reliability (15 bins; grey: samples per bin): T fitted on one half "
            "of the test set, ECE on the other half; seeds pooled, ECE mean ± std over seeds",
            int(fig.get_figwidth() * 13),
        ),
        fontsize=9,
    )
    return fig


def norms_figure(summary: ReportSummary) -> Figure | None:
    """Figure 5: w_norm and h_norm against epoch; UFM closed-form values (ufm_w_norm,
    ufm_h_norm, UFM-penalty mode) as dashed horizontal lines. None when norms are not logged."""
    runs = [r for g in summary.groups for r in g.runs]
    if not any(r.has("w_norm") or r.has("h_norm") for r in runs):
        return None
    colors = group_colors([g.key for g in summary.groups])
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title in (
        (axes[0], "w_norm", r"mean $\|w_k\|$"),
        (axes[1], "h_norm", r"mean $\|h_k - h_G\|$ (class means)"),
    ):
        for g in summary.groups:
            _plot_band(ax, g.runs, lambda r, k=key: r.series(k), colors[g.key], g.label)
            ufm = np.concatenate([r.series(f"ufm_{key}") for r in g.runs])
            ufm = ufm[np.isfinite(ufm)]
            if ufm.size:
                ax.axhline(float(ufm[-1]), color=colors[g.key], ls="--", lw=1.0)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, lw=0.5)
    handles, labels = axes[0].get_legend_handles_labels()
    if any(r.has("ufm_w_norm") for r in runs):
        handles.append(Line2D([], [], color="gray", ls="--"))
        labels.append("UFM closed form")
    axes[0].legend(handles, labels, fontsize=8)
    fig.suptitle(f"Norms ({BAND_NOTE})", fontsize=10)
    return fig


def _delta_color(delta: float, summary: ReportSummary) -> tuple[float, ...]:
    colors = group_colors([g.key for g in summary.groups])
    for key, color in colors.items():
        if (key.is_ce and delta == 0.0) or (key.is_ls and key.smoothing == delta):
            return color
    return (0.4, 0.4, 0.4, 1.0)


def _thinned(curve: ConvergenceCurve, points: int = 400) -> ConvergenceCurve:
    """At most ``points`` log-spaced iterations of a GD curve (plots stay light)."""
    n = curve.iteration.size
    if n <= points or curve.nc1.size != n:
        return curve
    idx = np.unique(np.concatenate([[0], np.geomspace(1, n - 1, points).astype(int)]))
    return replace(
        curve,
        iteration=curve.iteration[idx],
        relative_gap=curve.relative_gap[idx],
        nc_iteration=curve.nc_iteration[idx],
        nc1=curve.nc1[idx],
    )


#: Line styles and markers of the UFM GD curves, one per δ (colour alone does not tell
#: overlapping curves apart).
LINE_STYLES = ("-", "--", "-.", ":")
GD_MARKERS = ("o", "s", "^", "D", "v", "P")


def ufm_figure(panel: TheoryPanel, summary: ReportSummary) -> Figure:
    """Figure 6: closed-form UFM quantities against δ (runs' δ marked) and GD curves."""
    fig = Figure(figsize=(13.0, 7.0), layout="constrained")
    axes = fig.subplots(2, 3)
    specs = (
        (axes[0, 0], "logit_gap", r"logit gap $g^*$ (true − other)"),
        (axes[0, 1], "p_true", r"$p^*$ (softmax prob. of the true class)"),
    )
    _conditioning_panel(axes[0, 2], panel)
    for ax, name, title in specs:
        ax.plot(panel.delta_grid, panel.grid[name], color="gray", lw=1.2)
        for row in panel.at_runs:
            ax.plot(
                row["smoothing"],
                row[name],
                "o",
                color=_delta_color(row["smoothing"], summary),
                ms=7,
                label=f"δ={row['smoothing']:g}: {row[name]:.4g}",
            )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("δ")
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend(fontsize=7)
    ax = axes[1, 0]
    ax.plot(panel.delta_grid, panel.grid["w_norm"], label=r"$\|w_k\|$", color="tab:blue")
    ax.plot(
        panel.delta_grid, panel.grid["h_norm"], label=r"$\|h_{k,i}\|$", color="tab:orange", ls="--"
    )
    ax.set_yscale("log")
    ax.set_xlabel("δ")
    ax.set_title("closed-form norms", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both", lw=0.5)
    gap_ax, nc_ax = axes[1, 1], axes[1, 2]
    for i, curve in enumerate(panel.curves):
        curve = _thinned(curve)
        # colour, line style and marker: CE and LS stay apart where the curves overlap
        style = {
            "color": _delta_color(curve.smoothing, summary),
            "ls": LINE_STYLES[i % len(LINE_STYLES)],
            "marker": GD_MARKERS[i % len(GD_MARKERS)],
            "ms": 4,
            "markevery": (0.03 * (i % 3), 0.1),  # staggered: markers of equal curves apart
            "lw": 1.6 if curve.smoothing == 0 else 1.3,
            "label": "CE" if curve.smoothing == 0 else f"LS δ={curve.smoothing:g}",
        }
        ok = np.isfinite(curve.relative_gap) & (curve.relative_gap > 0)
        gap_ax.plot(curve.iteration[ok], curve.relative_gap[ok], **style)
        ok = np.isfinite(curve.nc1) & (curve.nc1 > 0)
        nc_ax.plot(curve.nc_iteration[ok], curve.nc1[ok], **style)
    for ax, title in ((gap_ax, "GD: relative objective gap (f − f*)/|f*|"), (nc_ax, "GD: NC1")):
        ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=10.0)
        ax.set_xlim(left=0)
        ax.set_xlabel("GD iteration")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both", lw=0.5)
        if panel.curves:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "GD curves unavailable", ha="center", transform=ax.transAxes)
    lam = rf"$\lambda_W$={panel.lambda_w:g}, $\lambda_H$={panel.lambda_h:g}" + (
        rf", $\lambda_b$={panel.lambda_b:g}" if panel.lambda_b is not None else ""
    )
    source = "runs' UFM penalties" if panel.ufm_mode else "default, not the runs' penalties"
    cs = panel.convergence_settings
    gd = (
        (
            f"GD: K={cs.get('num_classes')}, n={cs.get('n_per_class')}, d={cs.get('dim')}, "
            f"λ={cs.get('lambda_w')}, step {cs.get('lr')}"
        )
        if cs
        else ""
    )
    fig.suptitle(
        f"UFM theory: K={panel.num_classes}, n={panel.n_per_class}, {lam} ({source}). {gd}",
        fontsize=9,
    )
    return fig


def _conditioning_panel(ax: Axes, panel: TheoryPanel) -> None:
    """Claim (f)'s measures against δ: condition numbers of the full Hessian (symmetry and
    bias-shift directions excluded), of its W and H blocks (deciding) and κ_logit (dashed: lower
    under LS by construction, never deciding)."""
    rows = [r for r in panel.hessian if r.get("hessian_ratio") is not None]
    series = (
        ("hessian_ratio", "full Hessian", "-o"),
        ("w_block_ratio", "W block", "-s"),
        ("h_block_ratio", "H block", "-^"),
    )
    for key, label, style in series:
        if rows:
            ax.plot([r["smoothing"] for r in rows], [r[key] for r in rows], style, label=label)
    ax.plot(panel.delta_grid, panel.grid["kappa_logit"], "--", color="gray", lw=1.0,
            label=r"$\kappa_{\rm logit}$ (by construction)")  # fmt: skip
    ax.set_yscale("log")
    ax.set_title("condition numbers at the minimizer (claim (f))", fontsize=9)
    ax.set_xlabel("δ")
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.legend(fontsize=7)


def forest_figure(summary: ReportSummary) -> Figure | None:
    """Every verdict in one figure: one panel per claim, one row per δ with the claim's first
    deciding measure's mean paired difference LS − CE and its 95% interval (Student t over
    seeds), the line of no effect (and the non-inferiority margin of claim (e)); the side where
    the claim holds is shaded. Computed claims (f) have no interval."""
    verdicts = [v for v in summary.verdicts if any(d.headline for d in v.per_delta)]
    if not verdicts:
        return None
    keys = [g.key for g in summary.groups]
    colors = group_colors(keys)
    by_label = {k.label: colors[k] for k in keys}
    ncols = min(3, len(verdicts))
    nrows = -(-len(verdicts) // ncols)
    fig = Figure(figsize=(4.4 * ncols, 0.9 + 1.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, v in zip(axes, verdicts, strict=False):
        rows = [d for d in v.per_delta if d.headline is not None]
        # one measure per panel (the claim's first deciding one), so every row shares its unit
        first = [next(m for m in d.measures if m.measure.decides) for d in rows]
        measure = first[0].measure
        span = [measure.threshold, 0.0]
        for i, (d, h) in enumerate(zip(rows, first, strict=True)):
            y = len(rows) - 1 - i
            color = by_label.get(d.label, (0.3, 0.3, 0.3, 1.0))
            if h.effect is None:
                ax.text(
                    0.5,
                    y,
                    f"{d.label}: {d.verdict}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    transform=ax.get_yaxis_transform(),
                )
                continue
            if h.ci_low is not None and h.ci_high is not None:
                ax.errorbar(
                    h.effect,
                    y,
                    xerr=[[h.effect - h.ci_low], [h.ci_high - h.effect]],
                    fmt="o",
                    color=color,
                    capsize=4,
                    ms=6,
                )
                span += [h.ci_low, h.ci_high]
            else:
                ax.plot(h.effect, y, "D" if h.computed else "o", color=color, ms=6)
            per_seed = [x for x in h.differences if x is not None]
            if len(per_seed) > 1:
                ax.plot(per_seed, [y - 0.18] * len(per_seed), "|", color=color, ms=6, alpha=0.7)
            span += [h.effect, *per_seed]
        lo, hi = min(span), max(span)
        pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
        ax.set_xlim(lo - pad, hi + pad)
        ax.axvline(0.0, color="black", lw=0.9)
        if measure.threshold != 0.0:
            ax.axvline(measure.threshold, color="black", lw=0.9, ls="--")
        if measure.better == "lower":
            ax.axvspan(lo - pad, measure.threshold, color="tab:green", alpha=0.07, lw=0)
        else:
            ax.axvspan(measure.threshold, hi + pad, color="tab:green", alpha=0.07, lw=0)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{d.label}\n{d.verdict}" for d in reversed(rows)], fontsize=7)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlabel(f"LS − CE: {measure.unit}", fontsize=8)
        ax.set_title(textwrap.fill(f"({v.claim}) {measure.description}", 48), fontsize=8)
        ax.grid(alpha=0.3, lw=0.5, axis="x")
    for ax in axes[len(verdicts) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Paired effects LS − CE per claim and δ: dot = mean over seeds, bar = 95% t interval, "
        "ticks = single seeds, diamond = exact UFM computation; green side = the claim's "
        "direction",
        fontsize=9,
    )
    return fig


# ----------------------------------------------------------------- the paper's other figures


def _curve_panels(
    summary: ReportSummary,
    panels: Sequence[tuple[str, Callable[[RunData], np.ndarray]]],
    title: str,
    ncols: int = 3,
) -> Figure | None:
    """One panel per ``(title, fn)`` that some run has values for (mean line, min–max band per
    setting); None when no panel has any."""
    runs = [r for g in summary.groups for r in g.runs]
    shown = [p for p in panels if any(np.isfinite(p[1](r)).any() for r in runs)]
    if not shown:
        return None
    colors = group_colors([g.key for g in summary.groups])
    ncols = min(ncols, len(shown))
    nrows = -(-len(shown) // ncols)
    width = max(4.2 * ncols, 6.4)
    fig = Figure(figsize=(width, 3.3 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, fn) in zip(axes, shown, strict=False):
        values = [_plot_band(ax, g.runs, fn, colors[g.key], g.label) for g in summary.groups]
        set_value_scale(ax, np.concatenate(values))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both", lw=0.5)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    # wrapped to the figure's width (a title wider than the figure is cut off)
    fig.suptitle(textwrap.fill(f"{title} ({BAND_NOTE})", int(width * 12)), fontsize=10)
    return fig


def loss_convergence_figure(summary: ReportSummary) -> Figure | None:
    """The paper's loss-convergence figure: log(loss − min loss + ε) of the training loss per
    epoch (ε relative to each run's initial excess loss, :func:`loss_convergence`)."""
    from nclab.report.verdicts import LOSS_EPS_REL, loss_convergence

    return _curve_panels(
        summary,
        [
            (
                f"log(train loss − min + ε), ε = {LOSS_EPS_REL:g}·(loss₀ − min)",
                lambda r: loss_convergence(r.series("train_loss")),
            )
        ],
        "Training-loss convergence to each run's own minimum",
    )


def test_nc_figure(summary: ReportSummary) -> Figure | None:
    """NC1-NC4 of the *test* features against epoch (class means of the training set for
    NC4's nearest-class-centre rule)."""
    return _curve_panels(
        summary,
        [
            ("test NC1", lambda r: r.series("test_nc1")),
            ("test NC2 (nc2_wh)", lambda r: r.series("test_nc2_wh")),
            ("test NC3", lambda r: r.series("test_nc3")),
            ("test NC4", lambda r: r.series("test_nc4")),
        ],
        "NC of the test features",
        ncols=4,
    )


def test_nc1_split_figure(summary: ReportSummary) -> Figure | None:
    """Per-epoch test NC1 of the correctly and of the incorrectly classified test samples, and
    the per-epoch ECE after temperature scaling (T fitted on the fit half of the test set, ECE
    on the other half)."""
    return _curve_panels(
        summary,
        [
            ("test NC1, correctly classified", lambda r: r.series("test_nc1_correct")),
            ("test NC1, incorrectly classified", lambda r: r.series("test_nc1_incorrect")),
            ("ECE after temperature scaling (eval half)", lambda r: r.series("ece_ts")),
        ],
        "Test NC1 by correctness and calibration after scaling",
    )


#: The δ-sweep panel is drawn when the comparison has at least this many δ values (CE = 0).
SWEEP_MIN_DELTAS = 3


def _sweep_points(g: GroupSummary, fn: Callable[[RunData], float | None]) -> list[float]:
    out = []
    for run in g.runs:
        v = fn(run)
        if v is not None and np.isfinite(v):
            out.append(float(v))
    return out


def delta_sweep_figure(summary: ReportSummary, panel: TheoryPanel | None) -> Figure | None:
    """Final quantities against δ (the paper's δ sweep): NC1, NC2, NC3, norms (with the UFM
    closed form over δ in UFM-penalty mode), test error, ECE before/after temperature scaling
    and the fitted T. Mean ± sample standard deviation over seeds. None with fewer than
    :data:`SWEEP_MIN_DELTAS` δ values."""
    groups = sorted(
        (g for g in summary.groups if g.key.is_ce or g.key.is_ls), key=lambda g: g.key.smoothing
    )
    if len({g.key.smoothing for g in groups}) < SWEEP_MIN_DELTAS:
        return None
    deltas = np.array([g.key.smoothing for g in groups])

    def final(key: str) -> Callable[[RunData], float | None]:
        return lambda r: r.final(key)

    def test_error(r: RunData) -> float | None:
        e = r.test_error()
        return None if not e.size else 100.0 * float(e[-1])

    def cal(g: GroupSummary, name: str) -> list[float]:
        return [float(getattr(c, name)) for c in g.per_run_calibration if c is not None]

    specs: list[tuple[str, list[tuple[str, list[list[float]]]], bool]] = [
        ("final NC1", [("", [_sweep_points(g, final("nc1")) for g in groups])], True),
        ("final NC2 (nc2_wh)", [("", [_sweep_points(g, final("nc2_wh")) for g in groups])], True),
        ("final NC3", [("", [_sweep_points(g, final("nc3")) for g in groups])], True),
        (
            "final norms",
            [
                (r"mean $\|w_k\|$", [_sweep_points(g, final("w_norm")) for g in groups]),
                (r"mean $\|h_k - h_G\|$", [_sweep_points(g, final("h_norm")) for g in groups]),
            ],
            True,
        ),
        ("final test error (%)", [("", [_sweep_points(g, test_error) for g in groups])], False),
        (
            "ECE (eval half)",
            [
                ("before scaling", [cal(g, "ece_raw") for g in groups]),
                ("after scaling (held-out T)", [cal(g, "ece_ts") for g in groups]),
                (
                    "after scaling (T by ECE on test, optimistic)",
                    [cal(g, "ece_ece_on_test") for g in groups],
                ),
            ],
            False,
        ),
        (
            "fitted temperature T",
            [
                ("NLL on the fit half", [cal(g, "temperature") for g in groups]),
                ("ECE on the test set", [cal(g, "temperature_ece_on_test") for g in groups]),
            ],
            False,
        ),
    ]
    fig = Figure(figsize=(16.0, 7.0), layout="constrained")
    axes = fig.subplots(2, 4).ravel()
    for ax, (title, series, log) in zip(axes, specs, strict=False):
        for i, (label, values) in enumerate(series):
            mean = np.array([np.mean(v) if v else np.nan for v in values])
            std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
            ax.errorbar(
                deltas, mean, yerr=std, marker=MARKERS[i], capsize=3, lw=1.2,
                label=label or None,
            )  # fmt: skip
        if title == "final norms" and panel is not None and panel.ufm_mode:
            ax.plot(panel.delta_grid, panel.grid["w_norm"], "--", color="C0", lw=1.0,
                    label=r"UFM closed form $\|w_k\|$")  # fmt: skip
            ax.plot(panel.delta_grid, panel.grid["h_norm"], "--", color="C1", lw=1.0,
                    label=r"UFM closed form $\|h\|$")  # fmt: skip
        values = np.concatenate([np.ravel(line.get_ydata()) for line in ax.get_lines()] or [[]])
        if log:
            set_value_scale(ax, values)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("δ (0 = CE)")
        ax.grid(alpha=0.3, which="both", lw=0.5)
        if any(label for label, _ in series) or title == "final norms":
            ax.legend(fontsize=7)
    axes[-1].set_visible(False)
    fig.suptitle(
        "δ sweep: final values against δ (mean ± sample std over seeds)"
        + ("; dashed: UFM closed form" if panel is not None and panel.ufm_mode else ""),
        fontsize=10,
    )
    return fig
