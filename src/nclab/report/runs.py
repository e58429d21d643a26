"""Reading run directories written by :func:`nclab.train.train`.

A run directory holds ``config.json`` (the run's :class:`~nclab.train.TrainConfig` as a dict),
``metrics.jsonl`` (one JSON object per evaluated epoch), optionally ``predictions.npz``
(``test_logits``, ``test_labels`` of the final model) and a ``DONE`` marker once complete.

Runs are grouped by *loss setting* (:class:`GroupKey`): cross-entropy is the group with
smoothing 0 (``loss="ce"``, or ``loss="ls"`` with δ = 0, which is the same objective), every
label-smoothing δ is its own group, and seeds are the repeats inside a group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nclab.data import read_npz
from nclab.runs.files import RunFiles, lock_holder, read_json, read_metrics
from nclab.runs.lifecycle import identity_key

__all__ = [
    "GroupKey",
    "RunData",
    "discover_run_dirs",
    "group_runs",
    "load_run",
    "load_runs",
]

REPORT_DIRNAME = "report"


@dataclass(frozen=True, order=True)
class GroupKey:
    """One loss setting. Orders CE first, then label smoothing by increasing δ, then others."""

    rank: int
    smoothing: float
    loss: str

    @staticmethod
    def from_config(config: dict[str, Any]) -> GroupKey:
        """The group of a run from its config (``loss`` and ``smoothing`` keys)."""
        loss = str(config.get("loss", "ce")).lower()
        delta = float(config.get("smoothing", 0.0) or 0.0)
        if loss == "ce" or (loss == "ls" and delta == 0.0):
            return GroupKey(0, 0.0, "ce")
        if loss == "ls":
            return GroupKey(1, delta, "ls")
        return GroupKey(2, delta, loss)

    @property
    def is_ce(self) -> bool:
        """True for the cross-entropy baseline."""
        return self.loss == "ce"

    @property
    def is_ls(self) -> bool:
        """True for a label-smoothing group (δ > 0)."""
        return self.loss == "ls"

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``CE`` or ``LS δ=0.05``."""
        if self.is_ce:
            return "CE"
        if self.is_ls:
            return f"LS δ={self.smoothing:g}"
        return f"{self.loss} (δ={self.smoothing:g})" if self.smoothing else self.loss

    @property
    def slug(self) -> str:
        """File-name friendly name, e.g. ``ce`` or ``ls0.05``."""
        if self.is_ce:
            return "ce"
        return f"{self.loss}{self.smoothing:g}" if self.smoothing else self.loss


@dataclass
class RunData:
    """One run directory, loaded: config, per-epoch metric rows, final test predictions."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    test_logits: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    complete: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def group(self) -> GroupKey:
        """The loss setting of this run."""
        return GroupKey.from_config(self.config)

    @property
    def seed(self) -> int:
        """The run's seed (0 when the config does not say)."""
        return int(self.config.get("seed", 0) or 0)

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.path.name

    @property
    def epochs(self) -> np.ndarray:
        """Epoch of every row, as a float array."""
        return self.series("epoch")

    def has(self, key: str) -> bool:
        """True when at least one row has a finite value for ``key``."""
        return bool(np.isfinite(self.series(key)).any())

    def series(self, key: str) -> np.ndarray:
        """Column ``key`` over the rows as float64 (NaN where missing or None)."""
        return np.array([_as_float(row.get(key)) for row in self.rows], dtype=np.float64)

    def train_error(self) -> np.ndarray:
        """Training error ``1 - train_acc`` (accuracy as a fraction; percentages are rescaled)."""
        return 1.0 - _as_fraction(self.series("train_acc"))

    def test_error(self) -> np.ndarray:
        """Test error ``1 - test_acc`` (accuracy as a fraction)."""
        return 1.0 - _as_fraction(self.series("test_acc"))

    def final(self, key: str) -> float:
        """Value of ``key`` in the last row (NaN when missing)."""
        return float(self.series(key)[-1]) if self.rows else math.nan

    @property
    def train_size(self) -> int | None:
        """Number of training examples, when the config or the rows record it."""
        for source in (self.config, self.rows[0] if self.rows else {}):
            for key in ("train_size", "n_train", "num_train"):
                if source.get(key):
                    return int(source[key])
        return None


def _as_float(value: Any) -> float:
    if value is None or isinstance(value, bool | str):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _as_fraction(acc: np.ndarray) -> np.ndarray:
    """Accuracies as fractions: a column whose values exceed 1 is taken to be in percent."""
    finite = acc[np.isfinite(acc)]
    if finite.size and finite.max() > 1.0 + 1e-9:
        return acc / 100.0
    return acc


def is_run_dir(path: Path) -> bool:
    """A run directory has both ``config.json`` and ``metrics.jsonl``."""
    files = RunFiles(path)
    return files.config.is_file() and files.metrics.is_file()


def discover_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories named by ``paths``: each path is a run directory itself or is searched
    recursively for run directories (a ``nclab compare`` output directory, say); ``report``
    folders are skipped. Raises FileNotFoundError for a missing path or when nothing is found."""
    found: list[Path] = []
    searched: list[str] = []
    for raw in paths:
        path = Path(raw)
        searched.append(str(path))
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: pass a run directory or a `nclab compare` output directory"
            )
        if is_run_dir(path):
            found.append(path)
            continue
        for metrics in sorted(path.rglob(RunFiles(path).metrics.name)):
            run = metrics.parent
            if REPORT_DIRNAME in run.relative_to(path).parts:
                continue
            if is_run_dir(run):
                found.append(run)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise FileNotFoundError(
            f"no run directories (config.json + metrics.jsonl) found in {', '.join(searched)}: "
            "run `nclab compare` or `nclab train` first, or point at their output directories"
        )
    return unique


def load_run(path: str | Path) -> RunData:
    """Load one run directory."""
    path = Path(path)
    if not is_run_dir(path):
        raise FileNotFoundError(
            f"{path} is not a run directory (needs config.json and metrics.jsonl)"
        )
    files = RunFiles(path)
    config = read_json(files.config)
    if isinstance(config.get("config"), dict):  # {"config": {...}, "versions": {...}, ...}
        config = config["config"]
    rows, warnings = read_metrics(files.metrics)
    logits = labels = None
    pred_path = files.predictions
    if pred_path.is_file():
        preds = read_npz(pred_path, ("test_logits", "test_labels"))
        if "test_logits" in preds and "test_labels" in preds:
            logits = _numeric(preds["test_logits"], np.float64, pred_path)
            labels = _numeric(preds["test_labels"], np.int64, pred_path)
            if logits.ndim != 2 or labels.shape != (logits.shape[0],):
                raise ValueError(
                    f"{pred_path}: test_logits {logits.shape} and test_labels {labels.shape} do "
                    "not form (N, K) logits with N labels; the file is corrupt"
                )
    complete = files.done.exists()
    holder = lock_holder(path)
    if holder is not None:
        warnings.append(
            f"{path.name}: the run is still being written ({holder}); the report shows the "
            f"{len(rows)} epoch(s) logged so far"
        )
    elif not complete:
        warnings.append(f"{path.name}: run is not complete (no DONE marker)")
    return RunData(path, config, rows, logits, labels, complete, warnings)


def _numeric(array: np.ndarray, dtype: type, path: Path) -> np.ndarray:
    if array.dtype.kind not in "uif":
        raise ValueError(f"{path} holds {array.dtype} arrays, not numbers; the file is corrupt")
    return np.asarray(array, dtype=dtype)


def load_runs(paths: Sequence[str | Path]) -> list[RunData]:
    """Discover and load runs; runs without any metric row are dropped. Raises
    FileNotFoundError when no run with metrics remains."""
    runs = _unique_runs([load_run(p) for p in discover_run_dirs(paths)])
    runs = [r for r in runs if r.rows]
    if not runs:
        raise FileNotFoundError(
            "the run directories found have no metric rows yet: let at least one epoch finish"
        )
    _refuse_mixed_datasets(runs)
    return sorted(runs, key=lambda r: (r.group, r.seed, r.name))


def _unique_runs(runs: Sequence[RunData]) -> list[RunData]:
    """One run per identity (:func:`nclab.runs.lifecycle.identity_key`): a copied folder
    (``runs/ce_seed0.bak``) is the same run, counted once (the first path in sort order) and
    named in a warning, never a second seed."""
    kept: dict[str, RunData] = {}
    for run in sorted(runs, key=lambda r: str(r.path)):
        key = identity_key(run.path, run.config)
        first = kept.get(key)
        if first is None:
            kept[key] = run
        else:
            first.warnings.append(
                f"{run.path} is a copy of {first.path} (the same run identity); it is counted once"
            )
    return list(kept.values())


def _refuse_mixed_datasets(runs: Sequence[RunData]) -> None:
    """One report compares losses on one dataset: runs on different datasets (or different
    subsets or class counts of one) are refused, naming which runs use which."""
    by_data: dict[str, list[str]] = {}
    for run in runs:
        key = str(run.config.get("dataset", "?"))
        for option in ("per_class", "num_classes", "train_size"):
            if run.config.get(option) is not None:
                key += f", {option} {run.config[option]}"
        by_data.setdefault(key, []).append(str(run.path))
    if len(by_data) > 1:
        parts = "; ".join(f"{key}: {', '.join(paths)}" for key, paths in by_data.items())
        raise ValueError(
            f"the runs use different datasets ({parts}); a report compares losses on one "
            "dataset: pass the runs of one dataset (and --out)"
        )


def group_runs(runs: Sequence[RunData]) -> dict[GroupKey, list[RunData]]:
    """Runs by loss setting, groups in :class:`GroupKey` order, seeds ascending inside."""
    groups: dict[GroupKey, list[RunData]] = {}
    for run in sorted(runs, key=lambda r: (r.group, r.seed, r.name)):
        groups.setdefault(run.group, []).append(run)
    return groups
