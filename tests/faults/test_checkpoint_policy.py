"""Promise: the checkpoint policy (--checkpoint-every / --checkpoint-seconds) decides only how
much work a kill can cost, never the results: a run stopped by a signal anywhere (mid-step
included) saves the state after its last completed epoch on the way out and resumes to the same
rows as an uninterrupted run; a SIGKILL costs at most the epochs since the last checkpoint."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
from faultkit import TALLY, run_cli, run_rows, train_argv, uninterrupted_rows

from nclab import cli
from nclab.runs import RunFiles
from nclab.signals import Interrupted
from nclab.train import loop
from nclab.train.loop import read_checkpoint

EPOCHS = 6
BY_TIME = ("--checkpoint-seconds", "3600")  # the default policy, with no epoch reaching it


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    return uninterrupted_rows(tmp_path_factory, EPOCHS, "--checkpoint-every", "1")


def _written_epochs(monkeypatch) -> list[int]:  # noqa: ANN001
    written: list[int] = []
    real = loop._write_checkpoint

    def spy(run, state):  # noqa: ANN001, ANN202
        written.append(int(state["epoch"]))
        real(run, state)

    monkeypatch.setattr(loop, "_write_checkpoint", spy)
    return written


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ((), [EPOCHS]),  # default: 60 s of wall time, far more than this run takes
        (("--checkpoint-seconds", "0"), list(range(1, EPOCHS + 1))),
        (("--checkpoint-every", "4"), [4, EPOCHS]),
        (("--checkpoint-every", "2", "--checkpoint-seconds", "0"), [2, 4, 6]),
    ],
)
def test_checkpoints_are_written_when_the_policy_says(extra, expected, reference, tmp_path,
                                                      monkeypatch):  # fmt: skip
    written = _written_epochs(monkeypatch)
    out = tmp_path / "run"
    assert cli.main(train_argv(out, *extra, epochs=EPOCHS)) == 0
    assert written == expected
    assert run_rows(out) == reference  # the policy never changes the results
    assert read_checkpoint(RunFiles(out).checkpoint)["epoch"] == EPOCHS


def test_the_time_interval_counts_from_the_last_checkpoint(tmp_path, monkeypatch):
    written = _written_epochs(monkeypatch)
    clock = iter(float(10 * i) for i in range(1000))  # each read: 10 s later
    fake = types.SimpleNamespace(perf_counter=time.perf_counter, monotonic=lambda: next(clock))
    monkeypatch.setattr(loop, "time", fake)
    out = tmp_path / "run"
    # reads: 0 at the start; 10, 20, 30 after epochs 1-3 (due: 30 >= 25), 40 as it is written;
    # 50, 60 after epochs 4-5 (10 and 20 s since); epoch 6 is the last
    assert cli.main(train_argv(out, "--checkpoint-seconds", "25", epochs=EPOCHS)) == 0
    assert written == [3, 6]


@pytest.mark.parametrize("stop_epoch", [1, 3, 5])
@pytest.mark.parametrize("where", ["after the epoch", "mid-step"])
def test_a_signal_saves_the_last_completed_epoch_and_resumes_exactly(
    stop_epoch, where, reference, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real_train = loop._train_one_epoch
    real_epoch = loop._epoch

    def stopped_mid_step(run, epoch):  # noqa: ANN001, ANN202
        if epoch != stop_epoch + 1:
            return real_train(run, epoch)
        real_step = run.optimizer.step
        calls = {"n": 0}

        def half_step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls["n"] += 1
            if calls["n"] == 3:  # the parameters are updated one by one: stop half-way
                params = run.optimizer.param_groups[0]["params"]
                with torch.no_grad():
                    params[0].add_(1.0)
                raise Interrupted(signal.SIGTERM)
            return real_step(*args, **kwargs)

        run.optimizer.step = half_step
        return real_train(run, epoch)

    def stopped_after(run, epoch):  # noqa: ANN001, ANN202
        real_epoch(run, epoch)
        if epoch == stop_epoch:
            raise Interrupted(signal.SIGTERM)

    if where == "mid-step":
        monkeypatch.setattr(loop, "_train_one_epoch", stopped_mid_step)
    else:
        monkeypatch.setattr(loop, "_epoch", stopped_after)
    TALLY["inputs tried"] += 1
    rc, err = run_cli(train_argv(out, *BY_TIME, epochs=EPOCHS), capsys)
    assert rc == 143 and "stopped by SIGTERM" in err
    assert read_checkpoint(RunFiles(out).checkpoint)["epoch"] == stop_epoch
    assert not list(RunFiles(out).checkpoint.parent.glob(".*.tmp"))
    monkeypatch.setattr(loop, "_train_one_epoch", real_train)
    monkeypatch.setattr(loop, "_epoch", real_epoch)
    assert cli.main(train_argv(out, *BY_TIME, "--resume", epochs=EPOCHS)) == 0
    assert run_rows(out) == reference
    TALLY["worked as promised"] += 1


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_a_sigkill_at_a_random_moment_resumes_exactly(trial, reference, tmp_path):
    """Real process, default policy with a short interval: killed anywhere, it resumes from
    whatever checkpoint there is (or starts over) and ends with the reference rows."""
    out = tmp_path / "run"
    argv = train_argv(out, "--checkpoint-seconds", "0.2", epochs=EPOCHS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nclab.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not RunFiles(out).metrics.exists():
        time.sleep(0.02)
    assert RunFiles(out).metrics.exists(), proc.stderr.read() if proc.poll() is not None else ""
    time.sleep(random.Random(trial).uniform(0.0, 1.0))
    proc.kill()
    proc.communicate(timeout=60)
    if proc.returncode == 0:  # finished before the kill (a fast machine)
        assert run_rows(out) == reference
        return
    assert proc.returncode == -signal.SIGKILL
    resume = "--resume" if RunFiles(out).config.exists() else "--overwrite"
    assert cli.main(train_argv(out, "--checkpoint-seconds", "0.2", resume, epochs=EPOCHS)) == 0
    assert run_rows(out) == reference


def test_the_logs_reach_the_disk_before_each_checkpoint(tmp_path, monkeypatch):
    """Rows are appended without fsync; every checkpoint write is preceded by one of the logs,
    so no crash leaves a checkpoint whose rows are lost."""
    events: list[str] = []
    real_sync, real_write = loop.sync_logs, loop.atomic_write

    def sync(files):  # noqa: ANN001, ANN202
        events.append("sync")
        real_sync(files)

    def write(path, fn):  # noqa: ANN001, ANN202
        events.append("checkpoint" if path.name == "last.pt" else "other")
        real_write(path, fn)

    monkeypatch.setattr(loop, "sync_logs", sync)
    monkeypatch.setattr(loop, "atomic_write", write)
    out = tmp_path / "run"
    assert cli.main(train_argv(out, "--checkpoint-every", "2", epochs=EPOCHS)) == 0
    writes = [i for i, e in enumerate(events) if e == "checkpoint"]
    assert len(writes) == 3 and all(events[i - 1] == "sync" for i in writes)
