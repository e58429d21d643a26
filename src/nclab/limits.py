"""Sizes checked before anything is allocated, in one place.

Every limit is named with the option it bounds, so a refusal is one line saying which option,
its value and the limit (exit 2), instead of a hang or an allocation that fails (or swaps) after
minutes. Fixed caps bound what no study needs (a depth of a million layers); the rest is measured
against the memory the machine has free now (:func:`available_memory`).
"""

from __future__ import annotations

import math
import os

__all__ = [
    "MAX_CLASSES",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_VALUES",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_WIDTH",
    "MAX_YAML_ALIASES",
    "MAX_YAML_DEPTH",
    "available_memory",
    "check_bytes",
    "check_count",
]

MAX_WIDTH = 65_536  #: --width (hidden units or base channels)
MAX_DEPTH = 256  #: --depth (hidden layers or conv blocks)
MAX_CLASSES = 10_000  #: classes: the NC statistics hold K x K float64 matrices
MAX_CONFIG_BYTES = 1 << 20  #: a --config file (YAML or JSON)
MAX_YAML_ALIASES = 100  #: aliases (*name) in a YAML --config (an alias bomb needs thousands)
MAX_YAML_DEPTH = 32  #: nesting of mappings and lists in a --config file
MAX_INT_DIGITS = 30  #: digits of an integer in a --config file
MAX_CONFIG_VALUES = 10_000  #: values in a --config file, aliases expanded


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_count(option: str, value: int, limit: int, why: str = "") -> None:
    """``ValueError`` when ``value`` exceeds ``limit`` (naming the option and the limit)."""
    if value > limit:
        raise ValueError(
            f"{option} {value} is larger than the limit {limit}"
            + (f" ({why})" if why else "")
            + f"; choose {option} <= {limit}"
        )


def check_bytes(what: str, needed: float, fix: str) -> None:
    """``ValueError`` when ``needed`` bytes exceed the memory available now."""
    available = available_memory()
    if not math.isfinite(needed) or (available is not None and needed > available):
        free = "unknown" if available is None else f"{available / 2**30:.3g} GiB"
        raise ValueError(
            f"{what} needs about {needed / 2**30:.3g} GiB of memory but {free} are available; {fix}"
        )
