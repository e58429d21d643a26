"""Weights & Biases logging in offline mode (no network): what `nclab train --wandb`, the
tracker and `nclab compare --wandb` logged is read back from the offline run's ``.wandb`` file
(W&B's record log: LevelDB-style 32 KiB blocks of protobuf ``Record`` messages) and compared
with metrics.jsonl and config.json."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from test_track import tracked_sgd

from nclab import cli
from nclab.models import build_model
from nclab.track import NCTracker
from nclab.train import read_rows
from nclab.train.loggers import metric_tag, row_scalars

pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2 as pb  # noqa: E402

TINY = [
    "--dataset", "synthetic:k=4,d=16,n=30,test=10", "--width", "32", "--depth", "2",
    "--batch-size", "40", "--lr", "0.1", "--threads", "1", "--quiet",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _records(path: Path) -> list[pb.Record]:
    """Every record of a ``.wandb`` file: a 7-byte header, then 32 KiB blocks of chunks
    (CRC-32C, length, type full/first/middle/last) whose payloads are Record messages."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    out, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding
            pos += left
            continue
        if pos + 7 + length > len(data):  # still being written
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """The one offline W&B run under ``run_dir/wandb``: its name, group, job type, config and
    history (step -> {key: value}) and artifact files."""
    (path,) = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    # W&B's service process writes the file; run.finish() may return before it is flushed:
    # wait (a minute at most) for the closing `exit` record
    deadline = time.monotonic() + 60
    records = _records(path)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, f"{path} has no exit record"
        time.sleep(0.2)
        records = _records(path)
    run: dict[str, Any] = {"history": {}, "config": {}, "artifacts": []}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(
                name=record.run.display_name,
                group=record.run.run_group,
                job_type=record.run.job_type,
                project=record.run.project,
            )
            for item in record.run.config.update:
                run["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            values = {
                (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                for item in record.history.item
            }
            run["history"][record.history.step.num] = values
        elif kind == "artifact":
            run["artifacts"].append(
                (record.artifact.name, [e.path for e in record.artifact.manifest.contents])
            )
    return run


def assert_history_equals_rows(run_dir: Path, logged: dict[str, Any]) -> None:
    rows = read_rows(run_dir / "metrics.jsonl")
    history = logged["history"]
    assert sorted(history) == [r["epoch"] for r in rows]  # step = nclab's epoch
    for row in rows:
        got = history[row["epoch"]]
        assert got["epoch"] == row["epoch"]
        expected = row_scalars(row)
        assert expected, row
        assert {k for k in got if not k.startswith("_") and k != "epoch"} == set(expected)
        for tag, value in expected.items():
            assert got[tag] == value, tag  # JSON round trip of a float64: exact


def test_train_wandb_offline_logs_rows_and_config(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", *TINY, "--epochs", "3", "--out", str(out), "--wandb"]
    argv += ["--wandb-project", "nc-proj", "--wandb-group", "g1"]
    assert cli.main(argv) == 0
    logged = read_offline_run(out)
    assert (logged["project"], logged["group"], logged["name"]) == ("nc-proj", "g1", "run")
    assert logged["job_type"] == "train"
    assert_history_equals_rows(out, logged)
    assert {"train/nc1", "test/acc", "test/ece", "train/lr"} <= set(logged["history"][3])
    config = json.loads((out / "config.json").read_text())
    for key in ("dataset", "model", "loss", "smoothing", "seed", "lr", "epochs", "wandb"):
        assert logged["config"][key] == config[key], key
    assert metric_tag("test_acc") == "test/acc" and metric_tag("brier") == "test/brier"


def test_tracker_wandb_offline_logs_rows(tmp_path: Path) -> None:
    wandb = {"project": "p", "name": "my-run"}
    tracked_sgd(tmp_path / "mine", 30, lambda epoch: dict(grad_steps=2 * epoch), wandb=wandb)
    logged = read_offline_run(tmp_path / "mine")
    assert logged["name"] == "my-run" and logged["config"]["source"] == "nclab.track.NCTracker"
    assert_history_equals_rows(tmp_path / "mine", logged)
    assert logged["history"][2]["train/grad_steps"] == 4


def test_bad_wandb_arguments_are_clear_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    model = build_model("mlp", 3, (8,), width=8, depth=1)
    with pytest.raises(ValueError, match="project, group, name"):
        NCTracker(
            tmp_path / "x", model=model, layer=model.classifier, train=[], test=[],
            num_classes=3, wandb={"entity": "me"},
        )  # fmt: skip
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    out = tmp_path / "never"
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(out), "--wandb"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'nclab[wandb]'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_compare_wandb_groups_runs_and_attaches_the_report(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "smoke", "--out", str(out), "--quiet", "--epochs", "3"]
    assert cli.main([*argv, "--seeds", "0", "--wandb", "--jobs", "1"]) == 0
    groups = set()
    for run_dir in sorted((out / "runs").iterdir()):
        logged = read_offline_run(run_dir)
        assert logged["name"] == run_dir.name
        assert_history_equals_rows(run_dir, logged)
        groups.add(logged["group"])
    assert len(groups) == 1 and next(iter(groups)).startswith("cmp-")
    report = read_offline_run(out / "report")
    assert report["job_type"] == "report" and report["group"] in groups
    ((name, files),) = [a for a in report["artifacts"] if a[0].startswith("report-")]
    assert "summary.md" in files and "report.html" in files
    assert any(f.endswith(".png") for f in files)
    (history,) = report["history"].values()
    verdicts = json.loads((out / "report" / "summary.json").read_text())["verdicts"]
    assert history["report/verdicts/nrows"] == len(verdicts) > 0
    (table_file,) = (out / "report" / "wandb").glob("offline-run-*/files/media/table/**/*.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["claim", "statement", "verdict"]
    assert table["data"] == [[v["claim"], v["statement"], v["verdict"]] for v in verdicts]
