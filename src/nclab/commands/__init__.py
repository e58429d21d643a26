"""Subcommands of the ``nclab`` CLI.

Each module here defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; :mod:`nclab.cli` imports them lazily so that ``nclab --help``
stays fast and one command's heavy imports never slow another down.
"""
