"""SIGTERM and SIGHUP handled like Ctrl-C.

SLURM sends SIGTERM before it preempts or cancels a job, a closed terminal sends SIGHUP. Inside
:func:`termination_as_interrupt` both raise :class:`Interrupted`, a ``KeyboardInterrupt``, so
every command stops through the same path as Ctrl-C: the files written so far stay consistent
(atomic writes, the last checkpoint kept), and :func:`nclab.cli.main` prints one line and exits
with 128 + the signal number (143 SIGTERM, 129 SIGHUP, 130 Ctrl-C).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["HANDLED", "Interrupted", "exit_code", "reason", "termination_as_interrupt"]

#: The signals turned into :class:`Interrupted` (SIGINT is Python's own KeyboardInterrupt).
HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A command stopped by a signal (SIGTERM, SIGHUP); ``exit_code`` is 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum

    def __reduce__(self):  # noqa: ANN204 - picklable across worker processes
        return (type(self), (self.signum,))


def exit_code(err: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for Ctrl-C, 143 SIGTERM, 129 SIGHUP."""
    return int(getattr(err, "exit_code", 128 + signal.SIGINT))


def reason(err: KeyboardInterrupt) -> str:
    """``interrupted`` (Ctrl-C) or ``stopped by SIGTERM`` / ``stopped by SIGHUP``."""
    if isinstance(err, Interrupted):
        return f"stopped by {signal.Signals(err.signum).name}"
    return "interrupted"


def _raise(signum: int, frame: object) -> None:
    for sig in HANDLED:  # a second signal must not break the cleanup of the first
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """Raise :class:`Interrupted` on SIGTERM/SIGHUP for the duration of the block (main thread
    only; elsewhere, and for signals set to be ignored by the caller, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in HANDLED:
        old = signal.getsignal(sig)
        if sig == signal.SIGHUP and old == signal.SIG_IGN:
            continue  # started under nohup: the user asked to survive the hang-up
        previous[sig] = old
        signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
