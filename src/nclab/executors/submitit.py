"""``submitit``: one cluster job per task through submitit
(https://github.com/facebookincubator/submitit; ``pip install 'nclab[submitit]'``): SLURM jobs
with the partition, time limit, GPUs, CPUs and memory of :class:`~nclab.executors.SlurmOptions`,
or submitit's ``local`` executor (jobs as processes on this machine, at most ``jobs`` at once)
and ``debug`` executor (in this process).

Each job runs a :class:`TrainJob`, a ``submitit.helpers.Checkpointable``: when SLURM times a
job out or preempts it, submitit requeues it and the run resumes from its last checkpoint.
Jobs are handled as they finish (``submitit.helpers.as_completed``). A job reports its task's
failure as data (the exception's type and message), so nothing reads submitit's error texts;
a job that ends with no report at all (cancelled, killed, out of time too often) is described
by its scheduler state.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nclab.executors.base import Completion, Executor, Resources, Task, register, run_task

try:
    from submitit.helpers import Checkpointable
except ImportError:  # optional: SubmititExecutor says how to install it when it is used
    Checkpointable = object  # type: ignore[assignment,misc]

__all__ = ["JobFailedError", "SubmititExecutor", "TrainJob"]


class JobFailedError(RuntimeError):
    """A submitted job ended without training its run (an error in the run, a time limit, a
    cancelled job); the message names the run, the job, the reason and the job's log."""

    exit_code = 1


class TrainJob(Checkpointable):
    """What one job runs: its task, trained with resume; returns ``(seconds, None)`` or
    ``(None, "ErrorType: message")``."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __call__(self) -> tuple[float | None, str | None]:
        try:
            return run_task(self.task), None
        except Exception as err:  # noqa: BLE001 - reported to the submitting process as data
            return None, " ".join(f"{type(err).__name__}: {err}".split())

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit before it requeues a timed-out or preempted job: the requeued
        job resumes the run folder this one began (never clears it again)."""
        self.task = replace(self.task, overwrite=False)
        return super().checkpoint(*args, **kwargs)  # type: ignore[misc]


@register
class SubmititExecutor(Executor):
    """One submitit job per task; ``resources.slurm`` describes the jobs and ``cpus`` sets the
    tasks' torch threads (this machine's CPU count says nothing about the nodes)."""

    name = "submitit"

    def __init__(self, resources: Resources) -> None:
        super().__init__(replace(resources, threads=resources.slurm.cpus))
        self.cluster = self._cluster(resources.slurm.cluster)
        self._queue: collections.deque[Task] = collections.deque()
        self._running: list[tuple[Any, Task]] = []
        self._executor: Any = None

    def submit(self, tasks: Sequence[Task]) -> None:
        self._queue.extend(self.prepare(task) for task in tasks)

    def describe(self) -> str:
        cap = self._cap()
        return "one submitit job each" + (f", at most {cap} at once" if cap else "")

    def as_completed(self) -> Iterator[Completion]:
        from submitit.helpers import as_completed

        poll = 10.0 if self.cluster == "slurm" else 0.2
        while self._queue or self._running:
            cap = self._cap()
            while self._queue and (cap is None or len(self._running) < cap):
                task = self._queue.popleft()
                executor = self._submitit_executor()
                executor.update_parameters(name=f"nclab-{task.name}")
                self._running.append((executor.submit(TrainJob(task)), task))
            job = next(as_completed([job for job, _ in self._running], poll_frequency=poll))
            index = next(i for i, (j, _) in enumerate(self._running) if j is job)
            yield self._completion(*self._running.pop(index))

    def stop(self) -> None:
        self._queue.clear()
        for job, _ in self._running:
            job.cancel(check=False)
        self._running.clear()

    # ------------------------------------------------------------------ internals

    def _cap(self) -> int | None:
        """Jobs at once: ``jobs`` on submitit's local executor; a cluster queues them itself."""
        return self.resources.jobs if self.cluster == "local" else None

    @staticmethod
    def _cluster(cluster: str) -> str:
        try:
            import submitit
        except ImportError:
            raise ValueError(
                "--launcher submitit needs submitit: pip install 'nclab[submitit]'"
            ) from None
        if cluster != "auto":
            return cluster
        # submitit itself would fall back to running every job at once on this machine
        if submitit.AutoExecutor.which() != "slurm":
            raise ValueError(
                "submitit finds no SLURM cluster here (no sbatch): run nclab compare on a SLURM "
                "login node, or pass --slurm-cluster local to run the jobs as processes here"
            )
        return "slurm"

    def _submitit_executor(self) -> Any:
        if self._executor is not None:
            return self._executor
        import submitit

        options = self.resources.slurm
        if options.folder is None:
            raise ValueError("the submitit launcher needs a folder for its job files and logs")
        executor = submitit.AutoExecutor(folder=Path(options.folder), cluster=self.cluster)
        params: dict[str, Any] = {
            "timeout_min": options.time_minutes,
            "nodes": 1,
            "tasks_per_node": 1,
            "gpus_per_node": options.gpus,
        }
        if options.cpus is not None:
            params["cpus_per_task"] = options.cpus
        if options.mem_gb is not None:
            params["mem_gb"] = options.mem_gb
        if options.partition is not None:
            params["slurm_partition"] = options.partition
        executor.update_parameters(**params)
        self._executor = executor
        return executor

    @staticmethod
    def _completion(job: Any, task: Task) -> Completion:
        log = job.paths.stderr
        if job.exception() is not None:  # no report from TrainJob: the job itself ended
            error = JobFailedError(
                f"run {task.name}: job {job.job_id} ended without a result (state {job.state}; "
                f"log: {log}); start it again to resume the run"
            )
            return Completion(task, error=error)
        seconds, message = job.result()
        if message is not None:
            error = JobFailedError(
                f"run {task.name} failed in job {job.job_id}: {message} (log: {log}); start it "
                "again to resume the run"
            )
            return Completion(task, error=error)
        return Completion(task, seconds)
