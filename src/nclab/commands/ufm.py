"""`nclab ufm` (placeholder until its module lands; replaced by the module's owner)."""

import argparse

HELP = "ufm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("nclab ufm is not implemented yet")
