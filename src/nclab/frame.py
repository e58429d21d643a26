"""Runs as data: the per-epoch metrics of many run directories as one tidy pandas DataFrame.

:func:`load_frame` reads run directories (of ``nclab train``, ``nclab compare`` or
:class:`~nclab.track.NCTracker`) through the report's reader (:mod:`nclab.report.runs`, which
reads ``metrics.jsonl`` with :func:`nclab.runs.read_metrics`) and returns one row per
run and evaluated epoch. Unlike the report, it accepts any mix of datasets, models and losses:
the run's identity and config are columns, so ``df.groupby(["dataset", "setting", "epoch"])``
and friends do the rest. ``per_class=True`` gives one row per run, epoch, split and class from
``per_class.jsonl`` instead.

pandas is an optional dependency (``pip install 'nclab[pandas]'``), imported only here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["IDENTITY_COLUMNS", "config_hash", "load_frame", "require_pandas"]

#: The first columns of every frame, in this order: which run a row belongs to.
IDENTITY_COLUMNS = (
    "run",
    "path",
    "config_hash",
    "setting",
    "dataset",
    "model",
    "loss",
    "smoothing",
    "seed",
    "complete",
)

#: Config entries that are not columns: nested records and long per-class lists.
_SKIPPED_CONFIG = ("resolved", "versions", "class_names")


def require_pandas() -> Any:
    """Import and return pandas, or raise ValueError saying how to install it."""
    try:
        import pandas
    except ImportError:
        raise ValueError(
            "runs as a DataFrame need pandas: pip install 'nclab[pandas]' (or pip install pandas)"
        ) from None
    return pandas


def config_hash(config: dict[str, Any]) -> str:
    """12 hex digits that identify what a run computes: a hash of its config's identity
    options (the :class:`~nclab.train.TrainConfig` fields with ``identity=True``, the seed
    among them; knobs such as threads or paths left out). Runs of a tracker, whose config is
    free-form, hash every plain entry."""
    from nclab.config import options

    if "epochs" in config and "model" in config:
        keep = {
            k: config.get(k)
            for k, (_, opt) in options().items()
            if opt.identity and not opt.knob and k in config
        }
    else:
        keep = {k: v for k, v in config.items() if k not in _SKIPPED_CONFIG and k != "start_time"}
    text = json.dumps(keep, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _config_columns(config: dict[str, Any]) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for key, value in config.items():
        if key in _SKIPPED_CONFIG or isinstance(value, dict):
            continue
        if isinstance(value, list | tuple):
            value = json.dumps(value)
        columns[key] = value
    return columns


def _identity(run: Any) -> dict[str, Any]:
    config = run.config
    return {
        "run": run.name,
        "path": str(run.path),
        "config_hash": config_hash(config),
        "setting": run.group.label,
        "dataset": config.get("dataset"),
        "model": config.get("model", config.get("model_class")),
        "loss": config.get("loss"),
        "smoothing": float(config.get("smoothing", 0.0) or 0.0),
        "seed": run.seed,
        "complete": run.complete,
    }


def load_frame(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    per_class: bool = False,
) -> pd.DataFrame:
    """One tidy DataFrame of the runs under ``paths``.

    ``paths``: run directories, or directories searched for them (a ``nclab compare --out``
    folder); one path or several. Runs of any datasets, models and losses mix freely; runs
    without any metric row yet are left out.

    Default (``per_class=False``): one row per run and evaluated epoch. Columns: the
    :data:`IDENTITY_COLUMNS` (``run`` folder name, ``path``, ``config_hash`` of the identity
    options, ``setting`` such as ``CE`` or ``LS δ=0.1``, ``dataset``, ``model``, ``loss``,
    ``smoothing``, ``seed``, ``complete``), then ``epoch`` and every metric of the rows
    (``train_acc``, ``nc1``, ``test_nc1``, ``ece``, ...; NaN where a run lacks one), then the
    remaining plain config entries (``lr`` is the row's learning rate; a config entry whose
    name a metric uses is prefixed ``config_``, e.g. ``config_test_size``).

    ``per_class=True``: one row per run, epoch, split (``train``/``test``) and class from
    ``per_class.jsonl``: the identity columns, ``epoch``, ``split``, ``class`` (index),
    ``class_name`` and one column per per-class statistic (``count``, ``variability``,
    ``nc1``, ...). Runs without ``per_class.jsonl`` contribute no rows.

    Raises FileNotFoundError when a path is missing or holds no run, ValueError (saying how to
    install it) when pandas is absent.
    """
    pd = require_pandas()
    from nclab.report.runs import discover_run_dirs, load_run

    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("paths is empty: pass at least one run directory")
    runs = [load_run(p) for p in discover_run_dirs(paths)]
    runs = sorted((r for r in runs if r.rows), key=lambda r: str(r.path))
    if not runs:
        raise FileNotFoundError(
            "the run directories found have no metric rows yet: let at least one epoch finish"
        )
    records = _per_class_records(runs) if per_class else _epoch_records(runs)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=[*IDENTITY_COLUMNS, "epoch"])
    return frame.reset_index(drop=True)


def _epoch_records(runs: Sequence[Any]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for run in runs:
        ident = _identity(run)
        config = _config_columns(run.config)
        metric_keys = {k for row in run.rows for k in row}
        extra = {
            (f"config_{k}" if k in metric_keys else k): v
            for k, v in config.items()
            if k not in ident
        }
        for row in run.rows:
            records.append({**ident, **row, **extra})
    return records


def _per_class_records(runs: Sequence[Any]) -> list[dict[str, Any]]:
    from nclab.runs import read_metrics

    records: list[dict[str, Any]] = []
    for run in runs:
        ident = _identity(run)
        names = run.config.get("class_names")
        rows, _ = read_metrics(Path(run.path) / "per_class.jsonl")
        for row in rows:
            for split, stats in row.items():
                if split == "epoch" or not isinstance(stats, dict):
                    continue
                lists = {k: v for k, v in stats.items() if isinstance(v, list)}
                size = max((len(v) for v in lists.values()), default=0)
                for k in range(size):
                    record = {**ident, "epoch": row["epoch"], "split": split, "class": k}
                    record["class_name"] = (
                        str(names[k]) if isinstance(names, list) and k < len(names) else str(k)
                    )
                    for stat, values in lists.items():
                        record[stat] = values[k] if k < len(values) else None
                    records.append(record)
    return records
