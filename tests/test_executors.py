"""The executor interface (nclab.executors): one way to train many runs. Completions come back
in the order the tasks finish, a failure names its task, leaving the block stops what still
runs, a new backend is one registered class, and submitit's jobs are requeueable
(Checkpointable) and capped on its local executor."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from nclab.executors import (
    EXECUTORS,
    Completion,
    Executor,
    Resources,
    SlurmOptions,
    Task,
    create,
    launchers,
    register,
)
from nclab.executors.local import WorkerDiedError
from nclab.runs import lock_holder, read_rows
from nclab.train import TrainConfig


def _config(epochs: int, **kw) -> TrainConfig:
    tiny = {"model": "mlp", "width": 16, "depth": 1, "batch_size": 20, "scheduler": "constant"}
    return TrainConfig(dataset="synthetic:k=3,d=8,n=20,test=10", epochs=epochs, **{**tiny, **kw})


def _task(tmp_path: Path, name: str, epochs: int, **kw) -> Task:
    return Task(name, _config(epochs, **kw), tmp_path / name)


@pytest.mark.slow
def test_local_workers_report_in_completion_order(tmp_path):
    long, short = _task(tmp_path, "long", 40), _task(tmp_path, "short", 1)
    with create("local", Resources(jobs=2, threads=1)) as executor:
        executor.submit([long, short])
        assert executor.describe() == "2 job(s) x 1 thread(s)"
        done = list(executor.as_completed())
    assert [d.task.name for d in done] == ["short", "long"]  # not the order of submission
    assert all(d.error is None and d.seconds is not None and d.seconds > 0 for d in done)
    assert [r["epoch"] for r in read_rows(tmp_path / "short" / "metrics.jsonl")][-1] == 1
    assert (tmp_path / "long" / "DONE").is_file()
    assert not multiprocessing.active_children()  # the workers were shut down


@pytest.mark.slow
def test_a_failure_names_its_task_and_leaving_the_block_stops_the_others(tmp_path):
    (tmp_path / "bad").write_text("a file where the run folder goes")
    long, bad = _task(tmp_path, "long", 100000), _task(tmp_path, "bad", 1)
    with pytest.raises(ValueError, match="not a directory") as caught:
        with create("local", Resources(jobs=2, threads=1)) as executor:
            executor.submit([long, bad])
            for done in executor.as_completed():
                assert done.task.name == "bad"
                raise done.error
    assert caught.value.__notes__ == ["run bad"]  # the CLI prints "run bad: ..."
    assert not multiprocessing.active_children()  # the long run was stopped at once
    assert not (tmp_path / "long" / "DONE").exists()


@pytest.mark.slow
def test_a_worker_that_dies_is_named_and_the_rest_still_train(tmp_path):
    victim, other = _task(tmp_path, "victim", 100000), _task(tmp_path, "other", 2)
    with create("local", Resources(jobs=2, threads=1)) as executor:
        executor.submit([victim, other])
        results = {}
        for done in executor.as_completed():
            results[done.task.name] = done
            if done.task.name == "other":  # the victim trains on: kill its worker
                holder = lock_holder(tmp_path / "victim")  # "PID n", the worker training it
                assert holder is not None
                os.kill(int(holder.split()[-1]), signal.SIGKILL)
    assert results["other"].error is None
    error = results["victim"].error
    assert isinstance(error, WorkerDiedError) and error.__notes__ == ["run victim"]
    deadline = time.monotonic() + 10  # the broken pool's processes are reaped asynchronously
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()


def test_one_job_trains_in_this_process(tmp_path, monkeypatch):
    calls = []

    def fake(config, out_dir, *, resume, overwrite, quiet):
        calls.append((config.seed, Path(out_dir), resume, overwrite, quiet, config.threads))

    monkeypatch.setattr("nclab.train.train", fake)
    tasks = [_task(tmp_path, "a", 1, seed=1), Task("b", _config(1), tmp_path / "b", True)]
    with create("local", Resources(jobs=1, threads=3, quiet=False)) as executor:
        executor.submit(tasks)
        names = [d.task.name for d in executor.as_completed()]
    assert names == ["a", "b"]
    assert calls == [
        (1, tmp_path / "a", True, False, False, 3),
        (0, tmp_path / "b", False, True, False, 3),
    ]


def test_resources_are_checked():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="--jobs must be a positive integer"):
            Resources(jobs=bad)
        with pytest.raises(ValueError, match="--threads must be a positive integer"):
            Resources(threads=bad)
    with pytest.raises(ValueError, match="unknown launcher 'ray'"):
        create("ray")


def test_a_new_backend_is_one_registered_class(tmp_path):
    class Reverse(Executor):
        """Completes its tasks in reverse order, here."""

        name = "reverse-for-test"

        def submit(self, tasks: Sequence[Task]) -> None:
            self.tasks = [self.prepare(t) for t in tasks]

        def as_completed(self) -> Iterator[Completion]:
            for task in reversed(self.tasks):
                yield Completion(task, 0.0)

        def stop(self) -> None:
            self.tasks = []

    try:
        register(Reverse)
        assert "reverse-for-test" in launchers()
        with pytest.raises(ValueError, match="already registered"):
            register(Reverse)
        with create("reverse-for-test", Resources(threads=2)) as executor:
            executor.submit([_task(tmp_path, "a", 1), _task(tmp_path, "b", 1)])
            done = list(executor.as_completed())
        assert [d.task.name for d in done] == ["b", "a"]
        assert {d.task.config.threads for d in done} == {2}  # prepare() applied the threads
    finally:
        EXECUTORS.pop("reverse-for-test", None)
    assert launchers() == ("local", "submitit")  # commands complete nothing here


# ------------------------------------------------------------------------------ submitit


class _FakeJob:
    """A job that is done after ``polls`` calls of done(); records how many ran at once."""

    def __init__(self, log: dict, task: Task, polls: int) -> None:
        self.log, self.task, self.polls = log, task, polls
        self.job_id = f"job-{task.name}"
        self.paths = SimpleNamespace(stderr=Path(f"{self.job_id}.err"))
        self.cancelled = False
        log["running"] += 1
        log["most"] = max(log["most"], log["running"])

    def done(self) -> bool:
        self.polls -= 1
        if self.polls == 0:
            self.log["running"] -= 1
        return self.polls <= 0

    def exception(self) -> None:
        return None

    def result(self) -> tuple[float, None]:
        return 1.0, None

    def cancel(self, check: bool = True) -> None:
        self.cancelled = True


class _FakeSubmitit:
    def __init__(self, polls: dict[str, int]) -> None:
        self.polls, self.log, self.jobs = polls, {"running": 0, "most": 0}, []

    def update_parameters(self, **kw) -> None:
        pass

    def submit(self, job) -> _FakeJob:
        self.jobs.append(_FakeJob(self.log, job.task, self.polls[job.task.name]))
        return self.jobs[-1]


@pytest.mark.parametrize(("cluster", "cap"), [("local", 2), ("debug", None)])
def test_submitit_jobs_complete_in_order_of_finishing_under_a_cap(cluster, cap, tmp_path):
    pytest.importorskip("submitit")
    polls = {"a": 9, "b": 2, "c": 4, "d": 1}
    fake = _FakeSubmitit(polls)
    slurm = SlurmOptions(cluster=cluster, cpus=3, folder=tmp_path)
    executor = create("submitit", Resources(jobs=2, slurm=slurm))
    executor._submitit_executor = lambda: fake  # the scheduler, replaced by fake jobs
    executor.submit([_task(tmp_path, n, 1) for n in polls])
    done = [d.task.name for d in executor.as_completed()]
    assert sorted(done) == sorted(polls) and done[0] != "a"
    assert fake.log["most"] == (cap or len(polls))
    assert {j.task.config.threads for j in fake.jobs} == {3}  # --slurm-cpus


def test_submitit_stop_cancels_the_running_jobs(tmp_path):
    pytest.importorskip("submitit")
    fake = _FakeSubmitit({"a": 1, "b": 10**6})
    executor = create("submitit", Resources(slurm=SlurmOptions(cluster="debug", folder=tmp_path)))
    executor._submitit_executor = lambda: fake
    with pytest.raises(KeyboardInterrupt), executor:
        executor.submit([_task(tmp_path, "a", 1), _task(tmp_path, "b", 1)])
        for _ in executor.as_completed():
            raise KeyboardInterrupt
    assert [j.cancelled for j in fake.jobs] == [False, True]


def test_submitit_jobs_are_checkpointable_and_requeue_as_resume(tmp_path):
    submitit = pytest.importorskip("submitit")
    from nclab.executors.submitit import TrainJob

    job = TrainJob(Task("a", _config(1), tmp_path / "a", overwrite=True))
    assert isinstance(job, submitit.helpers.Checkpointable)
    delayed = job.checkpoint()  # what submitit calls before it requeues a timed-out job
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function.task.overwrite is False  # the requeued job resumes, never clears
    assert delayed.function.task.path == tmp_path / "a"


def test_a_failing_job_reports_its_error_as_data(tmp_path):
    pytest.importorskip("submitit")
    from nclab.executors.submitit import TrainJob

    (tmp_path / "a").write_text("a file")
    seconds, message = TrainJob(_task(tmp_path, "a", 1))()
    assert seconds is None and message.startswith("ValueError: ")
    assert "not a directory" in message
