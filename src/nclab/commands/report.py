"""`nclab report DIR...`: rebuild the CE-vs-LS report from existing run directories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Rebuild the HTML/Markdown report from existing run directories."
DESCRIPTION = (
    "Rebuild the CE-vs-label-smoothing report (report.html with embedded figures, summary.md, "
    "summary.json, PNG and PDF figures) from run directories written by `nclab train` or "
    "`nclab compare`. Each DIR is a run directory or a directory searched for them (e.g. a "
    "`nclab compare --out` directory)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `nclab report`."""
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="run directories, or directories containing them"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output directory (default: DIR/report for a single DIR, DIR-report beside a run "
        "folder, which the report never writes into; required for several)",
    )
    parser.add_argument("--no-theory", action="store_true", help="skip the UFM theory panel")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def default_out(dirs: list[str], out: str | None) -> Path:
    """Where the report goes: ``--out``, else ``DIR/report`` for a single DIR (``DIR-report``
    beside it when DIR is itself a run folder: the report never writes into one)."""
    if out is not None:
        return Path(out)
    if len(dirs) == 1:
        from nclab.runs.files import RunFiles

        one = Path(dirs[0])
        files = RunFiles(one)
        if files.config.is_file() or files.metrics.is_file():
            return one.parent / f"{one.resolve().name}-report"
        return one / "report"
    raise ValueError("several DIRs given: say where the report goes with --out")


def run(args: argparse.Namespace) -> int:
    """Build the report and print where it is."""
    import matplotlib

    matplotlib.use("Agg")
    from nclab.report import build_report

    for d in args.dirs:
        if not Path(d).exists():
            raise FileNotFoundError(
                f"{d} does not exist: pass run directories or a `nclab compare` output directory"
            )
    result = build_report(args.dirs, default_out(args.dirs, args.out), theory=not args.no_theory)
    if not args.quiet:
        for warning in result.summary.warnings:
            print(f"nclab report: warning: {warning}", file=sys.stderr)
        print(f"report: {result.html}")
        print(f"summary: {result.markdown}")
        for v in result.summary.verdicts:
            print(f"  ({v.claim}) {v.statement}: {v.verdict}")
    return 0
