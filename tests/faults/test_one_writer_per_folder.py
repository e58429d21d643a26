"""Promise: one writer per folder. A second ``nclab train`` or ``nclab compare`` on a folder in
use is refused in one line naming the holder's PID, the folder unchanged; a report on a run that
is still being written says so; the lock is released (and left empty) when its holder ends, be
it a finished run, a finished thread or a killed process."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit import SLOW_RUN, TINY, expect_clear_error, run_cli, spawn, wait_rows

from nclab import cli
from nclab.runs.files import LOCK_NAME, DirectoryLockedError, lock_directory
from nclab.train import read_rows


@pytest.fixture
def held(run_copy) -> Iterator[Path]:
    """``run_copy`` with its lock held by this process (as another writer would hold it)."""
    with lock_directory(run_copy):
        yield run_copy


@pytest.mark.parametrize(
    "extra",
    [["--resume", "--epochs", "3"], ["--overwrite", "--epochs", "2"], ["--epochs", "2"]],
    ids=["resume", "overwrite", "same"],
)
def test_second_writer_is_refused_naming_the_holder(extra, held, capsys):
    err = expect_clear_error(
        ["train", *TINY, "--out", str(held), *extra], capsys, watch=(held,), says="in use"
    )
    assert f"PID {os.getpid()}" in err and str(held) in err


def test_second_compare_on_one_out_is_refused(tmp_path, capsys):
    out = tmp_path / "cmp"
    with lock_directory(out):
        expect_clear_error(
            ["compare", "--preset", "smoke", "--out", str(out), "--quiet", "--no-report"],
            capsys,
            watch=(out,),
            says=f"PID {os.getpid()}",
        )


def test_report_on_a_run_being_written_says_so(held, tmp_path, capsys):
    argv = ["report", str(held), "--no-theory", "--out", str(tmp_path / "rep")]
    rc, err = run_cli(argv, capsys)
    assert rc == 0 and "still being written" in err and f"PID {os.getpid()}" in err


def test_lock_is_released_and_emptied_after_a_run(tiny_run):
    assert (tiny_run / LOCK_NAME).read_bytes() == b""
    with lock_directory(tiny_run):
        assert (tiny_run / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_lock_released_when_holder_thread_finishes(tmp_path):
    events = [threading.Event(), threading.Event()]

    def hold() -> None:
        with lock_directory(tmp_path):
            events[0].set()
            events[1].wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    events[0].wait(10)
    with pytest.raises(DirectoryLockedError), lock_directory(tmp_path):
        pass
    events[1].set()
    thread.join()
    with lock_directory(tmp_path):
        pass


@pytest.mark.slow
def test_second_process_is_refused_while_the_first_trains(tmp_path):
    out = tmp_path / "run"
    first = spawn(["train", *SLOW_RUN, "--epochs", "5000", "--out", str(out)])
    try:
        wait_rows(out / "metrics.jsonl", 1, first)
        second = spawn(["train", *SLOW_RUN, "--epochs", "5000", "--out", str(out), "--resume"])
        _, err = second.communicate(timeout=60)
        err = err.decode()
        assert second.returncode == 2, err
        assert f"PID {first.pid}" in err and "Traceback" not in err
        first.send_signal(signal.SIGKILL)  # the OS releases the lock of a killed process
        first.wait()
        rows_before = len(read_rows(out / "metrics.jsonl"))
        argv = ["train", *SLOW_RUN, "--epochs", str(rows_before + 1), "--out", str(out)]
        assert cli.main([*argv, "--resume"]) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
