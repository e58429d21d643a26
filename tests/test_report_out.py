"""`nclab report A B` without --out: a documented default beside the runs (report-HASH),
never inside a run directory; one `nclab compare` folder keeps DIR/report."""

from __future__ import annotations

from pathlib import Path

import pytest

from nclab import cli
from nclab.commands.report import default_out
from nclab.train import TrainConfig, train


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    small = dict(dataset="synthetic:k=3,d=6,n=10,test=5", epochs=2, batch_size=15, threads=1)
    train(TrainConfig(**small), root / "my_ce", quiet=True)
    train(TrainConfig(**small, loss="ls", smoothing=0.1), root / "my_ls", quiet=True)
    return root


def _tree(path: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in path.rglob("*")}


def test_two_run_dirs_report_beside_them(two_runs: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(two_runs.parent)
    before = {run: _tree(two_runs / run) for run in ("my_ce", "my_ls")}
    args = [f"{two_runs.name}/my_ce", f"{two_runs.name}/my_ls"]
    assert cli.main(["report", *args, "--no-theory"]) == 0
    out = capsys.readouterr().out
    (made,) = [p for p in two_runs.iterdir() if p.name.startswith("report-")]
    assert (made / "report.html").is_file() and str(made / "report.html") in out
    assert {run: _tree(two_runs / run) for run in ("my_ce", "my_ls")} == before
    # the same runs, in any order or spelling, name the same folder; other runs another
    assert default_out(list(reversed(args)), None) == made
    assert default_out([str(two_runs / "my_ce"), str(two_runs / "my_ls")], None) == made
    assert default_out(args[:1], None) != made
    assert default_out(args, "elsewhere") == Path("elsewhere")


def test_one_run_dir_never_gets_its_report_inside(two_runs: Path) -> None:
    out = default_out([str(two_runs / "my_ce")], None)
    assert out.parent == two_runs.resolve() and out.name.startswith("report-")
    # a folder inside a run directory is no better: the report goes above the run
    inner = two_runs / "my_ce" / "checkpoints"
    assert default_out([str(inner)], None).parent == two_runs.resolve()


def test_one_compare_folder_keeps_dir_report(two_runs: Path) -> None:
    assert default_out([str(two_runs)], None) == two_runs / "report"
