"""Tests of nclab.compare and `nclab compare`: the smoke preset end to end, reuse and resume of
runs, config mismatches, run planning and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_report import CURVE_AND_THEORY_FIGURES

import nclab.train
from nclab.cli import main
from nclab.compare import PRESETS, CompareConfig, compare, plan_runs, validate_smoothings

RUNS = ("ce_seed0", "ls0.1_seed0")


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _stamps(out: Path) -> dict[str, int]:
    files = [p for p in (out / "runs").rglob("*") if p.is_file()]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """`nclab compare --preset smoke` once, through the CLI (spawned workers, real training)."""
    out = tmp_path_factory.mktemp("smoke") / "cmp"
    assert main(["compare", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    return out


def _copy(smoke: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "cmp"
    shutil.copytree(smoke, dst)
    return dst


def _fake_train(calls: list):
    def fake(config, out_dir, *, resume=False, overwrite=False, quiet=False):
        calls.append(
            SimpleNamespace(
                config=config, out_dir=Path(out_dir), resume=resume, overwrite=overwrite
            )
        )
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if not (Path(out_dir) / "metrics.jsonl").exists():
            (Path(out_dir) / "metrics.jsonl").write_text('{"epoch": 1, "train_acc": 1.0}\n')
        return SimpleNamespace(final={"train_acc": 1.0}, first_perfect_epoch=1)

    return fake


def test_smoke_end_to_end(smoke):
    for name in RUNS:
        run = smoke / "runs" / name
        assert (run / "DONE").is_file() and (run / "predictions.npz").is_file()
        rows = _rows(run)
        assert rows[-1]["epoch"] == 25
        assert rows[-1]["train_acc"] == 1.0, f"{name} did not reach 100% training accuracy"
    ce = json.loads((smoke / "runs" / "ce_seed0" / "config.json").read_text())
    ls = json.loads((smoke / "runs" / "ls0.1_seed0" / "config.json").read_text())
    assert (ce["loss"], ce["smoothing"], ls["loss"], ls["smoothing"]) == ("ce", 0.0, "ls", 0.1)
    ignore = {
        "loss",
        "smoothing",
        "resolved",
        "versions",
        "started",
        "start_time",
        "host",
        "resumed",
        "time",
        "identity",  # each run has its own run id; its data fingerprint is compared below
    }
    assert {k: v for k, v in ce.items() if k not in ignore} == {
        k: v for k, v in ls.items() if k not in ignore
    }  # same seed, data, model and optimiser: same initialisation and batch order
    assert ce["identity"]["data"] == ls["identity"]["data"]
    assert ce["identity"]["run_id"] != ls["identity"]["run_id"]
    report = smoke / "report"
    for stem in CURVE_AND_THEORY_FIGURES:
        assert (report / f"{stem}.png").stat().st_size > 1000
        assert (report / f"{stem}.pdf").stat().st_size > 1000
    assert "data:image/png;base64," in (report / "report.html").read_text()
    summary = json.loads((report / "summary.json").read_text())
    assert [g["label"] for g in summary["groups"]] == ["CE", "LS δ=0.1"]
    ce_final = summary["groups"][0]["final"]["nc1"]["mean"]
    assert ce_final == pytest.approx(_rows(smoke / "runs" / "ce_seed0")[-1]["nc1"])
    manifest = json.loads((smoke / "compare.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["trained", "trained"]


def test_second_invocation_reuses_complete_runs(smoke, tmp_path, monkeypatch, capsys):
    out = _copy(smoke, tmp_path)
    before = _stamps(out)
    calls: list = []
    monkeypatch.setattr(nclab.train, "train", _fake_train(calls))
    assert main(["compare", "--preset", "smoke", "--out", str(out), "--no-report"]) == 0
    assert calls == []  # nothing was (re)trained
    assert _stamps(out) == before  # checkpoints, metrics and predictions untouched
    printed = capsys.readouterr().out
    assert "0 run(s) to train, 2 reused" in printed
    # one line per run (no terminal here: no bars), then the final table, in plan order
    assert "first at epoch never" not in printed
    table = printed[printed.index("run  ") :].splitlines()
    assert table[0].split("  ")[0] == "run" and "100% train acc at epoch" in table[0]
    assert [line.split()[:2] for line in table[2:4]] == [
        ["ce_seed0", "reused"],
        ["ls0.1_seed0", "reused"],
    ]
    manifest = json.loads((out / "compare.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["reused", "reused"]


def test_interrupted_run_resumes_and_new_delta_trains(smoke, tmp_path, monkeypatch):
    out = _copy(smoke, tmp_path)
    (out / "runs" / "ls0.1_seed0" / "DONE").unlink()  # as if interrupted before the end
    calls: list = []
    monkeypatch.setattr(nclab.train, "train", _fake_train(calls))
    cfg = CompareConfig(preset="smoke", out=out, jobs=1, report=False, quiet=True)
    result = compare(cfg)
    assert [(c.out_dir.name, c.resume, c.overwrite) for c in calls] == [
        ("ls0.1_seed0", True, False)
    ]
    assert [r.status for r in result.runs] == ["reused", "resumed"]
    # a second seed is new work; the existing seed-0 runs stay reused
    calls.clear()
    (out / "runs" / "ls0.1_seed0" / "DONE").write_text("")
    result = compare(
        CompareConfig(preset="smoke", seeds=[0, 1], out=out, jobs=1, report=False, quiet=True)
    )
    assert [(c.out_dir.name, c.resume) for c in calls] == [
        ("ce_seed1", True),
        ("ls0.1_seed1", True),
    ]
    assert [(r.name, r.status) for r in result.runs] == [
        ("ce_seed0", "reused"),
        ("ce_seed1", "trained"),
        ("ls0.1_seed0", "reused"),
        ("ls0.1_seed1", "trained"),
    ]


def test_changed_config_is_refused_unless_overwrite(smoke, tmp_path, monkeypatch, capsys):
    out = _copy(smoke, tmp_path)
    assert main(["compare", "--preset", "smoke", "--out", str(out), "--lr", "0.01", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "lr: 0.05 -> 0.01" in err and "--overwrite" in err
    calls: list = []
    monkeypatch.setattr(nclab.train, "train", _fake_train(calls))
    compare(
        CompareConfig(
            preset="smoke",
            train={"lr": 0.01},
            out=out,
            jobs=1,
            report=False,
            overwrite=True,
            quiet=True,
        )
    )
    assert [(c.out_dir.name, c.overwrite, c.resume, c.config.lr) for c in calls] == [
        ("ce_seed0", True, False, 0.01),
        ("ls0.1_seed0", True, False, 0.01),
    ]


def test_plan_runs_settings_and_overrides(tmp_path):
    runs = plan_runs(
        CompareConfig(
            preset="quick",
            smoothings=[0.2, 0.05, 0.05],
            seeds=[1, 0],
            train={"epochs": 3, "width": 64},
            out=tmp_path,
            jobs=2,
        )
    )
    assert [r.name for r in runs] == [
        "ce_seed1",
        "ce_seed0",
        "ls0.05_seed1",
        "ls0.05_seed0",
        "ls0.2_seed1",
        "ls0.2_seed0",
    ]  # CE added, δ sorted, dedup
    assert all(r.path == tmp_path / "runs" / r.name for r in runs)
    assert {
        (r.config.epochs, r.config.width, r.config.dataset, r.config.per_class) for r in runs
    } == {(3, 64, "fashion-mnist", PRESETS["quick"].train["per_class"])}  # overrides + preset
    assert [(r.config.loss, r.config.smoothing) for r in runs[::2]] == [
        ("ce", 0.0),
        ("ls", 0.05),
        ("ls", 0.2),
    ]
    ufm = plan_runs(
        CompareConfig(preset="smoke", train={"ufm_penalties": True, "lambda_w": 1e-3}, out=tmp_path)
    )
    assert all(r.config.ufm_penalties and r.config.weight_decay is None for r in ufm)
    assert all(r.config.lambda_w == 1e-3 for r in ufm)
    paper = plan_runs(CompareConfig(preset="paper", out=tmp_path))
    assert [r.config.smoothing for r in paper[::3]] == [0.0, 0.05]
    assert paper[0].config.model == "resnet18" and paper[0].config.milestones == [150]
    with pytest.raises(ValueError, match="cannot be set for a comparison"):
        plan_runs(CompareConfig(preset="smoke", train={"seed": 3}, out=tmp_path))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--smoothing", "1.0"], "outside [0, 1)"),
        (["--smoothing", "0.1", "-0.05"], "outside [0, 1)"),
        (["--smoothing", "nan"], "must be numbers"),
        (["--jobs", "0"], "--jobs must be a positive integer"),
        (["--seeds", "-1"], "non-negative"),
        (["--model", "nope"], "unknown model"),
    ],
)
def test_bad_input_is_one_clear_error(argv, message, tmp_path, capsys):
    assert main(["compare", "--preset", "smoke", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nclab compare: error:") and message in err
    assert not (tmp_path / "o" / "runs").exists()  # nothing was started


def test_validate_smoothings():
    assert validate_smoothings([0.1, 0.05, 0.1]) == [0.0, 0.05, 0.1]
    assert validate_smoothings([]) == [0.0]
    with pytest.raises(ValueError, match="Guo et al. \\(2024\\) use 0.05"):
        validate_smoothings([1.5])


def test_failing_worker_stops_the_other_runs_at_once(smoke, tmp_path, capsys):
    """With --jobs 2, a run that fails ends the command without waiting for its sibling to
    finish its (long) training; the sibling is left resumable, not complete."""
    out = _copy(smoke, tmp_path)
    (out / "runs" / "ce_seed0" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    argv = ["compare", "--preset", "smoke", "--out", str(out), "--quiet", "--jobs", "2"]
    assert main([*argv, "--epochs", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nclab compare: error: run ce_seed0: ") and "last.pt" in err
    assert "Traceback" not in err and err.count("\n") == 1
    sibling = out / "runs" / "ls0.1_seed0"
    assert _rows(sibling)[-1]["epoch"] < 100000


def test_quick_preset_runs_three_seeds_of_ce_and_two_deltas(tmp_path):
    runs = plan_runs(CompareConfig(out=tmp_path))
    assert sorted((r.config.smoothing, r.config.seed) for r in runs) == [
        (d, s) for d in (0.0, 0.05, 0.1) for s in (0, 1, 2)
    ]
    quick = PRESETS["quick"].train
    assert {(r.config.per_class, r.config.test_per_class) for r in runs} == {
        (quick["per_class"], quick["test_per_class"])
    }


def _small_npz(path: Path, per_class: int = 12, k: int = 3) -> Path:
    """A tiny image dataset in nclab's npz format, far below the quick preset's 300 per class."""
    import numpy as np

    rng = np.random.default_rng(0)
    y_train, y_test = np.repeat(np.arange(k), per_class), np.repeat(np.arange(k), 5)
    centres = rng.normal(size=(k, 1, 6, 6))
    x_train = centres[y_train] + 0.3 * rng.normal(size=(len(y_train), 1, 6, 6))
    x_test = centres[y_test] + 0.3 * rng.normal(size=(len(y_test), 1, 6, 6))
    np.savez(
        path,
        x_train=x_train.astype("float32"),
        y_train=y_train,
        x_test=x_test.astype("float32"),
        y_test=y_test,
    )
    return path


def test_other_dataset_drops_the_presets_subset_sizes(tmp_path):
    data = f"npz:{_small_npz(tmp_path / 'small.npz')}"
    runs = plan_runs(CompareConfig(train={"dataset": data}, out=tmp_path))
    assert {(r.config.per_class, r.config.test_per_class) for r in runs} == {(None, None)}
    kept = plan_runs(CompareConfig(train={"dataset": data, "per_class": 10}, out=tmp_path))
    assert {r.config.per_class for r in kept} == {10}
    same = plan_runs(CompareConfig(train={"dataset": "fashion-mnist"}, out=tmp_path))
    assert {r.config.per_class for r in same} == {PRESETS["quick"].train["per_class"]}


@pytest.mark.slow
def test_compare_on_a_small_npz_dataset_runs_without_per_class(tmp_path, capsys):
    """`nclab compare --dataset npz:FILE` on 12 images per class needs no --per-class."""
    data = _small_npz(tmp_path / "small.npz")
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--dataset",
        f"npz:{data}",
        "--out",
        str(out),
        "--epochs",
        "3",
        "--width",
        "16",
        "--depth",
        "1",
        "--batch-size",
        "8",
        "--seeds",
        "0",
        "1",
        "--smoothing",
        "0.1",
        "--jobs",
        "1",
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    rows = _rows(out / "runs" / "ls0.1_seed1")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["test_size"] == 15
    summary = json.loads((out / "report" / "summary.json").read_text())
    entry = summary["verdicts"][0]["per_delta"][0]
    assert entry["seeds_total"] == 2 and "indicative" in entry["verdict"]


@pytest.mark.parametrize("command", ["train", "compare"])
def test_per_class_all_parses_in_train_and_compare(command, tmp_path, capsys):
    from nclab.cli import build_parser

    args = build_parser().parse_args([command, "--per-class", "all", "--test-per-class", "7"])
    key = "per_class" if command == "train" else "train_per_class"
    assert getattr(args, key) is None
    assert getattr(args, key.replace("per_class", "test_per_class")) == 7
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--per-class", "some", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "positive integer or 'all'" in capsys.readouterr().err


@pytest.mark.slow
def test_paper_preset_finishes_on_cpu_with_small_fake_cifar_files(tmp_path, capsys):
    """ResNet-18 at width 4 on a few CIFAR-10-format images: the paper's setting runs end to
    end on a CPU (two epochs, the milestone moved inside them)."""
    import pickle

    import numpy as np

    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
        batch = {b"data": images, b"labels": [i % 10 for i in range(20)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    out = tmp_path / "paper"
    argv = ["compare", "--preset", "paper", "--width", "4", "--seeds", "0", "--epochs", "2"]
    argv += ["--milestones", "1", "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0, capsys.readouterr().err
    for name in ("ce_seed0", "ls0.05_seed0"):
        assert [r["epoch"] for r in _rows(out / "runs" / name)] == [1, 2]
        config = json.loads((out / "runs" / name / "config.json").read_text())
        assert (config["model"], config["width"]) == ("resnet18", 4)
    assert (out / "report" / "report.html").is_file()
