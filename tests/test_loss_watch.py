"""The training loop's non-finite-loss check: recorded on the device, read back periodically."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from nclab.train.distributed import DistContext
from nclab.train.loop import TrainingDivergedError, _LossWatch


def test_record_reads_nothing_back_from_the_device() -> None:
    """On the meta device any read-back raises, so recording a step is free of host syncs."""
    watch = _LossWatch(torch.device("meta"))
    for step in range(5):
        watch.record(torch.empty((), device="meta"), step)
    with pytest.raises(Exception):  # noqa: B017 - reading a meta tensor is refused
        int(watch.step)


def test_first_non_finite_step_and_value_are_reported(tmp_path) -> None:
    watch = _LossWatch(torch.device("cpu"))
    files = SimpleNamespace(checkpoint=tmp_path / "last.pt")
    run = SimpleNamespace(ctx=DistContext(), files=files, checkpoint_epoch=0, pending=None)
    losses = [0.7, 0.6, math.inf, math.nan, 0.5]
    for step, value in enumerate(losses[:2]):
        watch.record(torch.tensor(value), step)
    watch.raise_if_diverged(run, epoch=3, step=1)  # all finite so far: no error
    for step, value in enumerate(losses[2:], start=2):
        watch.record(torch.tensor(value), step)
    with pytest.raises(TrainingDivergedError, match="at epoch 3, step 3") as info:
        watch.raise_if_diverged(run, epoch=3, step=4)  # detected later, reported where it began
    assert info.value.step == 3 and info.value.value == math.inf
    assert info.value.checkpoint_epoch == 0
