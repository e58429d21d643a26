"""Launching comparisons past one machine: `nclab compare --print-commands` (commands that
`nclab train` reads back as the planned configs), and `--launcher submitit`, tested with
submitit's local executor (jobs as processes on this machine, as SLURM jobs would run)."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import shutil
from pathlib import Path

import pytest

from nclab import cli
from nclab.commands.train import config_from_args
from nclab.compare import CompareConfig, compare, comparison_commands, plan_runs
from nclab.executors import SlurmOptions
from nclab.executors.commands import train_command
from nclab.executors.submitit import JobFailedError
from nclab.train import TrainConfig, read_rows

FAST = {"epochs": 3}  # the smoke preset, shortened


def parse_train_command(command: str) -> tuple[TrainConfig, object]:
    words = shlex.split(command)
    assert words[:2] == ["nclab", "train"]
    args = cli.build_parser().parse_args(words[1:])
    return config_from_args(args), args


@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_train_command_reads_back_as_the_planned_config(preset: str, tmp_path: Path) -> None:
    cfg = CompareConfig(preset=preset, seeds=[0, 3], out=tmp_path / "cmp", threads=2)
    overrides = {"ufm_penalties": True, "lambda_h": 1e-4, "milestones": [2, 5], "epochs": 7}
    runs = plan_runs(cfg) + plan_runs(CompareConfig(preset=preset, train=overrides))
    for run in runs:
        config, args = parse_train_command(train_command(run.config, run.path))
        assert config.to_dict() == run.config.to_dict()
        assert args.out == str(run.path) and args.resume and args.quiet and not args.overwrite
    _, args = parse_train_command(train_command(runs[0].config, "a b", overwrite=True))
    assert args.out == "a b" and args.overwrite and not args.resume


def test_print_commands_then_report_collects_the_runs(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "smoke", "--epochs", "3", "--threads", "1", "--out", str(out)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main([*argv, "--print-commands"]) == 0
    commands = stdout.getvalue().splitlines()
    runs = plan_runs(CompareConfig(preset="smoke", train=FAST, out=out, threads=1))
    assert len(commands) == len(runs) == 2
    assert not (out / "runs").exists()  # printing trains nothing

    relative = comparison_commands(
        CompareConfig(preset="quick", out="rel/cmp", train={"data_dir": "data"})
    )[0]
    _, args = parse_train_command(relative[0])
    assert Path(args.out) == Path.cwd() / "rel/cmp/runs/ce_seed0"
    assert Path(args.data_dir) == Path.cwd() / "data"

    for command in commands:  # what a scheduler would run, anywhere
        assert cli.main(shlex.split(command)[1:]) == 0
    for run in runs:
        assert (run.path / "DONE").is_file()
    assert cli.main(["report", str(out), "--out", str(out / "report")]) == 0
    assert (out / "report" / "report.html").is_file()

    # complete runs are reused: no command left to print
    assert comparison_commands(CompareConfig(preset="smoke", train=FAST, out=out)) == (
        [],
        ["ce_seed0", "ls0.1_seed0"],
    )


@pytest.mark.slow
def test_submitit_local_executor_trains_the_runs_and_builds_the_report(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    slurm = SlurmOptions(cluster="local", time_minutes=10, cpus=1, partition="ignored-locally")
    cfg = CompareConfig(
        preset="smoke", train=FAST, out=tmp_path / "slurm", launcher="submitit", slurm=slurm
    )
    result = compare(cfg)
    assert [r.status for r in result.runs] == ["trained", "trained"]
    assert result.report is not None and result.report.html.is_file()
    jobs_dir = tmp_path / "slurm" / "slurm"
    submitted = sorted(p.name for p in jobs_dir.glob("*_submitted.pkl"))
    assert len(submitted) == 2

    # the jobs trained exactly what local workers train
    local = compare(CompareConfig(preset="smoke", train=FAST, out=tmp_path / "local", threads=1))
    for mine, theirs in zip(result.runs, local.runs, strict=True):
        a, b = read_rows(mine.path / "metrics.jsonl"), read_rows(theirs.path / "metrics.jsonl")
        assert [r["epoch"] for r in a] == [1, 2, 3]
        for ra, rb in zip(a, b, strict=True):
            for key, value in rb.items():
                if key != "seconds" and value is not None:
                    assert ra[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key

    # a second comparison reuses the complete runs and submits nothing
    again = compare(cfg)
    assert [r.status for r in again.runs] == ["reused", "reused"]
    assert sorted(p.name for p in jobs_dir.glob("*_submitted.pkl")) == submitted


def test_cli_submitit_launcher_with_the_in_process_executor(tmp_path: Path, capsys) -> None:
    pytest.importorskip("submitit")
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "smoke", "--epochs", "2", "--out", str(out), "--no-report"]
    argv += ["--launcher", "submitit", "--slurm-cluster", "debug", "--slurm-cpus", "1"]
    assert cli.main(argv) == 0
    assert "one submitit job each" in capsys.readouterr().out
    for name in ("ce_seed0", "ls0.1_seed0"):
        assert (out / "runs" / name / "DONE").is_file()
        config = json.loads((out / "runs" / name / "config.json").read_text())
        assert config["threads"] == 1  # --slurm-cpus
    assert json.loads((out / "compare.json").read_text())["launcher"] == "submitit"


@pytest.mark.slow
def test_failed_job_names_the_run_and_its_log(tmp_path: Path, capsys) -> None:
    pytest.importorskip("submitit")
    out = tmp_path / "cmp"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "ce_seed0").write_text("not a directory")  # the job's train() refuses
    cfg = CompareConfig(
        preset="smoke",
        train=FAST,
        smoothings=[0.0],
        out=out,
        launcher="submitit",
        slurm=SlurmOptions(cluster="local", time_minutes=5, cpus=1),
    )
    with pytest.raises(JobFailedError, match=r"run ce_seed0 failed in job .*not a directory"):
        compare(cfg)
    # through the command line: one line, exit code 1
    argv = ["compare", "--preset", "smoke", "--epochs", "3", "--smoothing", "0", "--out", str(out)]
    argv += ["--launcher", "submitit", "--slurm-cluster", "local", "--quiet"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "run ce_seed0 failed in job" in err and "log: " in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_bad_cluster_options_are_clear_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="--slurm-time must be an integer >= 1"):
        SlurmOptions(time_minutes=0)
    with pytest.raises(ValueError, match="--slurm-gpus"):
        SlurmOptions(gpus=-1)
    with pytest.raises(ValueError, match="unknown launcher"):
        compare(CompareConfig(preset="smoke", launcher="ray", out=tmp_path / "x"))
    if shutil.which("sbatch") is None:
        argv = ["compare", "--preset", "smoke", "--launcher", "submitit", "--out", str(tmp_path)]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "--slurm-cluster local" in err and "Traceback" not in err
