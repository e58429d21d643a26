"""Claims (a)-(c) and (f) decided the way Guo et al. (2024), "Cross Entropy versus Label
Smoothing: A Neural Collapse Perspective" (arXiv 2402.03979) mean them, on runs whose truth is
known: speed is not level, no verdict without a terminal phase, and (f) from definitions that
can come out against LS."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nclab.report.paired import FAILS, HOLDS, INCONCLUSIVE, UNDETERMINED
from nclab.report.runs import load_runs
from nclab.report.verdicts import (
    MIXED,
    epochs_to_fraction,
    loss_convergence,
    terminal_phase,
)
from tests.test_verdicts import verdicts_of, write_run

SEEDS = (0, 1, 2)


def test_same_rate_lower_level_is_not_faster(tmp_path):
    """LS's NC1 curve = CE's × 0.3 (same rate, lower level): (b) holds, (a) does not."""
    for seed in SEEDS:
        write_run(tmp_path, delta=0.0, seed=seed, rate=0.2 + 0.01 * seed)
        write_run(tmp_path, delta=0.1, seed=seed, rate=0.2 + 0.01 * seed, nc1_scale=0.3)
    v = verdicts_of(tmp_path)
    assert v["b"].per_delta[0].status == HOLDS
    a = v["a"].per_delta[0]
    assert a.status != HOLDS, a.text
    nc1 = next(m for m in a.measures if m.measure.key == "nc1_speed")
    assert max(abs(x) for x in nc1.differences) <= 1  # same rate: the same epoch (± noise)
    level = next(m for m in a.measures if m.measure.key == "nc1_curve")
    assert not level.measure.decides and level.effect == pytest.approx(math.log10(0.3), abs=0.02)


def test_reaching_the_plateau_sooner_is_faster(tmp_path):
    """LS at rate 0.4 reaches its own plateau clearly sooner than CE at 0.15: (a) holds, even
    when LS ends at a *higher* level (level is (b)'s business)."""
    for seed in SEEDS:
        write_run(tmp_path, delta=0.0, seed=seed, rate=0.15 + 0.01 * seed)
        write_run(tmp_path, delta=0.1, seed=seed, rate=0.4 + 0.01 * seed, floor=0.1)
    v = verdicts_of(tmp_path)
    a = v["a"].per_delta[0]
    assert a.status == HOLDS, a.text
    for key in ("nc1_speed", "loss_speed"):
        m = next(m for m in a.measures if m.measure.key == key)
        assert m.measure.decides and m.ci_high < 0
    assert v["b"].per_delta[0].status == FAILS  # LS ends higher


def test_slower_ls_does_not_hold(tmp_path):
    for seed in SEEDS:
        write_run(tmp_path, delta=0.0, seed=seed, rate=0.4 + 0.01 * seed)
        write_run(tmp_path, delta=0.1, seed=seed, rate=0.15 + 0.01 * seed)
    assert verdicts_of(tmp_path)["a"].per_delta[0].status == FAILS


@pytest.mark.parametrize("zero_at", [None, 29])
def test_no_terminal_phase_leaves_a_to_c_undetermined(tmp_path, zero_at):
    """Runs that never reach 100% training accuracy (or only in the last 2 of 30 epochs, < 10%)
    get no verdict on (a)-(c), with the reason; (d) and (e) are still judged."""
    for seed in SEEDS:
        write_run(tmp_path, delta=0.0, seed=seed, rate=0.15 + 0.01 * seed)
        write_run(
            tmp_path, delta=0.1, seed=seed, rate=0.4, zero_at=99 if zero_at is None else zero_at
        )
    v = verdicts_of(tmp_path)
    for claim in "abc":
        assert v[claim].status == UNDETERMINED
        assert v[claim].verdict == "undetermined (no terminal phase)"
        d = v[claim].per_delta[0]
        assert d.verdict == "undetermined (no terminal phase)"
        assert "LS δ=0.1 seed 0" in d.note and "CE seed" not in d.note
    assert v["e"].status != UNDETERMINED


def test_terminal_phase_rule(tmp_path):
    ok = write_run(tmp_path, delta=0.0, seed=0, zero_at=27)  # epochs 27..30: 4 >= 3
    short = write_run(tmp_path, delta=0.0, seed=1, zero_at=29)  # 2 < 3
    never = write_run(tmp_path, delta=0.0, seed=2, zero_at=99)
    runs = {r.seed: r for r in load_runs([tmp_path])}
    assert terminal_phase(runs[0]) is None
    assert "last 2 of 30 epochs" in terminal_phase(runs[1])
    assert "never 100%" in terminal_phase(runs[2])
    assert ok and short and never


def test_epochs_to_fraction_ignores_level():
    e = np.arange(1, 41, dtype=float)
    curve = np.log(2 * np.exp(-0.3 * e) + 0.01)
    first = epochs_to_fraction(e, curve)
    # direct: first epoch with curve[0] - curve >= 0.9 (curve[0] - curve[-1])
    direct = e[np.flatnonzero(curve[0] - curve >= 0.9 * (curve[0] - curve[-1]))[0]]
    assert first == direct
    assert epochs_to_fraction(e, curve + math.log(0.01)) == first
    assert epochs_to_fraction(e, np.full(40, 1.0)) is None  # no way to cover
    loss = 2.3 * np.exp(-0.2 * e) + 0.05
    c = loss_convergence(loss)
    eps = 1e-3 * (loss[0] - loss.min())
    assert np.allclose(c, np.log(loss - loss.min() + eps))
    assert np.allclose(loss_convergence(loss + 7.0), c)  # the level cancels


def test_indicative_holds_is_not_drawn_as_established(tmp_path):
    """Two seeds whose interval crosses zero: 'holds (2 seeds, indicative)' but never green."""
    from nclab.report import build_report

    for seed in (0, 1):
        write_run(tmp_path / "r", delta=0.0, seed=seed, rate=0.15 + 0.05 * seed, zero_at=10)
        write_run(tmp_path / "r", delta=0.1, seed=seed, rate=0.4, zero_at=10)
    result = build_report([tmp_path / "r"], tmp_path / "out", theory=False)
    text = result.html.read_text()
    assert "holds (2 seeds, indicative)" in text
    assert "class='holds'" not in text and "class='indicative'" in text
    data = json.loads(result.json.read_text())
    a = next(c for c in data["verdicts"] if c["claim"] == "a")
    assert a["indicative"]


def test_block_conditioning_matches_a_dense_autograd_hessian():
    """W- and H-block condition numbers (Lanczos on Hessian-vector products) equal those of
    the dense autograd Hessian's diagonal blocks; the full ratio with the symmetry and
    bias-shift directions excluded equals the dense method's."""
    import torch

    from nclab.ufm import UFMProblem, condition, minimizer
    from nclab.ufm.objective import objective_torch

    for delta in (0.0, 0.2):
        p = UFMProblem(
            num_classes=4, n_per_class=3, lambda_w=5e-3, lambda_h=5e-3, smoothing=delta, dim=4
        )
        x = torch.as_tensor(p.pack(*minimizer(p, seed=0)))
        hess = torch.autograd.functional.hessian(lambda z, p=p: objective_torch(p, z), x).numpy()
        kd, dn = p.num_classes * p.dim, p.dim * p.num_samples
        w = np.linalg.eigvalsh(hess[:kd, :kd])
        h = np.linalg.eigvalsh(hess[kd : kd + dn, kd : kd + dn])
        lanczos = condition(p, method="lanczos")
        dense = condition(p, method="dense")
        assert lanczos.w_block.ratio == pytest.approx(w[-1] / w[0], rel=1e-6)
        assert lanczos.h_block.ratio == pytest.approx(h[-1] / h[0], rel=1e-6)
        assert lanczos.ratio_excl_bias_shift == pytest.approx(dense.ratio_excl_bias_shift, rel=1e-5)


def test_theory_verdict_matches_nclab_ufm_condition_at_k10(tmp_path):
    """(f) at K = 10 from the report's full-Hessian numbers equals `nclab ufm condition` run with
    the report's K, n, d and λ, and the verdict follows the signs of its deciding measures."""
    import subprocess
    import sys

    from nclab.report.theory import theory_panel
    from nclab.report.verdicts import LSGroup, claim_theory

    runs_dir = tmp_path / "runs"
    for delta in (0.0, 0.1):
        run = write_run(runs_dir, delta=delta, seed=0)
        cfg = json.loads((run / "config.json").read_text())
        cfg.update(num_classes=10, per_class=20)
        (run / "config.json").write_text(json.dumps(cfg))
    runs = load_runs([runs_dir])
    for r in runs:
        r.test_logits = np.zeros((5, 10))
    panel = theory_panel(runs, max_iters=3000)
    assert panel.num_classes == 10 and panel.n_per_class == 20
    lb = panel.hessian[0]["lambda_b"]
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from nclab.cli import main; sys.exit(main())",
         "ufm", "condition", "-K", "10", "-n", "20", "-d", "9", "--lambda-w",
         repr(panel.lambda_w), "--lambda-h", repr(panel.lambda_h), "--lambda-b", repr(lb),
         "--smoothing", "0", "0.1", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    cli = json.loads(out.stdout)
    cli = cli if isinstance(cli, list) else cli.get("results", cli.get("rows"))
    by_delta = {round(r["smoothing"], 9): r for r in cli}
    for row in panel.hessian:
        ref = by_delta[round(row["smoothing"], 9)]
        assert row["hessian_ratio"] == pytest.approx(ref["ratio_excl_bias_shift"], rel=1e-6)
        assert row["w_block_ratio"] == pytest.approx(ref["w_block"]["ratio"], rel=1e-6)
        assert row["h_block_ratio"] == pytest.approx(ref["h_block"]["ratio"], rel=1e-6)
    ce = [r for r in runs if r.group.is_ce]
    ls = [LSGroup("LS δ=0.1", 0.1, [r for r in runs if r.group.is_ls])]
    d = claim_theory(ce, ls, panel).per_delta[0]
    deciding = [m for m in d.measures if m.measure.decides]
    signs = {m.status for m in deciding}
    expected = (
        HOLDS if signs == {HOLDS} else FAILS if signs == {FAILS}
        else MIXED if {HOLDS, FAILS} <= signs else d.status
    )  # fmt: skip
    assert d.status == expected
    hess = next(m for m in deciding if m.measure.key == "hessian_ratio")
    assert hess.status == (
        HOLDS if panel.hessian[1]["hessian_ratio"] < panel.hessian[0]["hessian_ratio"] else FAILS
    )
    assert d.status in (HOLDS, FAILS, MIXED, INCONCLUSIVE, UNDETERMINED)
