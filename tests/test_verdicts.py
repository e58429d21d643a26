"""Verdicts from paired seeds on synthetic run directories whose truth is known.

Each fake run has NC1 decaying like ``2 exp(-rate·epoch) + floor`` towards its own plateau
(a higher rate reaches it sooner), a training loss of the same shape, NC2 tied to NC1 as
``nc2 = level · nc1^0.3`` (so at matched NC1 the NC2 ratio of two runs is their ``level`` ratio),
test predictions with a set accuracy and a set confidence (so the ECE is known in closed form),
and seed-dependent noise. The tests set LS clearly better, clearly worse or mixed, and check the
verdicts, the indicative marking, and the intervals against scipy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from nclab.report.paired import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    UNDETERMINED,
    Measure,
    differences,
    paired,
    sig,
    t_interval,
)
from nclab.report.runs import load_runs
from nclab.report.summary import summarize
from nclab.report.verdicts import ACCURACY, MIXED, PARTLY, combine

K = 4
N_TEST = 2000
EPOCHS = 30


def write_run(
    root: Path,
    *,
    delta: float,
    seed: int,
    rate: float = 0.2,
    nc2_level: float = 0.5,
    accuracy: float = 0.80,
    confidence: float = 0.80,
    zero_at: int = 12,
    floor: float = 0.02,
    nc1_scale: float = 1.0,
    epochs: int = EPOCHS,
) -> Path:
    """One fake run directory (config.json, metrics.jsonl, predictions.npz, DONE)."""
    loss = "ce" if delta == 0 else "ls"
    run = root / f"{loss}{delta:g}_seed{seed}"
    run.mkdir(parents=True)
    rng = np.random.default_rng(seed * 7919 + int(delta * 1000))
    config = {
        "dataset": "synthetic",
        "per_class": 50,
        "model": "mlp",
        "loss": loss,
        "smoothing": delta,
        "seed": seed,
        "epochs": epochs,
        "num_classes": K,
    }
    (run / "config.json").write_text(json.dumps(config))
    rows = []
    for e in range(1, epochs + 1):
        nc1 = nc1_scale * (2.0 * math.exp(-rate * e) + floor) * (1 + 0.02 * rng.random())
        rows.append(
            {
                "epoch": e,
                "train_loss": 2.3 * math.exp(-rate * e) + 0.05,
                "train_acc": 1.0 if e >= zero_at else 0.5 + 0.01 * e,
                "test_acc": accuracy,
                "nc1": nc1,
                "nc2_wh": nc2_level * nc1**0.3,
                "nc3": 0.1,
                "nc4": 0.0,
                "ece": 0.0,
            }
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = rng.integers(0, K, N_TEST)
    correct = rng.permutation(N_TEST) < round(accuracy * N_TEST)
    pred = np.where(correct, labels, (labels + 1 + rng.integers(0, K - 1, N_TEST)) % K)
    scale = math.log(confidence * (K - 1) / (1 - confidence))  # softmax max = confidence
    logits = scale * np.eye(K)[pred]
    np.savez(run / "predictions.npz", test_logits=logits, test_labels=labels)
    (run / "DONE").write_text("done\n")
    return run


def verdicts_of(root: Path) -> dict[str, object]:
    summary = summarize(load_runs([root]))
    return {v.claim: v for v in summary.verdicts}


def _study(root: Path, seeds, ls_better: dict[int, bool], accuracy_gap: float = 2.0) -> Path:
    """CE and LS δ=0.1 for ``seeds``; LS better (or worse) on every claim per seed."""
    for seed in seeds:
        jitter = 0.01 * seed
        write_run(root, delta=0.0, seed=seed, rate=0.2 + jitter, confidence=0.95 - jitter)
        good = ls_better[seed]
        write_run(
            root,
            delta=0.1,
            seed=seed,
            rate=(0.3 if good else 0.12) + jitter,
            nc2_level=0.3 if good else 0.8,
            accuracy=0.80 + (accuracy_gap if good else -accuracy_gap) / 100 + 0.001 * seed,
            confidence=(0.81 if good else 0.99) - jitter / 10,
            zero_at=8 if good else 16,
        )
    return root


@pytest.mark.parametrize("better", [True, False])
def test_clear_effects_in_every_seed_give_holds_or_does_not_hold(tmp_path, better):
    seeds = (0, 1, 2)
    verdicts = verdicts_of(_study(tmp_path, seeds, dict.fromkeys(seeds, better)))
    expected = HOLDS if better else FAILS
    for claim in "abcde":
        d = verdicts[claim].per_delta[0]
        assert d.status == expected, (claim, d.text)
        assert verdicts[claim].status == expected
        assert not d.indicative and d.verdict == expected
        h = d.headline
        assert h.n == 3 and h.supporting == (3 if better else 0)
        side = (h.ci_high < h.measure.threshold) == (h.measure.better == "lower")
        assert side == better, (claim, h.ci_low, h.ci_high)
    assert verdicts["f"].status == UNDETERMINED  # no theory panel given


def test_mixed_seeds_are_inconclusive(tmp_path):
    verdicts = verdicts_of(_study(tmp_path, (0, 1, 2), {0: True, 1: False, 2: True}))
    for claim in "abcde":
        d = verdicts[claim].per_delta[0]
        assert d.status == INCONCLUSIVE, (claim, d.text)
        assert d.headline.supporting == 2


def test_one_seed_is_indicative(tmp_path):
    verdicts = verdicts_of(_study(tmp_path, (0,), {0: True}))
    for claim in "abcde":
        v = verdicts[claim]
        assert v.status == HOLDS and v.indicative
        assert v.verdict == "holds (1 seed, indicative)"
        assert v.per_delta[0].headline.ci_low is None  # no interval from one pair


def test_ls_clearly_worse_calibrated_does_not_hold(tmp_path):
    """The case a user met: LS far worse calibrated than CE in every seed (ECE about 0.11 vs
    0.02) must not be reported as holding."""
    for seed in (0, 1, 2):
        write_run(tmp_path, delta=0.0, seed=seed, accuracy=0.80, confidence=0.82 + 0.002 * seed)
        write_run(tmp_path, delta=0.1, seed=seed, accuracy=0.80, confidence=0.91 + 0.003 * seed)
    d = verdicts_of(tmp_path)["d"].per_delta[0]
    assert d.status == FAILS
    h = d.headline
    # ECE = |confidence - accuracy| for these predictions, in points
    expected = [100 * ((0.91 + 0.003 * s - 0.80) - (0.82 + 0.002 * s - 0.80)) for s in range(3)]
    assert h.effect == pytest.approx(np.mean(expected), abs=0.05)
    assert h.ci_low > 0


def test_interval_equals_scipy():
    rng = np.random.default_rng(3)
    ce, ls = rng.normal(5, 1, 6), rng.normal(4.2, 1, 6)
    low, high = t_interval(ls - ce)
    ref = stats.ttest_rel(ls, ce).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    m = Measure("x", "x", "u")
    result = paired(m, differences(dict(enumerate(ce)), dict(enumerate(ls))))
    assert result.effect == pytest.approx(float(np.mean(ls - ce)), rel=1e-12)
    assert (result.ci_low, result.ci_high) == pytest.approx((ref.low, ref.high), rel=1e-12)


def test_verdicts_in_summary_json(tmp_path):
    from nclab.report import build_report

    runs = _study(tmp_path / "runs", (0, 1, 2), {0: True, 1: True, 2: True})
    result = build_report([runs], tmp_path / "report", theory=False)
    data = json.loads(result.json.read_text())
    claims = {v["claim"]: v for v in data["verdicts"]}
    assert set(claims) == set("abcdef")
    entry = claims["b"]["per_delta"][0]
    for key in (
        "smoothing",
        "seeds_total",
        "seeds_supporting",
        "effect",
        "ci_low",
        "ci_high",
        "measure",
        "status",
        "label",
    ):
        assert key in entry
    assert entry["smoothing"] == 0.1 and entry["seeds_total"] == 3
    assert entry["ci_low"] <= entry["effect"] <= entry["ci_high"] < 0
    assert "compare_forest" in result.figures
    for text in (result.markdown.read_text(), result.html.read_text(), result.json.read_text()):
        assert "Guo, Andriopoulos, Zhao, Dong, Ling, Ross (2024)" in text or "Guo" not in text
        assert "seed paper" not in text
    assert "Guo, Andriopoulos, Zhao, Dong, Ling, Ross (2024)" in result.markdown.read_text()
    for claim in claims.values():
        for entry in claim["per_delta"]:
            assert {"smoothing", "seeds_total", "seeds_supporting", "effect", "ci_low",
                    "ci_high", "measure"} <= set(entry)  # fmt: skip


def test_combine_over_deltas_and_sig():
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, FAILS]) == MIXED
    assert combine([HOLDS, INCONCLUSIVE]) == PARTLY
    assert combine([FAILS, FAILS, UNDETERMINED]) == FAILS
    assert combine([FAILS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([UNDETERMINED]) == UNDETERMINED
    # a δ whose deciding measures disagree makes the claim mixed, never "inconclusive"
    assert combine([MIXED, MIXED]) == MIXED
    assert combine([HOLDS, MIXED]) == MIXED
    assert combine([INCONCLUSIVE, MIXED, UNDETERMINED]) == MIXED
    assert sig(7.666666666) == "7.667" and sig(0.000123456) == "0.0001235"
    assert sig(123456.0) == "1.235e+05"


def test_theory_claim_follows_the_ufm_computation(tmp_path):
    """Claim (f) is computed by nclab.ufm: its condition-number measures match
    nclab.ufm.condition directly, its GD measures the panel's iteration counts, κ_logit never
    decides, and the verdict is holds / does not hold / mixed exactly as the deciding measures
    agree."""
    from nclab.report.theory import GD_MAX_ITERS, GD_STEP_MULTIPLIERS, GD_TOL, theory_panel
    from nclab.report.verdicts import LSGroup, claim_theory
    from nclab.ufm import DEFAULT_LAMBDA_B, UFMProblem, closed_form, condition, solve_gd

    for seed in (0,):
        write_run(tmp_path, delta=0.0, seed=seed)
        write_run(tmp_path, delta=0.1, seed=seed)
    runs = load_runs([tmp_path])
    panel = theory_panel(runs, max_iters=3000)
    ce = [r for r in runs if r.group.is_ce]
    ls = [LSGroup("LS δ=0.1", 0.1, [r for r in runs if r.group.is_ls])]
    d = claim_theory(ce, ls, panel).per_delta[0]
    by_key = {m.measure.key: m for m in d.measures}
    n = panel.n_per_class
    lam = dict(lambda_w=panel.lambda_w, lambda_h=panel.lambda_h)
    ref = [
        condition(num_classes=K, n_per_class=n, smoothing=s, dim=K - 1, lambda_b=DEFAULT_LAMBDA_B,
                  **lam)
        for s in (0.0, 0.1)
    ]  # fmt: skip
    for key, get in (
        ("hessian_ratio", lambda c: c.ratio_excl_bias_shift),
        ("w_block_ratio", lambda c: c.w_block.ratio),
        ("h_block_ratio", lambda c: c.h_block.ratio),
    ):
        m = by_key[key]
        assert m.measure.decides
        assert m.effect == pytest.approx(math.log10(get(ref[1]) / get(ref[0])), rel=1e-6)
        assert m.status == (HOLDS if get(ref[1]) < get(ref[0]) else FAILS)
    kappa = by_key["kappa_logit"]
    assert not kappa.measure.decides and "by construction" in kappa.measure.description
    cf = [closed_form(num_classes=K, n_per_class=n, smoothing=s, **lam) for s in (0.0, 0.1)]
    assert kappa.effect == pytest.approx(math.log10(cf[1].kappa_logit / cf[0].kappa_logit))

    # GD on the runs' own UFM (the problem of the Hessian), recomputed through nclab.ufm's
    # public API: shared step min over δ of 1/λ_max, best of the multipliers at each δ's own
    def gd(delta: float, lr: float) -> int | None:
        problem = UFMProblem(num_classes=K, n_per_class=n, smoothing=delta, dim=K - 1,
                             lambda_b=DEFAULT_LAMBDA_B, **lam)  # fmt: skip
        try:
            res = solve_gd(problem, lr=lr, max_iters=GD_MAX_ITERS, tol=GD_TOL, nc_fn=None)
        except ValueError:
            return None
        return res.iterations if res.relative_gap <= GD_TOL else None

    shared = min(1 / c.lambda_max for c in ref)
    a, b = gd(0.0, shared), gd(0.1, shared)
    assert a is not None and b is not None
    assert by_key["gd_iterations"].effect == b - a
    best = [
        min(v for v in (gd(s, m / c.lambda_max) for m in GD_STEP_MULTIPLIERS) if v is not None)
        for s, c in zip((0.0, 0.1), ref, strict=True)
    ]
    assert by_key["gd_iterations_best_step"].effect == best[1] - best[0]
    deciding = [m.status for m in d.measures if m.measure.decides]
    if all(s == HOLDS for s in deciding):
        assert d.status == HOLDS
    elif all(s == FAILS for s in deciding):
        assert d.status == FAILS
    elif HOLDS in deciding and FAILS in deciding:
        assert d.status == MIXED and "favour LS" in d.text and "favour CE" in d.text


def _judge(diffs, measure=None):
    return paired(measure or Measure("x", "x", "u"), dict(enumerate(diffs)))


def test_every_seed_supporting_is_not_enough_when_the_interval_covers_zero():
    """With 3 seeds, 'holds' also needs the t interval beyond the threshold; the reverse for
    'does not hold'."""
    spread = [-0.1, -0.1, -5.0]  # all lower, but t_{0.975,2} · s / sqrt(3) > |mean|
    low, high = stats.t.interval(0.95, 2, loc=np.mean(spread), scale=stats.sem(spread))
    assert low < 0 < high
    assert _judge(spread).status == INCONCLUSIVE
    assert _judge([-x for x in spread]).status == INCONCLUSIVE
    assert _judge([-1.0, -1.1, -0.9]).status == HOLDS
    assert _judge([1.0, 1.1, 0.9]).status == FAILS
    assert _judge([-1.0, 0.0, -1.0]).status == INCONCLUSIVE  # a tie is not support
    two = _judge([-1.0, -9.0])  # n = 2: every seed supports; interval ignored, indicative
    assert two.status == HOLDS and two.indicative and two.ci_low < 0 < two.ci_high


def test_accuracy_claim_uses_its_non_inferiority_margin():
    """Claim (e): LS 0.2-0.3 points below CE in every seed is within the 0.5-point margin
    (holds); 0.7-0.9 points below is beyond it (does not hold); against 0 it would fail."""
    assert ACCURACY.threshold == -0.5
    assert _judge([-0.3, -0.2, -0.25], ACCURACY).status == HOLDS
    at_zero = Measure("acc", "accuracy", "points", "higher")  # the same claim without a margin
    assert _judge([-0.3, -0.2, -0.25], at_zero).status == FAILS
    assert _judge([-0.8, -0.9, -0.7], ACCURACY).status == FAILS
    assert _judge([-0.4, -0.6, -0.5], ACCURACY).status == INCONCLUSIVE


def test_a_broken_seed_does_not_drop_out_of_the_evidence(tmp_path):
    """An LS seed whose metrics became NaN and that has no predictions makes the claims it
    touches inconclusive, never 'holds' on the remaining seeds."""
    _study(tmp_path, (0, 1, 2), dict.fromkeys((0, 1, 2), True))
    broken = tmp_path / "ls0.1_seed2"
    rows = [json.loads(x) for x in (broken / "metrics.jsonl").read_text().splitlines()]
    rows[-1].update(nc1=float("nan"), nc2_wh=float("nan"), test_acc=float("nan"))
    (broken / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (broken / "predictions.npz").unlink()
    verdicts = verdicts_of(tmp_path)
    for claim in "bde":
        d = verdicts[claim].per_delta[0]
        assert d.status == INCONCLUSIVE, (claim, d.text)
        assert d.headline.undefined == [2] and "undefined for seed(s) 2" in d.text


def test_unpaired_and_duplicate_seeds_are_named(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "a", delta=0.0, seed=seed)
    for seed in (1, 2):
        write_run(tmp_path / "a", delta=0.1, seed=seed)
    d = verdicts_of(tmp_path / "a")["b"].per_delta[0]
    assert d.headline.seeds == (1,)
    assert "CE seed(s) 0 have no LS run" in d.text and "LS seed(s) 2 have no CE run" in d.text
    write_run(tmp_path / "b", delta=0.0, seed=0)
    write_run(tmp_path / "b", delta=0.1, seed=3)
    c = verdicts_of(tmp_path / "b")["c"].per_delta[0]
    assert c.status == UNDETERMINED and "no seed in common with CE" in c.text
    assert "no NC1 range" not in c.text
    write_run(tmp_path / "c" / "one", delta=0.0, seed=0)
    write_run(tmp_path / "c" / "two", delta=0.0, seed=0)
    write_run(tmp_path / "c" / "one", delta=0.1, seed=0)
    summary = summarize(load_runs([tmp_path / "c"]))
    assert any("CE has 2 runs of seed 0" in w for w in summary.warnings)


def test_milestone_censoring_never_reverses_the_direction(tmp_path):
    """An LS run cut short (10 of 30 epochs) that never reaches zero training error must not
    count as reaching it sooner than a CE run that does at epoch 12: that pair is undefined;
    an LS run that lasted 30 epochs without reaching it is at least 30 + 1 - 12 = 19 later."""
    from nclab.report.verdicts import LSGroup, claim_sooner

    for seed in (0, 1):
        write_run(tmp_path, delta=0.0, seed=seed, zero_at=12)
    short = write_run(tmp_path, delta=0.1, seed=0, zero_at=99)
    rows = (short / "metrics.jsonl").read_text().splitlines()[:10]
    (short / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    write_run(tmp_path, delta=0.1, seed=1, zero_at=99)
    runs = load_runs([tmp_path])
    ce = [r for r in runs if r.group.is_ce]
    ls = [LSGroup("LS δ=0.1", 0.1, [r for r in runs if r.group.is_ls])]
    zero = next(
        m for m in claim_sooner(ce, ls).per_delta[0].measures
        if m.measure.key == "epochs_zero_train_error"
    )  # fmt: skip
    assert zero.differences == (None, 30 + 1 - 12)
    assert zero.outcomes[1] == "contradicts"
