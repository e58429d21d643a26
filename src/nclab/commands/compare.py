"""`nclab compare` (placeholder until its module lands; replaced by the module's owner)."""

import argparse

HELP = "compare"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("nclab compare is not implemented yet")
