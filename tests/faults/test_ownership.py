"""Promise: nclab deletes or overwrites only the files it wrote (its manifest), never follows a
symbolic link out of a run folder, never writes a run into / or the home folder, and the report
never writes into a run folder or over a summary it did not write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from faultkit import (
    TALLY,
    expect_clear_error,
    expect_library_error,
    expect_works,
    snapshot,
    train_argv,
)

from nclab import cli
from nclab.runs import LOCK_NAME, RunFiles, lock_directory

USER_BYTES = b"a researcher's own notes\n" * 60  # 1,500 bytes


def _user_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(USER_BYTES)
    return path


# ---------------------------------------------------------------- lock files that are links


@pytest.mark.parametrize("how", ["train-resume", "train-fresh", "lock_directory", "report"])
def test_a_symlinked_lock_file_is_never_emptied(how, run_copy, tmp_path, capsys):
    target = _user_file(tmp_path / "precious.txt")
    lock = run_copy / LOCK_NAME
    lock.unlink()
    lock.symlink_to(target)
    if how == "lock_directory":

        def enter() -> None:
            with lock_directory(run_copy):
                pass

        expect_library_error(enter, (ValueError,), "symbolic link")
    elif how == "report":  # read-only: it may report the run, never touch the link's target
        expect_works(["report", str(run_copy), "--out", str(tmp_path / "rep")], capsys,
                     watch=(target, run_copy))  # fmt: skip
    else:
        argv = train_argv(run_copy, "--resume", epochs=3)
        if how == "train-fresh":
            argv = train_argv(tmp_path / "runs" / "run", "--overwrite")
        expect_clear_error(argv, capsys, watch=(target, run_copy), says="symbolic link")
    assert target.read_bytes() == USER_BYTES


# ---------------------------------------------------------------- --overwrite


USER_RUN_NAMES = ["config.json", "summary.json", "metrics.csv", "predictions.npz", "DONE"]


def test_overwrite_refuses_a_folder_that_never_held_a_run(tmp_path, capsys):
    folder = tmp_path / "mine"
    for name in USER_RUN_NAMES:
        _user_file(folder / name)
    # the refusal leaves the folder as it was: not even nclab's lock file stays
    err = expect_clear_error(train_argv(folder, "--overwrite"), capsys, watch=(folder,),
                             says=("did not write", "--out"))  # fmt: skip
    assert "config.json" in err


@pytest.mark.parametrize("planted", ["notes.txt", "data/x.npy", "checkpoints/mine.pt", "README"])
def test_overwrite_refuses_a_run_folder_holding_other_files(planted, run_copy, capsys):
    _user_file(run_copy / planted)
    expect_clear_error(train_argv(run_copy, "--overwrite"), capsys, watch=(run_copy,),
                       says="did not write")  # fmt: skip


def test_overwrite_clears_its_own_run(run_copy, capsys):
    expect_works(train_argv(run_copy, "--overwrite", epochs=1), capsys)
    assert (run_copy / "DONE").is_file() and not (run_copy / "checkpoints" / "mine.pt").exists()


@pytest.mark.parametrize("where", ["root", "home"])
@pytest.mark.parametrize("mode", ["--overwrite", "--resume", ""])
def test_root_and_home_are_refused(where, mode, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    _user_file(home / "config.json")
    monkeypatch.setenv("HOME", str(home))
    out = Path("/") if where == "root" else home
    before = set(os.listdir(out))
    argv = train_argv(out, *([mode] if mode else []))
    expect_clear_error(argv, capsys, watch=(home / "config.json",), says="folder")
    assert set(os.listdir(out)) == before  # not even a lock file


def test_a_run_file_that_is_a_link_is_refused(run_copy, tmp_path, capsys):
    target = _user_file(tmp_path / "mine.csv")
    (run_copy / "metrics.csv").unlink()
    (run_copy / "metrics.csv").symlink_to(target)
    for argv in (train_argv(run_copy, "--resume", epochs=3), train_argv(run_copy, "--overwrite")):
        expect_clear_error(argv, capsys, watch=(target, run_copy), says="symbolic link")


def test_a_linked_checkpoint_folder_is_refused(run_copy, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    _user_file(elsewhere / "last.pt")
    ckpt = run_copy / "checkpoints"
    for p in ckpt.iterdir():
        p.unlink()
    ckpt.rmdir()
    ckpt.symlink_to(elsewhere, target_is_directory=True)
    for argv in (train_argv(run_copy, "--resume", epochs=3), train_argv(run_copy, "--overwrite")):
        expect_clear_error(argv, capsys, watch=(elsewhere, run_copy), says="symbolic link")


# ---------------------------------------------------------------- every command, planted files


@pytest.mark.slow  # builds reports (theory panel, figures): seconds each
def test_every_command_leaves_planted_files_byte_identical(run_copy, tmp_path, capsys):
    """A user's files and links in and around a run folder survive every command."""
    runs = run_copy.parent
    outside = _user_file(tmp_path / "outside" / "thesis.tex")
    planted = [
        _user_file(run_copy / "notes.txt"),
        _user_file(run_copy / "analysis" / "plot.py"),
        _user_file(runs / "sibling.txt"),
        _user_file(runs / "other_run" / "config.json"),
    ]
    (run_copy / "link_out").symlink_to(outside)
    (runs / "link_in").symlink_to(run_copy / "notes.txt")
    planted += [run_copy / "link_out", runs / "link_in", outside]
    watch = tuple(planted)
    expect_works(train_argv(run_copy), capsys, watch=watch)  # the same finished run: reused
    expect_works(train_argv(run_copy, "--resume", epochs=3), capsys, watch=watch)
    expect_clear_error(train_argv(run_copy, "--overwrite"), capsys, watch=watch + (run_copy,))
    expect_clear_error(train_argv(runs / "other_run", "--overwrite"), capsys, watch=watch)
    expect_clear_error(train_argv(runs / "other_run", "--resume"), capsys, watch=watch)
    expect_works(["report", str(run_copy), "--out", str(tmp_path / "rep")], capsys,
                 watch=watch + (run_copy,))  # fmt: skip
    expect_works(["report", str(run_copy)], capsys, watch=watch + (run_copy,))  # beside it
    assert len(list(runs.glob("report-*/summary.md"))) == 1
    expect_clear_error(["report", str(run_copy), "--out", str(run_copy)], capsys,
                       watch=watch + (run_copy,), says="run folder")  # fmt: skip
    expect_clear_error(["report", str(run_copy), "--out", str(run_copy / "analysis")], capsys,
                       watch=watch + (run_copy,), says="run folder")  # fmt: skip
    for path in planted:
        assert path.is_symlink() or path.read_bytes() == USER_BYTES


# ---------------------------------------------------------------- report outputs


@pytest.mark.slow  # builds reports (theory panel, figures): seconds each
@pytest.mark.parametrize("name", ["summary.json", "summary.md", "report.html", "a figure"])
def test_report_never_replaces_a_file_it_did_not_write(name, run_copy, tmp_path, capsys):
    if name == "a figure":  # one the report of this run writes
        assert cli.main(["report", str(run_copy), "--out", str(tmp_path / "first")]) == 0
        name = sorted(p.name for p in (tmp_path / "first").glob("*.png"))[0]
    out = tmp_path / "rep"
    _user_file(out / name)
    expect_clear_error(["report", str(run_copy), "--out", str(out)], capsys, watch=(out,),
                       says="did not write")  # fmt: skip


@pytest.mark.slow  # builds reports (theory panel, figures): seconds each
def test_report_rewrites_its_own_files(run_copy, tmp_path, capsys):
    out = tmp_path / "rep"
    expect_works(["report", str(run_copy), "--out", str(out)], capsys)
    expect_works(["report", str(run_copy), "--out", str(out)], capsys)
    assert (out / "summary.json").is_file()


@pytest.mark.slow  # builds reports (theory panel, figures): seconds each
def test_a_failed_figure_write_keeps_the_previous_file(run_copy, tmp_path, capsys, monkeypatch):
    out = tmp_path / "rep"
    expect_works(["report", str(run_copy), "--out", str(out)], capsys)
    before = snapshot(out)
    import matplotlib.figure

    def disk_full(self, fname, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        fname.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    expect_clear_error(["report", str(run_copy), "--out", str(out)], capsys, says="No space")
    after = snapshot(out)
    assert {k: v for k, v in after.items() if "manifest" not in k} == {
        k: v for k, v in before.items() if "manifest" not in k
    }


# ---------------------------------------------------------------- two trackers


def _tracker(run_dir: Path, **kwargs):  # noqa: ANN202
    from nclab.track import NCTracker

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(30, 4)
    y = torch.arange(30) % 3
    batches = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 30, 10)]
    return NCTracker(run_dir, model=model, layer=model[2], train=batches, test=batches,
                     num_classes=3, **kwargs)  # fmt: skip


def test_a_second_tracker_never_deletes_the_first_ones_run(tmp_path):
    run = tmp_path / "run"
    first, second = _tracker(run), _tracker(run)  # both made before either wrote
    first.log_epoch(1)
    first.finish()
    before = snapshot(run)
    expect_library_error(lambda: second.log_epoch(1), (FileExistsError,), "already holds a run")
    assert snapshot(run) == before


def test_finish_after_another_tracker_took_the_folder_writes_nothing(tmp_path):
    run = tmp_path / "run"
    first = _tracker(run)
    first.log_epoch(1)
    first.finish()
    second = _tracker(run, overwrite=True)
    second.log_epoch(1)
    before = snapshot(run)
    TALLY["inputs tried"] += 1
    first.finish()  # again: the folder is the second tracker's now
    expect_library_error(lambda: first.log_epoch(2), (RuntimeError,), "closed")
    assert snapshot(run) == before and not RunFiles(run).done.exists()
    TALLY["worked as promised"] += 1
    second.finish()
    assert RunFiles(run).done.exists()


def test_a_run_folder_that_is_itself_a_link_works(tmp_path, capsys):
    """``runs/x -> /scratch/x`` is where the user chose to put the run: it is followed."""
    scratch = tmp_path / "scratch" / "x"
    scratch.mkdir(parents=True)
    link = tmp_path / "runs" / "x"
    link.parent.mkdir()
    link.symlink_to(scratch, target_is_directory=True)
    expect_works(train_argv(link, epochs=1), capsys)
    expect_works(train_argv(link, "--resume", epochs=2), capsys)
    assert (scratch / "DONE").is_file() and link.is_symlink()
