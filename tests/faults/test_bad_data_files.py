"""Promise: a damaged, forged or malformed data file (npz bytes and contents, IDX/gzip, Tiny
ImageNet JPEGs and lists, STL-10 binaries, the input of ``nclab metrics``) ends the command in
one line naming the file and what is wrong, exit 2: never a traceback, the file untouched, and a
first start leaves no run folder behind."""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from faultkit import (
    DATA_OPTS,
    expect_clear_error,
    idx_bytes,
    npz_arrays,
    write_idx_set,
    write_npz,
    zip_bytes,
)

# ---------------------------------------------------------------------------- npz datasets


def _valid_npz_bytes(tmp: Path) -> bytes:
    return write_npz(tmp / "valid.npz").read_bytes()


def _forged_header(tmp: Path) -> bytes:
    """A valid npz except that x_train's header claims 10^12 rows (24 bytes of data follow)."""
    member = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 6)}
    np.lib.format.write_array_header_1_0(member, header)
    member.write(bytes(24))
    arrays = {k: v for k, v in npz_arrays().items() if k != "x_train"}
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    return zip_bytes({"x_train.npy": member.getvalue(), **members})


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
    "zip-without-arrays": lambda t: (zip_bytes({"readme.txt": b"hi"}), "lacks arrays"),
    "zip-with-garbage-npy": lambda t: (
        zip_bytes({f"{k}.npy": os.urandom(200) for k in npz_arrays()}),
        "not a readable .npz",
    ),
    "forged-huge-shape": lambda t: (_forged_header(t), "header says shape"),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_hostile_npz_bytes(case, tmp_path, capsys):
    data, says = NPZ_CASES[case](tmp_path)
    (tmp_path / "data.npz").write_bytes(data)
    _expect_npz_refused(tmp_path, capsys, says)


def _expect_npz_refused(tmp_path: Path, capsys, says: str) -> None:
    """Training on ``tmp_path/data.npz`` fails with one line; nothing is created or changed."""
    path, out = tmp_path / "data.npz", tmp_path / "out"
    expect_clear_error(
        ["train", *DATA_OPTS, "--dataset", f"npz:{path}", "--epochs", "1", "--out", str(out)],
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
    write_npz(tmp_path / "data.npz", **changes)
    _expect_npz_refused(tmp_path, capsys, says)


def test_npz_path_is_a_directory(tmp_path, capsys):
    (tmp_path / "d.npz").mkdir()
    argv = ["train", *DATA_OPTS, "--dataset", f"npz:{tmp_path / 'd.npz'}", "--epochs", "1"]
    expect_clear_error([*argv, "--out", str(tmp_path / "o")], capsys, says="not a regular file")


# ---------------------------------------------------------------------------- IDX / gzip


IDX_CASES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "random-gz": ("train-images-idx3-ubyte", lambda: os.urandom(512), "not a complete gzip"),
    "truncated-gz": (
        "train-images-idx3-ubyte",
        lambda: gzip.compress(idx_bytes(np.random.default_rng(1).integers(0, 255, (20, 28, 28))))[
            :900
        ],
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
        lambda: gzip.compress(idx_bytes(np.full(20, 200, dtype=np.uint8))),
        "must lie in [0, 10)",
    ),
    "label-count-mismatch": (
        "t10k-labels-idx1-ubyte",
        lambda: gzip.compress(idx_bytes(np.arange(7, dtype=np.uint8))),
        "disagree",
    ),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_hostile_idx_files(case, tmp_path, capsys):
    name, make, says = IDX_CASES[case]
    d = write_idx_set(tmp_path / "fmnist", **{name: make()})
    argv = ["train", *DATA_OPTS, "--dataset", "fashion-mnist", "--data-dir", str(d)]
    expect_clear_error(
        [*argv, "--epochs", "1", "--out", str(tmp_path / "o")], capsys, watch=(d,), says=says
    )


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
    argv = ["train", *DATA_OPTS, "--dataset", "tiny-imagenet", "--data-dir", str(tmp_path / "data")]
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
    argv = ["train", *DATA_OPTS, "--dataset", "stl10", "--data-dir", str(tmp_path)]
    expect_clear_error(
        [*argv, "--epochs", "1", "--out", str(tmp_path / "o")], capsys, watch=(d,), says=says
    )


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
