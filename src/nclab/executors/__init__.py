"""Executors: the one way nclab trains many runs (:mod:`nclab.executors.base`).

Backends, one module each, registered where they are defined: ``local`` (worker processes on
this machine), ``submitit`` (SLURM jobs, or submitit's local executor), ``commands`` (printed
``nclab train`` commands for any other scheduler). Every module of this package is imported
here, so a new backend is one new file.
"""

import importlib
import pkgutil

from nclab.executors.base import (
    CLUSTERS,
    EXECUTORS,
    Completion,
    Executor,
    Resources,
    SlurmOptions,
    Task,
    create,
    launchers,
    register,
    run_task,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

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
