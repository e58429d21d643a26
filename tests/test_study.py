"""`nclab study`: grid files, planning, the digits dataset, the atlas, and a study that resumes
after SIGKILL without retraining what was finished."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nclab.cli import main
from nclab.report.atlas import atlas_rows, build_atlas
from nclab.study import GRIDS, StudyConfig, grid_from_dict, load_grid, plan_cells, study

SRC = Path(__file__).resolve().parents[1] / "src"

# ------------------------------------------------------------------------------ grid files

TINY = {
    "name": "tiny",
    "datasets": {"syn": {"dataset": "synthetic:k=3,d=8,n=12,test=20"}},
    "models": {"mlp": {"model": "mlp", "width": 16, "depth": 1}},
    "conditions": {"clean": {}, "noise": {"label_noise": 0.2}},
    "smoothings": [0.1],
    "seeds": [0],
    "train": {"epochs": 6, "batch_size": 12, "lr": 0.05, "scheduler": "cosine"},
    "report": {"theory": False},
}


def _write_grid(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_named_grids_plan_valid_cells(tmp_path):
    sizes = {}
    for name, grid in GRIDS.items():
        cells = plan_cells(grid, tmp_path)
        sizes[name] = len(cells)
        for cell in cells:
            assert {r.config.loss for r in cell.runs} == {"ce", "ls"}
            assert len(cell.runs) == len(grid.seeds) * (1 + len(grid.smoothings))
            assert all(r.path.parent == cell.path / "runs" for r in cell.runs)
            # CE and LS of a seed differ only in loss and smoothing: they are a pair
            ce = {r.config.seed: r.config.to_dict() for r in cell.runs if r.config.loss == "ce"}
            for r in cell.runs:
                if r.config.loss == "ls":
                    d = r.config.to_dict()
                    diff = {k for k in d if d[k] != ce[r.config.seed][k]}
                    assert diff == {"loss", "smoothing"}
    assert sizes == {"smoke": 2, "default": 9, "paper": 12}
    default = {c.name for c in plan_cells(GRIDS["default"], tmp_path)}
    assert "digits_cnn_noise0.2" in default and "fashion-mnist_cnn_clean" not in default
    assert len(GRIDS["default"].seeds) >= 3  # verdicts more than indicative


def test_options_override_in_axis_order(tmp_path):
    data = dict(TINY, train={**TINY["train"], "lr": 0.5, "width": 99})
    cells = plan_cells(grid_from_dict(data), tmp_path)
    noisy = next(c for c in cells if c.condition == "noise")
    assert noisy.runs[0].config.lr == 0.5  # from train
    assert noisy.runs[0].config.width == 16  # the model's level wins over train
    assert noisy.runs[0].config.label_noise == 0.2


def test_data_dir_and_device_apply_to_every_run_and_nothing_else(tmp_path, capsys):
    cells = plan_cells(GRIDS["smoke"], tmp_path, overrides={"data_dir": "/d", "device": "cpu"})
    assert {(r.config.data_dir, r.config.device) for c in cells for r in c.runs} == {("/d", "cpu")}
    with pytest.raises(ValueError, match="lr changes what a run computes"):
        plan_cells(GRIDS["smoke"], tmp_path, overrides={"lr": 0.1})
    out = tmp_path / "o"
    argv = ["study", "--grid", "smoke", "--out", str(out), "--data-dir", str(tmp_path)]
    assert main([*argv, "--print-commands"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 8 and all(f"--data-dir {tmp_path}" in c for c in commands)
    assert all("--resume" in c and str(out / "cells") in c for c in commands)
    assert not out.exists()  # printing commands creates nothing


def test_a_grid_round_trips_through_show_grid(tmp_path, capsys):
    assert main(["study", "--grid", "default", "--show-grid"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "g.yaml"
    path.write_text(text, encoding="utf-8")
    again = load_grid(path)
    assert again.as_dict() == GRIDS["default"].as_dict()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"colour": 1}, "colour"),
        ({"datasets": {"syn": {"lrr": 1}}}, "datasets.syn.lrr"),
        ({"models": {"mlp": {"seed": 3}}}, "models.mlp.seed"),
        ({"models": []}, "models"),
        ({"conditions": {"a/b": {}}}, "conditions.a/b"),
        ({"smoothings": [1.5]}, "smoothings"),
        ({"smoothings": [0]}, "smoothings"),
        ({"seeds": [-1]}, "seeds"),
        ({"seeds": "0 1"}, "seeds"),
        ({"train": [1, 2]}, "train"),
        ({"report": {"figures": 1}}, "report.figures"),
        ({"report": {"ufm_max_iters": "many"}}, "report.ufm_max_iters"),
        ({"report": {"theory": 1}}, "report.theory"),
        ({"conditions": {"clean\n": {}}}, "conditions.clean"),
        ({"jobs": 0}, "jobs"),
        ({"exclude": [{"model": "cnn"}]}, "exclude[0].model"),
        ({"exclude": [{"optimizer": "x"}]}, "exclude[0].optimizer"),
        ({"train": {"epochs": -3}}, "cell syn_mlp_clean"),
    ],
)
def test_grid_errors_are_one_line_naming_the_key(change, key, tmp_path, capsys):
    path = _write_grid(tmp_path / "g.yaml", {**TINY, **change})
    out = tmp_path / "out"
    assert main(["study", "--grid", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nclab study: error:")
    assert key in err
    assert not out.exists()  # nothing was created


def test_grid_file_that_is_not_a_mapping_or_missing(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    assert main(["study", "--grid", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "must hold a mapping" in capsys.readouterr().err
    assert main(["study", "--grid", str(tmp_path / "nope.yaml")]) == 2
    assert "neither a named grid" in capsys.readouterr().err


def test_grid_file_with_an_alias_bomb_is_refused(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["study", "--grid", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be parsed" in err


def test_study_help_imports_neither_torch_nor_numpy():
    code = (
        "import sys; from nclab.cli import main\n"
        "try:\n    main(['study', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------ digits


def _digits_csv(path: Path, per_class: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), per_class)
    rng.shuffle(y)
    x = rng.integers(0, 17, size=(len(y), 64))
    text = "\n".join(",".join(map(str, [*row, label])) for row, label in zip(x, y, strict=True))
    with gzip.open(path, "wt") as f:
        f.write(text + "\n")
    return x, y


def test_digits_reads_a_csv_in_the_shipped_format(tmp_path):
    from nclab.data import load_dataset
    from nclab.digits import TEST_FRACTION, split_digits

    x, y = _digits_csv(tmp_path / "digits.csv.gz", per_class=10)
    bundle = load_dataset("digits", data_dir=tmp_path)
    assert bundle.input_shape == (1, 8, 8) and bundle.num_classes == 10
    train, test = split_digits(y)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(y)
    # stratified: round(0.2 * 10) = 2 test images of every class
    assert np.bincount(y[test], minlength=10).tolist() == [round(TEST_FRACTION * 10)] * 10
    assert bundle.y_test.tolist() == y[test].tolist()
    # normalised by training statistics of pixel/16 (population std), as a direct formula
    raw = x[train].astype(np.float64) / 16.0
    mean, std = raw.mean(), raw.std()
    expect = (x[test].astype(np.float64) / 16.0 - mean) / std
    got = bundle.x_test.numpy().reshape(len(test), 64)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)
    # the split does not depend on the run's seed
    again = load_dataset("digits", data_dir=tmp_path, seed=7)
    assert again.y_test.tolist() == bundle.y_test.tolist()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (",".join(["1"] * 64), "65"),  # 64 values: the label is missing
        (",".join(["1"] * 64 + ["10"]), "label outside"),
        (",".join(["17"] + ["1"] * 63 + ["3"]), "pixel outside"),
        (",".join(["a"] + ["1"] * 63 + ["3"]), "not a number"),
    ],
)
def test_a_corrupt_digits_file_is_one_error_naming_the_line(tmp_path, line, message):
    from nclab.digits import read_digits_csv

    good = ",".join(["0"] * 64 + ["1"])
    path = tmp_path / "digits.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(f"{good}\n{line}\n")
    with pytest.raises(ValueError, match="line 2") as err:
        read_digits_csv(path)
    assert message in str(err.value) or "values" in str(err.value)


def test_digits_without_scikit_learn_names_the_install(monkeypatch, tmp_path, capsys):
    import nclab.digits

    monkeypatch.setattr(nclab.digits.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install scikit-learn"):
        nclab.digits.find_digits_file()
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(out), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nclab[digits]" in err
    # an explicit --data-dir without the file is the only place looked at
    with pytest.raises(FileNotFoundError, match="digits.csv.gz"):
        from nclab.data import load_dataset

        load_dataset("digits", data_dir=tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn absent")
def test_digits_from_the_installed_scikit_learn_match_its_own_loader():
    from sklearn.datasets import load_digits

    from nclab.digits import find_digits_file, load_digits_arrays, read_digits_csv

    x, y = read_digits_csv(find_digits_file())
    ref = load_digits()
    np.testing.assert_array_equal(x.reshape(-1, 64), ref.data.astype(np.uint8))
    np.testing.assert_array_equal(y, ref.target)
    x_train, y_train, x_test, y_test = load_digits_arrays()
    assert len(x_train) == 1438 and len(x_test) == 359
    assert np.bincount(y_test).min() >= 35


# ------------------------------------------------------------------------------ atlas


def _fake_summary(statuses: dict[str, tuple[str, float | None]]) -> dict:
    verdicts = []
    for claim, (status, effect) in statuses.items():
        verdicts.append(
            {
                "claim": claim,
                "status": status,
                "verdict": status,
                "per_delta": [
                    {
                        "label": "LS δ=0.1",
                        "smoothing": 0.1,
                        "status": status,
                        "verdict": f"{status} (custom text)",
                        "indicative": False,
                        "qualifier": "",
                        "effect": effect,
                        "ci_low": None if effect is None else effect - 1,
                        "ci_high": None if effect is None else effect + 1,
                        "measure": "m (unit)",
                        "seeds_total": 3,
                    }
                ],
            }
        )
    return {"verdicts": verdicts}


def test_atlas_shows_each_cells_own_verdicts_and_escapes_user_text(tmp_path):
    cells = [
        (
            {"name": "a_b_c", "dataset": "a", "model": "b", "condition": "c"},
            _fake_summary({"a": ("holds", -2.0), "d": ("does not hold", 3.5)}),
            "cells/a_b_c/report",
        ),
        (
            {"name": "x_y_z", "dataset": "x", "model": "y", "condition": "z"},
            _fake_summary({"a": ("mixed", None), "d": ("undetermined", None)}),
            "cells/x_y_z/report",
        ),
    ]
    evil = "<script>alert(1)</script> | *bold* [link](http://x)"
    result = build_atlas(cells, tmp_path / "report", title="t", description=evil)
    assert {p.suffix for p in result.figures} == {".png", ".pdf"}
    assert all(p.stat().st_size > 1000 for p in result.figures)
    data = json.loads(result.json.read_text())
    got = {(r["cell"], e["claim"]): e["verdict"] for r in data["rows"] for e in r["entries"]}
    assert got == {
        ("a_b_c", "a"): "holds (custom text)",
        ("a_b_c", "d"): "does not hold (custom text)",
        ("x_y_z", "a"): "mixed (custom text)",
        ("x_y_z", "d"): "undetermined (custom text)",
    }
    md = result.markdown.read_text()
    page = result.html.read_text()
    assert "<script>" not in md and "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "\\*bold\\*" in md and "\\|" in md  # no markup, no broken table
    assert "-2 \\[-3, -1\\]" in md  # effect and interval (brackets escaped)
    assert not list((tmp_path / "report").glob("*.tmp"))  # atomic writes leave nothing


def test_atlas_never_replaces_a_file_it_did_not_write_nor_follows_a_link(tmp_path):
    cells = [
        (
            {"name": "a_b_c", "dataset": "a", "model": "b", "condition": "c"},
            _fake_summary({"a": ("holds", -2.0)}),
            "r",
        )
    ]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.md").write_text("my notes")
    with pytest.raises(ValueError, match="did not write"):
        build_atlas(cells, mine)
    assert (mine / "summary.md").read_text() == "my notes"
    assert sorted(p.name for p in mine.iterdir()) == ["summary.md"]
    linked = tmp_path / "linked"
    linked.mkdir()
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    (linked / "atlas.png").symlink_to(outside)
    with pytest.raises(ValueError):
        build_atlas(cells, linked)
    assert outside.read_bytes() == b"x"
    # a folder the atlas wrote is rewritten
    ok = tmp_path / "ok"
    build_atlas(cells, ok)
    build_atlas(cells, ok, title="again")
    assert "again" in (ok / "summary.md").read_text()


# ------------------------------------------------------------------------------ end to end


def _atlas_matches_cells(out: Path) -> int:
    """Every atlas verdict equals the per-δ verdict of its cell's own summary.json."""
    atlas = json.loads((out / "report" / "summary.json").read_text())
    checked = 0
    for row in atlas["rows"]:
        cell = json.loads((out / "cells" / row["cell"] / "report" / "summary.json").read_text())
        for entry in row["entries"]:
            claim = next(v for v in cell["verdicts"] if v["claim"] == entry["claim"])
            per = next(d for d in claim["per_delta"] if d["smoothing"] == row["smoothing"])
            assert entry["verdict"] == per["verdict"] and entry["status"] == per["status"]
            # the effect printed is that of a deciding measure of the cell's report
            shown = [m for m in per["measures"] if m["decides"] and m["effect"] == entry["effect"]]
            assert shown or entry["effect"] == per["effect"]
            checked += 1
    return checked


def _stamps(out: Path, cell: str) -> dict[str, int]:
    root = out / "cells" / cell
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _study_cmd(grid: Path, out: Path, jobs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nclab.cli",
        "study",
        "--grid",
        str(grid),
        "--out",
        str(out),
        "--jobs",
        str(jobs),
        "--threads",
        "1",
    ]


@pytest.mark.slow
def test_study_resumes_after_sigkill_without_retraining_finished_cells(tmp_path):
    grid = _write_grid(tmp_path / "tiny.yaml", {**TINY, "train": {**TINY["train"], "epochs": 30}})
    out = tmp_path / "study"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _study_cmd(grid, out, jobs=1),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first = out / "cells" / "syn_mlp_clean" / "cell.json"
    deadline = time.monotonic() + 300
    second_runs = out / "cells" / "syn_mlp_noise" / "runs"
    # kill once the first cell is reported and a run of the second cell is training (it has
    # logged an epoch and is not done)
    while time.monotonic() < deadline and proc.poll() is None:
        training = [
            p for p in second_runs.glob("*/metrics.jsonl") if not (p.parent / "DONE").exists()
        ]
        if first.is_file() and training:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.is_file()
    before = _stamps(out, "syn_mlp_clean")
    done_before = {p.parent.name for p in second_runs.glob("*/DONE")}
    started = {p.parent.name for p in second_runs.glob("*/config.json")} - done_before
    assert started  # killed while a run of the second cell was training

    result = study(StudyConfig(grid=grid, out=out, jobs=1, threads=1, quiet=True))
    # the finished cell: not one file rewritten, its runs and report reused
    assert _stamps(out, "syn_mlp_clean") == before
    cells = {c.cell.name: c for c in result.cells}
    assert cells["syn_mlp_clean"].status == "reused"
    assert {r.status for r in cells["syn_mlp_clean"].runs} == {"reused"}
    noisy = {r.path.name: r.status for r in cells["syn_mlp_noise"].runs}
    for name, status in noisy.items():
        if name in done_before:
            assert status == "reused"
        else:
            assert status == ("resumed" if name in started else "trained")
    assert result.trained == len(noisy) - len(done_before)
    # an interrupted run continued from its checkpoint: every epoch logged exactly once
    for run in second_runs.iterdir():
        epochs = [
            json.loads(x)["epoch"]
            for x in (run / "metrics.jsonl").read_text().splitlines()
            if x.strip()
        ]
        assert epochs == list(range(1, 31))
    assert cells["syn_mlp_noise"].status == "reported"
    assert _atlas_matches_cells(out) == 2 * 6  # 2 cells x claims (a)-(f)
    manifest = json.loads((out / "study.json").read_text())
    assert [c["status"] for c in manifest["cells"]] == ["reused", "reported"]

    # a third call trains nothing and rewrites no cell report
    stamps = {c: _stamps(out, c) for c in cells}
    again = study(StudyConfig(grid=grid, out=out, jobs=1, threads=1, quiet=True))
    assert again.trained == 0 and {c.status for c in again.cells} == {"reused"}
    assert {c: _stamps(out, c) for c in cells} == stamps


@pytest.mark.slow
def test_smoke_grid_two_workers_and_atlas_equals_cell_reports(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert main(["study", "--grid", "smoke", "--out", str(out), "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    assert "2 job(s)" in printed and "atlas:" in printed
    assert _atlas_matches_cells(out) == 2 * 6
    for cell in ("synthetic_mlp_clean", "synthetic_mlp_noise0.1"):
        assert (out / "cells" / cell / "report" / "report.html").is_file()
    png = out / "report" / "atlas.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = atlas_rows(
        [
            (
                json.loads((out / "cells" / c / "cell.json").read_text()),
                json.loads((out / "cells" / c / "report" / "summary.json").read_text()),
                c,
            )
            for c in ("synthetic_mlp_clean",)
        ]
    )
    assert len(rows) == 1 and rows[0].smoothing == 0.1
    # the same command again trains nothing
    assert main(["study", "--grid", "smoke", "--out", str(out), "--seeds", "0", "--jobs", "1"]) == 0
    assert "(0 run(s) trained)" in capsys.readouterr().out
    # a changed grid over the same folder is refused, naming the option, and nothing changes
    changed = GRIDS["smoke"].as_dict()
    changed["train"]["lr"] = 0.5
    grid = _write_grid(tmp_path / "changed.yaml", changed)
    stamps = {c: _stamps(out, c) for c in ("synthetic_mlp_clean", "synthetic_mlp_noise0.1")}
    assert main(["study", "--grid", str(grid), "--out", str(out), "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lr" in err and "--overwrite" in err
    assert {c: _stamps(out, c) for c in stamps} == stamps
