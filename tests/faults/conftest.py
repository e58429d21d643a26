"""The fault suite's tally, printed after the run (see faultkit.TALLY)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from faultkit import TALLY, train_argv

from nclab import cli


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if TALLY:
        keys = ["inputs tried", "clear errors", "worked as promised", "tracebacks",
                "silent results", "files lost or changed", "code executed", "hangs"]  # fmt: skip
        terminalreporter.write_line(
            "fault suite: " + ", ".join(f"{k} {TALLY.get(k, 0)}" for k in keys)
        )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-epoch tiny run (trained once per session)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert cli.main(train_argv(out)) == 0
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the finished tiny run."""
    dst = tmp_path / "runs" / "run"
    shutil.copytree(tiny_run, dst)
    return dst
