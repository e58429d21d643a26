"""`nclab report DIR...`: rebuild the CE-vs-LS report from existing run directories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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
        metavar="DIR",
        help="output directory (default: DIR/report for one `nclab compare` folder; otherwise "
        "report-HASH beside the run directories, HASH naming the set of runs; never inside a "
        "run directory)",
    )
    parser.add_argument("--no-theory", action="store_true", help="skip the UFM theory panel")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def default_out(dirs: list[str], out: str | None) -> Path:
    """Where the report goes: ``--out``; else ``DIR/report`` for a single DIR that is not itself
    a run directory (a ``nclab compare`` folder, a folder of runs); else
    ``PARENT/report-HASH``, where PARENT is the deepest folder holding every DIR that is not a
    run directory nor inside one, and HASH (8 hex digits) names the set of DIRs, so the same
    runs always rebuild the same report and a report never lands inside a run directory."""
    import hashlib
    import os

    from nclab.report.runs import is_run_dir

    if out is not None:
        return Path(out)
    paths = [Path(d).resolve() for d in dirs]
    if len(paths) == 1 and not _in_run_dir(paths[0], is_run_dir):
        return Path(dirs[0]) / "report"
    parent = Path(os.path.commonpath([str(p) for p in paths]))
    while _in_run_dir(parent, is_run_dir) and parent != parent.parent:
        parent = parent.parent
    key = "\n".join(sorted(str(p) for p in paths)).encode()
    return parent / f"report-{hashlib.sha256(key).hexdigest()[:8]}"


def _in_run_dir(path: Path, is_run_dir: Any) -> bool:
    """``path`` is a run directory or lies inside one."""
    return any(is_run_dir(p) for p in (path, *path.parents))


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
