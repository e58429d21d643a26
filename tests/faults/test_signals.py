"""Promise: Ctrl-C (SIGINT), SIGTERM and SIGHUP end every command in one line saying what was
kept and how to continue, exit 130 / 143 / 129, whenever they come (start-up, training, writing
the final files, a report, a compare and its workers, the UFM), and leave a run that resumes
exactly; compare's workers stop with their parent; a ``nclab train`` requeued by SLURM resumes
where it stopped."""

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
import torch
from faultkit import (
    SLOW_RUN,
    TALLY,
    expect_clear_error,
    raiser,
    report_argv,
    run_cli,
    run_rows,
    spawn,
    strip_seconds,
    train_argv,
    uninterrupted_rows,
    wait_rows,
)

from nclab import cli
from nclab.runs import RunFiles, read_rows
from nclab.signals import Interrupted

EPOCHS = 12


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    return uninterrupted_rows(tmp_path_factory, EPOCHS, "--checkpoint-every", "1")


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
        assert run_rows(out) == reference
        TALLY["worked as promised"] += 1
        return
    line = _one_line(err)
    assert rc == 128 + sig, line
    assert f"stopped by {signal.Signals(sig).name}" in line
    if RunFiles(out).config.exists():
        assert "--resume" in line
        assert cli.main(train_argv(out, "--checkpoint-every", "1", "--resume", epochs=EPOCHS)) == 0
        assert run_rows(out) == reference  # resumed exactly
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
    assert run_rows(out) == reference
    TALLY["worked as promised"] += 1


@pytest.mark.parametrize(
    ("target", "argv_kind"),
    [
        ("nclab.train.loop.load_dataset", "train"),  # startup
        ("nclab.train.loop._epoch", "train"),  # training
        ("nclab.train.loop._finish", "train"),  # writing the final files
        ("nclab.report.build_report", "report"),
        ("nclab.executors.local.LocalExecutor.as_completed", "compare"),
        ("nclab.ufm.closed_form", "ufm"),
    ],
)
def test_ctrl_c_anywhere_exits_130_with_one_line(target, argv_kind, tiny_run, tmp_path, capsys):
    monkey = pytest.MonkeyPatch()
    module, name = target.rsplit(".", 1)
    monkey.setattr(f"{module}.{name}", raiser(KeyboardInterrupt()))
    argv = {
        "train": train_argv(tmp_path / "run"),
        "report": report_argv(tiny_run, out=tmp_path / "rep"),
        "compare": ["compare", "--preset", "smoke", "--out", str(tmp_path / "c"), "--quiet"],
        "ufm": ["ufm", "closed-form"],
    }[argv_kind]
    try:
        expect_clear_error(argv, capsys, code=130, says="interrupted", watch=(tiny_run,))
    finally:
        monkey.undo()


# ---------------------------------------------------------------- real processes


def _wait_python_handles_sigint(proc: subprocess.Popen, limit: float = 60) -> None:
    """Wait until the child's interpreter has installed its SIGINT handler (Linux: bit 2 of
    SigCgt in /proc/PID/status), so a Ctrl-C is Python's to handle, not the default action
    that kills a process still starting its interpreter (exit -2 on a loaded machine)."""
    deadline = time.monotonic() + limit
    status = Path(f"/proc/{proc.pid}/status")
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            lines = status.read_text().splitlines()
        except OSError:  # the child has just exited
            return
        caught = next((int(x.split()[1], 16) for x in lines if x.startswith("SigCgt:")), 0)
        if caught & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_ctrl_c_during_training_then_resume_equals_uninterrupted(tmp_path):
    out, epochs = tmp_path / "run", 6
    proc = spawn(["train", *SLOW_RUN, "--epochs", str(epochs), "--out", str(out)])
    wait_rows(out / "metrics.jsonl", 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0 and "--resume" in err
    argv = ["train", *SLOW_RUN, "--epochs", str(epochs)]
    assert cli.main([*argv, "--out", str(out), "--resume"]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "straight")]) == 0
    rows = read_rows(out / "metrics.jsonl")
    assert strip_seconds(rows) == strip_seconds(read_rows(tmp_path / "straight/metrics.jsonl"))


@pytest.mark.slow
def test_ctrl_c_at_startup_exits_130_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    proc = spawn(["train", *SLOW_RUN, "--epochs", "3", "--out", str(out)])
    _wait_python_handles_sigint(proc)
    time.sleep(0.2)  # inside the start-up: imports (torch takes about a second), dataset, model
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0
    assert cli.main(["train", *SLOW_RUN, "--epochs", "3", "--out", str(out), "--resume"]) == 0


@pytest.mark.slow
def test_ctrl_c_during_compare_with_workers(tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "smoke", "--out", str(out), "--jobs", "2", "--no-report"]
    proc = spawn([*argv, "--epochs", "400", "--quiet"], start_new_session=True)
    try:
        wait_rows(out / "runs" / "ce_seed0" / "metrics.jsonl", 2, proc, limit=180)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    for name in ("ce_seed0", "ls0.1_seed0"):
        run = out / "runs" / name
        assert not (run / "DONE").exists()
        if (run / "checkpoints" / "last.pt").exists():
            torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # intact


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
        assert run_rows(out) == reference
        return
    assert proc.returncode == 128 + sig, err
    line = _one_line(err)
    assert f"stopped by {signal.Signals(sig).name}" in line and "--resume" in line
    assert cli.main(train_argv(out, "--checkpoint-every", "1", "--resume", epochs=EPOCHS)) == 0
    assert run_rows(out) == reference


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
