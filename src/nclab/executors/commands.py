"""``commands``: for any other scheduler, one ``nclab train`` command per task
(``nclab compare --print-commands``); run them anywhere, then ``nclab report OUT``.

Each command trains with ``--resume`` (``--overwrite`` for a task that clears its folder), so a
command that was cut off or started again continues from its last checkpoint, and a finished
run is returned as it is. Paths are absolute: a scheduler may start the command elsewhere.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nclab.config import TrainConfig
from nclab.executors.base import Completion, Executor, Resources, Task, register

__all__ = ["CommandsExecutor", "train_command"]


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


@register
class CommandsExecutor(Executor):
    """Turns each submitted task into an ``nclab train`` command (:attr:`commands`), with
    ``resources.threads`` (None: torch's default where the command runs) and absolute paths;
    nothing trains here, so :meth:`as_completed` yields nothing."""

    name = "commands"
    completes = False

    def __init__(self, resources: Resources, program: str = "nclab") -> None:
        super().__init__(resources)
        self.program = program
        self.commands: list[str] = []

    def prepare(self, task: Task) -> Task:
        task = super().prepare(task)
        data_dir = task.config.data_dir
        data_dir = None if data_dir is None else str(Path(data_dir).expanduser().resolve())
        config = dataclasses.replace(task.config, data_dir=data_dir)
        return dataclasses.replace(task, config=config, path=task.path.resolve())

    def submit(self, tasks: Sequence[Task]) -> None:
        for task in map(self.prepare, tasks):
            command = train_command(task.config, task.path, self.program, overwrite=task.overwrite)
            self.commands.append(command)

    def as_completed(self) -> Iterator[Completion]:
        return iter(())

    def stop(self) -> None:
        """Nothing runs here."""
