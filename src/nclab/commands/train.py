"""`nclab train` (placeholder until its module lands; replaced by the module's owner)."""

import argparse

HELP = "train"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("nclab train is not implemented yet")
