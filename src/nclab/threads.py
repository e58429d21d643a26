"""One thread policy for every command, so that none oversubscribes the cores.

numpy's BLAS and the OpenMP/MKL pools default to one thread per core each, whatever else runs;
nclab's numpy work (report, UFM, metrics formulas) is many small products, which a pool of
threads on a shared or busy machine makes many times slower (``nclab report``: 162 s against
28 s with one thread). :func:`limit_threads`, called by :func:`nclab.cli.main` before numpy or
torch is imported, sets those pools to one thread unless the user set them. Training, where
threads pay off, asks for its threads explicitly: :func:`training_threads`.
"""

from __future__ import annotations

import os

#: The variables the BLAS/OpenMP runtimes read when they start.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_user_set: bool | None = None


def limit_threads() -> None:
    """Default every thread pool of this process (and its children) to one thread; a value the
    user exported wins (an exported ``OMP_NUM_THREADS`` is then the default of the other two).
    Must run before numpy or torch starts its pools."""
    global _user_set
    if _user_set is None:
        _user_set = "OMP_NUM_THREADS" in os.environ
    value = os.environ.get("OMP_NUM_THREADS", "1") if _user_set else "1"
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, value)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def training_threads(requested: int | None, jobs: int = 1) -> int:
    """torch intra-op threads for one of ``jobs`` concurrent training runs: ``requested`` if
    given, else the user's ``OMP_NUM_THREADS`` (when they exported it), else an equal share of
    :func:`available_cores`."""
    if requested is not None:
        return int(requested)
    if _user_set and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, available_cores() // max(1, int(jobs)))
