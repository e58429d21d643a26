"""Where the runs of ``nclab compare`` are trained, past one machine.

* ``local`` (default): worker processes on this machine (:func:`nclab.compare.compare`).
* ``submitit``: one SLURM job per (δ, seed) run, submitted through submitit
  (https://github.com/facebookincubator/submitit; ``pip install 'nclab[submitit]'``), with the
  partition, time limit, GPUs and CPUs of :class:`SlurmOptions`; :func:`run_with_submitit`
  waits for the jobs, then the comparison builds its report as usual. submitit's ``local``
  executor runs the same jobs as processes on this machine (how CI tests this path).
* any other scheduler: :func:`train_command` gives one ``nclab train`` command per run
  (``nclab compare --print-commands``); run them anywhere, then ``nclab report OUT``.

Each job trains with ``resume=True``, so a job that was cut off (time limit, preemption) or
resubmitted continues from its last checkpoint, and a finished run is returned as it is.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nclab.train.config import TrainConfig

if TYPE_CHECKING:
    from nclab.compare import CompareConfig, PlannedRun

__all__ = [
    "CLUSTERS",
    "LAUNCHERS",
    "JobFailedError",
    "SlurmOptions",
    "comparison_commands",
    "run_with_submitit",
    "train_command",
]

LAUNCHERS = ("local", "submitit")
#: submitit executors: ``auto`` (SLURM when ``sbatch`` is found, else an error), ``slurm``,
#: ``local`` (every job at once as a process on this machine) and ``debug`` (in this process).
CLUSTERS = ("auto", "slurm", "local", "debug")


class JobFailedError(RuntimeError):
    """A submitted job ended without training its run (an error in the run, a time limit, a
    cancelled job); the message names the run, the job, the reason and the job's log."""

    exit_code = 1


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each job: ``partition`` (None: the cluster's default), ``time_minutes``
    (wall-clock limit), ``gpus`` and ``cpus`` per job (``cpus`` also sets the run's torch
    threads), ``mem_gb`` (None: the partition's default); ``folder`` for submitit's scripts
    and logs (None: ``OUT/slurm``); ``cluster``, one of :data:`CLUSTERS`."""

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


# ------------------------------------------------------------------------------ commands


def _flag_values(name: str, value: Any) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + name.replace("_", "-")]
    if isinstance(value, list | tuple):
        return [flag, *(str(v) for v in value)]
    return [flag, repr(value) if isinstance(value, float) else str(value)]


def train_command(
    config: TrainConfig, out_dir: str | Path, program: str = "nclab", *, overwrite: bool = False
) -> str:
    """A shell command that trains ``config`` into ``out_dir``: ``nclab train`` with every
    option that differs from its default, ``--out``, ``--resume`` (continue a stopped run;
    a finished run is returned as it is; ``--overwrite`` instead with ``overwrite``) and
    ``--quiet``. ``nclab train``'s parser reads it back as ``config``."""
    words = [*shlex.split(program), "train"]
    for field in dataclasses.fields(TrainConfig):
        value, default = getattr(config, field.name), field.default
        if value == default:
            continue
        if value is None:
            raise ValueError(f"{field.name}=None cannot be written as an `nclab train` option")
        words += _flag_values(field.name, value)
    words += ["--out", str(out_dir), "--overwrite" if overwrite else "--resume", "--quiet"]
    return shlex.join(words)


def comparison_commands(cfg: CompareConfig, program: str = "nclab") -> tuple[list[str], list[str]]:
    """One ``nclab train`` command per run of the comparison ``cfg`` still to train, and the
    names of the runs already complete in ``cfg.out`` (reused, no command; all are trained
    with ``cfg.overwrite``). Paths (``--out``, ``--data-dir``) are absolute; threads:
    ``cfg.threads`` (unset: torch's default where the command runs)."""
    from nclab.compare import plan_runs, run_state
    from nclab.runs import RunState

    commands, reused = [], []
    for run in plan_runs(cfg):
        if not cfg.overwrite and run_state(run)[0] is RunState.DONE:
            reused.append(run.name)
            continue
        # absolute paths: a scheduler may start the command in another directory
        data_dir = run.config.data_dir
        data_dir = None if data_dir is None else str(Path(data_dir).expanduser().resolve())
        config = dataclasses.replace(run.config, threads=cfg.threads, data_dir=data_dir)
        path = run.path.resolve()
        commands.append(train_command(config, path, program, overwrite=cfg.overwrite))
    return commands, reused


# ------------------------------------------------------------------------------ submitit


def _executor(options: SlurmOptions, folder: Path) -> Any:
    try:
        import submitit
    except ImportError:
        raise ValueError(
            "--launcher submitit needs submitit: pip install 'nclab[submitit]'"
        ) from None
    cluster = options.cluster
    if cluster == "auto":
        # submitit itself would fall back to running every job at once on this machine
        if submitit.AutoExecutor.which() != "slurm":
            raise ValueError(
                "submitit finds no SLURM cluster here (no sbatch): run nclab compare on a SLURM "
                "login node, or pass --slurm-cluster local to run the jobs as processes here"
            )
        cluster = "slurm"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
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
    return executor


def _job_error(err: Exception) -> str:
    """The one line that says why a job failed: the last line of the job's traceback inside
    submitit's ``FailedJobError`` text, else the first line of the error (a job cut off by
    its time limit, say)."""
    text = str(err).strip()
    marker = "-" * 22
    if text.count(marker) >= 2:
        trace = text.split(marker)[1].strip().splitlines()
        if trace:
            return trace[-1].strip()
    return text.splitlines()[0] if text else type(err).__name__


def run_with_submitit(
    todo: Sequence[tuple[PlannedRun, str]],
    options: SlurmOptions,
    folder: Path,
    overwrite: bool,
    worker: Callable[[dict, str, bool, bool], dict],
    on_done: Callable[[PlannedRun, str, dict], None],
) -> None:
    """Submit one job per ``(run, status)`` of ``todo``, each calling ``worker(config dict,
    run dir, overwrite, quiet)`` (``nclab.compare``'s run trainer), wait for all of them,
    calling ``on_done(run, status, info)`` with the worker's result as each finishes. A failed
    job raises :class:`JobFailedError` naming the run, its job and its log (after cancelling
    the jobs still running; they resume from their checkpoints when the comparison is started
    again)."""
    executor = _executor(options, folder)
    jobs = []
    for run, status in todo:
        # threads: the job's CPUs (this machine's count says nothing about the nodes)
        config = {**run.config.to_dict(), "threads": options.cpus}
        executor.update_parameters(name=f"nclab-{run.name}")
        job = executor.submit(worker, config, str(run.path), overwrite, True)
        jobs.append((job, run, status))
    finished = set()
    try:
        for job, run, status in jobs:
            try:
                info = job.result()
            except Exception as err:
                raise JobFailedError(
                    f"run {run.name} failed in job {job.job_id}: {_job_error(err)} (log: "
                    f"{job.paths.stderr}); start the comparison again to resume the runs"
                ) from None
            finished.add(job.job_id)
            on_done(run, status, info)
    except BaseException:
        for job, _, _ in jobs:
            if job.job_id not in finished:
                job.cancel(check=False)
        raise
