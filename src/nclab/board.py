"""The progress board of ``nclab compare``: one live line per run, then a final table.

The board follows each run from its folder, not from the worker's output: it reads the run's
``metrics.jsonl`` through :func:`nclab.runs.read_rows` (the last row's epoch is the run's
progress), so it works the same for in-process runs, worker processes and cluster jobs whose
folder is on a shared file system. On a terminal (stderr a TTY) it draws one tqdm bar per run,
each at a fixed position, refreshed by a background thread; elsewhere (logs, pipes, CI) it draws
no bars and prints one line per finished run. :meth:`Board.close` returns the final table.

Interface (what a launcher calls, from one thread)::

    board = Board(quiet=False)
    board.start([(name, folder, epochs), ...])   # before the runs are handed out
    board.run_done(outcome)                      # as each run completes (or is reused)
    print(board.close())                         # after the last one: the final table

:meth:`Board.update` polls the folders once; the board's own thread calls it every
``interval`` seconds, a caller may call it too.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from nclab.runs import RunFiles, read_rows

__all__ = ["Board", "Outcome", "describe", "milestone", "outcome_table"]


class Outcome(Protocol):
    """What the board needs to know about a finished run (``nclab.compare.RunOutcome``)."""

    name: str
    status: str
    seconds: float
    final_train_acc: float | None
    first_perfect_epoch: int | None


def milestone(epoch: int | None) -> str:
    """The 100%-train-accuracy milestone as English, reached or not."""
    if epoch is None:
        return "never reached 100% train accuracy"
    return f"100% train accuracy first at epoch {epoch}"


def _acc(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.2f}%"


def describe(outcome: Outcome) -> str:
    """One line for a finished run, e.g. ``ce_seed0: trained in 4.2 s, final train acc 100.00%,
    100% train accuracy first at epoch 12``."""
    return (
        f"{outcome.name}: {outcome.status} in {outcome.seconds:.1f} s, final train acc "
        f"{_acc(outcome.final_train_acc)}, {milestone(outcome.first_perfect_epoch)}"
    )


def outcome_table(outcomes: Sequence[Outcome]) -> str:
    """The final table: run, status, wall time, final train accuracy, first epoch at 100%
    train accuracy (``never`` when it was not reached). Text left-aligned, numbers right."""
    header = ("run", "status", "wall time", "final train acc", "100% train acc at epoch")
    rows = [
        (
            o.name,
            o.status,
            f"{o.seconds:.1f} s",
            _acc(o.final_train_acc),
            "never" if o.first_perfect_epoch is None else str(o.first_perfect_epoch),
        )
        for o in outcomes
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    left = (True, True, False, False, False)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if lft else c.rjust(w) for c, w, lft in zip(cells, widths, left, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


# no rate or time estimate: every bar starts when the board does, not when its run does
_BAR = "{desc}  {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} epochs{postfix}"


@dataclass
class _Run:
    name: str
    folder: Path
    epochs: int
    done: int = 0
    size: int = -1  # metrics.jsonl size at the last read (re-read only when it changed)
    finished: bool = False
    bar: Any = None


class Board:
    """One live line per run and a final table (see the module docstring).

    ``quiet``: nothing is printed (the table is still returned). ``stream``: where the bars go
    (stderr by default; bars only when it is a terminal); ``lines``: where the one-line-per-run
    messages go when there are no bars (stdout by default, beside the command's other output)."""

    def __init__(
        self,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        lines: TextIO | None = None,
        interval: float = 0.5,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.lines = lines
        self.quiet = quiet
        self.bars = not quiet and _isatty(self.stream)
        self.interval = interval
        self._runs: dict[str, _Run] = {}
        self._outcomes: dict[str, Outcome] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, runs: Sequence[tuple[str, Path, int]]) -> None:
        """Show a line for every ``(name, folder, epochs)`` run; start following them."""
        width = max((len(name) for name, _, _ in runs), default=0)
        for position, (name, folder, epochs) in enumerate(runs):
            run = _Run(name, Path(folder), int(epochs))
            if self.bars:
                from tqdm.auto import tqdm

                run.bar = tqdm(
                    total=run.epochs,
                    desc=name.ljust(width),
                    position=position,
                    leave=True,
                    file=self.stream,
                    dynamic_ncols=True,
                    bar_format=_BAR,
                    postfix="waiting",
                    mininterval=0,  # the board's own polling sets the pace
                )
            self._runs[name] = run
        self.update()
        if self.bars and self._runs:
            self._thread = threading.Thread(target=self._follow, name="nclab-board", daemon=True)
            self._thread.start()

    def update(self) -> None:
        """Read each unfinished run's progress (last logged epoch) from its metrics.jsonl."""
        with self._lock:
            for run in self._runs.values():
                if not run.finished:
                    self._advance(run, _logged_epoch(run))

    def run_done(self, outcome: Outcome) -> None:
        """Mark a run finished (trained, resumed or reused): its bar is completed and shows the
        result; without bars, one line is printed."""
        with self._lock:
            self._outcomes[outcome.name] = outcome
            run = self._runs.get(outcome.name)
            if run is not None and not run.finished:
                self._advance(run, run.epochs)
                run.finished = True
                if run.bar is not None:
                    run.bar.set_postfix_str(
                        f"{outcome.status}, train acc {_acc(outcome.final_train_acc)}",
                        refresh=True,
                    )
            if not self.bars and not self.quiet:
                done = len(self._outcomes)
                text = f"  [{done}/{len(self._runs) or done}] {describe(outcome)}"
                print(text, file=self.lines or sys.stdout, flush=True)

    def close(self) -> str:
        """Stop following, close the bars, return the final table (runs in start order; runs
        that never reported are left out)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            for run in self._runs.values():
                if run.bar is not None:
                    run.bar.close()
                    run.bar = None
            order = [n for n in self._runs if n in self._outcomes]
            order += [n for n in self._outcomes if n not in self._runs]
            return outcome_table([self._outcomes[n] for n in order])

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            self.update()

    def _advance(self, run: _Run, epoch: int) -> None:
        epoch = min(max(epoch, 0), run.epochs)
        if epoch > run.done:
            if run.bar is not None:
                if run.done == 0 and epoch < run.epochs:
                    run.bar.set_postfix_str("running", refresh=False)
                run.bar.update(epoch - run.done)
            run.done = epoch


def _logged_epoch(run: _Run) -> int:
    """The last epoch in the run's metrics.jsonl (0 when absent or unreadable)."""
    path = RunFiles(run.folder).metrics
    try:
        size = path.stat().st_size
    except OSError:
        return run.done
    if size == run.size:
        return run.done
    try:
        rows = read_rows(path)
    except (OSError, ValueError):
        return run.done
    run.size = size
    epochs = [r.get("epoch") for r in rows if isinstance(r.get("epoch"), int)]
    return max(epochs, default=0)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
