"""The one mapping of a ``metrics.jsonl`` row to logger tags (``train/…``, ``test/…``,
``time/seconds``; see :mod:`nclab.train.loggers`), shared by the TensorBoard and W&B writers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["TEST_METRICS", "metric_tag", "row_scalars"]

#: Row keys without a ``test_`` prefix that are metrics of the test set (calibration of the
#: test predictions).
TEST_METRICS = frozenset(
    {"ece", "mce", "ece_adaptive", "ece_classwise", "brier", "nll", "top5_acc", "size"}
)


def metric_tag(key: str) -> str:
    """The logger tag of a ``metrics.jsonl`` key (see the module's docstring)."""
    for prefix in ("train", "test", "ufm", "user"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    if key in TEST_METRICS:
        return f"test/{key}"
    if key == "seconds":
        return "time/seconds"
    return f"train/{key}"  # lr and the NC metrics of the training features


def row_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """Tag → value for every finite number of a metrics row except ``epoch`` (the step)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[metric_tag(key)] = float(value)
    return out
