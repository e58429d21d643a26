"""The progress board of ``nclab compare`` (nclab.board): progress read from each run's
metrics.jsonl, one line per finished run off a terminal, bars on one, the final table, and the
milestone wording."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from nclab.board import Board, describe, milestone, outcome_table
from nclab.runs import RunFiles, append_row


@dataclass
class Outcome:
    name: str
    status: str
    seconds: float
    final_train_acc: float | None
    first_perfect_epoch: int | None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _row(epoch: int) -> dict:
    return {"epoch": epoch, "lr": 0.1, "train_acc": 0.5, "seconds": 0.1}


def test_milestone_reads_as_english_reached_or_not():
    assert milestone(None) == "never reached 100% train accuracy"
    assert milestone(7) == "100% train accuracy first at epoch 7"
    line = describe(Outcome("ce_seed0", "trained", 3.25, None, None))
    assert line == (
        "ce_seed0: trained in 3.2 s, final train acc ?, never reached 100% train accuracy"
    )
    assert "epoch never" not in line


def test_final_table_columns_align_and_hold_every_value():
    outcomes = [
        Outcome("ce_seed0", "trained", 12.34, 1.0, 17),
        Outcome("ls0.05_seed12", "reused", 0.0, 0.9876, None),
        Outcome("ls0.1_seed1", "resumed", 123.0, None, 3),
    ]
    lines = outcome_table(outcomes).splitlines()
    assert lines[0].split("  ")[0] == "run"
    assert re.fullmatch(r"[- ]+", lines[1])
    body = lines[2:]
    assert len(body) == 3
    assert body[0].split() == ["ce_seed0", "trained", "12.3", "s", "100.00%", "17"]
    assert body[1].split() == ["ls0.05_seed12", "reused", "0.0", "s", "98.76%", "never"]
    assert body[2].split() == ["ls0.1_seed1", "resumed", "123.0", "s", "?", "3"]
    # text columns start together, number columns end together
    assert len({line.index(o.status) for line, o in zip(body, outcomes, strict=True)}) == 1
    ends = {len(line) for line in [lines[0], *body]}
    assert len(ends) == 1


def test_off_a_terminal_one_line_per_finished_run_and_no_bars(tmp_path: Path):
    bars, lines = io.StringIO(), io.StringIO()
    board = Board(stream=bars, lines=lines)
    board.start([("a", tmp_path / "a", 5), ("b", tmp_path / "b", 5)])
    board.run_done(Outcome("b", "trained", 1.0, 1.0, 4))
    board.run_done(Outcome("a", "reused", 0.0, 0.5, None))
    table = board.close()
    assert bars.getvalue() == ""  # no bars, no control characters
    printed = lines.getvalue().splitlines()
    assert printed == [
        "  [1/2] b: trained in 1.0 s, final train acc 100.00%, 100% train accuracy first at "
        "epoch 4",
        "  [2/2] a: reused in 0.0 s, final train acc 50.00%, never reached 100% train accuracy",
    ]
    # the table keeps the planned order, not the completion order
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["a", "b"]


def test_quiet_prints_nothing_but_still_returns_the_table(tmp_path: Path):
    bars, lines = Terminal(), io.StringIO()
    board = Board(quiet=True, stream=bars, lines=lines)
    board.start([("a", tmp_path / "a", 3)])
    board.run_done(Outcome("a", "trained", 1.0, 1.0, 2))
    assert "a" in board.close()
    assert bars.getvalue() == lines.getvalue() == ""


def test_progress_is_read_from_the_runs_metrics_file(tmp_path: Path):
    """Bars follow the last logged epoch of each run's metrics.jsonl, whoever writes it."""
    screen = Terminal()
    board = Board(stream=screen, interval=3600)  # no background refresh: update() by hand
    folders = {name: tmp_path / name for name in ("ce_seed0", "ls0.1_seed0")}
    for folder in folders.values():
        folder.mkdir()
    board.start([(name, folder, 10) for name, folder in folders.items()])
    files = RunFiles(folders["ce_seed0"])
    for epoch in (1, 2, 3):
        append_row(files, _row(epoch))
    board.update()
    shown = screen.getvalue()
    assert re.search(r"ce_seed0\s+30%.*3/10 epochs, running", shown)
    assert re.search(r"ls0\.1_seed0\s+0%.*0/10 epochs, waiting", shown)
    # a half-written last line (a worker mid-append) is no error and no progress
    with open(files.metrics, "a", encoding="utf-8") as f:
        f.write('{"epoch": 4, "lr"')
    board.update()
    board.run_done(Outcome("ce_seed0", "trained", 2.0, 1.0, 3))
    done = r"ce_seed0\s+100%.*10/10 epochs, trained, train acc 100\.00%"
    assert re.search(done, screen.getvalue())
    table = board.close()
    assert "ls0.1_seed0" not in table  # it never reported: not in the table
    # no two bars on one line: each bar keeps its own position
    assert screen.getvalue().count("\n") >= 1


def test_background_thread_follows_without_update_calls(tmp_path: Path):
    import time

    screen = Terminal()
    board = Board(stream=screen, interval=0.05)
    folder = tmp_path / "run"
    folder.mkdir()
    board.start([("run", folder, 4)])
    append_row(RunFiles(folder), _row(1))
    append_row(RunFiles(folder), _row(2))
    deadline = time.monotonic() + 10
    while "2/4 epochs" not in screen.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    board.close()
    assert "2/4 epochs" in screen.getvalue()
