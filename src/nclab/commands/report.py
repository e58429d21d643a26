"""`nclab report` (placeholder until its module lands; replaced by the module's owner)."""

import argparse

HELP = "report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("nclab report is not implemented yet")
