"""The `nclab` entry point: every command and subcommand prints its help."""

from __future__ import annotations

import pytest

from nclab import __version__
from nclab.cli import COMMANDS, main

HELP_ARGV = [[name] for name in COMMANDS] + [
    ["ufm", sub] for sub in ("closed-form", "solve", "condition", "convergence")
]


@pytest.mark.parametrize("argv", HELP_ARGV, ids=" ".join)
def test_every_command_prints_its_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nclab {' '.join(argv)}")
    assert "--help" in out


def test_no_command_prints_the_command_list(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"nclab {__version__}"
