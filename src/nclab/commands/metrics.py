"""`nclab metrics` (placeholder until its module lands; replaced by the module's owner)."""

import argparse

HELP = "metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("nclab metrics is not implemented yet")
