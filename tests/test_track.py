"""Tests of nclab.track.NCTracker: NC tracking inside a user's own training loop.

The central test trains with a plain PyTorch loop that makes the same random draws as
``nclab train`` (same initialisation, data order, optimizer), so the weights after every epoch
are the same as those of ``nclab train`` with the same config: the tracker's rows must then equal
``nclab train``'s rows, and ``nclab report`` must build the full report from tracker runs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny  # the tiny synthetic problem of the nclab train tests
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nclab import cli
from nclab.data import load_dataset
from nclab.losses import get_loss
from nclab.models import build_model
from nclab.report import build_report
from nclab.report.runs import load_run
from nclab.runs.files import DirectoryLockedError
from nclab.track import NCTracker
from nclab.train import (
    TrainConfig,
    build_optimizer,
    epoch_permutation,
    lr_factor,
    read_rows,
    train,
)

EPOCHS = 8


def synthetic(classes: int, dim: int, train_per_class: int, test_per_class: int, seed: int = 0):
    """The seeded synthetic Gaussian mixture of nclab.data (shared by the integration tests)."""
    return load_dataset(
        "synthetic",
        num_classes=classes,
        synthetic_dim=dim,
        synthetic_train_per_class=train_per_class,
        synthetic_test_per_class=test_per_class,
        seed=seed,
    )


def tiny_data(config: TrainConfig):
    """The data ``nclab train`` loads for ``config``."""
    return load_dataset(config.dataset, per_class=config.per_class, seed=config.seed)


def loaders(data, batch_size: int = 37) -> tuple[DataLoader, DataLoader]:
    """Evaluation loaders in dataset order (a batch size unrelated to the training one)."""
    train_set = TensorDataset(data.x_train, data.y_train)
    test_set = TensorDataset(data.x_test, data.y_test)
    return DataLoader(train_set, batch_size=batch_size), DataLoader(test_set, batch_size=batch_size)


def track_classifier(out: Path, model: nn.Module, train, test, num_classes: int, **options):
    """NCTracker of ``model`` at its ``classifier`` layer over ``train`` and ``test`` batches."""
    return NCTracker(
        out,
        model=model,
        layer=model.classifier,
        train=train,
        test=test,
        num_classes=num_classes,
        **options,
    )


def tracked_sgd(out: Path, batch_size: int, extra: Callable[[int], dict], **options) -> None:
    """Two epochs of plain SGD (cross-entropy, lr 0.1) of a small MLP on a 3-class mixture,
    tracked by :func:`track_classifier` with ``options``; each epoch's row also logs
    ``extra(epoch)``; the tracker is finished."""
    data = synthetic(3, 8, 20, 10)
    train_loader, test_loader = loaders(data, batch_size)
    torch.manual_seed(0)
    model = build_model("mlp", 3, data.input_shape, width=16, depth=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = track_classifier(out, model, train_loader, test_loader, 3, **options)
    for epoch in (1, 2):
        for x, y in train_loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        tracker.log_epoch(epoch, lr=0.1, **extra(epoch))
    tracker.finish()


def plain_loop(config: TrainConfig, out: Path, **tracker_options) -> NCTracker:
    """A user's own training loop (the draws of ``nclab train``: seed, then the model, then
    per-epoch permutations), tracked by NCTracker."""
    data = tiny_data(config)
    torch.manual_seed(config.seed)
    model = build_model(
        config.model, data.num_classes, data.input_shape, width=config.width, depth=config.depth
    )
    optimizer = build_optimizer(model, config)
    loss_fn = get_loss(config.loss, data.num_classes, config.smoothing)
    train_loader, test_loader = loaders(data)
    tracker = track_classifier(
        out,
        model,
        train_loader,
        test_loader,
        data.num_classes,
        loss=config.loss,
        smoothing=config.smoothing,
        seed=config.seed,
        config={"model": config.model, "epochs": config.epochs, "lr": config.lr},
        **tracker_options,
    )
    n, bs = data.num_train, config.batch_size
    for epoch in range(1, config.epochs + 1):
        lr = config.lr * lr_factor(config, epoch - 1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        order = epoch_permutation(config.seed, epoch, n)
        total = 0.0
        for step in range(n // bs):
            idx = order[step * bs : (step + 1) * bs]
            loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        tracker.log_epoch(epoch, lr=lr, train_loss=total / (n // bs), note=epoch * 10)
    tracker.finish()
    return tracker


def test_tracked_plain_loop_rows_equal_nclab_train_and_build_the_report(tmp_path: Path) -> None:
    runs = {}
    for name, options in (("ce", {}), ("ls", {"loss": "ls", "smoothing": 0.2})):
        config = tiny(epochs=EPOCHS, **options)
        plain_loop(config, tmp_path / "track" / name)
        reference = train(config, tmp_path / "train" / name, quiet=True)
        runs[name] = (read_rows(tmp_path / "track" / name / "metrics.jsonl"), reference.rows)

    for name, (tracked, trained) in runs.items():
        assert [r["epoch"] for r in tracked] == list(range(1, EPOCHS + 1))
        for mine, theirs in zip(tracked, trained, strict=True):
            # same keys as nclab train, plus the user's columns: the user's train_loss (the
            # running mean of the mini-batch losses) is kept apart from the evaluated one
            assert set(mine) - set(theirs) == {"user_train_loss", "note"}, name
            assert set(theirs) <= set(mine)
            assert mine["note"] == 10 * mine["epoch"]
            assert mine["user_train_loss"] != mine["train_loss"]
            for key, value in theirs.items():
                if key == "seconds":
                    assert mine[key] > 0
                elif value is None:
                    assert mine[key] is None, (name, key)
                else:
                    assert mine[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
        assert tracked[-1]["train_acc"] == 1.0  # the run reaches the terminal phase

    # predictions.npz: the last evaluation's test logits, as nclab train writes them
    for name in ("ce", "ls"):
        with (
            np.load(tmp_path / "track" / name / "predictions.npz") as mine,
            np.load(tmp_path / "train" / name / "predictions.npz") as theirs,
        ):
            np.testing.assert_array_equal(mine["test_labels"], theirs["test_labels"])
            np.testing.assert_allclose(mine["test_logits"], theirs["test_logits"], rtol=1e-6)
        run = load_run(tmp_path / "track" / name)
        assert run.complete and not run.warnings
        assert run.train_size == 300 and run.config["num_classes"] == 5

    report = build_report(
        [tmp_path / "track" / "ce", tmp_path / "track" / "ls"], tmp_path / "report"
    )
    reference = build_report(
        [tmp_path / "train" / "ce", tmp_path / "train" / "ls"], tmp_path / "report_train"
    )
    # every claim gets a verdict, and the same numbers give the same verdicts
    claims = [(v.claim, v.status, v.verdict) for v in report.summary.verdicts]
    assert len(claims) >= 4 and all(status for _, status, _ in claims)
    assert claims == [(v.claim, v.status, v.verdict) for v in reference.summary.verdicts]
    for paths in report.figures.values():
        for path in paths:
            assert path.is_file() and path.stat().st_size > 0, path
    assert report.html.is_file() and "LS δ=0.2" in report.html.read_text(encoding="utf-8")
    # the tracker records no dataset name: the summary's header says nothing of one
    header = report.markdown.read_text(encoding="utf-8")
    assert "None" not in header.split("\n\n")[1] and "dataset" not in header.split("\n\n")[1]
    # and through the command line
    code = cli.main(["report", str(tmp_path / "track"), "--out", str(tmp_path / "cli_report")])
    assert code == 0 and (tmp_path / "cli_report" / "report.html").is_file()


class _Net(nn.Module):
    """A user's model: BatchNorm body, a `fc` head; the head sees (B, 4, 2) -> flattened."""

    def __init__(self, scale_output: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.fc = nn.Linear(8, 3)
        self.scale_output = scale_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).reshape(-1, 4, 2).flatten(1)) * self.scale_output


def _toy_batches(n: int = 40, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    y = torch.arange(n) % 3
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def test_evaluation_uses_eval_mode_and_restores_each_modules_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Net()
    batches = _toy_batches()
    model.train()
    model.body[1].eval()  # the user froze this BatchNorm
    before = model.body[1].running_mean.clone()
    tracker = NCTracker(
        tmp_path / "run", model=model, layer=model.fc, train=batches, test=batches, num_classes=3
    )
    row = tracker.log_epoch(1)
    assert model.training and model.fc.training and not model.body[1].training
    torch.testing.assert_close(model.body[1].running_mean, before)  # eval mode: no BN update
    # the metrics are those of the model in eval mode on the concatenated batches
    model.eval()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        logits = model(x).double()
    acc = float((logits.argmax(1) == y).double().mean())
    assert row["train_acc"] == pytest.approx(acc)
    expected_ce = float(nn.functional.cross_entropy(logits, y))
    assert row["train_loss"] == pytest.approx(expected_ce, rel=1e-6)
    with torch.no_grad():
        h = model.body(x).double()
    # NC1 = tr(Σ_W Σ_B⁺) / K from the definition, in float64
    means = torch.stack([h[y == k].mean(0) for k in range(3)])
    centred = means - means.mean(0)  # μ_G = mean of class means (docs/metrics.md)
    sigma_b = centred.T @ centred / 3
    diff = h - means[y]
    sigma_w = diff.T @ diff / len(y)
    nc1 = float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)) / 3)
    assert row["nc1"] == pytest.approx(nc1, rel=1e-6)
    assert row["lr"] is None and set(json.loads((tmp_path / "run" / "config.json").read_text()))


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    model = _Net()
    batches = _toy_batches()
    common = dict(train=batches, test=batches, num_classes=3)
    with pytest.raises(ValueError, match="final nn.Linear"):
        NCTracker(tmp_path / "a", model=model, layer=model.body, **common)
    with pytest.raises(ValueError, match="not a module of model"):
        NCTracker(tmp_path / "a", model=model, layer=nn.Linear(8, 3), **common)
    with pytest.raises(ValueError, match="3 outputs but num_classes is 4"):
        NCTracker(tmp_path / "a", model=model, layer=model.fc, **{**common, "num_classes": 4})
    with pytest.raises(ValueError, match="unknown loss"):
        NCTracker(tmp_path / "a", model=model, layer=model.fc, loss="hinge", **common)
    with pytest.raises(ValueError, match="must not set loss"):
        NCTracker(tmp_path / "a", model=model, layer=model.fc, config={"loss": "ls"}, **common)
    with pytest.raises(ValueError, match="config\\['device'\\] is a device"):
        NCTracker(
            tmp_path / "a", model=model, layer=model.fc, config={"device": torch.device("cpu")},
            **common,
        )  # fmt: skip
    scaled = _Net(scale_output=2.0)
    tracker = NCTracker(tmp_path / "b", model=scaled, layer=scaled.fc, **common)
    with pytest.raises(ValueError, match="model\\(x\\) is not layer\\(features\\)"):
        tracker.log_epoch(1)
    bad = [(torch.randn(4, 6), torch.tensor([0, 1, 2, 5]))]
    tracker = NCTracker(tmp_path / "c", model=model, layer=model.fc, **{**common, "test": bad})
    with pytest.raises(ValueError, match="test labels must lie in"):
        tracker.log_epoch(1)
    tracker = NCTracker(tmp_path / "d", model=model, layer=model.fc, **common)
    tracker.log_epoch(1)
    with pytest.raises(ValueError, match="already logged"):
        tracker.log_epoch(1)
    with pytest.raises(ValueError, match=r"log_epoch\(grad=...\) must be a number or None"):
        tracker.log_epoch(2, grad=torch.ones(3))


def test_existing_run_dir_needs_resume_or_overwrite(tmp_path: Path) -> None:
    model = _Net()
    batches = _toy_batches()
    common = dict(model=model, layer=model.fc, train=batches, test=batches, num_classes=3)
    tracker = NCTracker(tmp_path / "run", **common)
    for epoch in (1, 2, 3):
        tracker.log_epoch(epoch, lr=0.1)
    tracker.finish()
    files_before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="already holds a run"):
        NCTracker(tmp_path / "run", **common)
    with pytest.raises(ValueError, match="different loss"):
        NCTracker(tmp_path / "run", resume=True, loss="ls", smoothing=0.1, **common)
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert after == files_before  # refused attempts change nothing

    # resume from the user's checkpoint after epoch 2: epoch 3 is logged again, once
    resumed = NCTracker(tmp_path / "run", resume=True, **common)
    assert (tmp_path / "run" / "DONE").is_file()  # nothing changes before the first row
    resumed.log_epoch(3, lr=0.05)
    assert not (tmp_path / "run" / "DONE").exists()
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert [(r["epoch"], r["lr"]) for r in rows] == [(1, 0.1), (2, 0.1), (3, 0.05)]
    csv_lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 4

    # one writer per run directory: a second tracker (or nclab train) waits for the first
    resumed.close()
    fresh = NCTracker(tmp_path / "run", overwrite=True, **common)
    fresh.log_epoch(1)
    assert [r["epoch"] for r in read_rows(tmp_path / "run" / "metrics.jsonl")] == [1]
    second = NCTracker(tmp_path / "run", overwrite=True, **common)
    with pytest.raises(DirectoryLockedError, match=f"another nclab process \\(PID {os.getpid()}"):
        second.log_epoch(1)
    fresh.finish()  # releases the lock
    second.log_epoch(1)

    # run files without config.json are not an empty directory
    (tmp_path / "orphan").mkdir()
    (tmp_path / "orphan" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(FileExistsError, match="holds run files \\(metrics.jsonl\\) but no"):
        NCTracker(tmp_path / "orphan", **common)


@pytest.mark.slow
def test_ddp_two_processes_reduce_statistics_and_rank0_writes(tmp_path: Path) -> None:
    """Under torch.distributed (2 CPU processes, Gloo) every rank evaluates its shard; the row
    equals a single-process evaluation of the same model and data."""
    script = tmp_path / "ddp_track.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import gc
            import torch
            import torch.distributed as dist
            from torch.utils.data import DataLoader, TensorDataset
            from nclab.data import load_dataset
            from nclab.models import build_model
            from nclab.track import NCTracker

            dist.init_process_group("gloo")
            torch.set_num_threads(1)
            data = load_dataset("synthetic", num_classes=4, synthetic_dim=12,
                                synthetic_train_per_class=31, synthetic_test_per_class=13)
            torch.manual_seed(0)
            model = build_model("mlp", 4, data.input_shape, width=16, depth=2)
            model = torch.nn.parallel.DistributedDataParallel(model)
            train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=25)
            test = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=25)
            tracker = NCTracker(sys.argv[1], model=model, layer=model.module.classifier,
                                train=train, test=test, num_classes=4)
            tracker.log_epoch(1, lr=0.5, rank=dist.get_rank())
            tracker.finish()
            del tracker, model  # a DDP module outliving its process group can abort the exit
            gc.collect()
            dist.destroy_process_group()
            """
        )
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(out)],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    (row,) = read_rows(out / "metrics.jsonl")
    assert row["rank"] == 0  # rank 0 wrote
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2 and config["train_size"] == 124

    data = synthetic(4, 12, 31, 13)
    torch.manual_seed(0)
    model = build_model("mlp", 4, data.input_shape, width=16, depth=2)
    train_loader, test_loader = loaders(data)
    single = track_classifier(tmp_path / "single", model, train_loader, test_loader, 4).log_epoch(
        1, lr=0.5
    )
    for key, value in single.items():
        if key in ("seconds",) or value is None:
            continue
        assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    with np.load(out / "predictions.npz") as pred:
        assert pred["test_logits"].shape == (52, 4)
        np.testing.assert_array_equal(pred["test_labels"], data.y_test.numpy())
    assert all(math.isfinite(v) for v in row.values() if v is not None)
