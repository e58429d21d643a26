"""Promise: nothing read from a file is ever executed. npz object arrays, CIFAR pickles,
checkpoints and predictions are read with restricted unpicklers, ``weights_only=True`` and
``allow_pickle=False``: a planted payload (os.system, eval, exec, subprocess, a protocol-0
pickle, getattr tricks) never runs, and the command ends in one line naming the file and what
was refused, with no advice to load it unsafely and nothing changed. What nclab writes holds
only tensors and plain values, and the official CIFAR batches (Python 2 pickles) still load."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import (
    DATA_OPTS,
    PAYLOADS,
    Payload,
    expect_clear_error,
    report_argv,
    train_argv,
    write_npz,
    zip_bytes,
)

from nclab import cli
from nclab.train import load_model

# ---------------------------------------------------------------------------- npz datasets


@pytest.mark.parametrize("how", PAYLOADS)
@pytest.mark.parametrize("array", ["x_train", "y_train", "class_names"])
def test_npz_with_pickled_payload_never_runs(how, array, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = tmp_path / "data.npz"
    write_npz(path, **{array: np.array([Payload(marker, how)] * 3, dtype=object)})
    err = expect_clear_error(
        ["train", *DATA_OPTS, "--dataset", f"npz:{path}", "--epochs", "1", "--out", str(tmp_path)],
        capsys,
        watch=(path,),
        marker=marker,
        says="never unpickles",
    )
    assert "allow_pickle" not in err  # no advice to load it with pickle


# ---------------------------------------------------------------------------- CIFAR pickles


def _cifar10_dir(root: Path) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    (d / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    return d


def _legacy_protocol0(marker: Path) -> bytes:
    """A hand-written protocol-0 pickle calling posix.system (no Python class needed)."""
    return f"cposix\nsystem\n(Vtouch {marker}\ntR.".encode()


CIFAR_CASES: dict[str, Callable[[Path], bytes]] = {
    **{f"payload-{how}": (lambda m, how=how: pickle.dumps(Payload(m, how))) for how in PAYLOADS},
    **{
        f"payload-nested-{how}": (
            lambda m, how=how: pickle.dumps({b"data": Payload(m, how), b"labels": [0]})
        )
        for how in PAYLOADS
    },
    "payload-protocol0-posix": _legacy_protocol0,
    "payload-builtins-getattr": lambda m: (
        b"cbuiltins\ngetattr\n(cos\nsystem\nVx\ntR."  # getattr(os.system, "x")
    ),
    "codecs-non-latin1": lambda m: b"c_codecs\nencode\n(Vabc\nVrot13\ntR.",
    "random-bytes": lambda m: os.urandom(3000),
    "empty": lambda m: b"",
    "truncated": lambda m: pickle.dumps({b"data": np.zeros((4, 3072), np.uint8)})[:500],
    "not-a-dict": lambda m: pickle.dumps([1, 2, 3]),
    "data-as-list": lambda m: pickle.dumps({b"data": [[0] * 3072] * 4, b"labels": [0] * 4}),
    "data-float": lambda m: pickle.dumps({b"data": np.zeros((4, 3072)), b"labels": [0] * 4}),
    "data-wrong-width": lambda m: pickle.dumps(
        {b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}
    ),
    "labels-strings": lambda m: pickle.dumps(
        {b"data": np.zeros((4, 3072), np.uint8), b"labels": ["a"] * 4}
    ),
    "labels-out-of-range": lambda m: pickle.dumps(
        {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10**9]}
    ),
    "missing-labels": lambda m: pickle.dumps({b"data": np.zeros((4, 3072), np.uint8)}),
}


@pytest.mark.parametrize("case", list(CIFAR_CASES))
def test_hostile_cifar_batch(case, tmp_path, capsys):
    d = _cifar10_dir(tmp_path / "data")
    marker = tmp_path / "PWNED"
    (d / "data_batch_3").write_bytes(CIFAR_CASES[case](marker))
    argv = ["train", *DATA_OPTS, "--dataset", "cifar10", "--data-dir", str(tmp_path / "data")]
    says = "train labels must lie in" if case == "labels-out-of-range" else "data_batch_3"
    expect_clear_error(
        [*argv, "--epochs", "1", "--out", str(tmp_path / "o")],
        capsys,
        watch=(d,),
        marker=marker,
        says=says,
    )


def test_official_style_cifar_batches_still_load(tmp_path):
    """Python 2 style batches (numpy.core.multiarray, protocol 2) pass the restricted unpickler."""
    from nclab.data import load_dataset

    _cifar10_dir(tmp_path)
    legacy = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}, 2)
    legacy = legacy.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(legacy)
    bundle = load_dataset("cifar10", tmp_path)
    assert bundle.num_train == 20 and bundle.input_shape == (3, 32, 32)


# ---------------------------------------------------------------------------- checkpoints


def _checkpoint_cases(marker: Path, run: Path) -> dict[str, Callable[[], None]]:
    ckpt = run / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()

    def write(data: bytes) -> Callable[[], None]:
        return lambda: ckpt.write_bytes(data)

    def save(obj: object) -> Callable[[], None]:
        return lambda: torch.save(obj, ckpt)

    state = torch.load(ckpt, weights_only=True)
    cases = {
        "random-bytes": write(os.urandom(5000)),
        "empty": write(b""),
        "truncated-half": write(good[: len(good) // 2]),
        "truncated-tail": write(good[:-100]),
        "a-directory": lambda: (ckpt.unlink(), ckpt.mkdir()),
        "a-zip-of-text": write(zip_bytes({"x/data.pkl": b"hello"})),
        "plain-pickle-payload": write(pickle.dumps(Payload(marker))),
        "missing-keys": save({"epoch": 2}),
        "not-a-dict": save([1, 2, 3]),
        "epoch-not-int": save({**state, "epoch": "two"}),
        "epoch-zero": save({**state, "epoch": 0}),
        "model-from-other-width": save(
            {**state, "model": {k: torch.zeros(3) for k in state["model"]}}
        ),
        "optimizer-garbage": save({**state, "optimizer": {"state": 5}}),
        "rng-garbage": save({**state, "rng": {"torch": torch.zeros(3)}}),
        "numpy-array-inside": save({**state, "rng": np.zeros(3)}),
    }
    for how in PAYLOADS:
        cases[f"payload-{how}"] = save({**state, "model": Payload(marker, how)})
        cases[f"payload-in-rng-{how}"] = save({**state, "rng": {"torch": Payload(marker, how)}})
    return cases


CHECKPOINT_CASE_NAMES = [
    "random-bytes", "empty", "truncated-half", "truncated-tail", "a-directory", "a-zip-of-text",
    "plain-pickle-payload", "missing-keys", "not-a-dict", "epoch-not-int", "epoch-zero",
    "model-from-other-width", "optimizer-garbage", "rng-garbage", "numpy-array-inside",
    *[f"payload-{h}" for h in PAYLOADS], *[f"payload-in-rng-{h}" for h in PAYLOADS],
]  # fmt: skip


@pytest.mark.parametrize("case", CHECKPOINT_CASE_NAMES)
def test_bad_checkpoint_refuses_resume_and_changes_nothing(case, run_copy, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    _checkpoint_cases(marker, run_copy)[case]()
    err = expect_clear_error(
        train_argv(run_copy, "--resume", epochs=3),
        capsys,
        watch=(run_copy,),
        marker=marker,
        says="last.pt",
    )
    assert "weights_only" not in err  # no advice to load it unsafely
    if case.startswith("payload"):
        assert "GLOBAL" in err  # names what was refused
    # and --overwrite recovers the directory
    assert cli.main(train_argv(run_copy, "--overwrite")) == 0
    assert not marker.exists()


@pytest.mark.parametrize("how", PAYLOADS)
def test_malicious_final_checkpoint_never_runs(how, run_copy, tmp_path):
    marker = tmp_path / "PWNED"
    state = torch.load(run_copy / "final.pt", weights_only=True)
    torch.save({**state, "model": Payload(marker, how)}, run_copy / "final.pt")
    with pytest.raises(ValueError, match="final.pt is not a readable nclab checkpoint"):
        load_model(run_copy)
    assert not marker.exists()


def test_checkpoints_hold_tensors_and_plain_values_only(tiny_run):
    for path in (tiny_run / "checkpoints" / "last.pt", tiny_run / "final.pt"):
        state = torch.load(path, weights_only=True)  # would raise on any other object
        assert isinstance(state["epoch"], int)
    rng = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)["rng"]
    assert all(isinstance(v, torch.Tensor) for v in rng.values())


# ---------------------------------------------------------------------------- predictions


@pytest.mark.parametrize(
    "case", ["random-bytes", "truncated", "payload-object-array", "strings", "shape-mismatch"]
)
def test_hostile_predictions_file_in_report(case, run_copy, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    pred = run_copy / "predictions.npz"
    good = pred.read_bytes()
    if case == "random-bytes":
        pred.write_bytes(os.urandom(800))
    elif case == "truncated":
        pred.write_bytes(good[: len(good) // 2])
    elif case == "payload-object-array":
        np.savez(pred, test_logits=np.array([Payload(marker)], dtype=object), test_labels=[0])
    elif case == "strings":
        np.savez(pred, test_logits=np.array([["a"]]), test_labels=np.array([0]))
    else:
        np.savez(pred, test_logits=np.zeros((5, 3)), test_labels=np.zeros(4, np.int64))
    expect_clear_error(
        report_argv(run_copy), capsys, watch=(run_copy,), marker=marker, says="predictions.npz"
    )
