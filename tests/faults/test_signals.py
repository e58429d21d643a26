"""Promise: SIGTERM and SIGHUP end every command like Ctrl-C: one line saying what was kept
and how to continue, exit 143 / 129, a run that resumes exactly; compare's workers stop with
their parent; a ``nclab train`` requeued by SLURM resumes where it stopped."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from faultkit import TALLY, run_cli, train_argv

from nclab import cli
from nclab.runs import RunFiles, read_rows
from nclab.signals import Interrupted

EPOCHS = 12


def _rows(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k != "seconds"} for r in read_rows(RunFiles(out).metrics)
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ref") / "run"
    assert cli.main(train_argv(out, "--checkpoint-every", "1", epochs=EPOCHS)) == 0
    return _rows(out)


@pytest.fixture
def no_default_term():  # noqa: ANN201
    """A signal that arrives after a command returned must not kill the test process."""
    old = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in old.items():
        signal.signal(s, h)


def _one_line(err: str) -> str:
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err.strip()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("moment", range(4))
def test_a_signal_at_a_random_moment_of_train(sig, moment, reference, tmp_path, capsys,
                                              no_default_term):  # fmt: skip
    out = tmp_path / "run"
    delay = random.Random(moment * 31 + sig).uniform(0.05, 1.5)
    timer = threading.Timer(delay, os.kill, (os.getpid(), sig))
    TALLY["inputs tried"] += 1
    timer.start()
    try:
        rc, err = run_cli(train_argv(out, "--checkpoint-every", "1", epochs=EPOCHS), capsys)
    finally:
        timer.cancel()
    if rc == 0:  # finished before the signal came: nothing to check but the result
        assert _rows(out) == reference
        TALLY["worked as promised"] += 1
        return
    line = _one_line(err)
    assert rc == 128 + sig, line
    assert f"stopped by {signal.Signals(sig).name}" in line
    if RunFiles(out).config.exists():
        assert "--resume" in line
        assert cli.main(train_argv(out, "--checkpoint-every", "1", "--resume", epochs=EPOCHS)) == 0
        assert _rows(out) == reference  # resumed exactly
    TALLY["clear errors"] += 1


def test_the_funnel_turns_a_signal_into_one_line(monkeypatch, capsys):
    import nclab.commands.ufm as ufm_cmd

    def stopped(args):  # noqa: ANN001, ANN202
        raise Interrupted(signal.SIGHUP)

    monkeypatch.setattr(ufm_cmd, "run", stopped)
    TALLY["inputs tried"] += 1
    rc, err = run_cli(["ufm", "closed-form", "-K", "3"], capsys)
    assert rc == 129 and _one_line(err) == "nclab ufm: stopped by SIGHUP"
    TALLY["clear errors"] += 1


def test_a_slurm_requeue_resumes_where_it_stopped(reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = train_argv(out, "--checkpoint-every", "1", epochs=EPOCHS)
    stop_after = 5
    import nclab.train.loop as loop

    real_epoch = loop._epoch

    def preempted(run, epoch):  # noqa: ANN001, ANN202
        real_epoch(run, epoch)
        if epoch == stop_after:
            raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(loop, "_epoch", preempted)
    TALLY["inputs tried"] += 1
    rc, err = run_cli(argv, capsys)
    assert rc == 143 and "stopped by SIGTERM" in _one_line(err)
    monkeypatch.setattr(loop, "_epoch", real_epoch)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    rc, err = run_cli(argv, capsys)  # the same command, as sbatch --requeue runs it again
    assert rc == 0, err
    assert _rows(out) == reference
    TALLY["worked as promised"] += 1


# ---------------------------------------------------------------- real processes


def _nclab(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nclab.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found |= {int(p) for p in text.split()}
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_train_process_stopped_by_a_signal_resumes_exactly(sig, reference, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(out, "--checkpoint-every", "1", epochs=EPOCHS)[1:]
    proc = _nclab("train", *argv)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not RunFiles(out).checkpoint.exists():
        time.sleep(0.05)
    time.sleep(random.Random(sig).uniform(0.0, 0.3))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode in (0, -sig):
        # finished first; a signal after the command returned (handlers restored) ends the
        # process the default way, with every file already complete
        assert _rows(out) == reference
        return
    assert proc.returncode == 128 + sig, err
    line = _one_line(err)
    assert f"stopped by {signal.Signals(sig).name}" in line and "--resume" in line
    assert cli.main(train_argv(out, "--checkpoint-every", "1", "--resume", epochs=EPOCHS)) == 0
    assert _rows(out) == reference


@pytest.mark.slow
def test_compare_workers_stop_with_their_parent(tmp_path):
    out = tmp_path / "cmp"
    proc = _nclab(
        "compare", "--preset", "smoke", "--out", str(out), "--jobs", "2", "--seeds", "0", "1",
        "--epochs", "200", "--no-report", "--quiet",
    )  # fmt: skip
    deadline = time.monotonic() + 90
    workers: set[int] = set()
    while time.monotonic() < deadline and len(workers) < 2:
        workers = {p for p in _children(proc.pid) if _alive(p)}
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    line = _one_line(err)
    assert "stopped by SIGTERM" in line and "rerun the same command" in line
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)], "a worker outlived its parent"
