"""Fault injection: hostile files, broken run directories, bad options, signals, concurrent writers.

The acceptance test of "nothing is lost, nothing from a file is executed, every failure is one
clear line". Every case runs the real CLI (``nclab.cli.main`` in-process, or a subprocess where a
signal is involved) and asserts

- the exit code (2 for a problem with the input, 3 for a divergence, 130 for Ctrl-C, 0 for the
  cases that must work),
- that stderr holds one line and no "Traceback",
- that every file under the watched directories is byte-identical afterwards (or, for a correct
  resume, that the rows equal an uninterrupted run's, ``seconds`` aside),
- for planted payloads, that the marker file the payload would create does not exist.

Datasets are tiny (synthetic Gaussian mixtures, a few hand-made files); the cases that start
processes are marked slow.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from nclab import cli
from nclab.executors.local import WorkerDiedError
from nclab.runs.files import (
    LOCK_NAME,
    MANIFEST_NAME,
    DirectoryLockedError,
    MetricsLogError,
    lock_directory,
    read_metrics,
)
from nclab.train import TrainingDivergedError, load_model, read_rows
from nclab.train import loop as train_loop

# ---------------------------------------------------------------------------- helpers

TINY = [
    "--dataset", "synthetic:k=3,d=8,n=20,test=10",
    "--width", "16", "--depth", "1", "--batch-size", "20", "--lr", "0.05",
    "--scheduler", "constant", "--threads", "1", "--quiet",
]  # fmt: skip
NPZ_OPTS = ["--width", "16", "--depth", "1", "--batch-size", "10", "--threads", "1", "--quiet"]


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` -> its bytes (directories as markers)."""
    out: dict[str, bytes] = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = root.read_bytes()
            continue
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            out[str(path)] = path.read_bytes() if path.is_file() else b"<dir>"
    return out


def strip_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``nclab ARGV`` in-process; returns (exit code, stderr). An exception escaping ``main``
    (which would be a traceback for the user) fails the test."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exit_info:  # argparse's usage errors
        code = exit_info.code
    return code, capsys.readouterr().err


def expect_clear_error(
    argv: list[str],
    capsys,
    *,
    code: int = 2,
    watch: tuple[Path, ...] = (),
    marker: Path | None = None,
    says: str | None = None,
) -> str:
    """Run ``argv``; assert exit ``code``, one stderr line without a traceback, unchanged files
    under ``watch`` and no ``marker``. Returns stderr."""
    before = snapshot(*watch)
    rc, err = run_cli(argv, capsys)
    assert rc == code, err
    assert "Traceback" not in err
    assert err.strip() and err.strip().count("\n") == 0, err
    assert snapshot(*watch) == before
    if marker is not None:
        assert not marker.exists(), "a planted payload ran"
    if says is not None:
        assert says in err, err
    return err


class Payload:
    """Unpickling this runs ``touch MARKER`` (what a malicious file would do)."""

    def __init__(self, marker: Path, how: str = "system") -> None:
        self.marker, self.how = str(marker), how

    def __reduce__(self):  # noqa: ANN204
        if self.how == "eval":
            return (eval, (f"open({self.marker!r}, 'w').close()",))
        if self.how == "exec":
            return (exec, (f"open({self.marker!r}, 'w').close()",))
        if self.how == "subprocess":
            return (subprocess.call, (["touch", self.marker],))
        return (os.system, (f"touch {self.marker}",))


PAYLOADS = ("system", "eval", "exec", "subprocess")


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-epoch tiny run (config, metrics, checkpoint, final, predictions, DONE)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def straight3(tmp_path_factory) -> list[dict]:
    """Rows of the same run trained for 3 epochs without interruption."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert cli.main(["train", *TINY, "--epochs", "3", "--out", str(out)]) == 0
    return read_rows(out / "metrics.jsonl")


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


def resume_argv(run: Path, epochs: int = 3) -> list[str]:
    return ["train", *TINY, "--epochs", str(epochs), "--out", str(run), "--resume"]


# ---------------------------------------------------------------------------- npz datasets


def _npz_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    return {
        "x_train": rng.standard_normal((30, 6)).astype(np.float32),
        "y_train": y,
        "x_test": rng.standard_normal((9, 6)).astype(np.float32),
        "y_test": np.repeat(np.arange(3), 3),
    }


def _save_npz(path: Path, **changes: object) -> None:
    arrays = {**_npz_arrays(), **changes}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def _valid_npz_bytes(tmp: Path) -> bytes:
    _save_npz(tmp / "valid.npz")
    return (tmp / "valid.npz").read_bytes()


def _forged_header(tmp: Path) -> bytes:
    """A valid npz except that x_train's header claims 10^12 rows (24 bytes of data follow)."""
    member = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 6)}
    np.lib.format.write_array_header_1_0(member, header)
    member.write(bytes(24))
    arrays = {k: v for k, v in _npz_arrays().items() if k != "x_train"}
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    return _zip({"x_train.npy": member.getvalue(), **members})


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# name -> function(tmp) writing the hostile file and returning the expected message fragment
NPZ_CASES: dict[str, Callable[[Path], tuple[bytes | None, str]]] = {
    "random-bytes": lambda t: (os.urandom(4096), "not an .npz file"),
    "empty-file": lambda t: (b"", "not an .npz file"),
    "text-file": lambda t: (b"x_train,y_train\n1,2\n", "not an .npz file"),
    "gzip-bytes": lambda t: (gzip.compress(b"hello" * 100), "not an .npz file"),
    "truncated-10%": lambda t: (_valid_npz_bytes(t)[: len(_valid_npz_bytes(t)) // 10], "npz"),
    "truncated-50%": lambda t: (_valid_npz_bytes(t)[: len(_valid_npz_bytes(t)) // 2], "npz"),
    "truncated-90%": lambda t: (_valid_npz_bytes(t)[: 9 * len(_valid_npz_bytes(t)) // 10], "npz"),
    "truncated-last-byte": lambda t: (_valid_npz_bytes(t)[:-1], "npz"),
    "zip-without-arrays": lambda t: (_zip({"readme.txt": b"hi"}), "lacks arrays"),
    "zip-with-garbage-npy": lambda t: (
        _zip({f"{k}.npy": os.urandom(200) for k in _npz_arrays()}),
        "not a readable .npz",
    ),
    "forged-huge-shape": lambda t: (_forged_header(t), "header says shape"),
}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_hostile_npz_bytes(case, tmp_path, capsys):
    data, says = NPZ_CASES[case](tmp_path)
    (tmp_path / "data.npz").write_bytes(data)
    _expect_npz_refused(tmp_path, capsys, says)


def _expect_npz_refused(tmp_path: Path, capsys, says: str) -> None:
    """Training on ``tmp_path/data.npz`` fails with one line; nothing is created or changed."""
    path, out = tmp_path / "data.npz", tmp_path / "out"
    expect_clear_error(
        ["train", *NPZ_OPTS, "--dataset", f"npz:{path}", "--epochs", "1", "--out", str(out)],
        capsys,
        watch=(path,),
        says=says,
    )
    assert not out.exists()  # a failed first start leaves nothing behind


NPZ_CONTENT_CASES: dict[str, tuple[dict, str]] = {
    "label-1e9": ({"y_train": np.array([0, 1, 10**9] * 10)}, "largest label is 1000000000"),
    "label-2e40": ({"y_train": np.array([0, 1, 2**40] * 10)}, "outside any sensible"),
    "label-uint64-max": (
        {"y_train": np.array([0, 1, 2**64 - 1] * 10, dtype=np.uint64)},
        "outside any sensible",
    ),
    "label-float-1e30": ({"y_train": np.array([0.0, 1.0, 1e30] * 10)}, "outside any sensible"),
    "label-negative": ({"y_train": np.array([0, 1, -1] * 10)}, "negative label"),
    "label-nan": ({"y_train": np.array([0.0, 1.0, np.nan] * 10)}, "non-integer"),
    "label-fraction": ({"y_train": np.array([0.0, 1.0, 2.5] * 10)}, "non-integer"),
    "label-strings": ({"y_train": np.array(["a", "b", "c"] * 10)}, "integer class indices"),
    "label-2d": ({"y_train": np.zeros((30, 2), dtype=np.int64)}, "labels must be 1-D"),
    "missing-class": ({"y_train": np.array([0, 1, 3] * 10)}, "no training samples for class 2"),
    "test-label-unknown": ({"y_test": np.array([0, 1, 7] * 3)}, "y_test values must lie"),
    "x-nan": ({"x_train": np.full((30, 6), np.nan, dtype=np.float32)}, "NaN or infinite"),
    "x-inf": ({"x_test": np.full((9, 6), np.inf)}, "NaN or infinite"),
    "x-1d": ({"x_train": np.zeros(30)}, "has shape (30,)"),
    "x-5d": ({"x_train": np.zeros((30, 1, 1, 1, 6))}, "has shape"),
    "x-zero-width": ({"x_train": np.zeros((30, 0)), "x_test": np.zeros((9, 0))}, "non-zero"),
    "x-strings": ({"x_train": np.array([["a"] * 6] * 30)}, "numeric array"),
    "x-complex": ({"x_train": np.zeros((30, 6), dtype=np.complex64)}, "numeric array"),
    "length-mismatch": ({"y_train": np.repeat(np.arange(3), 9)}, "samples but y_train has"),
    "empty-test": ({"x_test": np.zeros((0, 6)), "y_test": np.zeros(0, np.int64)}, "empty"),
    "shape-mismatch": ({"x_test": np.zeros((9, 7))}, "they must match"),
    "missing-y-test": ({"y_test": None}, "lacks arrays ['y_test']"),
    "class-names-wrong-length": ({"class_names": np.array(["a", "b"])}, "class_names has 2"),
    "uint8-vs-float": ({"x_train": np.zeros((30, 6), np.uint8)}, "match them"),
}


@pytest.mark.parametrize("case", list(NPZ_CONTENT_CASES))
def test_bad_npz_contents(case, tmp_path, capsys):
    changes, says = NPZ_CONTENT_CASES[case]
    _save_npz(tmp_path / "data.npz", **changes)
    _expect_npz_refused(tmp_path, capsys, says)


@pytest.mark.parametrize("how", PAYLOADS)
@pytest.mark.parametrize("array", ["x_train", "y_train", "class_names"])
def test_npz_with_pickled_payload_never_runs(how, array, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = tmp_path / "data.npz"
    _save_npz(path, **{array: np.array([Payload(marker, how)] * 3, dtype=object)})
    err = expect_clear_error(
        ["train", *NPZ_OPTS, "--dataset", f"npz:{path}", "--epochs", "1", "--out", str(tmp_path)],
        capsys,
        watch=(path,),
        marker=marker,
        says="never unpickles",
    )
    assert "allow_pickle" not in err  # no advice to load it with pickle


def test_npz_path_is_a_directory(tmp_path, capsys):
    (tmp_path / "d.npz").mkdir()
    argv = ["train", *NPZ_OPTS, "--dataset", f"npz:{tmp_path / 'd.npz'}", "--epochs", "1"]
    expect_clear_error([*argv, "--out", str(tmp_path / "o")], capsys, says="not a regular file")


# ---------------------------------------------------------------------------- IDX / gzip


def _idx(arr: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.astype(">u1").tobytes()


def _write_idx_set(d: Path, **override: bytes) -> None:
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": _idx(rng.integers(0, 255, (20, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte": _idx(np.arange(20, dtype=np.uint8) % 10),
        "t10k-images-idx3-ubyte": _idx(rng.integers(0, 255, (10, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": _idx(np.arange(10, dtype=np.uint8)),
    }
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        data = override.get(name, gzip.compress(data))
        (d / f"{name}.gz").write_bytes(data)


IDX_CASES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "random-gz": ("train-images-idx3-ubyte", lambda: os.urandom(512), "not a complete gzip"),
    "truncated-gz": (
        "train-images-idx3-ubyte",
        lambda: gzip.compress(_idx(np.random.default_rng(1).integers(0, 255, (20, 28, 28))))[:900],
        "not a complete gzip",
    ),
    "empty-gz": ("t10k-labels-idx1-ubyte", lambda: b"", "not an IDX file"),
    "bad-magic": (
        "train-labels-idx1-ubyte",
        lambda: gzip.compress(b"\x01\x02\x03\x04" * 8),
        "magic",
    ),
    "header-claims-more": (
        "train-images-idx3-ubyte",
        lambda: gzip.compress(bytes([0, 0, 8, 3]) + (10**6).to_bytes(4, "big") * 3 + bytes(64)),
        "truncated or corrupt",
    ),
    "label-out-of-range": (
        "train-labels-idx1-ubyte",
        lambda: gzip.compress(_idx(np.full(20, 200, dtype=np.uint8))),
        "must lie in [0, 10)",
    ),
    "label-count-mismatch": (
        "t10k-labels-idx1-ubyte",
        lambda: gzip.compress(_idx(np.arange(7, dtype=np.uint8))),
        "disagree",
    ),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_hostile_idx_files(case, tmp_path, capsys):
    name, make, says = IDX_CASES[case]
    d = tmp_path / "fmnist"
    _write_idx_set(d, **{name: make()})
    argv = ["train", *NPZ_OPTS, "--dataset", "fashion-mnist", "--data-dir", str(d)]
    expect_clear_error(
        [*argv, "--epochs", "1", "--out", str(tmp_path / "o")], capsys, watch=(d,), says=says
    )


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
    argv = ["train", *NPZ_OPTS, "--dataset", "cifar10", "--data-dir", str(tmp_path / "data")]
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


# ---------------------------------------------------------------------------- JPEG, STL-10


def _tiny_imagenet(root: Path) -> Path:
    from PIL import Image

    d = root / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (d / "val" / "images").mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(0)
    lines = []
    for i, w in enumerate(wnids):
        img_dir = d / "train" / w / "images"
        img_dir.mkdir(parents=True)
        for j in range(2):
            arr = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(arr).save(img_dir / f"{w}_{j}.JPEG", format="JPEG")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            d / "val" / "images" / f"val_{i}.JPEG", format="JPEG"
        )
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return d


def _jpeg_bytes(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, format="JPEG")
    return buf.getvalue()


JPEG_CASES: dict[str, tuple[str, Callable[[Path], bytes], str]] = {
    "random-bytes": ("train/n01/images/n01_0.JPEG", lambda d: os.urandom(2000), "n01_0.JPEG"),
    "empty": ("train/n01/images/n01_1.JPEG", lambda d: b"", "n01_1.JPEG"),
    "truncated": (
        "val/images/val_0.JPEG",
        lambda d: (d / "val/images/val_0.JPEG").read_bytes()[:300],
        "val_0.JPEG",
    ),
    "wrong-size": ("train/n02/images/n02_0.JPEG", lambda d: _jpeg_bytes((32, 32)), "64x64"),
    "wnids-not-utf8": ("wnids.txt", lambda d: b"\xff\xfe\x00bad", "not UTF-8"),
    "annotations-unknown-wnid": (
        "val/val_annotations.txt",
        lambda d: b"val_0.JPEG\tn99\t0\t0\t1\t1\n",
        "not listed in wnids.txt",
    ),
}


@pytest.mark.parametrize("case", list(JPEG_CASES))
def test_hostile_tiny_imagenet_files(case, tmp_path, capsys):
    d = _tiny_imagenet(tmp_path / "data")
    name, make, says = JPEG_CASES[case]
    (d / name).write_bytes(make(d))
    argv = ["train", *NPZ_OPTS, "--dataset", "tiny-imagenet", "--data-dir", str(tmp_path / "data")]
    expect_clear_error(
        [*argv, "--epochs", "1", "--out", str(tmp_path / "o")], capsys, watch=(d,), says=says
    )


STL_CASES: dict[str, tuple[str, bytes, str]] = {
    "images-not-multiple": ("train_X.bin", bytes(1000), "not a multiple"),
    "labels-out-of-range": ("train_y.bin", bytes([0, 11]), "1..10"),
    "labels-count": ("test_y.bin", bytes([1, 2, 3]), "holds 3 labels for 2 images"),
    "names-not-utf8": ("class_names.txt", b"\xff\xfeairplane\n", "not UTF-8"),
}


@pytest.mark.parametrize("case", list(STL_CASES))
def test_hostile_stl10_files(case, tmp_path, capsys):
    d = tmp_path / "stl10_binary"
    d.mkdir()
    image = 3 * 96 * 96
    (d / "train_X.bin").write_bytes(bytes(2 * image))
    (d / "train_y.bin").write_bytes(bytes([1, 2]))
    (d / "test_X.bin").write_bytes(bytes(2 * image))
    (d / "test_y.bin").write_bytes(bytes([1, 2]))
    name, data, says = STL_CASES[case]
    (d / name).write_bytes(data)
    argv = ["train", *NPZ_OPTS, "--dataset", "stl10", "--data-dir", str(tmp_path)]
    expect_clear_error(
        [*argv, "--epochs", "1", "--out", str(tmp_path / "o")], capsys, watch=(d,), says=says
    )


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
        "a-zip-of-text": write(_zip({"x/data.pkl": b"hello"})),
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
        resume_argv(run_copy), capsys, watch=(run_copy,), marker=marker, says="last.pt"
    )
    assert "weights_only" not in err  # no advice to load it unsafely
    if case.startswith("payload"):
        assert "GLOBAL" in err  # names what was refused
    # and --overwrite recovers the directory
    assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(run_copy), "--overwrite"]) == 0
    assert not marker.exists()


@pytest.mark.parametrize("how", PAYLOADS)
def test_malicious_final_checkpoint_never_runs(how, run_copy, tmp_path):
    marker = tmp_path / "PWNED"
    state = torch.load(run_copy / "final.pt", weights_only=True)
    torch.save({**state, "model": Payload(marker, how)}, run_copy / "final.pt")
    with pytest.raises(ValueError, match="final.pt is not a readable nclab checkpoint"):
        load_model(run_copy)
    assert not marker.exists()


def test_checkpoints_hold_tensors_and_plain_values_only(finished):
    for path in (finished / "checkpoints" / "last.pt", finished / "final.pt"):
        state = torch.load(path, weights_only=True)  # would raise on any other object
        assert isinstance(state["epoch"], int)
    rng = torch.load(finished / "checkpoints" / "last.pt", weights_only=True)["rng"]
    assert all(isinstance(v, torch.Tensor) for v in rng.values())


# ---------------------------------------------------------------------------- metrics.jsonl


def _rewrite_metrics(run: Path, change: Callable[[list[str]], str]) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(change(lines))


MALFORMED_METRICS: dict[str, Callable[[list[str]], str]] = {
    "garbage-first-line": lambda ls: "\n".join(["{not json", *ls[1:]]) + "\n",
    "garbage-middle-line": lambda ls: "\n".join([ls[0], "@@@", *ls[1:]]) + "\n",
    "array-middle-line": lambda ls: "\n".join([ls[0], "[1, 2]", *ls[1:]]) + "\n",
    "epoch-missing": lambda ls: "\n".join(['{"nc1": 1}', *ls]) + "\n",
    "epoch-string": lambda ls: "\n".join(['{"epoch": "one"}', *ls]) + "\n",
    "cut-line-then-rows": lambda ls: ls[0][:20] + "\n" + "\n".join(ls[1:]) + "\n",
}


@pytest.mark.parametrize("case", list(MALFORMED_METRICS))
def test_malformed_metrics_line_refuses_resume_and_report(case, run_copy, capsys):
    _rewrite_metrics(run_copy, MALFORMED_METRICS[case])
    expect_clear_error(resume_argv(run_copy), capsys, watch=(run_copy,), says="line ")
    expect_clear_error(
        ["report", str(run_copy), "--no-theory", "--quiet"],
        capsys,
        watch=(run_copy,),
        says="metrics.jsonl, line",
    )
    with pytest.raises(MetricsLogError):
        read_metrics(run_copy / "metrics.jsonl")


def test_temporaries_of_a_killed_writer_are_removed_on_resume(run_copy, straight3, capsys):
    stale = [run_copy / ".metrics.jsonl.abc123.tmp", run_copy / "checkpoints" / ".last.pt.x.tmp"]
    for path in stale:
        path.write_bytes(b"half-written")
    (run_copy / ".notes.tmp").write_text("mine")  # not a run file's temporary: kept
    rc, err = run_cli(resume_argv(run_copy), capsys)
    assert rc == 0 and "Traceback" not in err
    assert not any(p.exists() for p in stale) and (run_copy / ".notes.tmp").exists()
    assert strip_seconds(read_rows(run_copy / "metrics.jsonl")) == strip_seconds(straight3)


def test_metrics_not_utf8_is_a_clear_error(run_copy, capsys):
    (run_copy / "metrics.jsonl").write_bytes(b"\xff\xfe\xfa\n")
    expect_clear_error(resume_argv(run_copy), capsys, watch=(run_copy,), says="not UTF-8")


TORN_LAST_LINES = {
    "no-newline": lambda ls: "\n".join(ls) + "\n" + ls[-1][:30],
    "half-json-with-newline": lambda ls: "\n".join(ls) + "\n" + '{"epoch": 3, "nc1"\n',
    "binary-junk": lambda ls: "\n".join(ls) + "\n" + "\x00\x01\x02",
    "whole-row-without-newline": lambda ls: "\n".join(ls),
}


@pytest.mark.parametrize("case", list(TORN_LAST_LINES))
def test_torn_last_line_is_dropped_and_resume_matches_uninterrupted(
    case, run_copy, straight3, capsys
):
    _rewrite_metrics(run_copy, TORN_LAST_LINES[case])
    rows, warnings = read_metrics(run_copy / "metrics.jsonl")
    # a complete row without its newline is kept; anything less is dropped with a warning
    assert len(rows) == 2 and len(warnings) == (case != "whole-row-without-newline")
    rc, err = run_cli(resume_argv(run_copy), capsys)
    assert rc == 0 and "Traceback" not in err
    assert strip_seconds(read_rows(run_copy / "metrics.jsonl")) == strip_seconds(straight3)


# ---------------------------------------------------------------------------- run directories


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"[1, 2, 3]", b"\xff\xfe", b'"a string"', b"null"],
    ids=["garbage", "empty", "array", "binary", "string", "null"],
)
@pytest.mark.parametrize("mode", ["start", "resume"])
def test_broken_config_json_is_refused_and_named(content, mode, run_copy, capsys):
    (run_copy / "config.json").write_bytes(content)
    argv = ["train", *TINY, "--epochs", "2", "--out", str(run_copy)]
    if mode == "resume":
        argv.append("--resume")
    expect_clear_error(argv, capsys, watch=(run_copy,), says="config.json")


@pytest.mark.parametrize(
    "leftover", ["metrics.jsonl", "checkpoints/last.pt", "final.pt", "DONE", "predictions.npz"]
)
def test_run_files_without_config_are_not_an_empty_directory(leftover, run_copy, capsys):
    (run_copy / "config.json").unlink()
    keep = run_copy / leftover
    for path in [p for p in run_copy.rglob("*") if p.is_file()]:
        if path != keep and path.name not in (LOCK_NAME, MANIFEST_NAME):
            path.unlink()  # the manifest stays: nclab wrote the leftover (see test_ownership)
    err = expect_clear_error(
        ["train", *TINY, "--epochs", "2", "--out", str(run_copy)], capsys, watch=(run_copy,)
    )
    assert Path(leftover).name in err and "--overwrite" in err
    assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(run_copy), "--overwrite"]) == 0


def test_out_is_a_regular_file_or_inside_one(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("precious")
    for out in (blocker, blocker / "run", blocker / "a" / "b"):
        err = expect_clear_error(
            ["train", *TINY, "--epochs", "1", "--out", str(out)], capsys, watch=(tmp_path,)
        )
        assert "--out" in err


@pytest.mark.parametrize("out", ["/proc/nclab-test/run", "/sys/nclab-test"])
def test_out_cannot_be_created(out, capsys):
    expect_clear_error(["train", *TINY, "--epochs", "1", "--out", out], capsys, says="cannot")


def test_failed_first_start_leaves_nothing_and_retry_works(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    missing = tmp_path / "missing.npz"
    argv = ["train", *NPZ_OPTS, "--epochs", "1", "--out", str(out)]
    expect_clear_error([*argv, "--dataset", f"npz:{missing}"], capsys, says="does not exist")
    assert not out.exists()
    _save_npz(missing)
    assert cli.main([*argv, "--dataset", f"npz:{missing}"]) == 0
    assert (out / "DONE").exists()


def test_failed_start_in_an_existing_empty_directory_does_not_block_retry(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    expect_clear_error(
        ["train", *TINY, "--epochs", "1", "--out", str(out), "--batch-size", "1"], capsys
    )
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0


def _npz_run(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    data = tmp_path / "data.npz"
    _save_npz(data)
    out = tmp_path / "run"
    argv = ["train", *NPZ_OPTS, "--dataset", f"npz:{data}", "--out", str(out)]
    assert cli.main([*argv, "--epochs", "2"]) == 0
    return data, out, argv


TRANSACTION_CASES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "resume-dataset-removed": (lambda d: d.unlink(), ["--resume", "--epochs", "3"], "not exist"),
    "resume-dataset-grown": (
        lambda d: _save_npz(d, x_train=np.zeros((33, 6)), y_train=np.arange(33) % 3),
        ["--resume", "--epochs", "3"],
        "dataset differs",
    ),
    "resume-dataset-corrupt": (
        lambda d: d.write_bytes(os.urandom(100)),
        ["--resume", "--epochs", "3"],
        "not an .npz",
    ),
    "overwrite-dataset-removed": (lambda d: d.unlink(), ["--overwrite", "--epochs", "3"], "exist"),
    "overwrite-dataset-corrupt": (
        lambda d: d.write_bytes(b"PK\x03\x04junk"),
        ["--overwrite", "--epochs", "3"],
        "npz",
    ),
    "overwrite-augment-on-vectors": (
        lambda d: None,
        ["--overwrite", "--epochs", "3", "--augment"],
        "--augment needs image data",
    ),
    "overwrite-batch-of-one": (
        lambda d: None,
        ["--overwrite", "--epochs", "3", "--batch-size", "1"],
        "BatchNorm",
    ),
    "overwrite-bf16-on-cpu": (
        lambda d: None,
        ["--overwrite", "--epochs", "3", "--bf16", "--device", "cpu"],
        "bf16",
    ),
    "resume-with-other-lr": (lambda d: None, ["--resume", "--epochs", "3", "--lr", "1"], "lr"),
    "resume-fewer-epochs": (lambda d: None, ["--resume", "--epochs", "1"], "already trained"),
    "start-without-resume": (lambda d: None, ["--epochs", "3"], "--resume"),
    "resume-and-overwrite": (
        lambda d: None,
        ["--resume", "--overwrite", "--epochs", "3"],
        "exclude each other",
    ),
}


@pytest.mark.parametrize("case", list(TRANSACTION_CASES))
def test_failed_resume_or_overwrite_leaves_the_directory_byte_identical(case, tmp_path, capsys):
    data, out, argv = _npz_run(tmp_path)
    change, extra, says = TRANSACTION_CASES[case]
    change(data)
    expect_clear_error([*argv, *extra], capsys, watch=(out,), says=says)


def test_non_finite_batchnorm_buffers_are_a_divergence_and_keep_the_good_checkpoint(
    tmp_path, monkeypatch, capsys
):
    original = train_loop._train_one_epoch

    def poisoned(run, epoch):  # noqa: ANN001, ANN202
        original(run, epoch)
        if epoch == 2:
            for module in run.model.modules():
                if isinstance(module, torch.nn.BatchNorm1d):
                    module.running_var.fill_(float("inf"))

    monkeypatch.setattr(train_loop, "_train_one_epoch", poisoned)
    out = tmp_path / "run"
    argv = ["train", *TINY, "--epochs", "4", "--eval-every", "5", "--out", str(out)]
    expect_clear_error(argv, capsys, code=3, says="model state became non-finite in epoch 2")
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


# ---------------------------------------------------------------------------- options

TRAIN_OPTION_CASES = [
    (["--lr", "-1e-3"], "lr must be > 0"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--lr", "-inf"], "lr must be a finite number"),
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--epochs", "-5"], "epochs must be an integer >= 1"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    (["--batch-size", "1"], "BatchNorm"),
    (["--threads", "0"], "threads must be an integer >= 1"),
    (["--seed", "-1"], "seed must be an integer in"),
    (["--seed", str(2**32)], "seed must be an integer in"),
    (["--seed", str(2**70)], "seed must be an integer in"),
    (["--momentum", "-1e-3"], "momentum must lie in"),
    (["--weight-decay", "-1e-3"], "weight_decay must be >= 0"),
    (["--smoothing", "1.5", "--loss", "ls"], "δ must lie in"),
    (["--smoothing", "-1e-3", "--loss", "ls"], "δ must lie in"),
    (["--gamma", "0"], "gamma must be > 0"),
    (["--scheduler", "multistep", "--milestones", "9"], "past the last epoch"),
    (["--milestones", "0"], "milestones must be epochs >= 1"),
    (["--eval-every", "0"], "eval_every must be an integer >= 1"),
    (["--checkpoint-every", "0"], "checkpoint_every must be an integer >= 1"),
    (["--per-class", "0"], "per_class must be an integer >= 1"),
    (["--per-class", "-1e-3"], "expected a positive integer or 'all'"),
    (["--epochs", "ten"], "invalid int value"),
    (["--scheduler", "linear"], "scheduler 'linear'"),
    (["--no-such-option"], "unrecognized arguments"),
    (["--per-class", "1000"], "per_class=1000"),
    (["--width", "0"], "width must be an integer >= 1"),
    (["--ufm-penalties", "--lambda-h", "-1e-3"], "lambda_h must be >= 0"),
    (["--ufm-penalties", "--lambda-w", "0"], "needs lambda_w > 0"),
    (["--dataset", "synthetic:k=1,d=8,n=20,test=10"], "must be an integer >= 2"),
    (["--model", "vit"], "unknown model"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--dataset", "npz:"], "npz dataset needs a path"),
    (["--device", "tpu"], "unknown device"),
    (["--device", "cuda"], "CUDA"),
    (["--loss", "hinge"], "unknown loss"),
]


CONFIG_FILE_CASES = [
    ("cfg.yaml", "lr: [1, 2\n", "cannot be parsed"),
    ("cfg.yaml", "- a\n- b\n", "must hold a mapping"),
    ("cfg.json", "{broken", "cannot be parsed"),
    ("cfg.json", '{"lr": -1}', "config file"),
    ("cfg.yaml", "epochs: ten\n", "config file"),
    ("cfg.yaml", "milestones: 5\n", "config file"),
    ("cfg.yaml", "unknown_option: 1\n", "unknown option"),
    ("cfg.yaml", "lr: abc\n", "lr must be a number"),
    ("cfg.yaml", "\xff\xfe", "cannot be parsed"),
    ("missing.yaml", None, "does not exist"),
]


@pytest.mark.parametrize(("name", "text", "says"), CONFIG_FILE_CASES)
def test_bad_config_files_name_the_file(name, text, says, tmp_path, capsys):
    path = tmp_path / name
    if text is not None:
        path.write_bytes(text.encode("latin1") if "\xff" in text else text.encode())
    err = expect_clear_error(
        ["train", "--config", str(path), "--out", str(tmp_path / "o")], capsys, says=says
    )
    assert name in err


def test_config_file_that_is_a_directory(tmp_path, capsys):
    expect_clear_error(["train", "--config", str(tmp_path), "--out", str(tmp_path / "o")], capsys)


COMPARE_OPTION_CASES = [
    (["--threads", "0"], "--threads must be a positive integer"),
    (["--jobs", "0"], "--jobs must be a positive integer"),
    (["--seeds", "-1"], "seeds must be non-negative integers <= 4294967295"),
    (["--seeds", str(2**32)], "seeds must be non-negative integers <= 4294967295"),
    (["--smoothing", "1"], "outside [0, 1)"),
    (["--smoothing", "-1e-3"], "outside [0, 1)"),
    (["--smoothing", "nan"], "must be numbers in [0, 1)"),
    (["--lr", "-1e-3"], "lr must be > 0"),
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--batch-size", "1"], "BatchNorm"),
    (["--dataset", "npz:/nonexistent.npz"], "does not exist"),
]


OPTION_CASES = [("train", *case) for case in TRAIN_OPTION_CASES] + [
    ("compare", *case) for case in COMPARE_OPTION_CASES
]


@pytest.mark.parametrize(("command", "extra", "says"), OPTION_CASES, ids=lambda v: str(v)[:40])
def test_invalid_options_are_one_line_and_create_no_run(command, extra, says, tmp_path, capsys):
    if says == "CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    argv = {
        "train": ["train", *TINY, "--epochs", "3"],
        "compare": ["compare", "--preset", "smoke", "--quiet", "--jobs", "1", "--no-report"],
    }[command]
    expect_clear_error([*argv, "--out", str(out), *extra], capsys, says=says)
    assert not list(out.rglob("metrics.jsonl")) if out.exists() else True
    if command == "train":
        assert not out.exists()


UFM_OPTION_CASES = [
    (["closed-form", "--lambda-h", "-1e-3"], "lambda_h must be"),
    (["closed-form", "--lambda-w", "-1e-3"], "lambda_w must be"),
    (["closed-form", "--lambda-b", "-1e-3"], "lambda_b must be"),
    (["closed-form", "--lambda-h", "nan"], "lambda_h must be"),
    (["closed-form", "-K", "1"], "num_classes must be"),
    (["closed-form", "-n", "0"], "n_per_class must be"),
    (["closed-form", "--smoothing", "1.5"], "must lie in [0, 1)"),
    (["closed-form", "--smoothing", "-1e-3"], "must lie in [0, 1)"),
    (["solve", "--max-iters", "0"], "--max-iters must be an integer >= 1"),
    (["solve", "--record-every", "0"], "--record-every must be an integer >= 1"),
    (["solve", "--method", "gd", "--lr", "-1e-3"], "lr must be"),
    (["solve", "-d", "1", "-K", "5"], "dim"),
    (["solve", "-K", "100000", "-n", "100000"], "GiB of memory"),
    (["condition", "--tol", "-1"], "--tol must be a finite number >= 0"),
    (["condition", "--tol", "nan"], "--tol must be a finite number >= 0"),
    (["condition", "-K", "2000", "-d", "2000", "--method", "dense"], "GiB of memory"),
    (["condition", "-K", "100000", "-n", "1000", "-d", "2000"], "GiB of memory"),
    (["convergence", "--max-iters", "0"], "--max-iters must be an integer >= 1"),
    (["convergence", "--tol-nc1", "-1"], "--tol-nc1 must be a finite number >= 0"),
    (["convergence", "--tol-objective", "-1e-3"], "--tol-objective must be"),
    (["convergence", "--lr", "0"], "lr must be"),
    (["convergence", "-K", "100000", "-n", "100000"], "GiB of memory"),
]


@pytest.mark.parametrize(("argv", "says"), UFM_OPTION_CASES, ids=lambda v: str(v)[:50])
def test_invalid_ufm_options_are_one_line(argv, says, capsys):
    expect_clear_error(["ufm", *argv], capsys, says=says)


def test_memory_estimate_grows_with_the_problem():
    from nclab.commands.ufm import memory_estimate

    def args(command: str, **kw: object):  # noqa: ANN202
        import argparse

        base = dict(ufm_command=command, num_classes=10, n_per_class=50, dim=32, method="auto")
        return argparse.Namespace(**{**base, **kw})

    small = memory_estimate(args("solve"))
    # P = Kd + dN + K = 320 + 16000 + 10 parameters, 70 float64 copies, plus 8 copies of K·N + N
    assert small == 8 * (70 * 16330 + 8 * (5000 + 500))
    assert memory_estimate(args("solve", n_per_class=500)) > 9 * small
    dense = memory_estimate(args("condition", method="dense"))
    assert dense >= 8 * 3 * 16330**2
    assert memory_estimate(args("closed-form")) == 0


# ---------------------------------------------------------------------------- report


def _report_argv(*dirs: Path, out: Path | None = None) -> list[str]:
    argv = ["report", *map(str, dirs), "--no-theory", "--quiet"]
    return argv + (["--out", str(out)] if out is not None else [])


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
        _report_argv(run_copy), capsys, watch=(run_copy,), marker=marker, says="predictions.npz"
    )


def test_report_refuses_mixed_datasets_naming_the_runs(finished, tmp_path, capsys):
    other = tmp_path / "other"
    argv = [
        "train",
        *TINY,
        "--epochs",
        "1",
        "--dataset",
        "synthetic:k=4,d=8,n=20,test=10",
        "--out",
        str(other),
    ]
    assert cli.main(argv) == 0
    err = expect_clear_error(
        _report_argv(finished, other, out=tmp_path / "rep"),
        capsys,
        watch=(finished, other),
        says="different datasets",
    )
    assert str(other) in err and str(finished) in err


@pytest.mark.parametrize(
    ("dirs", "says"),
    [
        (["nonexistent"], "does not exist"),
        (["empty"], "no run directories"),
        (["empty", "empty2"], "no run directories"),  # several DIRs: a default --out, no error
    ],
)
def test_report_bad_directories(dirs, says, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty2").mkdir()
    expect_clear_error(_report_argv(*(tmp_path / d for d in dirs)), capsys, says=says)
    assert not list(tmp_path.glob("report-*"))  # a failed report leaves no folder behind


def test_report_out_inside_a_regular_file(finished, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    expect_clear_error(_report_argv(finished, out=blocker / "rep"), capsys, watch=(blocker,))


# ---------------------------------------------------------------------------- concurrent writers


@pytest.fixture
def held(run_copy) -> Iterator[Path]:
    """``run_copy`` with its lock held by this process (as another writer would hold it)."""
    with lock_directory(run_copy):
        yield run_copy


@pytest.mark.parametrize(
    "extra",
    [["--resume", "--epochs", "3"], ["--overwrite", "--epochs", "2"], ["--epochs", "2"]],
    ids=["resume", "overwrite", "same"],
)
def test_second_writer_is_refused_naming_the_holder(extra, held, capsys):
    err = expect_clear_error(
        ["train", *TINY, "--out", str(held), *extra], capsys, watch=(held,), says="in use"
    )
    assert f"PID {os.getpid()}" in err and str(held) in err


def test_second_compare_on_one_out_is_refused(tmp_path, capsys):
    out = tmp_path / "cmp"
    with lock_directory(out):
        expect_clear_error(
            ["compare", "--preset", "smoke", "--out", str(out), "--quiet", "--no-report"],
            capsys,
            watch=(out,),
            says=f"PID {os.getpid()}",
        )


def test_report_on_a_run_being_written_says_so(held, tmp_path, capsys):
    argv = ["report", str(held), "--no-theory", "--out", str(tmp_path / "rep")]
    rc, err = run_cli(argv, capsys)
    assert rc == 0 and "still being written" in err and f"PID {os.getpid()}" in err


def test_lock_is_released_and_emptied_after_a_run(finished):
    assert (finished / LOCK_NAME).read_bytes() == b""
    with lock_directory(finished):
        assert (finished / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_lock_released_when_holder_thread_finishes(tmp_path):
    events = [threading.Event(), threading.Event()]

    def hold() -> None:
        with lock_directory(tmp_path):
            events[0].set()
            events[1].wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    events[0].wait(10)
    with pytest.raises(DirectoryLockedError), lock_directory(tmp_path):
        pass
    events[1].set()
    thread.join()
    with lock_directory(tmp_path):
        pass


# ---------------------------------------------------------------------------- exceptions


@pytest.mark.parametrize(
    "err",
    [
        TrainingDivergedError(3, 4, float("nan"), 2, Path("/x/last.pt")),
        TrainingDivergedError(3, 0, float("nan"), 0, Path("/x/last.pt"), where="custom"),
        DirectoryLockedError("/x is in use (PID 1)"),
        MetricsLogError("/x, line 3: bad"),
        WorkerDiedError("died"),
    ],
    ids=["diverged", "diverged-where", "locked", "metrics", "worker"],
)
def test_errors_cross_process_boundaries_intact(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    assert getattr(back, "exit_code", None) == getattr(err, "exit_code", None)


def _raise(exc: BaseException) -> Callable[..., None]:
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


@pytest.mark.parametrize(
    ("target", "argv_kind"),
    [
        ("nclab.train.loop.load_dataset", "train"),  # startup
        ("nclab.train.loop._epoch", "train"),  # training
        ("nclab.train.loop._finish", "train"),  # writing the final files
        ("nclab.report.build_report", "report"),
        ("nclab.executors.local.LocalExecutor.as_completed", "compare"),
        ("nclab.ufm.closed_form", "ufm"),
    ],
)
def test_ctrl_c_anywhere_exits_130_with_one_line(target, argv_kind, finished, tmp_path, capsys):
    monkey = pytest.MonkeyPatch()
    module, name = target.rsplit(".", 1)
    monkey.setattr(f"{module}.{name}", _raise(KeyboardInterrupt()))
    argv = {
        "train": ["train", *TINY, "--epochs", "2", "--out", str(tmp_path / "run")],
        "report": _report_argv(finished, out=tmp_path / "rep"),
        "compare": ["compare", "--preset", "smoke", "--out", str(tmp_path / "c"), "--quiet"],
        "ufm": ["ufm", "closed-form"],
    }[argv_kind]
    try:
        expect_clear_error(argv, capsys, code=130, says="interrupted", watch=(finished,))
    finally:
        monkey.undo()


@pytest.mark.parametrize(
    "exc",
    [
        PermissionError(13, "Permission denied", "/x"),
        IsADirectoryError(21, "Is a directory", "/x"),
        OSError(28, "No space left on device"),
        MemoryError(),
        zipfile.BadZipFile("bad"),
        RuntimeError("unexpected"),
    ],
    ids=["permission", "isadir", "nospace", "memory", "badzip", "runtime"],
)
def test_every_exception_becomes_one_line(exc, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("nclab.train.loop._train", _raise(exc))
    code = 2 if isinstance(exc, OSError | MemoryError) else 1
    err = expect_clear_error(
        ["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "r")], capsys, code=code
    )
    if code == 1:
        assert "--debug" in err and type(exc).__name__ in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    argv = ["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "r"), "--lr", "-1"]
    with pytest.raises(ValueError, match="lr must be > 0"):
        cli.main(["--debug", *argv])
    monkeypatch.setenv("NCLAB_DEBUG", "1")
    with pytest.raises(ValueError, match="lr must be > 0"):
        cli.main(argv)
    monkeypatch.setenv("NCLAB_DEBUG", "0")
    assert cli.main(argv) == 2


def test_broken_stdout_pipe_is_quiet(monkeypatch, capsys):
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert cli.main(["ufm", "closed-form"]) == cli.EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------- real processes

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SLOW_RUN = [
    "--dataset", "synthetic:k=5,d=48,n=200,test=20",
    "--width", "64", "--depth", "2", "--batch-size", "20", "--lr", "0.05",
    "--scheduler", "cosine", "--threads", "1", "--seed", "3", "--quiet",
]  # fmt: skip


def _spawn(argv: list[str], **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nclab.cli", *argv],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def _wait_python_handles_sigint(proc: subprocess.Popen, limit: float = 60) -> None:
    """Wait until the child's interpreter has installed its SIGINT handler (Linux: bit 2 of
    SigCgt in /proc/PID/status), so a Ctrl-C is Python's to handle, not the default action
    that kills a process still starting its interpreter (exit -2 on a loaded machine)."""
    deadline = time.monotonic() + limit
    status = Path(f"/proc/{proc.pid}/status")
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            lines = status.read_text().splitlines()
        except OSError:  # the child has just exited
            return
        caught = next((int(x.split()[1], 16) for x in lines if x.startswith("SigCgt:")), 0)
        if caught & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.01)


def _wait_rows(metrics: Path, count: int, proc: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(read_metrics(metrics)[0]) >= count:
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_ctrl_c_during_training_then_resume_equals_uninterrupted(tmp_path):
    out, epochs = tmp_path / "run", 6
    proc = _spawn(["train", *SLOW_RUN, "--epochs", str(epochs), "--out", str(out)])
    _wait_rows(out / "metrics.jsonl", 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0 and "--resume" in err
    argv = ["train", *SLOW_RUN, "--epochs", str(epochs)]
    assert cli.main([*argv, "--out", str(out), "--resume"]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "straight")]) == 0
    rows = read_rows(out / "metrics.jsonl")
    assert strip_seconds(rows) == strip_seconds(read_rows(tmp_path / "straight/metrics.jsonl"))


@pytest.mark.slow
def test_ctrl_c_at_startup_exits_130_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    proc = _spawn(["train", *SLOW_RUN, "--epochs", "3", "--out", str(out)])
    _wait_python_handles_sigint(proc)
    time.sleep(0.2)  # inside the start-up: imports (torch takes about a second), dataset, model
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0
    assert cli.main(["train", *SLOW_RUN, "--epochs", "3", "--out", str(out), "--resume"]) == 0


@pytest.mark.slow
def test_second_process_is_refused_while_the_first_trains(tmp_path):
    out = tmp_path / "run"
    first = _spawn(["train", *SLOW_RUN, "--epochs", "5000", "--out", str(out)])
    try:
        _wait_rows(out / "metrics.jsonl", 1, first)
        second = _spawn(["train", *SLOW_RUN, "--epochs", "5000", "--out", str(out), "--resume"])
        _, err = second.communicate(timeout=60)
        err = err.decode()
        assert second.returncode == 2, err
        assert f"PID {first.pid}" in err and "Traceback" not in err
        first.send_signal(signal.SIGKILL)  # the OS releases the lock of a killed process
        first.wait()
        rows_before = len(read_rows(out / "metrics.jsonl"))
        argv = ["train", *SLOW_RUN, "--epochs", str(rows_before + 1), "--out", str(out)]
        assert cli.main([*argv, "--resume"]) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


@pytest.mark.slow
def test_ctrl_c_during_compare_with_workers(tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "smoke", "--out", str(out), "--jobs", "2", "--no-report"]
    proc = _spawn([*argv, "--epochs", "400", "--quiet"], start_new_session=True)
    try:
        _wait_rows(out / "runs" / "ce_seed0" / "metrics.jsonl", 2, proc, limit=180)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    for name in ("ce_seed0", "ls0.1_seed0"):
        run = out / "runs" / name
        assert not (run / "DONE").exists()
        if (run / "checkpoints" / "last.pt").exists():
            torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # intact


@pytest.mark.slow
def test_diverging_compare_worker_reports_its_run_epoch_and_step(tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "smoke", "--out", str(out), "--jobs", "2", "--no-report"]
    proc = _spawn([*argv, "--lr", "1e12", "--quiet"])
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    assert proc.returncode == 3, err
    assert "Traceback" not in err and "BrokenProcessPool" not in err
    assert err.strip().count("\n") == 0
    assert "run " in err and "training diverged" in err and "at epoch 1, step" in err


def test_diverging_compare_run_in_process_exits_3(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "smoke", "--out", str(out), "--jobs", "1", "--no-report"]
    err = expect_clear_error([*argv, "--lr", "1e12", "--quiet"], capsys, code=3)
    assert err.startswith("nclab compare: run ce_seed0: training diverged")


@pytest.mark.slow
def test_output_piped_into_head_ends_quietly():
    proc = subprocess.run(
        f"{sys.executable} -m nclab.cli ufm closed-form --smoothing "
        + " ".join(f"0.{i:04d}" for i in range(1, 2500))
        + " | head -c 10",
        shell=True,
        env=ENV,
        capture_output=True,
        timeout=120,
    )
    assert len(proc.stdout) == 10
    assert proc.stderr.decode() == ""


# ---------------------------------------------------------------------------- nclab metrics files


def _metrics_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.npz"
    rng = np.random.default_rng(0)
    if kind == "random_bytes":
        path.write_bytes(rng.bytes(4000))
    elif kind == "truncated":
        np.savez(path, features=rng.normal(size=(200, 8)), labels=np.arange(200) % 4)
        path.write_bytes(path.read_bytes()[:900])
    elif kind == "huge_label":
        np.savez(path, features=rng.normal(size=(20, 4)), labels=np.array([0] * 19 + [10**9]))
    elif kind == "huge_num_classes":
        np.savez(path, features=rng.normal(size=(20, 4)), labels=np.arange(20) % 2,
                 num_classes=np.array(10**9))  # fmt: skip
    elif kind == "float_labels":
        np.savez(path, features=rng.normal(size=(20, 4)), labels=np.linspace(0, 1, 20))
    elif kind == "object_array":
        np.savez(path, features=np.array([None, 1], dtype=object), labels=np.zeros(2, int))
    return path


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("random_bytes", "not an .npz file"),
        ("truncated", "npz"),
        ("huge_label", "classes (largest label 1000000000"),
        ("huge_num_classes", "1000000000 classes"),
        ("float_labels", "must be integers"),
        ("object_array", "never unpickles"),
    ],
)
def test_nclab_metrics_refuses_bad_files_in_one_line(kind, says, tmp_path, capsys):
    """`nclab metrics FILE` on hostile or malformed files: one line, exit 2, no allocation sized
    by a forged label, no advice to load with pickle."""
    path = _metrics_file(tmp_path, kind)
    err = expect_clear_error(["metrics", str(path)], capsys, watch=(tmp_path,), says=says)
    assert "allow_pickle" not in err
