"""TensorBoard output of `nclab train --tensorboard` and of NCTracker(tensorboard=True): the event
files, read back with TensorBoard's own reader, hold every logged scalar of metrics.jsonl."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from test_track import tracked_sgd

from nclab import cli
from nclab.track import NCTracker
from nclab.train import read_rows
from nclab.train.loggers import metric_tag

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

TINY_ARGS = [
    "--dataset", "synthetic:k=4,d=16,n=30,test=10",
    "--width", "32", "--depth", "2", "--batch-size", "40", "--lr", "0.1", "--threads", "1",
    "--quiet",
]  # fmt: skip


def read_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every event file in ``run_dir``."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def assert_events_match_rows(run_dir: Path) -> None:
    rows = read_rows(run_dir / "metrics.jsonl")
    scalars = read_scalars(run_dir)
    expected_tags = {
        metric_tag(k)
        for row in rows
        for k, v in row.items()
        if k != "epoch" and isinstance(v, int | float)
    }
    assert set(scalars) == expected_tags
    # grouped as train/… and test/…: the calibration metrics are test metrics
    assert {"train/nc1", "train/loss", "test/acc", "test/ece", "test/brier", "test/nc1"} <= set(
        scalars
    )
    for row in rows:
        for key, value in row.items():
            if key == "epoch" or not isinstance(value, int | float):
                continue
            # TensorBoard stores scalars as float32
            got = scalars[metric_tag(key)][row["epoch"]]
            assert got == pytest.approx(value, rel=1e-6, abs=1e-30), key
    # one step per row that logged the scalar (test_nc1_incorrect is absent in an epoch without
    # misclassified test samples of two classes)
    keys = {metric_tag(k): k for row in rows for k in row}
    for tag, steps in scalars.items():
        assert set(steps) == {row["epoch"] for row in rows if keys[tag] in row}, tag


def test_train_tensorboard_writes_every_logged_scalar(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli.main(["train", *TINY_ARGS, "--epochs", "3", "--tensorboard", "--out", str(out)]) == 0
    assert list(out.glob("events.out.tfevents.*"))
    assert_events_match_rows(out)
    assert {"train/nc1", "test/acc", "test/ece", "train/lr", "time/seconds"} <= set(
        read_scalars(out)
    )

    # starting over removes the previous run's events
    argv = ["train", *TINY_ARGS, "--epochs", "2", "--lr", "0.05", "--tensorboard", "--overwrite"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    assert_events_match_rows(out)

    # a run started without --tensorboard can be resumed with it (an output, not the run's
    # identity); the events then hold the epochs trained with it
    plain = tmp_path / "plain"
    assert cli.main(["train", *TINY_ARGS, "--epochs", "2", "--out", str(plain)]) == 0
    assert not list(plain.glob("events.out.tfevents.*"))
    argv = ["train", *TINY_ARGS, "--epochs", "3", "--tensorboard", "--resume", "--out", str(plain)]
    assert cli.main(argv) == 0
    assert set(read_scalars(plain)["train/nc1"]) == {3}


def test_tracker_tensorboard_writes_every_logged_scalar(tmp_path: Path) -> None:
    # a value of the caller each epoch, and one it leaves unset
    tracked_sgd(
        tmp_path / "run", 16, lambda e: dict(grad_steps=e * 4, missing=None), tensorboard=True
    )
    assert_events_match_rows(tmp_path / "run")
    scalars = read_scalars(tmp_path / "run")
    # a value of the caller, under train/ like the other per-epoch values of training
    assert scalars["train/grad_steps"] == {1: 4.0, 2: 8.0} and "train/missing" not in scalars
    assert all(math.isfinite(v) for s in scalars.values() for v in s.values())


def test_missing_tensorboard_is_a_clear_error_before_any_file(tmp_path: Path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real(name, *a),
    )
    out = tmp_path / "run"
    assert cli.main(["train", *TINY_ARGS, "--epochs", "1", "--tensorboard", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'nclab[tensorboard]'" in err and "Traceback" not in err
    assert not out.exists()
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="tensorboard package"):
        NCTracker(out, model=model, layer=model, train=[], test=[], num_classes=2, tensorboard=True)
