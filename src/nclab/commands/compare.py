"""`nclab compare`: train CE and label smoothing side by side and write the report."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, TypeVar

from nclab.commands.train import add_config_options, option_groups
from nclab.compare import PRESETS
from nclab.executors import CLUSTERS, SlurmOptions, launchers

T = TypeVar("T")

#: Namespace prefix of the training options (``args.train_lr`` is ``--lr``).
TRAIN_PREFIX = "train_"

#: Help of --overwrite (`nclab compare` and `nclab study`).
OVERWRITE_HELP = "retrain every run, discarding what --out holds for it"

DESCRIPTION = (
    "Train the same model on the same data with cross-entropy and with label smoothing at one "
    "or more δ, from the same initialisation and data order (one seed = one init and batch "
    "order), then write DIR/report/report.html (self-contained), summary.md, summary.json and "
    "PNG/PDF figures: convergence of errors and NC1-NC4, NC1 vs NC2, NC2 at matched NC1, "
    "calibration before/after temperature scaling, norms, UFM theory, and verdicts from paired "
    "seeds (effect, 95% interval) on the claims of Guo, Andriopoulos, Zhao, Dong, Ling, Ross "
    "(2024), 'Cross Entropy versus Label Smoothing: A Neural Collapse Perspective', arXiv "
    "2402.03979. Complete runs in --out are reused; interrupted ones resume. Training options "
    "override the preset's (see --preset)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `nclab compare`, in the sections of `nclab train` (comparison first)."""
    parser.usage = (
        "%(prog)s [-h] [--preset NAME] [--smoothing DELTA ...] [--seeds SEED ...] [options]"
    )
    parser.epilog = (
        "Training options override the preset; they mean what they mean in `nclab train`; an "
        "option neither given nor set by the preset has the default `nclab train --help` "
        "shows; with --dataset the preset's --per-class and --test-per-class do not apply."
    )
    comparison = parser.add_argument_group("comparison")
    groups = option_groups(parser)
    comparison.add_argument(
        "--preset",
        default="quick",
        choices=list(PRESETS),
        help="named setting (default: quick): "
        + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()).replace("%", "%%"),
    )
    comparison.add_argument(
        "--smoothing",
        type=float,
        nargs="+",
        default=None,
        metavar="DELTA",
        help="label-smoothing δ values in [0, 1); CE (0) is always included "
        "(default: the preset's, quick: 0 0.05 0.1)",
    )
    add_seeds_option(
        comparison,
        "seeds: CE and LS runs of one seed share initialisation and data order and are "
        "compared as pairs; 3 or more make the verdicts more than indicative (default: the "
        "preset's; quick and paper: 0 1 2, smoke: 0)",
    )
    add_config_options(groups, prefix=TRAIN_PREFIX, defaults=False)
    groups["logging"].add_argument(
        "--quiet", action="store_true", help="print nothing but errors (no progress bars)"
    )
    add_worker_options(parser, group=groups["execution"])
    add_launcher_options(parser, group=groups["execution"])
    output = groups["output"]
    output.add_argument(
        "--out",
        default="runs/compare",
        metavar="DIR",
        help="output directory: runs/, report/, compare.json (default: runs/compare)",
    )
    output.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    output.add_argument("--no-report", action="store_true", help="train only")


def print_commands(commands: list[str], reused: list[str], then: str, quiet: bool) -> int:
    """``--print-commands``: one ``nclab train`` command per line on stdout; on stderr, the runs
    already complete and what to run once the commands are done. Returns the exit code 0."""
    for command in commands:
        print(command)
    if not quiet:
        if reused:
            print(f"# already complete, reused: {len(reused)} run(s)", file=sys.stderr)
        print(f"# then: {then}", file=sys.stderr)
    return 0


def add_seeds_option(target: Any, help: str) -> None:
    """--seeds of `nclab compare` and `nclab study`, into a parser or argument group."""
    target.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED", help=help)


def add_worker_options(
    parser: argparse.ArgumentParser,
    jobs_default: str = "the preset's; quick/smoke: min(2, CPU count)",
    group: Any = None,
) -> None:
    """--jobs and --threads (shared by `nclab compare` and `nclab study`), into ``group`` (an
    argument group of ``parser``) when given."""
    target = parser if group is None else group
    target.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="J",
        help="runs trained at once: spawned worker processes, or jobs of --slurm-cluster local "
        f"(default: {jobs_default})",
    )
    target.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="torch threads per job (default: CPU count // jobs)",
    )


def add_launcher_options(
    parser: argparse.ArgumentParser,
    then: str = "`nclab report OUT` collects the results",
    group: Any = None,
) -> None:
    """The launcher/cluster options: --launcher, --print-commands, --slurm-* (shared by `nclab
    compare` and `nclab study`), in their own section or into ``group`` when given."""
    cluster = group or parser.add_argument_group(
        "launching past one machine", "see docs/integrations.md (default: local worker processes)"
    )
    cluster.add_argument(
        "--launcher",
        choices=launchers(),
        default="local",
        help="local: --jobs worker processes here; submitit: one SLURM job per run through "
        "submitit (pip install 'nclab[submitit]'), waited for, then the report; see "
        "docs/integrations.md (default: local)",
    )
    cluster.add_argument(
        "--print-commands",
        action="store_true",
        help="print one `nclab train` command per run still to train, for any scheduler, and "
        f"exit; then {then}",
    )
    cluster.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition")
    cluster.add_argument(
        "--slurm-time",
        type=int,
        default=24 * 60,
        metavar="MINUTES",
        help="time limit per job (default: 1440)",
    )
    cluster.add_argument(
        "--slurm-gpus", type=int, default=0, metavar="N", help="GPUs per job (default: 0)"
    )
    cluster.add_argument(
        "--slurm-cpus", type=int, metavar="N", help="CPUs per job (also the run's torch threads)"
    )
    cluster.add_argument("--slurm-mem-gb", type=float, metavar="GB", help="memory per job")
    cluster.add_argument(
        "--slurm-folder", metavar="DIR", help="submitit's job scripts and logs (default: OUT/slurm)"
    )
    cluster.add_argument(
        "--slurm-cluster",
        choices=CLUSTERS,
        default="auto",
        help="submitit executor: auto (SLURM; an error where there is no sbatch), slurm, local "
        "(the jobs as processes on this machine, --jobs at once, for a dry run), debug (in this "
        "process) (default: auto)",
    )


def from_args(cls: type[T], args: argparse.Namespace, prefix: str = "", **given: Any) -> T:
    """The dataclass ``cls`` from the options of ``args`` named like its fields (after
    ``prefix``: ``--slurm-gpus`` is ``gpus``), with ``given`` for the fields named otherwise."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in given]
    return cls(**{name: getattr(args, prefix + name) for name in names}, **given)


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    """The cluster options of :func:`add_launcher_options` as SlurmOptions."""
    return from_args(SlurmOptions, args, prefix="slurm_", time_minutes=args.slurm_time)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig options given on the command line."""
    given = vars(args).items()
    return {k[len(TRAIN_PREFIX) :]: v for k, v in given if k.startswith(TRAIN_PREFIX)}


def run(args: argparse.Namespace) -> int:
    """Run the comparison and print where the report is."""
    from nclab.compare import CompareConfig, compare, comparison_commands

    cfg = from_args(
        CompareConfig,
        args,
        smoothings=args.smoothing,
        report=not args.no_report,
        slurm=slurm_options(args),
        train=train_overrides(args),
    )
    if args.print_commands:
        commands, reused = comparison_commands(cfg)
        return print_commands(commands, reused, f"nclab report {cfg.out}", args.quiet)
    try:
        result = compare(cfg)
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM, SIGHUP: cli.main prints the one line
        err.add_note("every run keeps its last checkpoint: rerun the same command to resume")
        raise
    if not args.quiet:
        print(f"done in {result.seconds:.1f} s")
        if result.report is not None:
            for v in result.report.summary.verdicts:
                print(f"  ({v.claim}) {v.statement}: {v.verdict}")
            print(f"report: {result.report.html}")
            print(f"summary: {result.report.markdown}")
        print(f"runs: {result.out_dir / 'runs'}")
    return 0
