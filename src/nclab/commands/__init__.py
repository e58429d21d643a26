"""Subcommands of the ``nclab`` CLI.

Each module here defines ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``; :mod:`nclab.cli` imports them lazily so that ``nclab --help``
stays fast and one command's heavy imports never slow another down.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once, as ``(default: X)``, and only where it says something.

    Not for flags (``store_true``), ``None``/``False`` defaults or help that already states its
    default (the training options write ``(default: ...)`` themselves, from their schema).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        quiet = default is None or default is False or default == argparse.SUPPRESS
        quiet = quiet or action.nargs == 0
        if quiet or "(default" in text or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"
