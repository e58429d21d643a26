"""The one way nclab runs many trainings: an :class:`Executor` takes :class:`Task` s (a run's
config and folder), trains them somewhere and hands back a :class:`Completion` per task, in the
order they finish.

Every backend follows the same three steps::

    with create("local", Resources(jobs=2, threads=1)) as executor:
        executor.submit(tasks)
        for done in executor.as_completed():
            if done.error is not None:
                raise done.error        # leaving the block stops every task still running
            print(done.task.name, done.seconds)

Leaving the ``with`` block by an exception (a failed task, Ctrl-C, SIGTERM) calls
:meth:`Executor.stop`, which ends what is still queued or running at once; every task trains
with resume, so a stopped run continues from its last checkpoint when it is submitted again.

A backend is one module of this package that defines an :class:`Executor` subclass with a
``name`` and decorates it with :func:`register`; the package imports its modules, so adding a
scheduler touches one file. Importing this package imports neither torch nor numpy.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Self, TypeVar

from nclab.config import TrainConfig

__all__ = [
    "CLUSTERS",
    "EXECUTORS",
    "Completion",
    "Executor",
    "Resources",
    "SlurmOptions",
    "Task",
    "create",
    "launchers",
    "register",
    "run_task",
]

#: submitit executors: ``auto`` (SLURM when ``sbatch`` is found, else an error), ``slurm``,
#: ``local`` (jobs as processes on this machine, at most ``jobs`` at once) and ``debug`` (in
#: this process).
CLUSTERS = ("auto", "slurm", "local", "debug")


@dataclass(frozen=True)
class Task:
    """One training: ``config`` trained into the run folder ``path`` (resumed from its last
    checkpoint if it has one; cleared first with ``overwrite``). ``name`` labels the task in
    messages (``ce_seed0``)."""

    name: str
    config: TrainConfig
    path: Path
    overwrite: bool = False


@dataclass(frozen=True)
class Completion:
    """A finished task: ``seconds`` it trained, or the ``error`` that ended it (the task's own
    exception, named with the task's name, or the executor's account of a worker or job that
    ended without a result)."""

    task: Task
    seconds: float | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each cluster job: ``partition`` (None: the cluster's default),
    ``time_minutes`` (wall-clock limit; a job cut off by it is requeued and resumes),
    ``gpus`` and ``cpus`` per job (``cpus`` also sets the run's torch threads), ``mem_gb``
    (None: the partition's default); ``folder`` for submitit's scripts and logs; ``cluster``,
    one of :data:`CLUSTERS`."""

    partition: str | None = None
    time_minutes: int = 24 * 60
    gpus: int = 0
    cpus: int | None = None
    mem_gb: float | None = None
    folder: str | Path | None = None
    cluster: str = "auto"

    def __post_init__(self) -> None:
        for name, minimum in (("time_minutes", 1), ("gpus", 0), ("cpus", 1)):
            value = getattr(self, name)
            if value is None and name == "cpus":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                flag = {"time_minutes": "--slurm-time"}.get(name, f"--slurm-{name}")
                raise ValueError(f"{flag} must be an integer >= {minimum}, got {value!r}")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ValueError(f"--slurm-mem-gb must be > 0, got {self.mem_gb!r}")
        if self.cluster not in CLUSTERS:
            raise ValueError(f"unknown cluster {self.cluster!r}; use one of {', '.join(CLUSTERS)}")


@dataclass(frozen=True)
class Resources:
    """What an executor may use; each backend reads the fields that concern it.

    ``jobs``: tasks trained at once (worker processes; jobs of submitit's local executor);
    ``threads``: torch threads of each task, written into its config (None: torch's default
    where it trains); ``quiet``: a task trained in this process prints nothing (workers and
    jobs always train quietly); ``slurm``: cluster jobs' resources."""

    jobs: int = 1
    threads: int | None = None
    quiet: bool = True
    slurm: SlurmOptions = SlurmOptions()

    def __post_init__(self) -> None:
        for name in ("jobs", "threads"):
            value = getattr(self, name)
            if value is None and name == "threads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name} must be a positive integer, got {value!r}")


_E = TypeVar("_E", bound="Executor")


class Executor(abc.ABC):
    """Trains tasks and reports each one as it finishes. Subclasses set ``name`` and implement
    :meth:`submit`, :meth:`as_completed` and :meth:`stop`."""

    #: The name the registry, ``--launcher`` and messages use.
    name: ClassVar[str]
    #: False for a backend that hands its tasks elsewhere (printed commands): nothing completes.
    completes: ClassVar[bool] = True

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    def prepare(self, task: Task) -> Task:
        """The task as this executor trains it: with ``resources.threads`` in its config."""
        return replace(task, config=replace(task.config, threads=self.resources.threads))

    @abc.abstractmethod
    def submit(self, tasks: Sequence[Task]) -> None:
        """Queue ``tasks`` (they may start at once)."""

    @abc.abstractmethod
    def as_completed(self) -> Iterator[Completion]:
        """One :class:`Completion` per submitted task, in the order they finish; returns when
        none is left (tasks submitted meanwhile included)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """End every task still queued or running, now (they stay resumable)."""

    def close(self) -> None:
        """Release what the executor holds once every task has completed."""
        self.stop()

    def describe(self) -> str:
        """Where the submitted tasks train, for a progress line."""
        return self.name

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.close() if kind is None else self.stop()


EXECUTORS: dict[str, type[Executor]] = {}


def register(cls: type[_E]) -> type[_E]:
    """Class decorator: make an executor available by its ``name``."""
    if cls.name in EXECUTORS:
        raise ValueError(f"an executor named {cls.name!r} is already registered")
    EXECUTORS[cls.name] = cls
    return cls


def launchers() -> tuple[str, ...]:
    """Names of the executors that train tasks and report them (``--launcher`` choices)."""
    return tuple(name for name, cls in EXECUTORS.items() if cls.completes)


def create(name: str, resources: Resources | None = None) -> Executor:
    """The executor registered as ``name`` (ValueError for an unknown name), with
    ``resources`` (None: one job, torch's default threads)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown launcher {name!r}; use one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name](resources or Resources())


def name_error(error: BaseException, task: Task) -> BaseException:
    """Note a task's name on its failure (PEP 678; the CLI prints notes before the message)."""
    if isinstance(error, Exception):
        error.add_note(f"run {task.name}")
    return error


def run_task(task: Task, *, quiet: bool = True) -> float:
    """Train one task here (in this process); returns the seconds it took."""
    import torch

    from nclab.train import train

    if task.config.threads:
        torch.set_num_threads(int(task.config.threads))
    t0 = time.perf_counter()
    train(task.config, task.path, resume=not task.overwrite, overwrite=task.overwrite, quiet=quiet)
    return time.perf_counter() - t0
