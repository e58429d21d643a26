"""Promise: a command that fails leaves every existing file as it was and blocks no retry. A
refused resume or --overwrite (dataset removed, grown or corrupt, options that cannot run, a
broken config.json or metrics.jsonl) leaves the run folder byte-identical and names the file; a
failed first start leaves no folder behind; an --out that is or lies inside a file, or cannot be
created, is one line; a divergence keeps the last good checkpoint; a failed report leaves no
report folder behind."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import (
    DATA_OPTS,
    TINY,
    expect_clear_error,
    report_argv,
    train_argv,
    write_npz,
)

from nclab import cli
from nclab.runs.files import LOCK_NAME, MANIFEST_NAME, MetricsLogError, read_metrics
from nclab.train import loop as train_loop

# ---------------------------------------------------------------------------- metrics.jsonl


def _rewrite_metrics(run: Path, change: Callable[[list[str]], str]) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(change(lines))


MALFORMED_METRICS: dict[str, Callable[[list[str]], str]] = {
    "garbage-first-line": lambda ls: "\n".join(["{not json", *ls[1:]]) + "\n",
    "garbage-middle-line": lambda ls: "\n".join([ls[0], "@@@", *ls[1:]]) + "\n",
    "array-middle-line": lambda ls: "\n".join([ls[0], "[1, 2]", *ls[1:]]) + "\n",
    "epoch-missing": lambda ls: "\n".join(['{"nc1": 1}', *ls]) + "\n",
    "epoch-string": lambda ls: "\n".join(['{"epoch": "one"}', *ls]) + "\n",
    "cut-line-then-rows": lambda ls: ls[0][:20] + "\n" + "\n".join(ls[1:]) + "\n",
}


@pytest.mark.parametrize("case", list(MALFORMED_METRICS))
def test_malformed_metrics_line_refuses_resume_and_report(case, run_copy, capsys):
    _rewrite_metrics(run_copy, MALFORMED_METRICS[case])
    expect_clear_error(
        train_argv(run_copy, "--resume", epochs=3), capsys, watch=(run_copy,), says="line "
    )
    expect_clear_error(
        ["report", str(run_copy), "--no-theory", "--quiet"],
        capsys,
        watch=(run_copy,),
        says="metrics.jsonl, line",
    )
    with pytest.raises(MetricsLogError):
        read_metrics(run_copy / "metrics.jsonl")


def test_metrics_not_utf8_is_a_clear_error(run_copy, capsys):
    (run_copy / "metrics.jsonl").write_bytes(b"\xff\xfe\xfa\n")
    expect_clear_error(
        train_argv(run_copy, "--resume", epochs=3), capsys, watch=(run_copy,), says="not UTF-8"
    )


# ---------------------------------------------------------------------------- run directories


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"[1, 2, 3]", b"\xff\xfe", b'"a string"', b"null"],
    ids=["garbage", "empty", "array", "binary", "string", "null"],
)
@pytest.mark.parametrize("mode", ["start", "resume"])
def test_broken_config_json_is_refused_and_named(content, mode, run_copy, capsys):
    (run_copy / "config.json").write_bytes(content)
    argv = train_argv(run_copy)
    if mode == "resume":
        argv.append("--resume")
    expect_clear_error(argv, capsys, watch=(run_copy,), says="config.json")


@pytest.mark.parametrize(
    "leftover", ["metrics.jsonl", "checkpoints/last.pt", "final.pt", "DONE", "predictions.npz"]
)
def test_run_files_without_config_are_not_an_empty_directory(leftover, run_copy, capsys):
    (run_copy / "config.json").unlink()
    keep = run_copy / leftover
    for path in [p for p in run_copy.rglob("*") if p.is_file()]:
        if path != keep and path.name not in (LOCK_NAME, MANIFEST_NAME):
            path.unlink()  # the manifest stays: nclab wrote the leftover (see test_ownership)
    err = expect_clear_error(train_argv(run_copy), capsys, watch=(run_copy,))
    assert Path(leftover).name in err and "--overwrite" in err
    assert cli.main(train_argv(run_copy, "--overwrite")) == 0


def test_out_is_a_regular_file_or_inside_one(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("precious")
    for out in (blocker, blocker / "run", blocker / "a" / "b"):
        err = expect_clear_error(train_argv(out, epochs=1), capsys, watch=(tmp_path,))
        assert "--out" in err


@pytest.mark.parametrize("out", ["/proc/nclab-test/run", "/sys/nclab-test"])
def test_out_cannot_be_created(out, capsys):
    expect_clear_error(["train", *TINY, "--epochs", "1", "--out", out], capsys, says="cannot")


def test_failed_first_start_leaves_nothing_and_retry_works(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    missing = tmp_path / "missing.npz"
    argv = ["train", *DATA_OPTS, "--epochs", "1", "--out", str(out)]
    expect_clear_error([*argv, "--dataset", f"npz:{missing}"], capsys, says="does not exist")
    assert not out.exists()
    write_npz(missing)
    assert cli.main([*argv, "--dataset", f"npz:{missing}"]) == 0
    assert (out / "DONE").exists()


def test_failed_start_in_an_existing_empty_directory_does_not_block_retry(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    expect_clear_error(train_argv(out, "--batch-size", "1", epochs=1), capsys)
    assert cli.main(train_argv(out, epochs=1)) == 0


# ---------------------------------------------------------------------------- resume, --overwrite


def _npz_run(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    data = write_npz(tmp_path / "data.npz")
    out = tmp_path / "run"
    argv = ["train", *DATA_OPTS, "--dataset", f"npz:{data}", "--out", str(out)]
    assert cli.main([*argv, "--epochs", "2"]) == 0
    return data, out, argv


TRANSACTION_CASES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "resume-dataset-removed": (lambda d: d.unlink(), ["--resume", "--epochs", "3"], "not exist"),
    "resume-dataset-grown": (
        lambda d: write_npz(d, x_train=np.zeros((33, 6)), y_train=np.arange(33) % 3),
        ["--resume", "--epochs", "3"],
        "dataset differs",
    ),
    "resume-dataset-corrupt": (
        lambda d: d.write_bytes(os.urandom(100)),
        ["--resume", "--epochs", "3"],
        "not an .npz",
    ),
    "overwrite-dataset-removed": (lambda d: d.unlink(), ["--overwrite", "--epochs", "3"], "exist"),
    "overwrite-dataset-corrupt": (
        lambda d: d.write_bytes(b"PK\x03\x04junk"),
        ["--overwrite", "--epochs", "3"],
        "npz",
    ),
    "overwrite-augment-on-vectors": (
        lambda d: None,
        ["--overwrite", "--epochs", "3", "--augment"],
        "--augment needs image data",
    ),
    "overwrite-batch-of-one": (
        lambda d: None,
        ["--overwrite", "--epochs", "3", "--batch-size", "1"],
        "BatchNorm",
    ),
    "overwrite-bf16-on-cpu": (
        lambda d: None,
        ["--overwrite", "--epochs", "3", "--bf16", "--device", "cpu"],
        "bf16",
    ),
    "resume-with-other-lr": (lambda d: None, ["--resume", "--epochs", "3", "--lr", "1"], "lr"),
    "resume-fewer-epochs": (lambda d: None, ["--resume", "--epochs", "1"], "already trained"),
    "start-without-resume": (lambda d: None, ["--epochs", "3"], "--resume"),
    "resume-and-overwrite": (
        lambda d: None,
        ["--resume", "--overwrite", "--epochs", "3"],
        "exclude each other",
    ),
}


@pytest.mark.parametrize("case", list(TRANSACTION_CASES))
def test_failed_resume_or_overwrite_leaves_the_directory_byte_identical(case, tmp_path, capsys):
    data, out, argv = _npz_run(tmp_path)
    change, extra, says = TRANSACTION_CASES[case]
    change(data)
    expect_clear_error([*argv, *extra], capsys, watch=(out,), says=says)


def test_non_finite_batchnorm_buffers_are_a_divergence_and_keep_the_good_checkpoint(
    tmp_path, monkeypatch, capsys
):
    original = train_loop._train_one_epoch

    def poisoned(run, epoch):  # noqa: ANN001, ANN202
        original(run, epoch)
        if epoch == 2:
            for module in run.model.modules():
                if isinstance(module, torch.nn.BatchNorm1d):
                    module.running_var.fill_(float("inf"))

    monkeypatch.setattr(train_loop, "_train_one_epoch", poisoned)
    out = tmp_path / "run"
    argv = train_argv(out, "--eval-every", "5", epochs=4)
    expect_clear_error(argv, capsys, code=3, says="model state became non-finite in epoch 2")
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


# ---------------------------------------------------------------------------- report


@pytest.mark.parametrize(
    ("dirs", "says"),
    [
        (["nonexistent"], "does not exist"),
        (["empty"], "no run directories"),
        (["empty", "empty2"], "no run directories"),  # several DIRs: a default --out, no error
    ],
)
def test_report_bad_directories(dirs, says, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty2").mkdir()
    expect_clear_error(report_argv(*(tmp_path / d for d in dirs)), capsys, says=says)
    assert not list(tmp_path.glob("report-*"))  # a failed report leaves no folder behind


def test_report_out_inside_a_regular_file(tiny_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    expect_clear_error(report_argv(tiny_run, out=blocker / "rep"), capsys, watch=(blocker,))
