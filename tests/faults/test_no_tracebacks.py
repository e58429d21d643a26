"""Promise: every failure ends in one line naming the problem (and the fix), never a traceback.
Invalid options of train, compare and ufm and bad config files (named) exit 2 and create no
run; any exception escaping a command is one line (exit 2 for OS and memory errors, 1 with a
pointer to --debug otherwise), and --debug or NCLAB_DEBUG=1 shows the traceback; a divergence,
in process or in a compare worker, is exit 3 naming the run, epoch and step; a report over
mixed datasets names the runs; a closed stdout pipe ends quietly; nclab's errors keep their
text and exit code across process boundaries."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from faultkit import (
    NCLAB_ENV,
    TINY,
    expect_clear_error,
    raiser,
    report_argv,
    spawn,
    train_argv,
)

from nclab import cli
from nclab.executors.local import WorkerDiedError
from nclab.runs.files import DirectoryLockedError, MetricsLogError
from nclab.train import TrainingDivergedError

# ---------------------------------------------------------------------------- options

TRAIN_OPTION_CASES = [
    (["--lr", "-1e-3"], "lr must be > 0"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--lr", "-inf"], "lr must be a finite number"),
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--epochs", "-5"], "epochs must be an integer >= 1"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    (["--batch-size", "1"], "BatchNorm"),
    (["--threads", "0"], "threads must be an integer >= 1"),
    (["--seed", "-1"], "seed must be an integer in"),
    (["--seed", str(2**32)], "seed must be an integer in"),
    (["--seed", str(2**70)], "seed must be an integer in"),
    (["--momentum", "-1e-3"], "momentum must lie in"),
    (["--weight-decay", "-1e-3"], "weight_decay must be >= 0"),
    (["--smoothing", "1.5", "--loss", "ls"], "δ must lie in"),
    (["--smoothing", "-1e-3", "--loss", "ls"], "δ must lie in"),
    (["--gamma", "0"], "gamma must be > 0"),
    (["--scheduler", "multistep", "--milestones", "9"], "past the last epoch"),
    (["--milestones", "0"], "milestones must be epochs >= 1"),
    (["--eval-every", "0"], "eval_every must be an integer >= 1"),
    (["--checkpoint-every", "0"], "checkpoint_every must be an integer >= 1"),
    (["--per-class", "0"], "per_class must be an integer >= 1"),
    (["--per-class", "-1e-3"], "expected a positive integer or 'all'"),
    (["--epochs", "ten"], "invalid int value"),
    (["--scheduler", "linear"], "scheduler 'linear'"),
    (["--no-such-option"], "unrecognized arguments"),
    (["--per-class", "1000"], "per_class=1000"),
    (["--width", "0"], "width must be an integer >= 1"),
    (["--ufm-penalties", "--lambda-h", "-1e-3"], "lambda_h must be >= 0"),
    (["--ufm-penalties", "--lambda-w", "0"], "needs lambda_w > 0"),
    (["--dataset", "synthetic:k=1,d=8,n=20,test=10"], "must be an integer >= 2"),
    (["--model", "vit"], "unknown model"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--dataset", "npz:"], "npz dataset needs a path"),
    (["--device", "tpu"], "unknown device"),
    (["--device", "cuda"], "CUDA"),
    (["--loss", "hinge"], "unknown loss"),
]


COMPARE_OPTION_CASES = [
    (["--threads", "0"], "--threads must be a positive integer"),
    (["--jobs", "0"], "--jobs must be a positive integer"),
    (["--seeds", "-1"], "seeds must be non-negative integers <= 4294967295"),
    (["--seeds", str(2**32)], "seeds must be non-negative integers <= 4294967295"),
    (["--smoothing", "1"], "outside [0, 1)"),
    (["--smoothing", "-1e-3"], "outside [0, 1)"),
    (["--smoothing", "nan"], "must be numbers in [0, 1)"),
    (["--lr", "-1e-3"], "lr must be > 0"),
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--batch-size", "1"], "BatchNorm"),
    (["--dataset", "npz:/nonexistent.npz"], "does not exist"),
]


OPTION_CASES = [("train", *case) for case in TRAIN_OPTION_CASES] + [
    ("compare", *case) for case in COMPARE_OPTION_CASES
]


@pytest.mark.parametrize(("command", "extra", "says"), OPTION_CASES, ids=lambda v: str(v)[:40])
def test_invalid_options_are_one_line_and_create_no_run(command, extra, says, tmp_path, capsys):
    if says == "CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    argv = {
        "train": ["train", *TINY, "--epochs", "3"],
        "compare": ["compare", "--preset", "smoke", "--quiet", "--jobs", "1", "--no-report"],
    }[command]
    expect_clear_error([*argv, "--out", str(out), *extra], capsys, says=says)
    assert not list(out.rglob("metrics.jsonl")) if out.exists() else True
    if command == "train":
        assert not out.exists()


CONFIG_FILE_CASES = [
    ("cfg.yaml", "lr: [1, 2\n", "cannot be parsed"),
    ("cfg.yaml", "- a\n- b\n", "must hold a mapping"),
    ("cfg.json", "{broken", "cannot be parsed"),
    ("cfg.json", '{"lr": -1}', "config file"),
    ("cfg.yaml", "epochs: ten\n", "config file"),
    ("cfg.yaml", "milestones: 5\n", "config file"),
    ("cfg.yaml", "unknown_option: 1\n", "unknown option"),
    ("cfg.yaml", "lr: abc\n", "lr must be a number"),
    ("cfg.yaml", "\xff\xfe", "cannot be parsed"),
    ("missing.yaml", None, "does not exist"),
]


@pytest.mark.parametrize(("name", "text", "says"), CONFIG_FILE_CASES)
def test_bad_config_files_name_the_file(name, text, says, tmp_path, capsys):
    path = tmp_path / name
    if text is not None:
        path.write_bytes(text.encode("latin1") if "\xff" in text else text.encode())
    err = expect_clear_error(
        ["train", "--config", str(path), "--out", str(tmp_path / "o")], capsys, says=says
    )
    assert name in err


def test_config_file_that_is_a_directory(tmp_path, capsys):
    expect_clear_error(["train", "--config", str(tmp_path), "--out", str(tmp_path / "o")], capsys)


UFM_OPTION_CASES = [
    (["closed-form", "--lambda-h", "-1e-3"], "lambda_h must be"),
    (["closed-form", "--lambda-w", "-1e-3"], "lambda_w must be"),
    (["closed-form", "--lambda-b", "-1e-3"], "lambda_b must be"),
    (["closed-form", "--lambda-h", "nan"], "lambda_h must be"),
    (["closed-form", "-K", "1"], "num_classes must be"),
    (["closed-form", "-n", "0"], "n_per_class must be"),
    (["closed-form", "--smoothing", "1.5"], "must lie in [0, 1)"),
    (["closed-form", "--smoothing", "-1e-3"], "must lie in [0, 1)"),
    (["solve", "--max-iters", "0"], "--max-iters must be an integer >= 1"),
    (["solve", "--record-every", "0"], "--record-every must be an integer >= 1"),
    (["solve", "--method", "gd", "--lr", "-1e-3"], "lr must be"),
    (["solve", "-d", "1", "-K", "5"], "dim"),
    (["solve", "-K", "100000", "-n", "100000"], "GiB of memory"),
    (["condition", "--tol", "-1"], "--tol must be a finite number >= 0"),
    (["condition", "--tol", "nan"], "--tol must be a finite number >= 0"),
    (["condition", "-K", "2000", "-d", "2000", "--method", "dense"], "GiB of memory"),
    (["condition", "-K", "100000", "-n", "1000", "-d", "2000"], "GiB of memory"),
    (["convergence", "--max-iters", "0"], "--max-iters must be an integer >= 1"),
    (["convergence", "--tol-nc1", "-1"], "--tol-nc1 must be a finite number >= 0"),
    (["convergence", "--tol-objective", "-1e-3"], "--tol-objective must be"),
    (["convergence", "--lr", "0"], "lr must be"),
    (["convergence", "-K", "100000", "-n", "100000"], "GiB of memory"),
]


@pytest.mark.parametrize(("argv", "says"), UFM_OPTION_CASES, ids=lambda v: str(v)[:50])
def test_invalid_ufm_options_are_one_line(argv, says, capsys):
    expect_clear_error(["ufm", *argv], capsys, says=says)


# ---------------------------------------------------------------------------- report


def test_report_refuses_mixed_datasets_naming_the_runs(tiny_run, tmp_path, capsys):
    other = tmp_path / "other"
    argv = train_argv(other, "--dataset", "synthetic:k=4,d=8,n=20,test=10", epochs=1)
    assert cli.main(argv) == 0
    err = expect_clear_error(
        report_argv(tiny_run, other, out=tmp_path / "rep"),
        capsys,
        watch=(tiny_run, other),
        says="different datasets",
    )
    assert str(other) in err and str(tiny_run) in err


# ---------------------------------------------------------------------------- exceptions


@pytest.mark.parametrize(
    "err",
    [
        TrainingDivergedError(3, 4, float("nan"), 2, Path("/x/last.pt")),
        TrainingDivergedError(3, 0, float("nan"), 0, Path("/x/last.pt"), where="custom"),
        DirectoryLockedError("/x is in use (PID 1)"),
        MetricsLogError("/x, line 3: bad"),
        WorkerDiedError("died"),
    ],
    ids=["diverged", "diverged-where", "locked", "metrics", "worker"],
)
def test_errors_cross_process_boundaries_intact(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    assert getattr(back, "exit_code", None) == getattr(err, "exit_code", None)


@pytest.mark.parametrize(
    "exc",
    [
        PermissionError(13, "Permission denied", "/x"),
        IsADirectoryError(21, "Is a directory", "/x"),
        OSError(28, "No space left on device"),
        MemoryError(),
        zipfile.BadZipFile("bad"),
        RuntimeError("unexpected"),
    ],
    ids=["permission", "isadir", "nospace", "memory", "badzip", "runtime"],
)
def test_every_exception_becomes_one_line(exc, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("nclab.train.loop._train", raiser(exc))
    code = 2 if isinstance(exc, OSError | MemoryError) else 1
    err = expect_clear_error(train_argv(tmp_path / "r", epochs=1), capsys, code=code)
    if code == 1:
        assert "--debug" in err and type(exc).__name__ in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    argv = train_argv(tmp_path / "r", "--lr", "-1", epochs=1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        cli.main(["--debug", *argv])
    monkeypatch.setenv("NCLAB_DEBUG", "1")
    with pytest.raises(ValueError, match="lr must be > 0"):
        cli.main(argv)
    monkeypatch.setenv("NCLAB_DEBUG", "0")
    assert cli.main(argv) == 2


def test_diverging_compare_run_in_process_exits_3(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "smoke", "--out", str(out), "--jobs", "1", "--no-report"]
    err = expect_clear_error([*argv, "--lr", "1e12", "--quiet"], capsys, code=3)
    assert err.startswith("nclab compare: run ce_seed0: training diverged")


@pytest.mark.slow
def test_diverging_compare_worker_reports_its_run_epoch_and_step(tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "smoke", "--out", str(out), "--jobs", "2", "--no-report"]
    proc = spawn([*argv, "--lr", "1e12", "--quiet"])
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    assert proc.returncode == 3, err
    assert "Traceback" not in err and "BrokenProcessPool" not in err
    assert err.strip().count("\n") == 0
    assert "run " in err and "training diverged" in err and "at epoch 1, step" in err


# ---------------------------------------------------------------------------- closed pipes


def test_broken_stdout_pipe_is_quiet(monkeypatch, capsys):
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert cli.main(["ufm", "closed-form"]) == cli.EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_output_piped_into_head_ends_quietly():
    proc = subprocess.run(
        f"{sys.executable} -m nclab.cli ufm closed-form --smoothing "
        + " ".join(f"0.{i:04d}" for i in range(1, 2500))
        + " | head -c 10",
        shell=True,
        env=NCLAB_ENV,
        capture_output=True,
        timeout=120,
    )
    assert len(proc.stdout) == 10
    assert proc.stderr.decode() == ""
