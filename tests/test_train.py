"""Tests of nclab.train (one training run) and the `nclab train` command.

Every training run here is a tiny MLP on the seeded ``synthetic`` Gaussian mixture, so each
takes a fraction of a second; the SIGKILL and DDP tests start subprocesses (a few seconds).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nclab import cli
from nclab.calibration import expected_calibration_error
from nclab.data import load_dataset
from nclab.losses import ClassificationLoss, get_loss
from nclab.runs.files import read_metrics, rewrite_rows
from nclab.train import (
    RunFiles,
    TrainConfig,
    TrainingDivergedError,
    build_optimizer,
    epoch_permutation,
    load_model,
    lr_factor,
    read_rows,
    train,
    ufm_penalty,
)
from nclab.train import loop as train_loop
from nclab.train.distributed import DistContext
from nclab.train.evaluate import Evaluator, NonFiniteFeaturesError
from nclab.ufm import closed_form

REQUIRED_KEYS = (
    "epoch lr train_loss train_acc test_loss test_acc ece nc1 cdnv nc2_w nc2_h nc2_wh nc3 nc4 "
    "ncc_acc w_norm h_norm test_nc1 test_ncc_acc seconds train_ce train_error test_error"
).split()
NC_KEYS = (
    "nc1 cdnv nc2_h nc2_w nc2_wh nc3 nc4 ncc_acc equinorm_h equinorm_w equiangle_h equiangle_w "
    "maxangle_h maxangle_w w_norm h_norm"
).split()

# A tiny, fast problem: 5 classes in 48 dimensions, 60 training samples per class.
TINY = dict(
    dataset="synthetic:k=5,d=48,n=60,test=20",
    model="mlp",
    width=64,
    depth=2,
    batch_size=50,
    lr=0.1,
    threads=1,
)


def tiny(**overrides: object) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


def strip_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def run_cli(argv: list[str]) -> int:
    return cli.main(["train", *argv])


# ---------------------------------------------------------------------------- full run


def test_tiny_run_reaches_full_train_accuracy_with_all_metrics(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(tiny(epochs=12, scheduler="cosine"), out, quiet=True)

    assert result.completed and not result.reused
    rows = read_rows(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, 13))
    assert result.rows == rows
    for row in rows:
        missing = set(REQUIRED_KEYS + NC_KEYS + [f"test_{k}" for k in NC_KEYS]) - set(row)
        assert not missing, missing
        for key, value in row.items():
            assert value is not None and math.isfinite(value), (key, value)
    assert rows[-1]["train_acc"] == 1.0
    assert result.first_perfect_epoch is not None and result.first_perfect_epoch <= 12
    assert rows[-1]["train_error"] == 0.0
    assert rows[-1]["nc1"] < rows[0]["nc1"]  # features collapse as training proceeds
    assert rows[0]["lr"] == pytest.approx(0.1) and rows[-1]["lr"] < rows[0]["lr"]

    files = RunFiles(out)
    for path in (files.checkpoint, files.final, files.predictions, files.done, files.summary):
        assert path.is_file(), path
    config = json.loads(files.config.read_text())
    assert config["loss"] == "ce" and config["seed"] == 0 and config["epochs"] == 12
    assert set(config["versions"]) == {"python", "torch", "numpy", "nclab"}
    assert config["hostname"] and config["start_time"] and config["resolved"]["device"] == "cpu"
    assert config["train_size"] == 300 and config["num_classes"] == 5
    summary = json.loads(files.summary.read_text())
    assert summary["completed"] is True
    assert summary["first_epoch_train_acc_100"] == result.first_perfect_epoch

    # metrics.csv mirrors metrics.jsonl
    csv_lines = files.metrics_csv.read_text().splitlines()
    assert len(csv_lines) == 1 + len(rows)
    assert csv_lines[0].split(",")[:3] == ["epoch", "lr", "train_loss"]

    # predictions.npz holds the final model's test logits: same ECE and accuracy as logged
    with np.load(files.predictions) as pred:
        logits, labels = pred["test_logits"], pred["test_labels"]
    assert logits.shape == (100, 5) and labels.shape == (100,)
    assert expected_calibration_error(logits, labels) == pytest.approx(rows[-1]["ece"], abs=1e-9)
    assert (logits.argmax(1) == labels).mean() == pytest.approx(rows[-1]["test_acc"])

    # final.pt rebuilds the final model, whose train accuracy is the logged one
    model = load_model(out)
    data = load_dataset("synthetic", **_synthetic_kwargs())
    with torch.no_grad():
        acc = (model(data.x_train).argmax(1) == data.y_train).float().mean().item()
    assert acc == rows[-1]["train_acc"]


def _synthetic_kwargs() -> dict:
    return dict(num_classes=5, synthetic_dim=48, synthetic_train_per_class=60,
                synthetic_test_per_class=20, seed=0)  # fmt: skip


def test_ce_and_ls_with_the_same_seed_share_initialisation_and_data_order(tmp_path: Path):
    # with a negligible learning rate the final weights are the initial ones, and the BN running
    # statistics depend on the batches seen: equal models mean equal init and equal data order
    ce = train(tiny(epochs=1, lr=1e-12), tmp_path / "ce", quiet=True)
    ls = train(tiny(epochs=1, lr=1e-12, loss="ls", smoothing=0.2), tmp_path / "ls", quiet=True)
    other = train(tiny(epochs=1, lr=1e-12, seed=1), tmp_path / "other", quiet=True)
    a, b = load_model(tmp_path / "ce").state_dict(), load_model(tmp_path / "ls").state_dict()
    c = load_model(tmp_path / "other").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-9)
    assert any(not torch.allclose(a[k].float(), c[k].float()) for k in a)
    # the LS run logs its own objective as train_loss, and plain CE as train_ce
    assert ls.final["train_loss"] > ls.final["train_ce"]
    assert ce.final["train_loss"] == pytest.approx(ce.final["train_ce"], rel=1e-6)
    assert ls.final["train_ce"] == pytest.approx(ce.final["train_ce"], rel=1e-6)
    assert other.final["train_ce"] != pytest.approx(ce.final["train_ce"], rel=1e-6)
    # both against a direct float64 formula on the model's eval-mode logits of the train set:
    # CE = mean -log p_y, LS = mean [(1 - δ)(-log p_y) + δ/K Σ_k (-log p_k)]
    data = load_dataset("synthetic", **_synthetic_kwargs())
    model = load_model(tmp_path / "ls").eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(data.x_train).double(), dim=1)
    nll = -logp[torch.arange(len(data.y_train)), data.y_train]
    assert ls.final["train_ce"] == pytest.approx(float(nll.mean()), rel=1e-6)
    smoothed = 0.8 * nll - 0.2 * logp.mean(dim=1)
    assert ls.final["train_loss"] == pytest.approx(float(smoothed.mean()), rel=1e-6)


# ---------------------------------------------------------------------------- resume


def test_resume_after_stop_equals_uninterrupted_run(tmp_path: Path) -> None:
    cfg6 = tiny(epochs=6, scheduler="multistep", milestones=[2])
    full = train(cfg6, tmp_path / "full", quiet=True)

    part = tmp_path / "part"
    first = train(tiny(epochs=3, scheduler="multistep", milestones=[2]), part, quiet=True)
    assert first.completed and len(first.rows) == 3 and (part / "DONE").exists()
    resumed = train(cfg6, part, resume=True, quiet=True)
    assert resumed.start_epoch == 3 and not resumed.reused
    assert strip_seconds(read_rows(part / "metrics.jsonl")) == strip_seconds(full.rows)
    config = json.loads((part / "config.json").read_text())
    assert config["epochs"] == 6 and config["resumed"][0]["after_epoch"] == 3

    # resuming a complete run is a no-op that returns its result
    again = train(cfg6, part, resume=True, quiet=True)
    assert again.reused and strip_seconds(again.rows) == strip_seconds(full.rows)
    # so is starting the same finished run again
    assert train(cfg6, part, quiet=True).reused
    # final weights are identical too
    a, b = load_model(tmp_path / "full").state_dict(), load_model(part).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_then_resume_has_no_lost_or_duplicated_epochs(tmp_path: Path) -> None:
    epochs = 8
    argv = [
        "--dataset", "synthetic:k=5,d=48,n=200,test=20",
        "--width", "64", "--depth", "2", "--batch-size", "20", "--lr", "0.05",
        "--scheduler", "cosine", "--epochs", str(epochs), "--threads", "1", "--seed", "3",
    ]  # fmt: skip
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nclab.cli", "train", *argv, "--out", str(out), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(read_rows(metrics)) >= 2:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (out / "DONE").exists()
    done_before = len(read_rows(metrics))
    assert 2 <= done_before < epochs
    # simulate a kill in the middle of writing a row, too
    with metrics.open("a") as f:
        f.write('{"epoch": 99, "train_loss": 0.')

    assert run_cli([*argv, "--out", str(out), "--resume", "--quiet"]) == 0
    rows = read_rows(metrics)
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert len(metrics.read_text().splitlines()) == epochs  # the partial line is gone

    assert run_cli([*argv, "--out", str(tmp_path / "straight"), "--quiet"]) == 0
    assert strip_seconds(rows) == strip_seconds(read_rows(tmp_path / "straight/metrics.jsonl"))
    per_class = read_rows(out / "per_class.jsonl")
    assert per_class == read_rows(tmp_path / "straight/per_class.jsonl")
    assert [r["epoch"] for r in per_class] == list(range(1, epochs + 1))


def test_rewrite_rows_keeps_complete_rows_up_to_checkpoint(tmp_path: Path) -> None:
    files = RunFiles(tmp_path)
    rows = [{"epoch": e, "x": 10 * e + i} for i, e in enumerate((1, 2, 2, 3, 4))]
    lines = [json.dumps(r) for r in rows]
    files.metrics.write_text("\n".join(lines) + "\n" + '{"epoch": 5, "x"')
    # the torn last line is dropped with a warning; a repeated epoch keeps its later row
    read, warnings = read_metrics(files.metrics)
    assert read == [rows[0], rows[2], rows[3], rows[4]]
    assert len(warnings) == 1 and "line 6" in warnings[0]
    kept = rewrite_rows(files, max_epoch=3)
    assert [r["x"] for r in kept] == [10, 22, 33]
    assert [r["epoch"] for r in read_rows(files.metrics)] == [1, 2, 3]
    assert files.metrics_csv.read_text().splitlines()[0] == "epoch,x"


# ---------------------------------------------------------------------------- refusals


def test_existing_run_refuses_unless_resume_or_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny(epochs=1), out, quiet=True)
    with pytest.raises(FileExistsError, match=r"lr: 0\.1 -> 0\.2.*--resume.*--overwrite"):
        train(tiny(epochs=1, lr=0.2), out, quiet=True)
    with pytest.raises(ValueError, match=r"cannot resume .*lr: 0\.1 -> 0\.2"):
        train(tiny(epochs=1, lr=0.2), out, resume=True, quiet=True)
    with pytest.raises(FileExistsError, match="a run of 1 epochs"):
        train(tiny(epochs=2), out, quiet=True)
    with pytest.raises(ValueError, match="exclude each other"):
        train(tiny(epochs=1), out, resume=True, overwrite=True)
    # the refusals left the run untouched
    assert len(read_rows(out / "metrics.jsonl")) == 1 and (out / "DONE").exists()

    result = train(tiny(epochs=2, lr=0.2), out, overwrite=True, quiet=True)
    assert result.start_epoch == 0 and [r["epoch"] for r in result.rows] == [1, 2]
    assert json.loads((out / "config.json").read_text())["lr"] == 0.2
    assert len(read_rows(out / "metrics.jsonl")) == 2
    with pytest.raises(ValueError, match="already trained 2 epochs"):
        train(tiny(epochs=1, lr=0.2), out, resume=True, quiet=True)
    # where the dataset files are found is not part of the run's identity
    moved = train(tiny(epochs=3, lr=0.2, data_dir=str(tmp_path)), out, resume=True, quiet=True)
    assert [r["epoch"] for r in moved.rows] == [1, 2, 3]

    # the CLI reports the refusal as one line with exit code 2
    argv = ["--dataset", "synthetic", "--epochs", "1", "--out", str(out), "--quiet"]
    assert run_cli(argv) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": -0.1}, "lr must be > 0"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"momentum": 1.0}, r"momentum must lie in \[0, 1\)"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"scheduler": "linear"}, "unknown scheduler 'linear'"),
        ({"milestones": [5, 3]}, "milestones must be strictly increasing"),
        ({"milestones": [0, 3]}, "milestones must be epochs >= 1"),
        ({"gamma": 0.0}, "gamma must be > 0"),
        ({"loss": "ls", "smoothing": 1.0}, r"δ must lie in \[0, 1\)"),
        ({"loss": "ce", "smoothing": 0.1}, "does not take a smoothing value"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"model": "vit"}, "unknown model 'vit'"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"eval_every": 0}, "eval_every must be an integer >= 1"),
        ({"per_class": -5}, "per_class must be an integer >= 1"),
        ({"seed": -1}, r"seed must be an integer in \[0, 4294967295\]"),
        ({"seed": 2**32}, r"seed must be an integer in \[0, 4294967295\]"),
        ({"epochs": 10, "milestones": [5, 11]}, "past the last epoch"),
        ({"milestones": 5}, "milestones must be a list"),
        ({"threads": 0}, "threads must be an integer >= 1"),
        ({"ufm_penalties": True, "lambda_w": 0.0}, "needs lambda_w > 0"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov momentum needs momentum > 0"),
    ],
)
def test_invalid_options_raise_clear_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**options)


def test_bad_runtime_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bf16"):
        train(tiny(bf16=True, device="cpu"), tmp_path / "a", quiet=True)
    with pytest.raises(ValueError, match="--augment needs image data"):
        train(tiny(augment=True), tmp_path / "b", quiet=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(tiny(dataset=f"npz:{tmp_path / 'missing.npz'}"), tmp_path / "c", quiet=True)
    assert not (tmp_path / "a" / "config.json").exists()


# ---------------------------------------------------------------------------- CLI


def test_cli_config_file_with_command_line_override(tmp_path: Path, capsys) -> None:
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(
        "dataset: synthetic:k=4,d=16\nwidth: 24\n"
        "epochs: 5\nlr: 1e-2\nbatch_size: 40\nscheduler: constant\n"
    )
    out = tmp_path / "run"
    rc = run_cli(["--config", str(config_file), "--epochs", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 2  # command line wins
    assert saved["lr"] == 0.01 and saved["width"] == 24 and saved["batch_size"] == 40  # file
    assert saved["scheduler"] == "constant"
    assert saved["dataset"] == "synthetic:k=4,d=16,n=100,test=100"  # deprecated keys folded in
    assert saved["momentum"] == 0.9  # neither: the default
    assert [r["epoch"] for r in read_rows(out / "metrics.jsonl")] == [1, 2]
    assert capsys.readouterr().out == ""  # --quiet

    # a JSON file works too, and a run's own config.json can be reused
    rc = run_cli(["--config", str(out / "config.json"), "--out", str(tmp_path / "again")])
    assert rc == 0
    assert "complete" in capsys.readouterr().out
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert {k: again[k] for k in ("lr", "width", "epochs")} == {
        "lr": 0.01,
        "width": 24,
        "epochs": 2,
    }

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "synthetic", "learning_rate": 0.1}))
    assert run_cli(["--config", str(bad), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) ['learning_rate']" in err and err.count("\n") == 1


def test_cli_help_documents_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        run_cli(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in TrainConfig.__dataclass_fields__:
        assert "--" + f.replace("_", "-") in text, f
    for flag in ("--config", "--out", "--resume", "--overwrite", "--quiet"):
        assert flag in text
    assert "(default: 128)" in text and "(default: fashion-mnist)" in text


def test_default_out_dir_names_dataset_model_loss_seed() -> None:
    from nclab.commands.train import default_out_dir

    expected = "runs/synthetic-k5-d48-n60-test20-mlp-ls-s2"
    assert default_out_dir(tiny(loss="ls", smoothing=0.1, seed=2)) == expected
    npz = TrainConfig(dataset="npz:/data/my set.npz")
    assert default_out_dir(npz) == "runs/npz-_data_my_set.npz-mlp-ce-s0"


def test_progress_lines_when_not_a_terminal_and_silence_when_quiet(tmp_path: Path, capsys):
    train(tiny(epochs=2), tmp_path / "a")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2 lr 0.1 train_loss")
    train(tiny(epochs=2), tmp_path / "b", quiet=True)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# ---------------------------------------------------------------------------- divergence


class _NaNAfter(ClassificationLoss):
    """Wraps a loss; the ``after``-th call made with gradients enabled returns NaN."""

    def __init__(self, inner: ClassificationLoss, after: int) -> None:
        super().__init__(inner.num_classes)
        self.inner, self.after, self.calls = inner, after, 0

    def compute(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.inner.compute(logits, targets)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls >= self.after:
                return loss * float("nan")
        return loss


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    # 300 samples / batch 50 = 6 steps per epoch: call 16 is epoch 3, step 4
    monkeypatch.setattr(
        train_loop, "get_loss", lambda *a, **k: _NaNAfter(get_loss(*a, **k), after=16)
    )
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match="at epoch 3, step 4") as info:
        train(tiny(epochs=5), out, quiet=True)
    assert (info.value.epoch, info.value.step, info.value.checkpoint_epoch) == (3, 4, 2)
    assert "after epoch 2" in str(info.value)
    assert [r["epoch"] for r in read_rows(out / "metrics.jsonl")] == [1, 2]
    assert not (out / "DONE").exists()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == 2
    model = load_model(out, which="last")
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # the CLI prints one line and exits with code 3 (1000 samples / 125 = 8 steps per epoch)
    argv = ["--dataset", "synthetic", "--epochs", "5", "--batch-size", "125"]
    rc = run_cli([*argv, "--out", str(tmp_path / "cli"), "--quiet"])
    assert rc == 3
    err = capsys.readouterr().err
    assert err.startswith("nclab train: training diverged") and "at epoch 2, step 8;" in err
    assert err.count("\n") == 1


def test_absurd_learning_rate_diverges_in_epoch_one(tmp_path: Path) -> None:
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step \d+; no checkpoint"):
        train(tiny(epochs=2, lr=1e10), tmp_path / "run", quiet=True)


# ---------------------------------------------------------------------------- UFM mode


def test_ufm_penalty_mode_logs_closed_form_and_drops_classifier_decay(tmp_path: Path) -> None:
    cfg = tiny(epochs=3, ufm_penalties=True, loss="ls", smoothing=0.1, lambda_w=5e-4,
               lambda_h=4e-4, lambda_b=1e-3)  # fmt: skip
    result = train(cfg, tmp_path / "ufm", quiet=True)
    expected = closed_form(
        num_classes=5, n_per_class=60, lambda_w=5e-4, lambda_h=4e-4, smoothing=0.1, lambda_b=1e-3
    )
    for row in result.rows:
        assert row["ufm_w_norm"] == pytest.approx(expected.w_norm)
        assert row["ufm_h_norm"] == pytest.approx(expected.h_norm)
        assert all(v is not None and math.isfinite(v) for v in row.values())
        assert row["w_norm"] > 0 and row["h_norm"] > 0
    saved = json.loads((tmp_path / "ufm" / "config.json").read_text())
    assert saved["ufm_w_norm"] == pytest.approx(expected.w_norm)
    assert saved["resolved"]["weight_decay_classifier"] == 0.0
    assert saved["resolved"]["weight_decay_backbone"] == 0.0  # --weight-decay not given

    model = load_model(tmp_path / "ufm")
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    assert groups["classifier"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 0
    classifier_ids = {id(p) for p in model.classifier.parameters()}
    assert {id(p) for p in groups["classifier"]["params"]} == classifier_ids

    explicit = tiny(ufm_penalties=True, weight_decay=1e-3)
    groups = {g["name"]: g for g in build_optimizer(model, explicit).param_groups}
    assert groups["backbone"]["weight_decay"] == 1e-3 and groups["classifier"]["weight_decay"] == 0
    normal = {g["name"]: g for g in build_optimizer(model, tiny()).param_groups}
    assert normal["classifier"]["weight_decay"] == 5e-4 == normal["backbone"]["weight_decay"]


def test_ufm_penalty_value() -> None:
    model = train_loop.build_model("mlp", 3, (4,), width=5, depth=1)
    h = torch.randn(8, 5)
    cfg = tiny(ufm_penalties=True, lambda_w=0.1, lambda_h=0.2, lambda_b=0.3)
    w, b = model.classifier.weight, model.classifier.bias
    expected = 0.05 * (w**2).sum() + 0.1 * (100 / 8) * (h**2).sum() + 0.15 * (b**2).sum()
    assert ufm_penalty(model, h, cfg, n_train=100).item() == pytest.approx(expected.item())


# ---------------------------------------------------------------------------- pieces


def test_lr_schedules() -> None:
    multi = tiny(epochs=10, scheduler="multistep", milestones=[3, 6], gamma=0.5)
    assert [lr_factor(multi, t) for t in (0, 2, 3, 5, 6, 9)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert tiny(epochs=8, scheduler="multistep").resolved_milestones() == [4, 6]
    cosine = tiny(epochs=4, scheduler="cosine")
    expected = [(1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert [lr_factor(cosine, t) for t in range(4)] == pytest.approx(expected)
    assert expected[2] == pytest.approx(0.5)
    assert lr_factor(tiny(scheduler="constant"), 7) == 1.0


def test_epoch_permutation_is_seeded_and_shards_cover_the_data() -> None:
    a = epoch_permutation(0, 1, 11)
    assert torch.equal(a, epoch_permutation(0, 1, 11))
    assert not torch.equal(a, epoch_permutation(0, 2, 11))
    assert not torch.equal(a, epoch_permutation(1, 1, 11))
    shards = [epoch_permutation(0, 1, 11, DistContext(rank=r, world_size=3)) for r in range(3)]
    assert {len(s) for s in shards} == {4}  # padded to 12, split evenly
    assert set(torch.cat(shards).tolist()) == set(range(11))


def test_evaluator_recomputes_features_when_not_kept(tmp_path: Path) -> None:
    result = train(tiny(epochs=1), tmp_path / "run", quiet=True)
    model = load_model(tmp_path / "run")
    data = load_dataset("synthetic", **_synthetic_kwargs())
    loss = get_loss("ce", 5)

    def evaluate(limit: int) -> dict:
        ev = Evaluator(data.x_train, data.y_train, data.x_test, data.y_test, data.num_test, 5,
                       loss, DistContext(), keep_limit_bytes=limit, batch_size=64)  # fmt: skip
        return ev(model).metrics

    kept, recomputed = evaluate(2**30), evaluate(0)
    # the test NC1 of correct/incorrect samples needs the kept features
    assert set(kept) - set(recomputed) <= {"test_nc1_correct", "test_nc1_incorrect"}
    assert {k: v for k, v in kept.items() if k in recomputed} == pytest.approx(recomputed, rel=1e-9)
    skip = ("epoch", "lr", "seconds", "test_size")
    logged = {k: v for k, v in result.final.items() if k not in skip}
    assert result.final["test_size"] == data.num_test
    assert kept == pytest.approx(logged, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    argv = [
        "--dataset", "synthetic:k=5,d=48,n=61,test=21",
        "--width", "64", "--depth", "2", "--batch-size", "50", "--lr", "0.1",
        "--epochs", "2", "--threads", "1", "--device", "cpu",
    ]  # fmt: skip
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "nclab.cli", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, *argv, "--out", str(out), "--quiet"], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    rows = read_rows(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2 and config["resolved"]["batch_size_per_rank"] == 25
    with np.load(out / "predictions.npz") as pred:
        assert pred["test_logits"].shape == (105, 5)
        np.testing.assert_array_equal(pred["test_labels"], np.repeat(np.arange(5), 21))

    single = train(tiny(epochs=1, dataset="synthetic:k=5,d=48,n=61,test=21"),
                   tmp_path / "single", quiet=True)  # fmt: skip
    assert set(rows[-1]) == set(single.final)
    # the sharded evaluation covers the whole train/test sets: a single-process evaluation
    # of the saved final model gives the same numbers
    data = load_dataset("synthetic", **{**_synthetic_kwargs(), "synthetic_train_per_class": 61,
                                         "synthetic_test_per_class": 21})  # fmt: skip
    ev = Evaluator(data.x_train, data.y_train, data.x_test, data.y_test, data.num_test, 5,
                   get_loss("ce", 5), DistContext())  # fmt: skip
    metrics = ev(load_model(out)).metrics
    for key in ("train_acc", "train_loss", "nc1", "nc2_wh", "ncc_acc", "test_acc", "ece",
                "test_nc1", "test_ncc_acc"):  # fmt: skip
        assert rows[-1][key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-9), key


def test_non_finite_values_in_evaluation_are_a_divergence(tmp_path: Path) -> None:
    """NaN in the classifier or in the features found during evaluation raises the evaluator's
    divergence error on both the kept-features and the streaming path (never a ValueError
    about bad user input)."""
    train(tiny(epochs=1), tmp_path / "run", quiet=True)
    data = load_dataset("synthetic", **_synthetic_kwargs())
    loss = get_loss("ce", 5)
    for limit in (2**30, 0):
        ev = Evaluator(data.x_train, data.y_train, data.x_test, data.y_test, data.num_test, 5,
                       loss, DistContext(), keep_limit_bytes=limit, batch_size=64)  # fmt: skip
        model = load_model(tmp_path / "run")
        with torch.no_grad():
            model.classifier.weight[0, 0] = float("nan")
        with pytest.raises(NonFiniteFeaturesError, match="classifier weight"):
            ev(model)
        model = load_model(tmp_path / "run")
        with torch.no_grad():  # NaN features: poison the first hidden layer
            next(p for p in model.parameters() if p.dim() == 2).fill_(float("nan"))
        with pytest.raises(NonFiniteFeaturesError, match="features"):
            ev(model)


def test_run_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """Atomically written files are readable like any other file the process creates."""
    out = tmp_path / "run"
    train(tiny(epochs=1), out, quiet=True)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = plain.stat().st_mode & 0o777
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "checkpoints/last.pt"):
        assert (out / name).stat().st_mode & 0o777 == expected, name


@pytest.mark.parametrize(
    ("model", "width", "channels_last"), [("cnn", 4, None), ("resnet18", 4, False)]
)
def test_conv_models_train_on_images_with_augmentation_and_resume(
    tmp_path: Path, model: str, width: int, channels_last: bool | None
) -> None:
    """Conv nets on a small image dataset (npz, 3x12x12) with augmentation: every metric key is
    logged and finite, in the default memory format (contiguous on CPU) or explicitly not
    channels-last, and a resumed run reproduces the uninterrupted one (augmentation is seeded
    per epoch)."""
    gen = np.random.default_rng(0)
    k, per_class = 4, 12
    proto = gen.uniform(0, 255, size=(k, 3, 12, 12))

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(k), n)
        x = np.clip(proto[y] + gen.normal(0, 40, size=(len(y), 3, 12, 12)), 0, 255)
        return x.astype(np.uint8), y

    x_train, y_train = images(per_class)
    x_test, y_test = images(5)
    path = tmp_path / "images.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    config = dict(dataset=f"npz:{path}", model=model, width=width, batch_size=16, lr=0.05,
                  augment=True, channels_last=channels_last, threads=1, epochs=3)  # fmt: skip
    whole = train(TrainConfig(**config), tmp_path / "whole", quiet=True)
    assert [r["epoch"] for r in whole.rows] == [1, 2, 3]
    for key in REQUIRED_KEYS + NC_KEYS:
        assert key in whole.final and math.isfinite(whole.final[key]), key
    train(TrainConfig(**{**config, "epochs": 1}), tmp_path / "split", quiet=True)
    resumed = train(TrainConfig(**config), tmp_path / "split", resume=True, quiet=True)
    assert strip_seconds(resumed.rows) == strip_seconds(whole.rows)


def test_last_batch_of_one_sample_joins_the_previous_batch(tmp_path: Path, monkeypatch) -> None:
    """N = 5 * 61 = 305 = 4 * 76 + 1: a one-sample last batch would crash BatchNorm in training
    mode; it is folded into the previous batch, and the epoch still sees all 305 samples."""
    seen: list[int] = []
    original = train_loop.ufm_penalty

    def record(model, h, cfg, n_train):  # called once per step in UFM-penalty mode
        seen.append(int(h.shape[0]))
        return original(model, h, cfg, n_train)

    monkeypatch.setattr(train_loop, "ufm_penalty", record)
    config = tiny(
        dataset="synthetic:k=5,d=48,n=61,test=20", batch_size=76, epochs=1, ufm_penalties=True
    )
    result = train(config, tmp_path / "r", quiet=True)
    assert seen == [76, 76, 76, 77]
    assert math.isfinite(result.final["train_loss"])


def test_test_per_class_uses_a_fixed_subset_and_the_whole_test_set_at_the_end(
    tmp_path: Path,
) -> None:
    """Per-epoch test metrics on a fixed class-balanced subset (the same for every seed), the
    final epoch, predictions.npz and the resumed final evaluation on all test samples."""
    result = train(tiny(epochs=3, test_per_class=4), tmp_path / "run", quiet=True)
    assert [r["test_size"] for r in result.rows] == [20, 20, 100]  # 5 classes x 4; all 100
    data = load_dataset("synthetic", **_synthetic_kwargs())
    model = load_model(tmp_path / "run")
    loss = get_loss("ce", 5)
    full = Evaluator(data.x_train, data.y_train, data.x_test, data.y_test, data.num_test, 5,
                     loss, DistContext())(model).metrics  # fmt: skip
    final = result.rows[-1]
    for key in ("test_acc", "test_loss", "test_nc1", "ece", "nc1"):
        assert final[key] == pytest.approx(full[key], rel=1e-6, abs=1e-9), key
    with np.load(tmp_path / "run" / "predictions.npz") as p:
        assert len(p["test_labels"]) == 100
    idx = train_loop.fixed_test_subset(data.y_test, 4, 5)
    other_seed = load_dataset("synthetic", **{**_synthetic_kwargs(), "seed": 1})
    assert torch.equal(idx, train_loop.fixed_test_subset(other_seed.y_test, 4, 5))
    assert torch.bincount(data.y_test[idx], minlength=5).tolist() == [4] * 5
    with pytest.raises(ValueError, match="test_per_class=21 but class 0 has only 20 test samples"):
        train(tiny(epochs=1, test_per_class=21), tmp_path / "bad", quiet=True)


def test_per_class_log_matches_the_features_and_is_cut_back_on_resume(tmp_path: Path) -> None:
    """per_class.jsonl: one line per evaluated epoch with K-length train/test lists; counts are
    the class sizes, variability is the mean squared distance to the class mean of the final
    model's features (float64, computed here), and sum_k (n_k/N) nc1_k is the logged nc1. A
    resume from an earlier checkpoint cuts it back like metrics.jsonl."""
    result = train(tiny(epochs=3), tmp_path / "run", quiet=True)
    lines = read_rows(tmp_path / "run" / "per_class.jsonl")
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    last = lines[-1]
    data = load_dataset("synthetic", **_synthetic_kwargs())
    model = load_model(tmp_path / "run").eval()
    with torch.no_grad():
        h = model.features(data.x_train).double().numpy()
    y = data.y_train.numpy()
    counts = np.bincount(y, minlength=5)
    assert last["train"]["count"] == counts.tolist()
    variability = [np.mean(np.sum((h[y == k] - h[y == k].mean(0)) ** 2, 1)) for k in range(5)]
    assert last["train"]["variability"] == pytest.approx(variability, rel=1e-6)
    weighted = float(np.dot(counts / counts.sum(), last["train"]["nc1"]))
    assert weighted == pytest.approx(result.rows[-1]["nc1"], rel=1e-9)
    assert len(last["test"]["count"]) == 5
    files = RunFiles(tmp_path / "run")
    rewrite_rows(files, 1)
    assert [r["epoch"] for r in read_rows(files.per_class)] == [1]


def test_optimizer_is_pytorchs_fused_sgd_with_the_plain_update() -> None:
    """build_optimizer uses PyTorch's fused SGD on CPU; ten steps of it match the per-tensor
    SGD with the same groups to rounding, and an optimizer state written without the fused flag
    (an older checkpoint) resumes with the implementation it was written with."""
    cfg = tiny(weight_decay=1e-3, momentum=0.9, nesterov=True)
    models = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = train_loop.build_model("mlp", 5, (6,), width=7, depth=1)
        opt = build_optimizer(model, cfg)
        assert all(g["fused"] is True for g in opt.param_groups)
        if not fused:
            for group in opt.param_groups:
                group["fused"] = None
        g = torch.Generator().manual_seed(1)
        for _ in range(10):
            x, y = torch.randn(8, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        models.append((model, opt))
    for a, b in zip(models[0][0].parameters(), models[1][0].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    fresh = build_optimizer(models[1][0], cfg)
    fresh.load_state_dict(models[1][1].state_dict())
    assert all(g["fused"] is None for g in fresh.param_groups)
