"""NCCallback: NC tracking of a tiny LightningModule trained by Lightning's Trainer on CPU."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning")
import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from test_track import synthetic  # noqa: E402

from nclab.integrations.lightning import NCCallback  # noqa: E402
from nclab.models import build_model  # noqa: E402
from nclab.report.runs import load_run  # noqa: E402
from nclab.track import NCTracker  # noqa: E402
from nclab.train import read_rows  # noqa: E402


class TinyModule(pl.LightningModule):
    def __init__(self, input_shape: tuple[int, ...], smoothing: float) -> None:
        super().__init__()
        self.net = build_model("mlp", 4, input_shape, width=32, depth=2)
        self.smoothing = smoothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y, label_smoothing=self.smoothing)
        self.log("running_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)]


def cpu_trainer(callback: NCCallback, **options) -> pl.Trainer:
    """A quiet one-process CPU Trainer with ``callback`` (no logger unless given)."""
    options.setdefault("logger", False)
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        **options,
    )


def test_callback_tracks_every_epoch_and_logs_to_lightning(tmp_path: Path) -> None:
    data = synthetic(4, 16, 30, 15)
    train_set = TensorDataset(data.x_train, data.y_train)
    test_set = TensorDataset(data.x_test, data.y_test)
    gen = torch.Generator().manual_seed(0)
    fit_loader = DataLoader(train_set, batch_size=20, shuffle=True, generator=gen)
    eval_train = DataLoader(train_set, batch_size=64)
    eval_test = DataLoader(test_set, batch_size=64)

    torch.manual_seed(0)
    module = TinyModule(data.input_shape, smoothing=0.1)
    callback = NCCallback(
        tmp_path / "run",
        train=eval_train,
        test=eval_test,
        num_classes=4,
        layer="net.classifier",
        loss="ls",
        smoothing=0.1,
        seed=0,
        config={"framework": "lightning"},
    )
    trainer = cpu_trainer(callback, max_epochs=5, logger=CSVLogger(tmp_path / "logs", "tiny"))
    trainer.fit(module, fit_loader)

    run_dir = tmp_path / "run"
    rows = read_rows(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    # the lr the epoch trained with: StepLR halves it after epochs 2 and 4
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    assert (run_dir / "DONE").is_file() and (run_dir / "predictions.npz").is_file()
    run = load_run(run_dir)
    assert run.complete and run.group.label == "LS δ=0.1" and run.config["framework"] == "lightning"
    assert rows[-1]["nc1"] < rows[0]["nc1"]
    assert module.training  # Lightning's mode after fit is left as it was

    # the last row is the tracker's evaluation of the final weights
    fresh = NCTracker(
        tmp_path / "check",
        model=module,
        layer=module.net.classifier,
        train=eval_train,
        test=eval_test,
        num_classes=4,
        loss="ls",
        smoothing=0.1,
    ).log_epoch(5)
    for key in ("train_acc", "train_loss", "test_acc", "ece", "nc1", "nc2_wh", "nc3", "test_nc1"):
        assert rows[-1][key] == pytest.approx(fresh[key], rel=1e-9), key
    with np.load(run_dir / "predictions.npz") as pred:
        with torch.no_grad():
            module.eval()
            logits = module(data.x_test).numpy()
        np.testing.assert_allclose(pred["test_logits"], logits, rtol=1e-5, atol=1e-6)

    # Lightning's own logger got the same numbers under nc/
    (metrics_csv,) = (tmp_path / "logs" / "tiny").rglob("metrics.csv")
    with metrics_csv.open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("nc/train/nc1")]
    assert len(logged) == 5
    tags = {"nc1": "train/nc1", "test_acc": "test/acc", "ece": "test/ece", "lr": "train/lr"}
    for mine, theirs in zip(rows, logged, strict=True):
        # the same epoch number as metrics.jsonl (and TensorBoard/W&B), as step and value
        assert float(theirs["epoch"]) == mine["epoch"] == int(theirs["step"])
        for key, tag in tags.items():
            assert float(theirs[f"nc/{tag}"]) == pytest.approx(mine[key], rel=1e-6), key
    assert float(trainer.callback_metrics["nc/train/nc1"]) == pytest.approx(rows[-1]["nc1"])


def test_every_n_epochs_also_logs_the_last_completed_epoch(tmp_path: Path) -> None:
    data = synthetic(4, 8, 10, 5)
    batches = [(data.x_train, data.y_train)]
    torch.manual_seed(0)
    module = TinyModule(data.input_shape, smoothing=0.0)
    for name, limits, epochs in (
        ("max_epochs", {"max_epochs": 5}, [2, 4, 5]),
        ("max_steps", {"max_epochs": -1, "max_steps": 3 * 2}, [2, 3]),  # 2 steps per epoch
    ):
        callback = NCCallback(
            tmp_path / name, train=batches, test=batches, num_classes=4, every_n_epochs=2
        )
        trainer = cpu_trainer(callback, **limits)
        trainer.fit(module, DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=20))
        rows = read_rows(tmp_path / name / "metrics.jsonl")
        assert [r["epoch"] for r in rows] == epochs, name
        assert (tmp_path / name / "DONE").is_file()


class FailingModule(TinyModule):
    """Fails in the second epoch."""

    def training_step(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_failed_fit_keeps_the_rows_and_releases_the_run_dir(tmp_path: Path) -> None:
    data = synthetic(4, 8, 10, 5)
    batches = [(data.x_train, data.y_train)]
    module = FailingModule(data.input_shape, smoothing=0.0)
    callback = NCCallback(tmp_path / "run", train=batches, test=batches, num_classes=4)
    loader = DataLoader(TensorDataset(*batches[0]), batch_size=20)
    with pytest.raises(RuntimeError, match="boom"):
        cpu_trainer(callback, max_epochs=3).fit(module, loader)
    assert [r["epoch"] for r in read_rows(tmp_path / "run" / "metrics.jsonl")] == [1]
    assert not (tmp_path / "run" / "DONE").exists()
    again = NCTracker(
        tmp_path / "run", model=module, layer=module.net.classifier, train=batches,
        test=batches, num_classes=4, resume=True,
    )  # fmt: skip
    again.log_epoch(2)  # the lock was released
    assert [r["epoch"] for r in read_rows(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_callback_rejects_a_missing_layer_path(tmp_path: Path) -> None:
    module = TinyModule((8,), smoothing=0.0)
    batches = [(torch.randn(8, 8), torch.arange(8) % 4)]
    callback = NCCallback(tmp_path / "run", train=batches, test=batches, num_classes=4, layer="fc")
    trainer = cpu_trainer(callback, max_epochs=1)
    with pytest.raises(ValueError, match="no submodule 'fc'"):
        trainer.fit(module, DataLoader(TensorDataset(*batches[0]), batch_size=4))
    with pytest.raises(ValueError, match="every_n_epochs"):
        NCCallback(tmp_path / "x", train=batches, test=batches, num_classes=4, every_n_epochs=0)
