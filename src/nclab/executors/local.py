"""``local``: tasks trained on this machine, ``jobs`` at a time in spawned worker processes (one
task, or ``jobs=1``: in this process).

A worker ignores Ctrl-C, SIGTERM and SIGHUP (a terminal's Ctrl-C or a whole-job SIGTERM also
reaches the parent, which stops the workers with SIGKILL and reports it once; training is
SIGKILL-safe), dies with its parent (Linux), and fixes its thread count before torch starts
its pools. The parent waits on each worker's pipe and process sentinel, so it handles results
in the order they finish and knows which task a worker that died was training.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from nclab.executors.base import (
    Completion,
    Executor,
    Resources,
    Task,
    name_error,
    register,
    run_task,
)

__all__ = ["LocalExecutor", "WorkerDiedError"]


class WorkerDiedError(RuntimeError):
    """A worker process ended without reporting (killed by a signal or the OS, e.g. out of
    memory)."""

    exit_code = 1


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    task: Task | None = None


@register
class LocalExecutor(Executor):
    """Worker processes on this machine (spawn context), ``resources.jobs`` of them at most."""

    name = "local"

    def __init__(self, resources: Resources) -> None:
        if resources.threads is None:  # share the cores between the jobs
            threads = max(1, (os.cpu_count() or 1) // resources.jobs)
            resources = replace(resources, threads=threads)
        super().__init__(resources)
        self._queue: collections.deque[Task] = collections.deque()
        self._workers: list[_Worker] = []

    def submit(self, tasks: Sequence[Task]) -> None:
        self._queue.extend(self.prepare(task) for task in tasks)

    def describe(self) -> str:
        jobs = min(self.resources.jobs, max(1, len(self._queue)))
        return f"{jobs} job(s) x {self.resources.threads} thread(s)"

    def as_completed(self) -> Iterator[Completion]:
        if not self._workers and (self.resources.jobs == 1 or len(self._queue) <= 1):
            yield from self._in_process()
            return
        while self._queue or self._busy():
            self._dispatch()
            busy = self._busy()
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    yield self._receive(worker)

    def stop(self) -> None:
        self._queue.clear()
        for worker in self._workers:
            worker.process.kill()  # workers ignore SIGTERM; training is SIGKILL-safe
        for worker in self._workers:
            worker.process.join()
            worker.conn.close()
        self._workers.clear()

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except OSError:  # it has gone already
                pass
        for worker in self._workers:
            worker.process.join(timeout=60)
        self.stop()

    # ------------------------------------------------------------------ internals

    def _in_process(self) -> Iterator[Completion]:
        while self._queue:
            task = self._queue.popleft()
            try:
                seconds = run_task(task, quiet=self.resources.quiet)
            except Exception as err:  # noqa: BLE001 - handed to the caller, named
                yield Completion(task, error=name_error(err, task))
            else:
                yield Completion(task, seconds)

    def _busy(self) -> list[_Worker]:
        return [w for w in self._workers if w.task is not None]

    def _dispatch(self) -> None:
        """Give queued tasks to idle workers, starting workers up to ``jobs``."""
        while self._queue:
            idle = next((w for w in self._workers if w.task is None), None)
            if idle is None:
                if len(self._workers) >= self.resources.jobs:
                    return
                idle = self._start()
            idle.task = self._queue.popleft()
            idle.conn.send(idle.task)

    def _start(self) -> _Worker:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve, args=(child, self.resources.threads), name="nclab-worker"
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._workers.append(worker)
        return worker

    def _receive(self, worker: _Worker) -> Completion:
        task, worker.task = worker.task, None
        assert task is not None
        try:
            seconds, error = worker.conn.recv()
        except (EOFError, OSError):  # no reply: the process is gone
            worker.process.join()
            worker.conn.close()
            self._workers.remove(worker)
            died = WorkerDiedError(
                "a worker process died without reporting (killed by a signal or by the OS, "
                "e.g. out of memory); the runs stay resumable: rerun the same command, with "
                "fewer --jobs if memory is short"
            )
            return Completion(task, error=name_error(died, task))
        if error is not None:
            return Completion(task, error=name_error(error, task))
        return Completion(task, seconds)


def _serve(conn: Connection, threads: int) -> None:
    """A worker: train the tasks the parent sends until it sends None or goes away."""
    _ignore_signals_and_die_with_parent()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            reply: tuple[float | None, BaseException | None] = (run_task(task), None)
        except Exception as err:  # noqa: BLE001 - reported to the parent
            reply = (None, err)
        try:
            conn.send(reply)
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            err = reply[1]
            conn.send((None, RuntimeError(f"{type(err).__name__}: {err}")))


def _ignore_signals_and_die_with_parent() -> None:
    """Ignore Ctrl-C, SIGTERM and SIGHUP; on Linux, have the kernel send this process SIGKILL
    when its parent dies (even by SIGKILL), so no worker trains on after its parent is gone."""
    import ctypes
    import signal
    import sys

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
