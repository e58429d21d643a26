"""The main job: train one model with cross-entropy and with label smoothing side by side, then
write the report (:func:`compare`).

Every loss setting (CE = δ 0, and each label-smoothing δ) is trained for every seed with the
*same* :class:`~nclab.train.TrainConfig` apart from ``loss``/``smoothing``; since the seed fixes
the initialisation, the per-class subset and the batch order in :mod:`nclab.train`, CE and LS
runs of one seed start from the same weights and see the same batches.

Output layout (``out``)::

    runs/ce_seed0/, runs/ls0.05_seed0/, ...   one run directory per (setting, seed)
    report/                                   report.html, summary.md, summary.json, figures
    compare.json                              the comparison's settings, runs and timings

A run directory that already holds the same, complete run (DONE marker, same config) is reused;
an interrupted one resumes from its last checkpoint; one with a different config is an error
unless ``overwrite`` is set. Runs are trained by ``jobs`` worker processes (spawn context), each
with ``threads`` intra-op threads (default: CPU count // jobs).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nclab.board import Board
from nclab.config import (
    DATASET_SPECIFIC_FIELDS,
    MAX_SEED,
    PER_RUN_FIELDS,
    TrainConfig,
    config_differences,
)
from nclab.executors import Resources, SlurmOptions, Task, create, launchers
from nclab.executors.commands import CommandsExecutor
from nclab.runs import RunFiles, RunState, atomic_write, lifecycle, lock_directory, read_rows
from nclab.threads import training_threads

if TYPE_CHECKING:
    from nclab.report import ReportResult

__all__ = [
    "PRESETS",
    "CompareConfig",
    "CompareResult",
    "PlannedRun",
    "Preset",
    "RunOutcome",
    "compare",
    "plan_runs",
    "run_name",
    "validate_smoothings",
]

#: Options that :func:`compare` sets per run; they cannot be overridden (``Option.per_run``).
MANAGED_FIELDS = PER_RUN_FIELDS


@dataclass(frozen=True)
class Preset:
    """A named comparison: training options, δ values, seeds and the default worker count."""

    name: str
    description: str
    train: dict[str, Any]
    smoothings: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    jobs: int | None = None  # None: min(2, CPU count)
    report: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        "smoke",
        "seconds: synthetic 4-class Gaussian mixture (40 per class), MLP 2x32, 25 epochs; "
        "for tests and a first look",
        dict(
            dataset="synthetic:k=4,d=16,n=40,test=100",
            model="mlp",
            width=32,
            depth=2,
            epochs=25,
            batch_size=32,
            lr=0.05,
            weight_decay=5e-4,
            scheduler="cosine",
        ),
        smoothings=(0.0, 0.1),
        report={"ufm_max_iters": 400},
    ),
    "quick": Preset(
        "quick",
        "about 3 minutes on 2 CPU cores: Fashion-MNIST, 300 training images per class (3,000), "
        "per-epoch test metrics on a fixed 200 per class (2,000) and the final epoch on the whole "
        "test set (10,000), MLP 784-256x4-10 (BatchNorm), SGD lr 0.05, momentum 0.9, weight "
        "decay 2e-3, batch 64, cosine schedule, 150 epochs, seeds 0 1 2; every run reaches 100% "
        "training accuracy with a long terminal phase",
        dict(
            dataset="fashion-mnist",
            per_class=300,
            test_per_class=200,
            model="mlp",
            width=256,
            depth=4,
            epochs=150,
            batch_size=64,
            lr=0.05,
            momentum=0.9,
            weight_decay=2e-3,
            scheduler="cosine",
        ),
        smoothings=(0.0, 0.05, 0.1),
        seeds=(0, 1, 2),
    ),
    "paper": Preset(
        "paper",
        "the CIFAR-10 setting of Guo et al. (2024) (meant for a GPU): ResNet-18, SGD lr 0.05, "
        "momentum 0.9, weight decay 5e-4, batch 128, lr x0.1 after epoch 150, 500 epochs, "
        "δ = 0.05, seeds 0 1 2; CIFAR-10 from --data-dir",
        dict(
            dataset="cifar10",
            model="resnet18",
            epochs=500,
            batch_size=128,
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            scheduler="multistep",
            milestones=[150],
            gamma=0.1,
            device="auto",
        ),
        smoothings=(0.0, 0.05),
        seeds=(0, 1, 2),
        jobs=1,
    ),
}

#: The paper's optimiser recipe (the ``paper`` preset's), shared by the other paper presets.
_PAPER_RECIPE: dict[str, Any] = {
    k: v for k, v in PRESETS["paper"].train.items() if k not in ("dataset", "model")
}
#: The δ values of the paper's δ sweep.
PAPER_DELTA_SWEEP = (0.0, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9)


def _paper_preset(
    name: str, description: str, smoothings: tuple[float, ...] = (0.0, 0.05), **train: Any
) -> Preset:
    return Preset(
        name, description, {**_PAPER_RECIPE, **train}, smoothings, seeds=(0, 1, 2), jobs=1
    )


PRESETS.update(
    {
        "paper-cifar100": _paper_preset(
            "paper-cifar100",
            "Guo et al. (2024), CIFAR-100 with ResNet-50 (CIFAR-style stem), the optimiser of "
            "`paper` (SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 128, lr x0.1 after "
            "epoch 150, 500 epochs), δ = 0.05, seeds 0 1 2, meant for a GPU; CIFAR-100 from "
            "--data-dir. Differs: the CIFAR-10 recipe is assumed to carry over to ResNet-50",
            dataset="cifar100",
            model="resnet50",
        ),
        "paper-stl10": _paper_preset(
            "paper-stl10",
            "as paper-cifar100 on STL-10 (96x96, the 5,000 labelled training images); STL-10 "
            "binaries from --data-dir",
            dataset="stl10",
            model="resnet50",
        ),
        "paper-tiny-imagenet": _paper_preset(
            "paper-tiny-imagenet",
            "as paper-cifar100 on Tiny ImageNet (200 classes, 64x64); tiny-imagenet-200 from "
            "--data-dir",
            dataset="tiny-imagenet",
            model="resnet50",
        ),
        "paper-delta-sweep": _paper_preset(
            "paper-delta-sweep",
            "Guo et al. (2024)'s δ sweep δ ∈ {0, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9} on the CIFAR-10 "
            "ResNet-18 setting of `paper` (seeds 0 1 2, meant for a GPU); the report draws the "
            "δ-sweep figure. CIFAR-10 from --data-dir",
            smoothings=PAPER_DELTA_SWEEP,
            dataset="cifar10",
            model="resnet18",
        ),
        "paper-ufm": _paper_preset(
            "paper-ufm",
            "Guo et al. (2024)'s UFM-regularised setting on CIFAR-10 ResNet-18: explicit "
            "penalties λ_W = 1e-3, λ_H = 1e-6, λ_b = 1e-2, no weight decay, a BatchNorm1d on "
            "the features; δ sweep {0, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9}, seeds 0 1 2, the rest "
            "as `paper`; the report overlays the UFM closed-form norms. CIFAR-10 from --data-dir",
            smoothings=PAPER_DELTA_SWEEP,
            dataset="cifar10",
            model="resnet18",
            weight_decay=0.0,
            ufm_penalties=True,
            lambda_w=1e-3,
            lambda_h=1e-6,
            lambda_b=1e-2,
            feature_bn=True,
        ),
    }
)


@dataclass
class CompareConfig:
    """Options of :func:`compare`.

    ``smoothings``/``seeds``/``jobs`` left None take the preset's values; ``train`` holds
    :class:`~nclab.train.TrainConfig` options that override the preset's (any field except
    ``loss``, ``smoothing``, ``seed`` and ``threads``). CE (δ = 0) is always included."""

    preset: str = "quick"
    smoothings: Sequence[float] | None = None
    seeds: Sequence[int] | None = None
    train: dict[str, Any] = field(default_factory=dict)
    out: str | Path = "runs/compare"
    jobs: int | None = None
    threads: int | None = None
    overwrite: bool = False
    report: bool = True
    quiet: bool = False
    launcher: str = "local"  # or "submitit": nclab.executors.launchers()
    slurm: SlurmOptions | None = None  # the submitit launcher's jobs (None: defaults)


@dataclass(frozen=True)
class PlannedRun:
    """One (setting, seed) run of a comparison."""

    name: str
    path: Path
    config: TrainConfig


@dataclass
class RunOutcome:
    """What happened to one run: ``status`` is ``trained``, ``resumed`` or ``reused``."""

    name: str
    path: Path
    status: str
    seconds: float
    final_train_acc: float | None
    first_perfect_epoch: int | None


@dataclass
class CompareResult:
    """Result of :func:`compare`: the runs, the report (None with ``report=False``), timing."""

    out_dir: Path
    runs: list[RunOutcome]
    report: ReportResult | None
    seconds: float
    manifest: Path

    @property
    def run_dirs(self) -> list[Path]:
        """The run directories, in plan order."""
        return [r.path for r in self.runs]


def validate_smoothings(values: Sequence[float]) -> list[float]:
    """δ values, sorted and de-duplicated, with CE (0) added. Raises ValueError unless every δ
    is a finite number in [0, 1)."""
    out = {0.0}
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"--smoothing values must be numbers in [0, 1), got {v!r}")
        if not 0.0 <= v < 1.0:
            raise ValueError(
                f"--smoothing {v:g} is outside [0, 1): label smoothing δ mixes the one-hot "
                "target with the uniform one, so δ must be >= 0 (0 is CE) and < 1 (δ = 1 "
                "ignores the labels); Guo et al. (2024) use 0.05"
            )
        out.add(float(v))
    return sorted(out)


def _validate_seeds(seeds: Sequence[int]) -> list[int]:
    if not seeds:
        raise ValueError("--seeds needs at least one seed, e.g. --seeds 0 1 2")
    out = []
    for s in seeds:
        if isinstance(s, bool) or int(s) != s or not 0 <= s <= MAX_SEED:
            raise ValueError(f"seeds must be non-negative integers <= {MAX_SEED}, got {s!r}")
        if int(s) not in out:
            out.append(int(s))
    return out


def run_name(smoothing: float, seed: int) -> str:
    """Directory name of one run: ``ce_seed0``, ``ls0.05_seed1``."""
    return f"ce_seed{seed}" if smoothing == 0 else f"ls{smoothing:g}_seed{seed}"


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def default_jobs(preset: Preset) -> int:
    """The preset's worker count, else min(2, CPU count)."""
    return preset.jobs if preset.jobs is not None else max(1, min(2, os.cpu_count() or 1))


def _resolve(cfg: CompareConfig) -> tuple[Preset, list[float], list[int], Resources]:
    preset = _preset(cfg.preset)
    smoothings = validate_smoothings(
        preset.smoothings if cfg.smoothings is None else cfg.smoothings
    )
    seeds = _validate_seeds(preset.seeds if cfg.seeds is None else cfg.seeds)
    if cfg.launcher not in launchers():
        raise ValueError(f"unknown launcher {cfg.launcher!r}; use {' or '.join(launchers())}")
    jobs = default_jobs(preset) if cfg.jobs is None else cfg.jobs
    Resources(jobs=jobs, threads=cfg.threads)  # checks both before the default threads
    slurm = cfg.slurm or SlurmOptions()
    if slurm.folder is None:
        slurm = replace(slurm, folder=Path(cfg.out) / "slurm")
    threads = training_threads(cfg.threads, jobs)
    # quiet: a run trained in this process prints nothing; the progress board (nclab.board)
    # follows every run from its metrics.jsonl instead
    return preset, smoothings, seeds, Resources(jobs, threads, True, slurm)


def plan_runs(cfg: CompareConfig) -> list[PlannedRun]:
    """The runs of a comparison (CE first, then δ ascending; seeds inside), with their
    validated training configs. Raises ValueError for bad options."""
    preset, smoothings, seeds, resources = _resolve(cfg)
    managed = MANAGED_FIELDS & set(cfg.train)
    if managed:
        raise ValueError(
            f"{', '.join(sorted(managed))} cannot be set for a comparison: it sets loss and "
            "smoothing from --smoothing, seed from --seeds and threads from --jobs"
        )
    preset_options = dict(preset.train)
    if "dataset" in cfg.train and cfg.train["dataset"] != preset_options.get("dataset"):
        for key in DATASET_SPECIFIC_FIELDS:  # the preset's subset sizes belong to its dataset
            preset_options.pop(key, None)
    options = {**preset_options, **cfg.train}
    if options.get("ufm_penalties") and "weight_decay" not in cfg.train:
        options.pop("weight_decay", None)  # UFM mode: the explicit penalties replace it
    out = Path(cfg.out)
    if options.get("wandb"):
        from nclab.train.loggers import require_wandb

        require_wandb()  # before any run starts
    if options.get("wandb") and not options.get("wandb_group"):
        options["wandb_group"] = wandb_group(out)  # the runs of one comparison: one W&B group
    runs = []
    for delta in smoothings:
        for seed in seeds:
            loss = "ce" if delta == 0 else "ls"
            name = run_name(delta, seed)
            if options.get("wandb"):
                options["wandb_name"] = name
            config = TrainConfig(
                **options, loss=loss, smoothing=delta, seed=seed, threads=resources.threads
            )
            runs.append(PlannedRun(name, out / "runs" / name, config))
    return runs


def wandb_group(out: Path) -> str:
    """The default W&B group of the comparison in ``out``: its folder name and a short hash of
    its absolute path (two comparisons named ``compare`` stay apart)."""
    import hashlib

    where = str(out.resolve())
    return f"{out.resolve().name}-{hashlib.sha256(where.encode()).hexdigest()[:6]}"


def run_state(run: PlannedRun) -> tuple[RunState, list[str]]:
    """:class:`~nclab.runs.RunState` of a planned run's folder (NEW, DONE: same config and
    complete, RESUME: same config, incomplete or fewer epochs, MISMATCH: a different config),
    with the differing options: :func:`nclab.runs.lifecycle.inspect`."""
    state, diffs, _ = lifecycle.inspect(
        RunFiles(run.path), lambda saved: config_differences(saved, run.config), run.config.epochs
    )
    return state, diffs


def _outcome(name: str, path: Path, status: str, seconds: float) -> RunOutcome:
    """A run's outcome, read from its metrics log."""
    rows = read_rows(RunFiles(path).metrics)
    final = rows[-1].get("train_acc") if rows else None
    return RunOutcome(name, path, status, seconds, final, lifecycle.first_perfect_epoch(rows))


def _log(cfg: CompareConfig, message: str) -> None:
    if not cfg.quiet:
        print(message, flush=True)


def pending(
    cfg: CompareConfig, runs: Sequence[PlannedRun]
) -> tuple[list[tuple[Task, RunState]], list[str]]:
    """What the run lifecycle says of each planned run: the tasks to train with their state
    (NEW or RESUME; with ``overwrite`` every run, as NEW) and the names of the complete runs
    to reuse. Raises
    ValueError when ``out`` holds a run of a different config (unless ``overwrite``)."""
    states = {run.name: run_state(run) for run in runs}
    mismatched = [f"{n} ({'; '.join(d)})" for n, (s, d) in states.items() if s is RunState.MISMATCH]
    if mismatched and not cfg.overwrite:
        raise ValueError(
            f"{cfg.out} already holds runs with a different config: {', '.join(mismatched)}; "
            "pass --overwrite to retrain them or choose another --out"
        )
    todo, reused = [], []
    for run in runs:
        state = RunState.NEW if cfg.overwrite else states[run.name][0]
        if state is RunState.DONE:
            reused.append(run.name)
        else:
            todo.append((Task(run.name, run.config, run.path, cfg.overwrite), state))
    return todo, reused


def comparison_commands(cfg: CompareConfig, program: str = "nclab") -> tuple[list[str], list[str]]:
    """One ``nclab train`` command per run of the comparison ``cfg`` still to train (the
    ``commands`` executor: absolute paths; threads ``cfg.threads``, unset: torch's default
    where the command runs), and the names of the runs already complete in ``cfg.out``."""
    todo, reused = pending(cfg, plan_runs(cfg))
    executor = CommandsExecutor(Resources(threads=cfg.threads), program)
    executor.submit([task for task, _ in todo])
    return executor.commands, reused


def compare(cfg: CompareConfig) -> CompareResult:
    """Train CE and LS runs (reusing complete ones), then build the report in ``out/report``.

    Raises ValueError for bad options or when ``out`` holds runs of a different config (pass
    ``overwrite=True`` or another ``out``)."""
    t0 = time.perf_counter()
    runs = plan_runs(cfg)  # every option is checked before anything is created
    lifecycle.refuse_system_folder(Path(cfg.out))
    with lock_directory(Path(cfg.out)):  # one comparison per --out at a time
        return _compare(cfg, runs, t0)


def _compare(cfg: CompareConfig, runs: list[PlannedRun], t0: float) -> CompareResult:
    """:func:`compare` once ``out`` is locked."""
    preset, smoothings, seeds, resources = _resolve(cfg)
    out = Path(cfg.out)
    todo, reused = pending(cfg, runs)
    outcomes: dict[str, RunOutcome] = {}
    for run in runs:
        if run.name in reused:
            outcomes[run.name] = _outcome(run.name, run.path, "reused", 0.0)
    status = {t.name: "resumed" if s is RunState.RESUME else "trained" for t, s in todo}
    tasks = [task for task, _ in todo]
    jobs = min(resources.jobs, max(1, len(tasks)))
    with create(cfg.launcher, replace(resources, jobs=jobs)) as executor:
        executor.submit(tasks)
        _log(
            cfg,
            f"nclab compare: preset {preset.name}, δ = {', '.join(f'{d:g}' for d in smoothings)}"
            f", seeds {', '.join(map(str, seeds))}: {len(tasks)} run(s) to train, "
            f"{len(reused)} reused, {executor.describe()} -> {out}",
        )
        # progress board (nclab.board): one live line per run, read from its metrics.jsonl
        board = Board(quiet=cfg.quiet)
        board.start([(r.name, r.path, r.config.epochs) for r in runs])
        for outcome in list(outcomes.values()):
            board.run_done(outcome)
        try:
            for done in executor.as_completed():
                if done.error is not None:
                    raise done.error
                name = done.task.name
                outcomes[name] = _outcome(name, done.task.path, status[name], done.seconds or 0.0)
                board.run_done(outcomes[name])
        finally:
            table = board.close()
    _log(cfg, table)
    ordered = [outcomes[r.name] for r in runs]
    report = None
    if cfg.report:
        import matplotlib

        matplotlib.use("Agg")
        from nclab.report import build_report

        _log(cfg, "  building the report ...")
        report = build_report([r.path for r in runs], out / "report", **preset.report)
        if runs[0].config.wandb:
            _log(cfg, "  attaching the report to W&B ...")
            _report_to_wandb(report, runs[0].config, preset.name, smoothings, seeds)
    seconds = time.perf_counter() - t0
    manifest = _write_manifest(
        cfg, preset, smoothings, seeds, resources, runs, ordered, report, seconds
    )
    return CompareResult(out, ordered, report, seconds, manifest)


def _report_to_wandb(
    report: ReportResult,
    config: TrainConfig,
    preset: str,
    smoothings: list[float],
    seeds: list[int],
) -> None:
    """The report's figures, summaries and verdict table as artifacts of a W&B run of job
    type ``report`` in the comparison's group."""
    from nclab.train.loggers import WandbOptions, log_report_to_wandb

    group = config.wandb_group
    log_report_to_wandb(
        report.out_dir,
        WandbOptions(config.wandb_project, group, f"{group}-report"),
        config={"preset": preset, "smoothings": smoothings, "seeds": seeds},
        verdicts=[
            {"claim": v.claim, "statement": v.statement, "verdict": v.verdict}
            for v in report.summary.verdicts
        ],
    )


def _write_manifest(
    cfg: CompareConfig,
    preset: Preset,
    smoothings: list[float],
    seeds: list[int],
    resources: Resources,
    runs: list[PlannedRun],
    outcomes: list[RunOutcome],
    report: ReportResult | None,
    seconds: float,
) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "preset": preset.name,
        "smoothings": smoothings,
        "seeds": seeds,
        "jobs": resources.jobs,
        "threads_per_job": resources.threads,
        "launcher": cfg.launcher,
        "overrides": cfg.train,
        "seconds": seconds,
        "runs": [
            {**asdict(o), "path": str(o.path), "config": r.config.to_dict()}
            for r, o in zip(runs, outcomes, strict=True)
        ],
        "report": str(report.html) if report is not None else None,
    }
    path = out / "compare.json"
    text = json.dumps(doc, indent=1, default=str)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path
