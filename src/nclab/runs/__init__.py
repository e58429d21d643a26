"""Run directories: their files (:mod:`nclab.runs.files`) and their life
(:mod:`nclab.runs.lifecycle`), written once for ``nclab train``, the tracker, ``nclab compare``
and the report. Plain file handling; importing it does not import torch."""

from nclab.runs import files, lifecycle
from nclab.runs.files import *  # noqa: F403 (every name of files.__all__)
from nclab.runs.lifecycle import RunState, first_perfect_epoch

__all__ = [*files.__all__, "RunState", "first_perfect_epoch", "lifecycle"]
