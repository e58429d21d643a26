"""Promise: an explicit --data-dir is the only place looked at (an error says so when it lacks
the files); $NCLAB_DATA is used only without --data-dir; the run records which files it read."""

from __future__ import annotations

import json

import pytest
from faultkit import TALLY, expect_clear_error, expect_works, write_idx_set

import nclab.data.readers as data_mod
from nclab.data import load_dataset

SMALL = ["--width", "16", "--depth", "1", "--batch-size", "10", "--threads", "1", "--quiet",
         "--epochs", "1"]  # fmt: skip


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):  # noqa: ANN201
    """Valid Fashion-MNIST files in $NCLAB_DATA, the cache and the system folder."""
    env = write_idx_set(tmp_path / "env")
    home = tmp_path / "home"
    write_idx_set(home / ".cache" / "nclab" / "fashion-mnist")
    system = write_idx_set(tmp_path / "system")
    monkeypatch.setenv("NCLAB_DATA", str(env))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setitem(data_mod._IDX_SYSTEM_DIRS, "fashion-mnist", (system,))
    return env


@pytest.mark.parametrize("content", ["empty", "three-of-four", "other-dataset", "a-file"])
def test_an_explicit_data_dir_is_the_only_place(content, elsewhere, tmp_path, capsys):
    given = tmp_path / "given"
    given.mkdir()
    if content == "three-of-four":
        write_idx_set(given)
        (given / "t10k-labels-idx1-ubyte.gz").unlink()
    elif content == "other-dataset":
        (given / "cifar-10-batches-py").mkdir()
    elif content == "a-file":
        given.rmdir()
        given.write_text("not a folder")
    out = tmp_path / "run"
    expect_clear_error(["train", "--dataset", "fashion-mnist", "--data-dir", str(given), *SMALL,
                        "--out", str(out)], capsys, watch=(tmp_path,),
                       says=("--data-dir", str(given), "only place"))  # fmt: skip
    assert not out.exists()


def test_nclab_data_is_used_without_data_dir_and_recorded(elsewhere, tmp_path, capsys):
    out = tmp_path / "run"
    expect_works(["train", "--dataset", "fashion-mnist", *SMALL, "--out", str(out)], capsys)
    files = json.loads((out / "config.json").read_text())["identity"]["data_files"]
    assert files and all(f.startswith(str(elsewhere)) for f in files)


def test_the_given_data_dir_is_recorded(elsewhere, tmp_path, capsys):
    given = write_idx_set(tmp_path / "given")
    out = tmp_path / "run"
    expect_works(["train", "--dataset", "fashion-mnist", "--data-dir", str(given), *SMALL,
                  "--out", str(out)], capsys)  # fmt: skip
    files = json.loads((out / "config.json").read_text())["identity"]["data_files"]
    assert len(files) == 4 and all(f.startswith(str(given)) for f in files)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "tiny-imagenet", "mnist"])
def test_every_loader_keeps_to_the_given_folder(name, elsewhere, tmp_path):
    TALLY["inputs tried"] += 1
    with pytest.raises(FileNotFoundError) as exc:
        load_dataset(name, tmp_path / "given")
    assert "only place" in str(exc.value) and str(elsewhere) not in str(exc.value)
    TALLY["clear errors"] += 1
