"""`nclab ufm convergence/solve --lr C/lambda_max`, as docs/theory.md writes it: each delta's
own step, C over the largest Hessian eigenvalue at its minimizer (checked against
nclab.ufm.condition and a direct GD run with that step)."""

from __future__ import annotations

import json

import pytest

from nclab import cli
from nclab.commands.ufm import RelativeStep, parse_lr
from nclab.ufm import UFMProblem, condition, convergence

SMALL = ["-K", "4", "-n", "5", "-d", "6", "--lambda-w", "1e-2", "--lambda-h", "1e-2"]
SMALL += ["--lambda-b", "1e-3"]
FIELDS = dict(num_classes=4, n_per_class=5, dim=6, lambda_w=1e-2, lambda_h=1e-2, lambda_b=1e-3)


def test_parse_lr_forms() -> None:
    assert parse_lr("2.5") == 2.5
    assert parse_lr("1/lambda_max") == RelativeStep(1.0)
    assert parse_lr("0.5/lambda_max") == RelativeStep(0.5)
    for bad in ("0/lambda_max", "x/lambda_max", "1/lambda_min", "fast"):
        with pytest.raises(Exception, match="lambda_max"):
            parse_lr(bad)


def test_convergence_with_one_over_lambda_max_uses_each_deltas_step(capsys) -> None:
    argv = ["ufm", "convergence", *SMALL, "--smoothing", "0", "0.2", "--max-iters", "60"]
    assert cli.main([*argv, "--lr", "1/lambda_max", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["smoothing"] for r in rows] == [0.0, 0.2]
    for row in rows:
        problem = UFMProblem(**FIELDS, smoothing=row["smoothing"])
        lam = condition(problem, method="dense").lambda_max
        assert row["lr"] == pytest.approx(1 / lam, rel=1e-9)
        (direct,) = convergence(
            UFMProblem(**FIELDS),
            smoothings=[row["smoothing"]],
            lr=1 / lam,
            max_iters=60,
        )
        assert row["final_objective_gap"] == pytest.approx(direct.summary()["final_objective_gap"])
    assert rows[0]["lr"] != rows[1]["lr"]  # LS has the larger lambda_max, a smaller step


def test_bad_lr_is_a_one_line_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        cli.main(["ufm", "convergence", *SMALL, "--lr", "1/foo"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "C/lambda_max" in err and len(err.strip().splitlines()) == 1
