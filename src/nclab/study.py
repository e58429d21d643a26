"""A study: a grid of CE-vs-LS comparisons and the atlas of where the claims of Guo,
Andriopoulos, Zhao, Dong, Ling, Ross (2024), "Cross Entropy versus Label Smoothing: A Neural
Collapse Perspective" (arXiv 2402.03979), hold (:func:`study`).

A :class:`Grid` crosses datasets × models × training conditions; each *cell* of the product is
one comparison exactly as ``nclab compare`` runs it: CE and every δ of the grid, trained for
every seed from the same initialisation and batch order, judged with the report's verdict rules
(:mod:`nclab.report.verdicts`) in the cell's own report. The atlas (:mod:`nclab.report.atlas`)
lays every cell × δ against the claims.

Output layout (``out``)::

    cells/<dataset>_<model>_<condition>/runs/...     the cell's run directories (as compare's)
    cells/<dataset>_<model>_<condition>/report/      its compare report (report.html, summary.*)
    cells/<dataset>_<model>_<condition>/cell.json    the cell's settings and runs once reported
    report/                                          the atlas: atlas.png/.pdf, summary.md,
                                                     report.html, summary.json
    study.json                                       the grid, cells, runs and timings

Every run of every cell goes to one executor at once (``jobs`` workers stay busy across cells);
a cell's report is written as soon as its last run finishes. Rerunning the same command reuses
complete runs and reported cells and resumes interrupted runs from their last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nclab.compare import (
    PRESETS,
    CompareConfig,
    PlannedRun,
    RunOutcome,
    _outcome,
    pending,
    run_name,
    validate_smoothings,
)
from nclab.config import (
    MAX_SEED,
    PER_RUN_FIELDS,
    TrainConfig,
    config_differences,
    load_config_file,
    options,
)
from nclab.executors import Resources, SlurmOptions, create, launchers
from nclab.executors.commands import CommandsExecutor
from nclab.runs import RunState, atomic_write, lifecycle, lock_directory, read_json

__all__ = [
    "GRIDS",
    "Cell",
    "Grid",
    "Level",
    "StudyConfig",
    "StudyResult",
    "grid_from_dict",
    "load_grid",
    "plan_cells",
    "study",
]

#: Labels of a grid's levels become parts of folder names.
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,39}")
#: Keywords of :func:`nclab.report.build_report` a grid may set.
REPORT_KEYS = ("theory", "ufm_convergence", "ufm_max_iters")
_TOP_KEYS = (
    "name",
    "description",
    "datasets",
    "models",
    "conditions",
    "smoothings",
    "seeds",
    "train",
    "report",
    "jobs",
    "exclude",
)
MAX_CELLS = 1000
#: Options a study may set for every run over its grid (they change where or how fast a run
#: trains, not what it computes).
MACHINE_FIELDS = ("data_dir", "device")


@dataclass(frozen=True)
class Level:
    """One value of a grid's axis: a ``label`` (part of the cell's folder name) and the training
    options it sets."""

    label: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class Grid:
    """Datasets × models × conditions, each cell trained with ``train`` (options every cell
    shares) overridden by its dataset's, then its model's, then its condition's options; CE and
    every δ of ``smoothings`` for every seed. ``report`` holds :func:`nclab.report.build_report`
    keywords for the cells' reports; ``jobs`` the default worker count (None: min(2, CPUs))."""

    name: str
    description: str
    datasets: tuple[Level, ...]
    models: tuple[Level, ...]
    conditions: tuple[Level, ...]
    smoothings: tuple[float, ...]
    seeds: tuple[int, ...]
    train: Mapping[str, Any] = field(default_factory=dict)
    report: Mapping[str, Any] = field(default_factory=dict)
    jobs: int | None = None
    #: cells left out: each entry maps axes (dataset, model, condition) to a level's label; a
    #: cell matching every axis of an entry is skipped
    exclude: tuple[Mapping[str, str], ...] = ()

    def excluded(self, dataset: str, model: str, condition: str) -> bool:
        """Whether the cell of these labels is left out (:attr:`exclude`)."""
        labels = {"dataset": dataset, "model": model, "condition": condition}
        return any(all(labels[k] == v for k, v in e.items()) for e in self.exclude)

    def as_dict(self) -> dict[str, Any]:
        """The grid as the YAML/JSON mapping :func:`grid_from_dict` reads."""
        return {
            "name": self.name,
            "description": self.description,
            "datasets": {lv.label: dict(lv.options) for lv in self.datasets},
            "models": {lv.label: dict(lv.options) for lv in self.models},
            "conditions": {lv.label: dict(lv.options) for lv in self.conditions},
            "smoothings": list(self.smoothings),
            "seeds": list(self.seeds),
            "train": dict(self.train),
            "report": dict(self.report),
            "jobs": self.jobs,
            "exclude": [dict(e) for e in self.exclude],
        }


_CONDITIONS = {
    "clean": {},
    "noise0.2": {"label_noise": 0.2},
    "imbalance10": {"imbalance": 10.0},
}

GRIDS: dict[str, Grid] = {
    "smoke": Grid(
        "smoke",
        "seconds, for tests: a synthetic 4-class Gaussian mixture, MLP 2x32, clean and 10% "
        "label noise, δ 0.1, seeds 0 1, 25 epochs",
        datasets=(Level("synthetic", {"dataset": "synthetic:k=4,d=16,n=40,test=100"}),),
        models=(Level("mlp", {"model": "mlp", "width": 32, "depth": 2}),),
        conditions=(Level("clean", {}), Level("noise0.1", {"label_noise": 0.1})),
        smoothings=(0.1,),
        seeds=(0, 1),
        train={k: v for k, v in PRESETS["smoke"].train.items() if k not in ("dataset", "model")},
        report={"ufm_max_iters": 400},
    ),
    "default": Grid(
        "default",
        "3-8 minutes on 2 CPU cores (quiet to shared), offline: Fashion-MNIST (60 training "
        "images per class, per-epoch test metrics on 50 per class, the final epoch on all "
        "10,000) with an MLP 2x128, scikit-learn's 8x8 digits (60 per class, 359 test "
        "images) with the MLP and a small CNN (4 blocks, 8-64 channels); each x clean / 20% "
        "symmetric label noise / imbalance 10 (exponential), δ 0.1, seeds 0 1 2, 40 epochs of "
        "SGD (lr 0.05, momentum "
        "0.9, weight decay 5e-4, batch 32, cosine). Fashion-MNIST x CNN is excluded: it costs "
        "the whole budget and does not reach 100% training accuracy in it",
        datasets=(
            Level("fashion-mnist", {"dataset": "fashion-mnist", "test_per_class": 50}),
            Level("digits", {"dataset": "digits"}),
        ),
        models=(
            Level("mlp", {"model": "mlp", "width": 128, "depth": 2}),
            Level("cnn", {"model": "cnn", "width": 8, "depth": 4}),
        ),
        conditions=tuple(Level(k, v) for k, v in _CONDITIONS.items()),
        smoothings=(0.1,),
        seeds=(0, 1, 2),
        train=dict(
            per_class=60,
            epochs=40,
            batch_size=32,
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            scheduler="cosine",
        ),
        report={"ufm_max_iters": 2000},
        exclude=({"dataset": "fashion-mnist", "model": "cnn"},),
    ),
    "paper": Grid(
        "paper",
        "for a GPU cluster (--launcher submitit): the datasets and ResNets of Guo et al. "
        "(2024) (CIFAR-10 with ResNet-18; CIFAR-100, STL-10 and Tiny ImageNet with ResNet-50) "
        "x clean / 20% symmetric label noise / imbalance 10, δ 0.05, seeds 0 1 2, the paper's "
        "recipe (SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 128, lr x0.1 after epoch "
        "150, 500 epochs); datasets from --data-dir; 12 cells, 72 runs",
        datasets=tuple(
            Level(p.train["dataset"], {"dataset": p.train["dataset"]})
            for p in (
                PRESETS["paper"],
                PRESETS["paper-cifar100"],
                PRESETS["paper-stl10"],
                PRESETS["paper-tiny-imagenet"],
            )
        ),
        models=(
            Level("resnet18", {"model": "resnet18"}),
            Level("resnet50", {"model": "resnet50"}),
        ),
        conditions=tuple(Level(k, v) for k, v in _CONDITIONS.items()),
        smoothings=(0.05,),
        seeds=(0, 1, 2),
        train={k: v for k, v in PRESETS["paper"].train.items() if k not in ("dataset", "model")},
        jobs=1,
        exclude=(
            {"dataset": "cifar10", "model": "resnet50"},
            {"dataset": "cifar100", "model": "resnet18"},
            {"dataset": "stl10", "model": "resnet18"},
            {"dataset": "tiny-imagenet", "model": "resnet18"},
        ),
    ),
}

# ------------------------------------------------------------------------------ grid files


def _where(source: str, key: str) -> str:
    return f"grid {source}: {key}"


def _options(value: Any, source: str, key: str) -> dict[str, Any]:
    """A mapping of training options (None: no options), checked against the schema."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{_where(source, key)} must be a mapping of training options (option: value), "
            f"got {type(value).__name__}"
        )
    known = options()
    for name in value:
        if not isinstance(name, str) or name not in known:
            raise ValueError(
                f"{_where(source, f'{key}.{name}')}: unknown training option; use the names of "
                "`nclab train --help` with _ for - (e.g. label_noise)"
            )
        if name in PER_RUN_FIELDS:
            raise ValueError(
                f"{_where(source, f'{key}.{name}')}: set per run by the study (loss and "
                "smoothing from smoothings, seed from seeds, threads from --jobs); remove it"
            )
    return dict(value)


def _axis(value: Any, source: str, key: str, shorthand: str | None) -> tuple[Level, ...]:
    """An axis: a mapping label -> options, or (datasets, models) a list of names."""
    if isinstance(value, list) and shorthand is not None:
        items = {}
        for name in value:
            if not isinstance(name, str):
                raise ValueError(
                    f"{_where(source, key)}: list entries must be {shorthand} names, got "
                    f"{name!r}; or write a mapping label: {{options}}"
                )
            items[name] = {shorthand: name}
        value = items
    if not isinstance(value, Mapping) or not value:
        form = "a list of names or a mapping" if shorthand else "a mapping"
        raise ValueError(f"{_where(source, key)} must be {form} label: {{options}}, not empty")
    levels = []
    for label, opts in value.items():
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            raise ValueError(
                f"{_where(source, f'{key}.{label}')}: a label must be 1-40 letters, digits, "
                "'.', '+' or '-', starting with a letter or digit (it names the cell's folder)"
            )
        levels.append(Level(label, _options(opts, source, f"{key}.{label}")))
    return tuple(levels)


def _numbers(value: Any, source: str, key: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{_where(source, key)} must be a non-empty list")
    return value


def _report_options(value: Any, source: str) -> dict[str, Any]:
    """The ``report`` mapping: ``theory`` and ``ufm_convergence`` (true/false),
    ``ufm_max_iters`` (a positive integer)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        keys = ", ".join(REPORT_KEYS)
        raise ValueError(f"{_where(source, 'report')} must be a mapping of {keys}")
    for key, v in value.items():
        if key not in REPORT_KEYS:
            raise ValueError(
                f"{_where(source, f'report.{key}')}: unknown key; use {', '.join(REPORT_KEYS)}"
            )
        ok = (
            isinstance(v, bool)
            if key != "ufm_max_iters"
            else isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 10**7
        )
        if not ok:
            kind = "true or false" if key != "ufm_max_iters" else "an integer in 1..10^7"
            raise ValueError(f"{_where(source, f'report.{key}')} must be {kind}, got {v!r}")
    return dict(value)


def grid_from_dict(data: Any, source: str = "<dict>") -> Grid:
    """A :class:`Grid` from its mapping (a YAML grid file's content). ValueError naming the key
    for anything else: unknown keys, empty axes, unknown training options, bad δ or seeds."""
    if not isinstance(data, Mapping):
        raise ValueError(f"grid {source} must hold a mapping (datasets, models, conditions, ...)")
    unknown = [str(k) for k in data if k not in _TOP_KEYS]
    if unknown:
        raise ValueError(
            f"{_where(source, unknown[0])}: unknown key; a grid has {', '.join(_TOP_KEYS)}"
        )
    for key in ("datasets", "models"):
        if key not in data:
            raise ValueError(f"{_where(source, key)}: missing (at least one entry)")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{_where(source, 'name')} must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"{_where(source, 'description')} must be a string")
    smoothings = _numbers(data.get("smoothings", [0.05]), source, "smoothings")
    try:
        deltas = [d for d in validate_smoothings(smoothings) if d > 0]
    except ValueError as err:
        raise ValueError(f"{_where(source, 'smoothings')}: {err}") from None
    if not deltas:
        raise ValueError(f"{_where(source, 'smoothings')}: needs a δ > 0 to compare with CE")
    seeds = _numbers(data.get("seeds", [0, 1, 2]), source, "seeds")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise ValueError(
                f"{_where(source, 'seeds')}: seeds are integers in 0..{MAX_SEED}, got {s!r}"
            )
    report = _report_options(data.get("report"), source)
    jobs = data.get("jobs")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"{_where(source, 'jobs')} must be a positive integer, got {jobs!r}")
    conditions = data.get("conditions", {"clean": None})
    exclude = data.get("exclude") or []
    if not isinstance(exclude, list):
        raise ValueError(f"{_where(source, 'exclude')} must be a list of {{axis: label}} mappings")
    grid = Grid(
        name=name,
        description=description,
        datasets=_axis(data["datasets"], source, "datasets", "dataset"),
        models=_axis(data["models"], source, "models", "model"),
        conditions=_axis(conditions, source, "conditions", None),
        smoothings=tuple(deltas),
        seeds=tuple(dict.fromkeys(int(s) for s in seeds)),
        train=_options(data.get("train"), source, "train"),
        report=dict(report),
        jobs=jobs,
    )
    axes = {"dataset": grid.datasets, "model": grid.models, "condition": grid.conditions}
    for i, entry in enumerate(exclude):
        if not isinstance(entry, Mapping) or not entry:
            raise ValueError(
                f"{_where(source, f'exclude[{i}]')} must map axes (dataset, model, condition) "
                "to labels, e.g. {dataset: fashion-mnist, model: cnn}"
            )
        for axis, label in entry.items():
            if axis not in axes:
                raise ValueError(
                    f"{_where(source, f'exclude[{i}].{axis}')}: unknown axis; use dataset, "
                    "model or condition"
                )
            if label not in [lv.label for lv in axes[axis]]:
                raise ValueError(
                    f"{_where(source, f'exclude[{i}].{axis}')}: {label!r} is not a label of "
                    f"the grid's {axis} axis"
                )
    grid = replace(grid, exclude=tuple(dict(e) for e in exclude))
    cells = len(grid.datasets) * len(grid.models) * len(grid.conditions)
    if cells > MAX_CELLS:
        raise ValueError(f"grid {source} has {cells} cells, more than {MAX_CELLS}; split it")
    return grid


def load_grid(spec: str | Path | Grid) -> Grid:
    """A named grid (:data:`GRIDS`) or a YAML/JSON grid file (read with the bounded loader of
    option files, :func:`nclab.config.load_config_file`)."""
    if isinstance(spec, Grid):
        return spec
    text = str(spec)
    if text in GRIDS:
        return GRIDS[text]
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"--grid {text!r} is neither a named grid ({', '.join(GRIDS)}) nor a grid file"
        )
    data = load_config_file(path)
    return grid_from_dict(data, str(path))


# ------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Cell:
    """One comparison of the grid: its labels, folder, shared training options and runs."""

    name: str
    dataset: str
    model: str
    condition: str
    path: Path
    options: Mapping[str, Any]
    runs: tuple[PlannedRun, ...]

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    def describe(self) -> dict[str, Any]:
        """The cell's labels and options (study.json, cell.json, the atlas)."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "model": self.model,
            "condition": self.condition,
            "options": dict(self.options),
        }


def _check_threads(threads: int | None) -> None:
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"--threads must be a positive integer, got {threads!r}")


def plan_cells(
    grid: Grid,
    out: str | Path,
    *,
    threads: int | None = None,
    seeds: Sequence[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[Cell]:
    """Every cell of ``grid`` with its validated runs (CE first, then δ ascending; seeds
    inside), under ``out/cells``. ValueError naming the cell for options that do not make a
    valid training configuration. ``overrides`` (``data_dir``, ``device``: options that do not
    change a run's results) apply to every run."""
    _check_threads(threads)
    overrides = dict(overrides or {})
    results = [k for k in overrides if k not in MACHINE_FIELDS]
    if results:
        raise ValueError(
            f"{results[0]} changes what a run computes: set it in the grid (train, or a level), "
            f"not for the whole study; the study takes {', '.join(MACHINE_FIELDS)}"
        )
    out = Path(out)
    seed_list = list(grid.seeds if seeds is None else seeds)
    if not seed_list:
        raise ValueError("--seeds needs at least one seed")
    for s in seed_list:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise ValueError(f"seeds must be integers in 0..{MAX_SEED}, got {s!r}")
    seed_list = list(dict.fromkeys(seed_list))
    smoothings = [0.0, *grid.smoothings]
    cells = []
    for d in grid.datasets:
        for m in grid.models:
            for c in grid.conditions:
                if grid.excluded(d.label, m.label, c.label):
                    continue
                name = f"{d.label}_{m.label}_{c.label}"
                merged = {**grid.train, **d.options, **m.options, **c.options, **overrides}
                merged = {k: v for k, v in merged.items() if v is not None}
                path = out / "cells" / name
                runs = []
                for delta in smoothings:
                    for seed in seed_list:
                        try:
                            config = TrainConfig(
                                **merged,
                                loss="ce" if delta == 0 else "ls",
                                smoothing=delta,
                                seed=seed,
                                threads=threads,
                            )
                        except (TypeError, ValueError) as err:
                            raise ValueError(f"grid {grid.name}, cell {name}: {err}") from None
                        rn = run_name(delta, seed)
                        runs.append(PlannedRun(f"{name}/{rn}", path / "runs" / rn, config))
                cells.append(Cell(name, d.label, m.label, c.label, path, merged, tuple(runs)))
    if not cells:
        raise ValueError(f"grid {grid.name}: every cell is excluded")
    return cells


# ------------------------------------------------------------------------------ running


@dataclass
class StudyConfig:
    """Options of :func:`study`: the grid (a :data:`GRIDS` name, a YAML file or a
    :class:`Grid`), the output folder, the seeds (None: the grid's), and how runs train, as in
    :class:`nclab.compare.CompareConfig` (``launcher`` one of
    :func:`nclab.executors.launchers`; ``jobs`` runs at once, ``threads`` each; ``slurm`` the
    cluster jobs' resources)."""

    grid: str | Path | Grid = "default"
    out: str | Path = "runs/study"
    seeds: Sequence[int] | None = None
    jobs: int | None = None
    threads: int | None = None
    overwrite: bool = False
    quiet: bool = False
    launcher: str = "local"
    slurm: SlurmOptions | None = None
    #: options for every run, over the grid's: where the data are and which device trains
    #: (``data_dir``, ``device``; options that change results belong in the grid)
    train: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class CellOutcome:
    """One cell: ``status`` is ``reported`` (report written by this call) or ``reused``; its
    runs and its report's summary.json content."""

    cell: Cell
    status: str
    runs: list[RunOutcome]
    summary: dict[str, Any]


@dataclass
class StudyResult:
    """What :func:`study` did: every cell, the atlas files, the wall time."""

    out_dir: Path
    grid: Grid
    cells: list[CellOutcome]
    atlas: Any  # nclab.report.atlas.AtlasResult
    seconds: float
    manifest: Path

    @property
    def trained(self) -> int:
        """Runs trained or resumed by this call."""
        return sum(r.status != "reused" for c in self.cells for r in c.runs)


def resources(grid: Grid, cfg: StudyConfig) -> Resources:
    """The executor's resources: ``cfg.jobs`` (else the grid's, else min(2, CPU count)) runs at
    once with ``cfg.threads`` threads each (else CPU count // jobs)."""
    jobs = cfg.jobs if cfg.jobs is not None else grid.jobs
    if jobs is None:
        jobs = max(1, min(2, os.cpu_count() or 1))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be a positive integer, got {jobs!r}")
    _check_threads(cfg.threads)
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // jobs)
    return Resources(jobs, threads, cfg.quiet, cfg.slurm or SlurmOptions())


def _cell_record(cell: Cell) -> dict[str, Any]:
    return {**cell.describe(), "runs": {r.path.name: r.config.to_dict() for r in cell.runs}}


def _cell_reusable(cell: Cell, done: set[str]) -> bool:
    """The cell's runs are complete and its report was written from exactly these runs."""
    if any(r.name not in done for r in cell.runs):
        return False
    record, summary = cell.path / "cell.json", cell.report_dir / "summary.json"
    if not (record.is_file() and summary.is_file()):
        return False
    try:
        saved = read_json(record)
    except (OSError, ValueError):
        return False
    saved_runs = saved.get("runs") if isinstance(saved, dict) else None
    if not isinstance(saved_runs, dict) or set(saved_runs) != {r.path.name for r in cell.runs}:
        return False
    for r in cell.runs:
        entry = saved_runs[r.path.name]
        if not isinstance(entry, dict) or config_differences(entry, r.config):
            return False
        if entry.get("epochs") != r.config.epochs:
            return False
    return True


def _log(cfg: StudyConfig, message: str) -> None:
    if not cfg.quiet:
        print(message, flush=True)


def _compare_view(cfg: StudyConfig) -> CompareConfig:
    """The comparison options the run lifecycle reads (the output folder, ``overwrite``)."""
    return CompareConfig(out=cfg.out, overwrite=cfg.overwrite, launcher=cfg.launcher)


def _check_launcher(name: str) -> None:
    if name not in launchers():
        raise ValueError(f"unknown launcher {name!r}; use one of {', '.join(launchers())}")


def study_commands(cfg: StudyConfig, program: str = "nclab") -> tuple[list[str], list[str]]:
    """One ``nclab train`` command per run of the study still to train (the ``commands``
    executor), and the names of the runs already complete."""
    grid = load_grid(cfg.grid)
    res = resources(grid, cfg)
    cells = plan_cells(grid, cfg.out, threads=cfg.threads, seeds=cfg.seeds, overrides=cfg.train)
    todo, reused = pending(_compare_view(cfg), [r for c in cells for r in c.runs])
    executor = CommandsExecutor(Resources(threads=cfg.threads, slurm=res.slurm), program)
    executor.submit([task for task, _ in todo])
    return executor.commands, reused


def study(cfg: StudyConfig) -> StudyResult:
    """Run every cell of the grid (reusing complete runs and reported cells, resuming
    interrupted runs), write each cell's report and the atlas. ValueError for a bad grid or
    options, or when ``out`` holds runs of another configuration (``overwrite`` retrains
    them)."""
    t0 = time.perf_counter()
    grid = load_grid(cfg.grid)
    _check_launcher(cfg.launcher)
    res = resources(grid, cfg)
    cells = plan_cells(grid, cfg.out, threads=res.threads, seeds=cfg.seeds, overrides=cfg.train)
    out = Path(cfg.out)
    lifecycle.refuse_system_folder(out)
    with lock_directory(out):  # one study per --out at a time
        return _study(cfg, grid, cells, res, t0)


def _study(
    cfg: StudyConfig, grid: Grid, cells: list[Cell], res: Resources, t0: float
) -> StudyResult:
    out = Path(cfg.out)
    runs = [r for c in cells for r in c.runs]
    todo, reused = pending(_compare_view(cfg), runs)
    done_names = set(reused)
    by_name = {r.name: r for r in runs}
    cell_of = {r.name: c for c in cells for r in c.runs}
    outcomes: dict[str, RunOutcome] = {
        n: _outcome(n, by_name[n].path, "reused", 0.0) for n in reused
    }
    reusable = {c.name for c in cells if not cfg.overwrite and _cell_reusable(c, done_names)}
    status = {t.name: "resumed" if s is RunState.RESUME else "trained" for t, s in todo}
    remaining = {c.name: sum(r.name not in outcomes for r in c.runs) for c in cells}
    cell_outcomes: dict[str, CellOutcome] = {}

    def finish_cell(cell: Cell) -> None:
        cell_runs = [outcomes[r.name] for r in cell.runs]
        if cell.name in reusable:
            summary = read_json(cell.report_dir / "summary.json")
            cell_outcomes[cell.name] = CellOutcome(cell, "reused", cell_runs, summary)
        else:
            summary = _report_cell(cell, grid)
            cell_outcomes[cell.name] = CellOutcome(cell, "reported", cell_runs, summary)
        _log(
            cfg,
            f"  [{len(cell_outcomes)}/{len(cells)} cells] {cell.name}: "
            f"{cell_outcomes[cell.name].status} ({cell.report_dir / 'report.html'})",
        )

    tasks = [task for task, _ in todo]
    with create(cfg.launcher, replace(res, jobs=min(res.jobs, max(1, len(tasks))))) as executor:
        executor.submit(tasks)
        _log(
            cfg,
            f"nclab study: grid {grid.name}, {len(cells)} cells x {len(cells[0].runs)} runs: "
            f"{len(tasks)} run(s) to train, {len(reused)} reused, {executor.describe()} -> {out}",
        )
        for cell in cells:  # nothing to train: report (or reuse) while the workers train
            if remaining[cell.name] == 0:
                finish_cell(cell)
        for done in executor.as_completed():
            if done.error is not None:
                raise done.error
            name = done.task.name
            outcomes[name] = _outcome(name, done.task.path, status[name], done.seconds or 0.0)
            cell = cell_of[name]
            remaining[cell.name] -= 1
            _log(
                cfg,
                f"  {name}: {status[name]} in {done.seconds or 0.0:.1f} s "
                f"({sum(remaining.values())} run(s) left)",
            )
            if remaining[cell.name] == 0:
                finish_cell(cell)
    ordered = [cell_outcomes[c.name] for c in cells]
    import matplotlib

    matplotlib.use("Agg")
    from nclab.report.atlas import build_atlas

    _log(cfg, "  building the atlas ...")
    atlas = build_atlas(
        [(c.cell.describe(), c.summary, str(c.cell.report_dir)) for c in ordered],
        out / "report",
        title=f"nclab study: grid {grid.name}",
        description=grid.description,
    )
    seconds = time.perf_counter() - t0
    manifest = _write_manifest(cfg, grid, ordered, res, seconds, atlas)
    return StudyResult(out, grid, ordered, atlas, seconds, manifest)


def _report_cell(cell: Cell, grid: Grid) -> dict[str, Any]:
    """Write the cell's compare report and ``cell.json``; returns the report's summary.json
    content (what the atlas reads)."""
    import matplotlib

    matplotlib.use("Agg")
    from nclab.report import build_report

    lifecycle.claim_output_folder(cell.path, ["cell.json"], [])
    result = build_report([r.path for r in cell.runs], cell.report_dir, **grid.report)
    text = json.dumps(_cell_record(cell), indent=1, default=str)
    atomic_write(cell.path / "cell.json", lambda f: f.write(text.encode()))
    return read_json(result.json)


def _write_manifest(
    cfg: StudyConfig,
    grid: Grid,
    cells: list[CellOutcome],
    res: Resources,
    seconds: float,
    atlas: Any,
) -> Path:
    doc = {
        "grid": grid.as_dict(),
        "jobs": res.jobs,
        "threads_per_job": res.threads,
        "launcher": cfg.launcher,
        "seconds": seconds,
        "cells": [
            {
                **c.cell.describe(),
                "status": c.status,
                "report": str(c.cell.report_dir / "report.html"),
                "runs": [{**asdict(o), "path": str(o.path)} for o in c.runs],
            }
            for c in cells
        ],
        "atlas": str(atlas.html),
    }
    path = Path(cfg.out) / "study.json"
    lifecycle.claim_output_folder(Path(cfg.out), ["study.json"], [])
    text = json.dumps(doc, indent=1, default=_json_default)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
