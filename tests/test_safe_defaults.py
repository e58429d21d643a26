"""Safe defaults: channels-last only where it is safe and changes nothing; no command
oversubscribes the cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from nclab.models import build_model
from nclab.train.loop import default_channels_last


@pytest.mark.parametrize("model", ["cnn", "resnet18", "mlp"])
def test_channels_last_is_off_on_cpu_and_on_for_cuda_conv_nets(model: str) -> None:
    """torch 2.13's CPU channels-last kernels corrupt the heap on some shapes, so the unset
    option never turns it on there; on CUDA it is on for conv nets (never for the MLP)."""
    assert default_channels_last(model, (3, 32, 32), torch.device("cpu")) is False
    on_cuda = default_channels_last(model, (3, 32, 32), torch.device("cuda"))
    assert on_cuda is (model != "mlp")
    assert default_channels_last(model, (784,), torch.device("cuda")) is False


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_changes_no_output_and_no_gradient(dtype: torch.dtype) -> None:
    """Where channels-last is used (here: the CNN, whose 3x3 stride-1 convolutions are shapes
    the CPU kernels handle), outputs and gradients equal those of the contiguous format, to
    rounding (float64: 1e-12 relative; float32: 1e-5)."""
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16, dtype=dtype)
    y = torch.randint(0, 10, (8,))
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(1)
        model = build_model("cnn", 10, (3, 16, 16), width=8).to(dtype).to(memory_format=fmt)
        out = model(x.contiguous(memory_format=fmt))
        torch.nn.functional.cross_entropy(out, y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((out.detach(), grads))
    (out_a, grads_a), (out_b, grads_b) = results
    scale = out_a.abs().max()
    assert (out_a - out_b).abs().max() <= tol * scale
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert (ga - gb).abs().max() <= tol * max(float(ga.abs().max()), 1e-30)


def _threads_in_child(env_extra: dict[str, str], code: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.update(env_extra)
    prelude = "from nclab.threads import limit_threads; limit_threads()\n"
    out = subprocess.run([sys.executable, "-c", prelude + code], env=env, check=True,
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip()


def test_every_pool_starts_at_one_thread_unless_the_user_set_it() -> None:
    """cli.main calls limit_threads before numpy or torch loads: OpenMP, OpenBLAS and MKL
    start with one thread, so `nclab report` and friends never oversubscribe a busy machine;
    a value the user exported wins, and training asks for its share of the cores explicitly."""
    code = (
        "import os, torch\n"
        "from nclab.threads import THREAD_VARIABLES, available_cores, training_threads\n"
        "print(torch.get_num_threads(), *(os.environ[v] for v in THREAD_VARIABLES),"
        " training_threads(None) == available_cores(),"
        " training_threads(None, jobs=available_cores() + 1), training_threads(3))"
    )
    assert _threads_in_child({}, code) == "1 1 1 1 True 1 3"
    got = _threads_in_child({"OMP_NUM_THREADS": "2"}, code).split()
    assert got[:4] == ["2", "2", "2", "2"]
    assert _threads_in_child({"OMP_NUM_THREADS": "2"}, "from nclab.threads import "
                             "training_threads; print(training_threads(None))") == "2"  # fmt: skip


def test_cli_main_limits_threads_before_any_command() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    code = (
        "import os, contextlib, io\nfrom nclab.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main([])\n"
        "print(os.environ.get('OMP_NUM_THREADS'), os.environ.get('OPENBLAS_NUM_THREADS'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "1 1", out.stderr


def _fake_cifar10(root, per_batch: int = 20, test: int = 20) -> None:
    import pickle

    import numpy as np

    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, n: int) -> None:
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": [j % 10 for j in range(n)]}, f)

    for i in range(1, 6):
        dump(f"data_batch_{i}", per_batch)
    dump("test_batch", test)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)


@pytest.mark.slow
@pytest.mark.parametrize("width", [4, 8])
def test_paper_preset_at_small_width_finishes_on_cpu(tmp_path, width: int) -> None:
    """The paper preset (ResNet-18) at --width 4 / 8 on small CIFAR-10 files trains on CPU in
    the default memory format (it hung or aborted with channels-last on CPU)."""
    from nclab.cli import main

    _fake_cifar10(tmp_path / "data")
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "paper", "--width", str(width), "--epochs", "2",
            "--milestones", "1",
            "--seeds", "0", "--jobs", "1", "--data-dir", str(tmp_path / "data"),
            "--out", str(out), "--no-report", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    configs = sorted(out.rglob("config.json"))
    assert len(configs) == 2  # CE and δ = 0.05
    for path in configs:
        saved = json.loads(path.read_text())
        assert saved["model"] == "resnet18" and saved["width"] == width
        assert saved["channels_last"] is None and saved["resolved"]["channels_last"] is False
