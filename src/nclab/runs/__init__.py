"""Run directories: their files (:mod:`nclab.runs.files`) and their life
(:mod:`nclab.runs.lifecycle`), written once for ``nclab train``, the tracker, ``nclab compare``
and the report. Plain file handling; importing it does not import torch."""

from nclab.runs import lifecycle
from nclab.runs.files import (
    LOCK_NAME,
    MANIFEST_NAME,
    DirectoryLockedError,
    MetricsLogError,
    RunFiles,
    append_per_class,
    append_row,
    atomic_write,
    lock_directory,
    lock_holder,
    read_json,
    read_metrics,
    read_rows,
    rewrite_rows,
    write_json,
)
from nclab.runs.lifecycle import RunState, first_perfect_epoch

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "DirectoryLockedError",
    "MetricsLogError",
    "RunFiles",
    "RunState",
    "append_per_class",
    "append_row",
    "atomic_write",
    "first_perfect_epoch",
    "lifecycle",
    "lock_directory",
    "lock_holder",
    "read_json",
    "read_metrics",
    "read_rows",
    "rewrite_rows",
    "write_json",
]
