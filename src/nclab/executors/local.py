"""``local``: tasks trained on this machine, ``jobs`` at a time in spawned worker processes
(``concurrent.futures``; one task, or ``jobs=1``: in this process).

A worker ignores Ctrl-C, SIGTERM and SIGHUP (a terminal's Ctrl-C or a whole-job SIGTERM also
reaches the parent, which stops the workers with SIGKILL and reports it once; training is
SIGKILL-safe), dies with its parent (Linux), and fixes its thread count before torch starts
its pools.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from nclab.executors.base import (
    Completion,
    Executor,
    Resources,
    Task,
    name_error,
    register,
    run_task,
)
from nclab.threads import training_threads

__all__ = ["LocalExecutor", "WorkerDiedError"]


class WorkerDiedError(RuntimeError):
    """A worker process ended without reporting (killed by a signal or the OS, e.g. out of
    memory)."""

    exit_code = 1


@register
class LocalExecutor(Executor):
    """Worker processes on this machine (spawn context), ``resources.jobs`` of them at most
    (threads per worker, unset: the CPU count shared between the jobs)."""

    name = "local"

    def __init__(self, resources: Resources) -> None:
        threads = training_threads(resources.threads, resources.jobs)
        super().__init__(replace(resources, threads=threads))
        self._queue: collections.deque[Task] = collections.deque()
        self._pool: ProcessPoolExecutor | None = None
        self._workers: list[multiprocessing.process.BaseProcess] = []

    def submit(self, tasks: Sequence[Task]) -> None:
        self._queue.extend(self.prepare(task) for task in tasks)

    def describe(self) -> str:
        jobs = min(self.resources.jobs, max(1, len(self._queue)))
        return f"{jobs} job(s) x {self.resources.threads} thread(s)"

    def as_completed(self) -> Iterator[Completion]:
        if self._pool is None and (self.resources.jobs == 1 or len(self._queue) <= 1):
            while self._queue:  # in this process
                task = self._queue.popleft()
                try:
                    yield Completion(task, run_task(task, quiet=self.resources.quiet))
                except Exception as err:  # noqa: BLE001 - handed to the caller, named
                    yield Completion(task, error=name_error(err, task))
            return
        while self._queue:
            futures = self._start_all()
            for future in as_completed(futures):
                task, error = futures[future], future.exception()
                if isinstance(error, BrokenProcessPool):
                    self.stop()  # the pool is unusable; its workers ignore its SIGTERM
                    error = WorkerDiedError(
                        "a worker process died without reporting (killed by a signal or by the "
                        "OS, e.g. out of memory); the runs stay resumable: rerun the same "
                        "command, with fewer --jobs if memory is short"
                    )
                if error is not None:
                    yield Completion(task, error=name_error(error, task))
                else:
                    yield Completion(task, future.result())

    def stop(self) -> None:
        self._queue.clear()
        if self._pool is not None:
            for worker in self._workers:  # workers ignore SIGTERM; training is SIGKILL-safe
                worker.kill()
            for worker in self._workers:
                worker.join()
            self._workers.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _start_all(self) -> dict[Future[float], Task]:
        """Hand every queued task to the pool (started on first use); the pool's processes
        are this process's children that appear meanwhile (ProcessPoolExecutor starts them
        in ``submit`` and keeps them until shutdown)."""
        before = set(multiprocessing.active_children())
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.resources.jobs,
                mp_context=context,
                initializer=_worker_init,
                initargs=(self.resources.threads,),
            )
        futures = {self._pool.submit(run_task, task): task for task in self._queue}
        self._queue.clear()
        self._workers += [p for p in multiprocessing.active_children() if p not in before]
        return futures


def _worker_init(threads: int) -> None:
    """Ignore Ctrl-C, SIGTERM and SIGHUP; on Linux, have the kernel send this process SIGKILL
    when its parent dies (even by SIGKILL), so no worker trains on after its parent is gone;
    fix the thread count before torch starts its pools."""
    import ctypes
    import signal
    import sys

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
