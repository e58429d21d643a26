"""Promise: what a writer killed mid-write leaves behind costs nothing. A torn last line of
metrics.jsonl is dropped with a warning (a complete row without its newline is kept), the
killed writer's temporaries are removed (a user's own dot-files kept), and the resumed run's
rows equal those of an uninterrupted run."""

from __future__ import annotations

import pytest
from faultkit import run_cli, run_rows, train_argv, uninterrupted_rows

from nclab.runs.files import read_metrics


@pytest.fixture(scope="module")
def straight3(tmp_path_factory) -> list[dict]:
    """Rows (``seconds`` aside) of the tiny run trained for 3 epochs without interruption."""
    return uninterrupted_rows(tmp_path_factory, 3)


def test_temporaries_of_a_killed_writer_are_removed_on_resume(run_copy, straight3, capsys):
    stale = [run_copy / ".metrics.jsonl.abc123.tmp", run_copy / "checkpoints" / ".last.pt.x.tmp"]
    for path in stale:
        path.write_bytes(b"half-written")
    (run_copy / ".notes.tmp").write_text("mine")  # not a run file's temporary: kept
    rc, err = run_cli(train_argv(run_copy, "--resume", epochs=3), capsys)
    assert rc == 0 and "Traceback" not in err
    assert not any(p.exists() for p in stale) and (run_copy / ".notes.tmp").exists()
    assert run_rows(run_copy) == straight3


TORN_LAST_LINES = {
    "no-newline": lambda ls: "\n".join(ls) + "\n" + ls[-1][:30],
    "half-json-with-newline": lambda ls: "\n".join(ls) + "\n" + '{"epoch": 3, "nc1"\n',
    "binary-junk": lambda ls: "\n".join(ls) + "\n" + "\x00\x01\x02",
    "whole-row-without-newline": lambda ls: "\n".join(ls),
}


@pytest.mark.parametrize("case", list(TORN_LAST_LINES))
def test_torn_last_line_is_dropped_and_resume_matches_uninterrupted(
    case, run_copy, straight3, capsys
):
    metrics = run_copy / "metrics.jsonl"
    metrics.write_text(TORN_LAST_LINES[case](metrics.read_text().splitlines()))
    rows, warnings = read_metrics(metrics)
    # a complete row without its newline is kept; anything less is dropped with a warning
    assert len(rows) == 2 and len(warnings) == (case != "whole-row-without-newline")
    rc, err = run_cli(train_argv(run_copy, "--resume", epochs=3), capsys)
    assert rc == 0 and "Traceback" not in err
    assert run_rows(run_copy) == straight3
