"""`nclab study`: a grid of CE-vs-LS comparisons and the claims atlas."""

from __future__ import annotations

import argparse

from nclab.commands.compare import (
    OVERWRITE_HELP,
    TRAIN_PREFIX,
    add_launcher_options,
    add_seeds_option,
    add_worker_options,
    from_args,
    print_commands,
    slurm_options,
    train_overrides,
)
from nclab.commands.train import add_config_options
from nclab.study import GRIDS

#: Training options `nclab study` takes on the command line: where the data are and which device
#: trains (the grid holds everything that changes results).
MACHINE_OPTIONS = ("data_dir", "device")

DESCRIPTION = (
    "Run one CE-vs-label-smoothing comparison (as `nclab compare`) in every cell of a grid of "
    "datasets x models x training conditions, for each δ of the grid and every seed, and draw "
    "the atlas: where each claim of Guo, Andriopoulos, Zhao, Dong, Ling, Ross (2024), 'Cross "
    "Entropy versus Label Smoothing: A Neural Collapse Perspective', arXiv 2402.03979, holds, "
    "does not hold or cannot be decided (OUT/report/atlas.png, summary.md, report.html, "
    "summary.json), with each cell's own report in OUT/cells/CELL/report. All runs go to one "
    "pool of --jobs workers (or one SLURM job each); rerunning the command reuses complete "
    "runs and reported cells and resumes interrupted runs. See docs/study.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `nclab study`."""
    parser.add_argument(
        "--grid",
        default="default",
        metavar="NAME|FILE",
        help="a named grid ("
        + "; ".join(f"{g.name}: {g.description}" for g in GRIDS.values()).replace("%", "%%")
        + ") or a YAML grid file (docs/study.md)",
    )
    parser.add_argument(
        "--out", default="runs/study", metavar="DIR", help="output directory (cells/, report/)"
    )
    add_seeds_option(
        parser,
        "seeds of every cell (default: the grid's; 3 or more make verdicts more than indicative)",
    )
    add_worker_options(parser, "the grid's; default and smoke: min(2, CPU count), paper: 1")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(
        "--show-grid",
        action="store_true",
        help="print the grid as YAML (a starting point for your own grid file) and exit",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    machine = parser.add_argument_group(
        "this machine", "for every run of every cell; they do not change a run's results"
    )
    add_config_options(machine, prefix=TRAIN_PREFIX, defaults=False, only=MACHINE_OPTIONS)
    add_launcher_options(
        parser,
        "the same nclab study command writes the cells' reports and the atlas from the "
        "finished runs",
    )


def run(args: argparse.Namespace) -> int:
    """Run the study and print where the atlas is."""
    from nclab.study import StudyConfig, load_grid, study, study_commands

    if args.show_grid:
        import yaml

        grid = load_grid(args.grid)
        print(yaml.safe_dump(grid.as_dict(), sort_keys=False, allow_unicode=True), end="")
        return 0
    cfg = from_args(StudyConfig, args, slurm=slurm_options(args), train=train_overrides(args))
    if args.print_commands:
        commands, reused = study_commands(cfg)
        then = (
            "the same nclab study command without --print-commands writes the cells' reports "
            "and the atlas"
        )
        return print_commands(commands, reused, then, args.quiet)
    try:
        result = study(cfg)
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM, SIGHUP: cli.main prints the one line
        err.add_note(
            "every run keeps its last checkpoint and every reported cell its report: rerun "
            "the same command to resume"
        )
        raise
    if not args.quiet:
        print(f"done in {result.seconds:.1f} s ({result.trained} run(s) trained)")
        print(f"atlas: {result.atlas.figures[0] if result.atlas.figures else result.atlas.html}")
        print(f"table: {result.atlas.markdown}")
        print(f"report: {result.atlas.html}")
    return 0
