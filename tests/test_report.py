"""Tests of nclab.report: run loading, matched-NC1 interpolation, verdict logic, and the report
builder on small synthetic run directories whose numbers are recomputed here from the files."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from nclab.report import build_report, matched_nc2
from nclab.report.analysis import covered_range, nice_levels
from nclab.report.runs import load_run

K = 4
N_TEST = 400


def make_run(
    root: Path,
    *,
    loss: str,
    smoothing: float,
    seed: int,
    epochs: int = 24,
    rate: float = 0.3,
    zero_at: int | None = 10,
    blip: int | None = None,
    logit_scale: float = 3.0,
    ufm: bool = False,
    wrapped_config: bool = True,
) -> Path:
    """A fake run directory: config.json, metrics.jsonl with every documented key, predictions.npz
    and DONE. NC1 decays like exp(-rate·epoch) with multiplicative noise (so it is not monotone);
    the training accuracy reaches 1 at ``zero_at`` (never when None) and dips below 1 again at
    epoch ``blip``."""
    name = f"{loss}{smoothing:g}_seed{seed}"
    run = root / name
    run.mkdir(parents=True)
    rng = np.random.default_rng(1000 * seed + int(1000 * smoothing) + 7)
    config = {
        "dataset": "synthetic",
        "per_class": 50,
        "model": "mlp",
        "width": 16,
        "depth": 2,
        "loss": loss,
        "smoothing": smoothing,
        "seed": seed,
        "epochs": epochs,
        "lr": 0.1,
        "batch_size": 32,
        "weight_decay": 5e-4,
        "num_classes": K,
        "scheduler": "cosine",
        "ufm_penalties": ufm,
        "lambda_w": 1e-3,
        "lambda_h": 1e-3,
        "lambda_b": 1e-3,
    }
    (run / "config.json").write_text(
        json.dumps({"config": config, "versions": {"nclab": "test"}} if wrapped_config else config)
    )
    rows = []
    for e in range(1, epochs + 1):
        train_acc = 1.0 if zero_at is not None and e >= zero_at else min(0.99, 0.5 + 0.04 * e)
        if e == blip:
            train_acc = 0.999
        nc1 = 3.0 * math.exp(-rate * e) * (1.0 + 0.4 * rng.random())
        row = {
            "epoch": e,
            "lr": 0.1,
            "train_loss": 1.0 / e,
            "train_acc": train_acc,
            "test_loss": 1.2 / e,
            "test_acc": 0.6 + 0.2 * (1 - math.exp(-0.2 * e)),
            "ece": 0.05 + 0.01 * rng.random(),
            "nc1": nc1,
            "cdnv": nc1 / 2,
            "nc2_w": 0.5 * math.exp(-0.1 * e),
            "nc2_h": 0.6 * math.exp(-0.1 * e),
            "nc2_wh": 0.2 + 0.8 * math.exp(-(0.05 + smoothing) * e) + 0.02 * rng.random(),
            "nc3": 0.9 * math.exp(-0.08 * e),
            "nc4": 0.1 * math.exp(-0.1 * e),
            "ncc_acc": 0.9,
            "w_norm": 1.0 + 0.05 * e,
            "h_norm": 2.0 + 0.1 * e,
            "test_nc1": 2 * nc1,
            "test_ncc_acc": 0.8,
            "seconds": 0.01,
        }
        if ufm:
            row["ufm_w_norm"], row["ufm_h_norm"] = 2.5, 4.0
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = rng.integers(0, K, N_TEST)
    logits = rng.normal(size=(N_TEST, K))
    logits[np.arange(N_TEST), labels] += 1.5
    np.savez(run / "predictions.npz", test_logits=logit_scale * logits, test_labels=labels)
    (run / "DONE").write_text("done\n")
    return run


def make_runs(root: Path, *specs: Callable[[int], dict], seeds=(0, 1)) -> list[Path]:
    """One :func:`make_run` per seed and spec (``spec(seed)`` gives its other arguments), seed
    by seed in the order of ``specs``."""
    return [make_run(root, seed=seed, **spec(seed)) for seed in seeds for spec in specs]


#: The figures of the training curves and the UFM theory, in every report with a theory panel.
CURVE_AND_THEORY_FIGURES = (
    "compare_convergence",
    "compare_nc1_nc2",
    "compare_matched_nc1",
    "compare_calibration",
    "compare_norms",
    "compare_ufm",
)


# ------------------------------------------------------------------------- matched NC1


def test_matched_nc2_hand_computed_first_crossing():
    # CE: log10 nc1 goes 0 -> -1 -> -2 while nc2 goes 0.8 -> 0.6 -> 0.4.
    ce_nc1, ce_nc2 = np.array([1.0, 0.1, 0.01]), np.array([0.8, 0.6, 0.4])
    # LS: log10 nc1 goes 0 -> -2 -> -3 while nc2 goes 0.9 -> 0.5 -> 0.2.
    ls_nc1, ls_nc2 = np.array([1.0, 0.01, 0.001]), np.array([0.9, 0.5, 0.2])
    levels = np.array([10**-0.5, 10**-1.5, 0.01, 10**-2.5, 2.0, 1e-4])
    ce = matched_nc2(ce_nc1, ce_nc2, levels)
    ls = matched_nc2(ls_nc1, ls_nc2, levels)
    # By hand: CE at 10^-0.5 is halfway along the first segment: 0.8 - 0.5*0.2 = 0.7;
    # at 10^-1.5 halfway along the second: 0.5; at 0.01 the last point: 0.4; beyond: NaN.
    np.testing.assert_allclose(ce[:3], [0.7, 0.5, 0.4], rtol=1e-12)
    assert np.isnan(ce[3:]).all()
    # LS at 10^-0.5: a quarter of the way along [0, -2]: 0.9 - 0.25*0.4 = 0.8; at 10^-1.5:
    # three quarters: 0.9 - 0.75*0.4 = 0.6; at 0.01: 0.5; at 10^-2.5 halfway [−2, −3]: 0.35.
    np.testing.assert_allclose(ls[:4], [0.8, 0.6, 0.5, 0.35], rtol=1e-12)
    assert np.isnan(ls[4:]).all()  # 2.0 is above nc1_0, 1e-4 below the minimum


def test_matched_nc2_non_monotone_uses_first_crossing():
    nc1 = np.array([1.0, 0.1, 0.5, 0.01])
    nc2 = np.array([1.0, 0.0, 0.9, 0.3])
    # Level 0.2 is crossed on the first segment (1 -> 0.1), not again on (0.5 -> 0.01):
    # f = log(1/0.2) / log(1/0.1) = log10(5).
    value = matched_nc2(nc1, nc2, np.array([0.2]))[0]
    assert value == pytest.approx(1.0 - math.log10(5.0))
    # Level 0.05 is only reached on the last segment (0.5 -> 0.01), since 0.1 > 0.05:
    f = math.log(0.5 / 0.05) / math.log(0.5 / 0.01)
    assert matched_nc2(nc1, nc2, np.array([0.05]))[0] == pytest.approx(0.9 + f * (0.3 - 0.9))
    # NaN rows are ignored.
    with_nan = matched_nc2(np.array([1.0, np.nan, 0.1]), np.array([1.0, 5.0, 0.0]), [10**-0.5])
    assert with_nan[0] == pytest.approx(0.5)


def test_nice_levels_and_covered_range(tmp_path):
    np.testing.assert_allclose(nice_levels(0.004, 0.3), [0.2, 0.1, 0.05, 0.02, 0.01, 0.005])
    np.testing.assert_allclose(nice_levels(0.3, 0.4), [0.4, math.sqrt(0.12), 0.3])
    a = load_run(make_run(tmp_path, loss="ce", smoothing=0.0, seed=0))
    b = load_run(make_run(tmp_path, loss="ls", smoothing=0.1, seed=0, rate=0.5))
    lo, hi = covered_range([a, b])
    nc1_a, nc1_b = a.series("nc1"), b.series("nc1")
    assert lo == pytest.approx(max(nc1_a.min(), nc1_b.min()))
    assert hi == pytest.approx(min(nc1_a[0], nc1_b[0]))


# ------------------------------------------------------------------------- builder


def _independent_stats(run_dir: Path) -> dict[str, float | None]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = lambda cond: next((r["epoch"] for r in rows if cond(r)), None)  # noqa: E731
    not_perfect = [r["epoch"] for r in rows if r["train_acc"] != 1.0]
    stable = (
        (not_perfect[-1] + 1 if not_perfect else rows[0]["epoch"])
        if rows[-1]["train_acc"] == 1.0
        else None
    )
    return {
        "zero_train_error": first(lambda r: r["train_acc"] == 1.0),
        "zero_train_error_stable": stable,
        "nc1_below_0.1": first(lambda r: r["nc1"] < 0.1),
        "nc1_below_0.01": first(lambda r: r["nc1"] < 0.01),
        **{k: rows[-1][k] for k in ("nc1", "nc2_wh", "nc3", "nc4", "test_acc", "ece")},
    }


def _numpy_ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for b in range(n_bins):
        sel = (conf > b / n_bins) & (conf <= (b + 1) / n_bins)
        if sel.any():
            total += sel.mean() * abs((pred[sel] == labels[sel]).mean() - conf[sel].mean())
    return total


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    dirs = make_runs(
        root / "runs",
        lambda seed: dict(loss="ce", smoothing=0.0, zero_at=12, logit_scale=4.0, ufm=True),
        lambda seed: dict(
            loss="ls",
            smoothing=0.05,
            zero_at=9,
            rate=0.4,
            blip=14 if seed else None,
            logit_scale=1.5,
            ufm=True,
            wrapped_config=bool(seed),
        ),
        lambda seed: dict(
            loss="ls", smoothing=0.1, zero_at=None if seed else 8, rate=0.2, ufm=True
        ),
    )
    result = build_report([root], root / "report", ufm_max_iters=200)
    return root, dirs, result


def test_report_writes_every_file(study):
    root, dirs, result = study
    expected = {
        "compare_forest",
        *CURVE_AND_THEORY_FIGURES,
        # the paper's figures: loss convergence, test-feature NC, the δ sweep (3 δ values here)
        "compare_loss_convergence",
        "compare_test_nc",
        "compare_delta_sweep",
    }
    assert set(result.figures) == expected
    for paths in result.figures.values():
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        for p in paths:
            assert p.is_file() and p.stat().st_size > 1000, p
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = result.html.read_text()
    assert page.count("data:image/png;base64,") == len(expected)
    assert "src='http" not in page and '<img src="' not in page  # nothing external
    assert sorted(result.run_dirs) == sorted(d.resolve() for d in dirs)
    md = result.markdown.read_text()
    for claim in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)"):
        assert claim in md and claim in page
    assert json.loads(result.json.read_text())["groups"][0]["label"] == "CE"


def test_summary_numbers_match_metrics_files(study):
    root, dirs, result = study
    groups = {g.label: g for g in result.summary.groups}
    assert list(groups) == ["CE", "LS δ=0.05", "LS δ=0.1"]
    expected = {"CE": dirs[0::3], "LS δ=0.05": dirs[1::3], "LS δ=0.1": dirs[2::3]}
    for label, run_dirs in expected.items():
        indep = [_independent_stats(d) for d in run_dirs]
        g = groups[label]
        for key in (
            "zero_train_error",
            "zero_train_error_stable",
            "nc1_below_0.1",
            "nc1_below_0.01",
        ):
            values = [s[key] for s in indep]
            assert list(g.milestones[key].values) == values, (label, key)
            if label == "LS δ=0.05" and key == "zero_train_error_stable":
                assert values == [9, 15]  # seed 1 dips at epoch 14: stays perfect from 15
            if None in values:
                assert g.milestones[key].comparable == math.inf
        for key in ("nc1", "nc2_wh", "nc3", "nc4", "test_acc", "ece"):
            values = np.array([s[key] for s in indep])
            assert g.finals[key].mean == pytest.approx(values.mean(), rel=1e-12)
            assert g.finals[key].std == pytest.approx(values.std(ddof=1), rel=1e-9)
        # calibration on the evaluation half, recomputed with a plain numpy ECE
        from nclab.calibration import split_for_temperature

        for run_dir, cal in zip(run_dirs, g.per_run_calibration, strict=True):
            with np.load(run_dir / "predictions.npz") as p:
                z, y = p["test_logits"], p["test_labels"]
            fit, ev = split_for_temperature(len(y), 0.5, seed=0)
            assert cal.ece_raw == pytest.approx(_numpy_ece(z[ev], y[ev]), abs=1e-12)
            assert cal.ece_ts == pytest.approx(
                _numpy_ece(z[ev] / cal.temperature, y[ev]), abs=1e-12
            )
            # T minimises the fit-half NLL: a grid search agrees to 2 significant digits
            grid = np.geomspace(0.1, 10, 2001)
            nll = [
                np.mean(np.log(np.exp(z[fit] / t).sum(1)) - z[fit][np.arange(len(fit)), y[fit]] / t)
                for t in grid
            ]
            assert cal.temperature == pytest.approx(grid[int(np.argmin(nll))], rel=0.01)
    md = result.markdown.read_text()
    ce_nc1 = groups["CE"].finals["nc1"]
    assert f"{ce_nc1.mean:.3g} ± {ce_nc1.std:.2g}" in md
    assert "never (1/2 reached" in md  # LS δ=0.1 seed 1 never reaches zero training error


def test_verdicts_follow_the_numbers(study):
    """Paired per-seed differences recomputed from the files: final log10 NC ratios for (b), and
    censored milestone epochs for (a) (a run that never gets there counts as last epoch + 1)."""
    _, dirs, result = study
    verdicts = {v.claim: v for v in result.summary.verdicts}
    rows = {
        d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in dirs
    }
    ce = dirs[0::3]
    for d, ls in zip(verdicts["b"].per_delta, (dirs[1::3], dirs[2::3]), strict=True):
        measures = {m.measure.key: m for m in d.measures}
        for key in ("nc1", "nc2_wh"):
            expect = [
                math.log10(rows[b][-1][key] / rows[a][-1][key]) for a, b in zip(ce, ls, strict=True)
            ]
            assert measures[f"final_{key}"].differences == pytest.approx(tuple(expect), rel=1e-12)
        both = [
            max(x, y)
            for x, y in zip(
                measures["final_nc1"].differences, measures["final_nc2_wh"].differences, strict=True
            )
        ]
        assert d.headline.differences == pytest.approx(tuple(both), rel=1e-12)
        if d.label == "LS δ=0.1":  # its seed 1 never reaches 100% training accuracy (below)
            assert d.verdict.startswith("undetermined (no terminal phase)"), d.verdict
        else:
            assert d.indicative and "2 seeds, indicative" in d.verdict
    # LS δ=0.1 seed 1 never reaches zero training error (24 epochs): 25 - 12 = 13 epochs later.
    a = {d.label: d for d in verdicts["a"].per_delta}
    zero = next(m for m in a["LS δ=0.1"].measures if m.measure.key == "epochs_zero_train_error")
    assert zero.differences == (8 - 12, 25 - 12)
    for m in result.summary.matched:
        ok = np.isfinite(m.ce_nc2) & np.isfinite(m.ls_nc2)
        assert ok.any()
        lo, hi = m.nc1_range
        assert all(lo <= lvl <= hi for lvl in m.levels)


def test_report_cli_and_errors(tmp_path, study, capsys):
    from nclab.cli import main

    root, dirs, _ = study
    out = tmp_path / "rep"
    assert main(["report", str(dirs[0]), str(dirs[1]), "--out", str(out), "--quiet"]) == 0
    assert (out / "report.html").is_file() and (out / "summary.md").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no run directories"):
        build_report([empty], tmp_path / "x")
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "no run directories" in err and "nclab compare" in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_interrupted_and_resumed_logs(tmp_path):
    run = make_run(tmp_path, loss="ce", smoothing=0.0, seed=0, epochs=5)
    (run / "DONE").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    # a resume re-logs epoch 5 with a new value, and an interruption leaves a cut-off line
    redo = json.loads(lines[4]) | {"nc1": 123.0}
    (run / "metrics.jsonl").write_text("\n".join([*lines, json.dumps(redo), '{"epoch": 6, "nc']))
    data = load_run(run)
    assert data.epochs.tolist() == [1, 2, 3, 4, 5]
    assert data.final("nc1") == 123.0
    assert not data.complete
    assert any("not valid JSON" in w for w in data.warnings)


def test_theory_panel_gd_curves_only_for_small_k(tmp_path):
    """K = 4 gets GD curves for each δ; K = 100 (e.g. CIFAR-100) gets the closed form and a note
    saying how to compute its curves, instead of minutes of GD in the trivial regime."""
    from nclab.report.theory import MAX_CONVERGENCE_CLASSES, theory_panel

    small = theory_panel([load_run(make_run(tmp_path / "a", loss="ce", smoothing=0.0, seed=0))])
    assert small.num_classes == K and len(small.curves) == 1 and small.curves[0].nc1.size > 0

    run = make_run(tmp_path / "b", loss="ce", smoothing=0.0, seed=0)
    (run / "predictions.npz").unlink()
    raw = json.loads((run / "config.json").read_text())
    raw["config"]["num_classes"] = 100
    (run / "config.json").write_text(json.dumps(raw))
    big = theory_panel([load_run(run)])
    assert big.num_classes == 100 > MAX_CONVERGENCE_CLASSES
    assert big.curves == [] and any("nclab ufm convergence -K 100" in n for n in big.notes)
    assert big.at_runs[0]["logit_gap"] > 0
