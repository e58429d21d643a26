"""Command-line entry point: ``nclab <command> ...``.

Every failure ends as one line on stderr and an exit code (see docs/failures.md):

- 0 success; 2 a problem with the input (bad option, missing/corrupt/unsafe file, directory in
  use, ...: ``ValueError``, ``OSError``, ``MemoryError``); 3 training diverged (an exception
  with ``exit_code = 3``); 1 anything else (a bug: the line says how to get the traceback);
  130 interrupted (Ctrl-C), 143 SIGTERM (SLURM preemption), 129 SIGHUP: the same path, one line
  saying what was kept and how to continue; 141 stdout closed early (``nclab ... | head``),
  quietly.
- ``nclab --debug ...`` or ``NCLAB_DEBUG=1`` re-raises instead, so the traceback is shown.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from nclab import DOCS_URL, __version__, signals
from nclab.commands import HelpFormatter
from nclab.signals import termination_as_interrupt
from nclab.threads import limit_threads

# command name -> (module under nclab.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("compare", "Main job: CE vs label smoothing side by side, then a report."),
    "study": (
        "study",
        "A grid of comparisons (data x model x condition x δ) and the claims atlas.",
    ),
    "train": ("train", "Train one classifier with per-epoch neural-collapse tracking."),
    "ufm": ("ufm", "Unconstrained feature model: closed form, solver, conditioning, convergence."),
    "report": ("report", "Rebuild the HTML/Markdown report from existing run directories."),
    "metrics": ("metrics", "Neural-collapse metrics of features stored in an .npz file."),
    "export": ("export", "Write the per-epoch metrics of run directories as a CSV/Parquet table."),
}

#: Closing line of every --help: where the docs/*.md files that help texts name can be read
#: (a wheel does not ship them).
EPILOG = f"Documentation (the docs/*.md named here): {DOCS_URL}"

#: Exceptions that describe a problem with what the user gave (exit code 2).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, MemoryError)

EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a program stopped by `head`


#: A negative number, also in scientific notation or infinite (argparse alone reads ``-1e-3``
#: as an option).
_NEGATIVE_NUMBER = re.compile(
    r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE
)


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--opt -1e-3`` -> ``--opt=-1e-3``, so that argparse reads the number as the option's
    value, like ``-0.001``."""
    out: list[str] = []
    for token in argv:
        previous = out[-1] if out else ""
        if _NEGATIVE_NUMBER.match(token) and previous.startswith("--") and "=" not in previous:
            out[-1] = f"{previous}={token}"
        else:
            out.append(token)
    return out


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose usage errors are one line (sub-parsers use the same class)."""

    def error(self, message: str) -> NoReturn:
        """A usage error: one line (no usage dump), exit code 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nclab",
        description="nclab: neural collapse under cross-entropy and label smoothing, after Guo, "
        "Andriopoulos, Zhao, Dong, Ling, Ross (2024), 'Cross Entropy versus Label Smoothing: A "
        "Neural Collapse Perspective', arXiv 2402.03979.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"nclab {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of an error (for bug reports); also NCLAB_DEBUG=1",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_line) in COMMANDS.items():
        module = importlib.import_module(f"nclab.commands.{module_name}")
        p = sub.add_parser(
            name,
            help=help_line,
            description=getattr(module, "DESCRIPTION", help_line),
            epilog=EPILOG,
            formatter_class=HelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    """True with ``--debug`` before the command or ``NCLAB_DEBUG`` set to anything but 0/empty."""
    args = sys.argv[1:] if argv is None else list(argv)
    flag = "--debug" in args[: next((i for i, a in enumerate(args) if a in COMMANDS), len(args))]
    return flag or os.environ.get("NCLAB_DEBUG", "").strip() not in ("", "0")


def describe_error(err: BaseException) -> str:
    """One line for an exception: its message (``OSError``: reason and file name)."""
    if isinstance(err, OSError) and err.strerror:
        names = [str(n) for n in (err.filename, err.filename2) if n is not None]
        text = f"{err.strerror}: {' -> '.join(names)}" if names else err.strerror
    elif isinstance(err, MemoryError):
        text = f"not enough memory ({err or 'the allocation failed'}); use a smaller problem"
    else:
        text = str(err) or type(err).__name__
    # notes (PEP 678) say where it happened, e.g. "run ce_seed0": printed before the message
    text = ": ".join([*getattr(err, "__notes__", ()), text])
    return " ".join(text.split())  # one line


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout has no file descriptor (tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    limit_threads()  # before any command imports numpy or torch
    debug = debug_enabled(argv)
    prog = "nclab"
    try:
        parser = build_parser()
        args = parser.parse_args(attach_negative_values(sys.argv[1:] if argv is None else argv))
        if args.command is None:
            parser.print_help()
            return 0
        prog = f"nclab {args.command}"
        with termination_as_interrupt():
            code = int(args._run(args) or 0)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt as err:
        if debug:
            raise
        # the command's notes (PEP 678) say what was kept and how to go on
        line = "; ".join([signals.reason(err), *getattr(err, "__notes__", ())])
        print(f"{prog}: {line}", file=sys.stderr)
        return signals.exit_code(err)
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as err:  # noqa: BLE001 - the one place every failure becomes one line
        if debug:
            raise
        code = getattr(err, "exit_code", None)
        if code is None and isinstance(err, USER_ERRORS):
            code = EXIT_USAGE
        if code is None:
            print(
                f"{prog}: internal error: {type(err).__name__}: {describe_error(err)} (this is a "
                "bug; rerun with --debug or NCLAB_DEBUG=1 for the traceback and report it)",
                file=sys.stderr,
            )
            return EXIT_INTERNAL
        label = "error: " if code == EXIT_USAGE else ""
        print(f"{prog}: {label}{describe_error(err)}", file=sys.stderr)
        return int(code)


if __name__ == "__main__":
    sys.exit(main())
