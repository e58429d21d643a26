"""Promise: metrics.csv mirrors metrics.jsonl after every row, byte for byte what a full rewrite
gives (columns in order of first appearance, empty cells for missing or null values), appended a
line at a time while the columns stay, rewritten atomically when one appears, after a torn last
line, or in place of a planted link."""

from __future__ import annotations

import csv
import random

import pytest

from nclab.runs import RunFiles, read_rows, rewrite_rows
from nclab.runs.files import append_row, write_csv


def _rewritten(files: RunFiles, tmp_path) -> str:  # noqa: ANN001
    ref = tmp_path / "reference.csv"
    write_csv(ref, read_rows(files.metrics))
    return ref.read_text()


def _random_row(epoch: int, rng: random.Random) -> dict:
    row = {"epoch": epoch}
    for key in rng.sample(["lr", "nc1", "test_acc", "a,b", 'q"uote', "layer_nc1/x"], 3):
        row[key] = rng.choice([None, 0.5, 1e-300, "text, with comma", 3])
    return row


@pytest.mark.parametrize("seed", range(5))
def test_appending_gives_what_a_rewrite_gives(seed, tmp_path):
    rng = random.Random(seed)
    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    for epoch in range(1, 15):
        append_row(files, _random_row(epoch, rng))
        assert files.metrics_csv.read_text() == _rewritten(files, tmp_path)
    rows = list(csv.DictReader(files.metrics_csv.open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 15))


def test_appends_a_line_while_the_columns_stay(tmp_path, monkeypatch):
    import nclab.runs.files as files_mod

    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    append_row(files, {"epoch": 1, "a": 1.0, "b": 2.0})
    rewrites = []
    real = files_mod.write_csv
    monkeypatch.setattr(files_mod, "write_csv", lambda *a: (rewrites.append(1), real(*a)))
    append_row(files, {"epoch": 2, "a": 3.0, "b": 4.0})
    append_row(files, {"epoch": 3, "b": None})  # fewer keys: still an append
    assert rewrites == []
    append_row(files, {"epoch": 4, "c": 5.0})  # a new column: the file is rewritten
    assert rewrites == [1]
    assert files.metrics_csv.read_text().splitlines() == [
        "epoch,a,b,c", "1,1.0,2.0,", "2,3.0,4.0,", "3,,,", "4,,,5.0"
    ]  # fmt: skip


def test_a_torn_line_or_a_link_is_replaced_by_a_rewrite(tmp_path):
    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    append_row(files, {"epoch": 1, "a": 1.0})
    with files.metrics_csv.open("a") as f:
        f.write("2,0.12")  # a kill in the middle of an append
    append_row(files, {"epoch": 2, "a": 2.0})
    assert files.metrics_csv.read_text() == "epoch,a\n1,1.0\n2,2.0\n"
    outside = tmp_path / "outside.csv"
    outside.write_text("epoch,a\n")
    files.metrics_csv.unlink()
    files.metrics_csv.symlink_to(outside)
    append_row(files, {"epoch": 3, "a": 3.0})
    assert outside.read_text() == "epoch,a\n"  # never written through the link
    assert not files.metrics_csv.is_symlink()
    assert files.metrics_csv.read_text() == "epoch,a\n1,1.0\n2,2.0\n3,3.0\n"


def test_a_cut_back_rewrites_then_appends_continue(tmp_path):
    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    for epoch in range(1, 6):
        append_row(files, {"epoch": epoch, "a": float(epoch)})
    rewrite_rows(files, 2)
    append_row(files, {"epoch": 3, "a": 9.0})
    assert files.metrics_csv.read_text() == "epoch,a\n1,1.0\n2,2.0\n3,9.0\n"
