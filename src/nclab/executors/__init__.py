"""Executors: the one way nclab trains many runs; the interface is :mod:`nclab.executors.base`
(re-exported here).

Backends, one module each, registered where they are defined: ``local`` (worker processes on
this machine), ``submitit`` (SLURM jobs, or submitit's local executor), ``commands`` (printed
``nclab train`` commands for any other scheduler). Every module of this package is imported
here, so a new backend is one new file.
"""

import importlib
import pkgutil

from nclab.executors.base import *  # noqa: F403 - the interface
from nclab.executors.base import __all__  # noqa: F401

for _module in pkgutil.iter_modules(__path__):  # noqa: F405 - the package's own path
    importlib.import_module(f"{__name__}.{_module.name}")
