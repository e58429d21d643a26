"""Runs as data: nclab.frame.load_frame and `nclab export` on runs of two datasets and two
models, checked against the run directories' own files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nclab import cli
from nclab.train import TrainConfig, train

pd = pytest.importorskip("pandas")

from nclab.frame import IDENTITY_COLUMNS, config_hash, load_frame  # noqa: E402


def _image_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 1, 8, 8)).astype(np.float32)
    y_train, y_test = np.repeat(np.arange(3), 8), np.repeat(np.arange(3), 4)
    x_train = means[y_train] + 0.3 * rng.normal(size=(24, 1, 8, 8)).astype(np.float32)
    x_test = means[y_test] + 0.3 * rng.normal(size=(12, 1, 8, 8)).astype(np.float32)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture(scope="module")
def mixed_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three runs: an MLP with CE and with LS on a 4-class synthetic set, a CNN with CE on an
    3-class image .npz file (another dataset, another model)."""
    root = tmp_path_factory.mktemp("mixed")
    small = dict(epochs=2, batch_size=16, lr=0.05, threads=1, width=8, depth=1)
    synth = "synthetic:k=4,d=6,n=10,test=5"
    train(TrainConfig(dataset=synth, model="mlp", **small), root / "mlp_ce", quiet=True)
    train(
        TrainConfig(dataset=synth, model="mlp", loss="ls", smoothing=0.1, seed=1, **small),
        root / "mlp_ls",
        quiet=True,
    )
    data = f"npz:{_image_npz(root / 'images.npz')}"
    train(
        TrainConfig(dataset=data, model="cnn", **{**small, "epochs": 3}),
        root / "cnn_ce",
        quiet=True,
    )
    return root


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_frame_has_one_row_per_run_and_epoch_with_identity_columns(mixed_runs: Path) -> None:
    frame = load_frame(mixed_runs)
    assert list(frame.columns[: len(IDENTITY_COLUMNS)]) == list(IDENTITY_COLUMNS)
    assert sorted(frame["run"].unique()) == ["cnn_ce", "mlp_ce", "mlp_ls"]
    assert set(frame["model"]) == {"mlp", "cnn"}
    assert frame["dataset"].nunique() == 2
    assert len(frame) == 2 + 2 + 3
    for run in ("mlp_ce", "mlp_ls", "cnn_ce"):
        rows = _rows(mixed_runs / run)
        part = frame[frame["run"] == run].sort_values("epoch")
        assert list(part["epoch"]) == [r["epoch"] for r in rows]
        for key in ("nc1", "test_acc", "ece", "train_loss", "lr"):
            assert np.allclose(part[key].to_numpy(float), [r[key] for r in rows], rtol=0, atol=0)
        config = json.loads((mixed_runs / run / "config.json").read_text())
        assert (part["seed"] == config["seed"]).all()
        assert (part["loss"] == config["loss"]).all()
        assert (part["epochs"] == config["epochs"]).all()  # the plain config entries too
        # the metric keeps its name; the config's whole-test-set size is prefixed
        assert (part["config_test_size"] == config["test_size"]).all()
        assert (part["config_hash"] == config_hash(config)).all()
    ls = frame[frame["run"] == "mlp_ls"]
    assert set(ls["setting"]) == {"LS δ=0.1"} and set(ls["smoothing"]) == {0.1}
    # runs of different configs have different hashes
    assert frame.groupby("run")["config_hash"].first().nunique() == 3


def test_config_hash_ignores_knobs_and_follows_identity() -> None:
    config = TrainConfig(dataset="synthetic:k=3,d=4,n=5,test=2", epochs=1)
    doc = {**json.loads(json.dumps(vars(config))), "resolved": {"device": "cpu"}}
    assert config_hash(doc) == config_hash({**doc, "threads": 7, "data_dir": "/elsewhere"})
    assert config_hash(doc) != config_hash({**doc, "seed": 3})
    assert config_hash(doc) != config_hash({**doc, "lr": 0.5})


def test_per_class_frame_matches_per_class_jsonl(mixed_runs: Path) -> None:
    frame = load_frame([mixed_runs / "mlp_ce", mixed_runs / "cnn_ce"], per_class=True)
    assert set(frame["split"]) == {"train", "test"}
    for run, k in (("mlp_ce", 4), ("cnn_ce", 3)):
        lines = [
            json.loads(s) for s in (mixed_runs / run / "per_class.jsonl").read_text().splitlines()
        ]
        part = frame[frame["run"] == run]
        assert len(part) == len(lines) * 2 * k
        last = lines[-1]
        got = part[(part["epoch"] == last["epoch"]) & (part["split"] == "test")]
        got = got.sort_values("class")
        assert list(got["class"]) == list(range(k))
        assert np.allclose(got["nc1"].to_numpy(float), last["test"]["nc1"])
        assert np.allclose(got["count"].to_numpy(float), last["test"]["count"])


def test_load_frame_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_frame(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no run directories"):
        load_frame(tmp_path)
    with pytest.raises(ValueError, match="paths is empty"):
        load_frame([])


def test_export_csv_and_parquet_round_trip(mixed_runs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "all.csv"
    assert cli.main(["export", str(mixed_runs), "--out", str(out)]) == 0
    assert "7 rows" in capsys.readouterr().out
    back = pd.read_csv(out)
    frame = load_frame(mixed_runs)
    assert list(back.columns) == list(frame.columns)
    assert np.allclose(back["nc1"], frame["nc1"])
    pytest.importorskip("pyarrow")
    pq = tmp_path / "all.parquet"
    assert cli.main(["export", str(mixed_runs), "--out", str(pq), "--per-class"]) == 0
    back = pd.read_parquet(pq)
    assert len(back) == len(load_frame(mixed_runs, per_class=True))


def test_export_keeps_existing_files_and_refuses_bad_outputs(
    mixed_runs: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "mine.csv"
    out.write_text("my own notes\n")
    assert cli.main(["export", str(mixed_runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists already" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "my own notes\n"
    # a symlink is replaced only with --force, and then the link itself, not its target
    target = tmp_path / "target.csv"
    target.write_text("keep\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert cli.main(["export", str(mixed_runs), "--out", str(link)]) == 2
    assert cli.main(["export", str(mixed_runs), "--out", str(link), "--force"]) == 0
    assert target.read_text() == "keep\n" and not link.is_symlink()
    assert cli.main(["export", str(mixed_runs), "--out", str(out), "--force"]) == 0
    assert len(pd.read_csv(out)) == 7
    for bad, what in ((tmp_path / "x.xlsx", ".csv or .parquet"), (tmp_path, "directory")):
        assert cli.main(["export", str(mixed_runs), "--out", str(bad)]) == 2
        assert what in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "none"), "--out", str(tmp_path / "n.csv")]) == 2
    assert not (tmp_path / "n.csv").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_missing_pandas_says_how_to_install(monkeypatch) -> None:
    import builtins

    real = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("no pandas")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ValueError, match=r"pip install 'nclab\[pandas\]'"):
        load_frame(".")
