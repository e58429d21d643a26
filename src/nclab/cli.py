"""Command-line entry point: ``nclab <command> ...``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from nclab import __version__
from nclab.commands import HelpFormatter

# command name -> (module under nclab.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("compare", "Main job: CE vs label smoothing side by side, then a report."),
    "train": ("train", "Train one classifier with per-epoch neural-collapse tracking."),
    "ufm": ("ufm", "Unconstrained feature model: closed form, solver, conditioning, convergence."),
    "report": ("report", "Rebuild the HTML/Markdown report from existing run directories."),
    "metrics": ("metrics", "Neural-collapse metrics of features stored in an .npz file."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nclab",
        description="nclab: neural collapse under cross-entropy and label smoothing "
        "(Guo et al., arXiv 2402.03979).",
    )
    parser.add_argument("--version", action="version", version=f"nclab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_line) in COMMANDS.items():
        module = importlib.import_module(f"nclab.commands.{module_name}")
        p = sub.add_parser(
            name,
            help=help_line,
            description=getattr(module, "DESCRIPTION", help_line),
            formatter_class=HelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        # User errors: one clear line, no traceback.
        print(f"nclab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
