"""Tests for nclab.data: every loader on small files written here in the official formats."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import nclab.data.readers as data_mod
from nclab.data import (
    DATASETS,
    DataBundle,
    augment_batch,
    class_balanced_indices,
    iterate_batches,
    load_dataset,
    read_idx,
)
from nclab.models import build_model


@pytest.fixture(autouse=True)
def _isolated_search_path(tmp_path, monkeypatch):
    """Keep $NCLAB_DATA and ~/.cache out of the tests."""
    monkeypatch.delenv("NCLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _check_roundtrip(bundle: DataBundle, x_train_raw: np.ndarray, x_test_raw: np.ndarray, scale):
    """normalised * std + mean == raw / scale, and mean/std are the training statistics."""
    xr = x_train_raw.astype(np.float64) / scale
    axes = (0,) + tuple(range(2, xr.ndim))
    assert np.allclose(bundle.mean, xr.mean(axis=axes), atol=1e-10)
    assert np.allclose(bundle.std, xr.std(axis=axes), atol=1e-10)
    assert bundle.x_train.dtype == torch.float32 and bundle.y_train.dtype == torch.int64
    assert bundle.y_test.dtype == torch.int64
    for x, raw in ((bundle.x_train, x_train_raw), (bundle.x_test, x_test_raw)):
        back = bundle.denormalize(x.double()).numpy()
        assert np.allclose(back, raw.astype(np.float64) / scale, atol=1e-5)
        # independent of denormalize(): explicit per-channel broadcast
        shape = (1, -1) + (1,) * (raw.ndim - 2)
        manual = x.double().numpy() * np.reshape(bundle.std, shape) + np.reshape(bundle.mean, shape)
        assert np.allclose(manual, raw.astype(np.float64) / scale, atol=1e-5)


# ----------------------------------------------------------------------------------- IDX


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _write_mnist_like(folder: Path, gz: bool, seed: int = 0, n_train=40, n_test=20, hw=(6, 5)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x_tr = rng.integers(0, 256, size=(n_train, *hw), dtype=np.uint8)
    y_tr = np.arange(n_train) % 10
    rng.shuffle(y_tr)
    x_te = rng.integers(0, 256, size=(n_test, *hw), dtype=np.uint8)
    y_te = rng.integers(0, 10, size=n_test)
    _write_idx(folder / "train-images-idx3-ubyte", x_tr, gz)
    _write_idx(folder / "train-labels-idx1-ubyte", y_tr, gz)
    _write_idx(folder / "t10k-images-idx3-ubyte", x_te, gz)
    _write_idx(folder / "t10k-labels-idx1-ubyte", y_te, gz)
    return x_tr, y_tr, x_te, y_te


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name,sub", [("mnist", ""), ("mnist", "MNIST/raw"), ("fashion-mnist", "")])
def test_idx_loader(tmp_path, gz, name, sub):
    x_tr, y_tr, x_te, y_te = _write_mnist_like(tmp_path / sub, gz)
    b = load_dataset(name, tmp_path)
    assert b.name == name and b.num_classes == 10 and b.input_shape == (1, 6, 5)
    assert b.x_train.shape == (40, 1, 6, 5) and b.x_test.shape == (20, 1, 6, 5)
    assert np.array_equal(b.y_train.numpy(), y_tr) and np.array_equal(b.y_test.numpy(), y_te)
    _check_roundtrip(b, x_tr[:, None], x_te[:, None], 255.0)
    if name == "fashion-mnist":
        assert b.class_names[0] == "T-shirt/top" and b.class_names[9] == "Ankle boot"


def test_fashion_mnist_torchvision_layout(tmp_path):
    x_tr, *_ = _write_mnist_like(tmp_path / "FashionMNIST" / "raw", gz=False, seed=3)
    b = load_dataset("fashion-mnist", tmp_path)
    assert np.allclose(b.denormalize(b.x_train).numpy()[:, 0], x_tr / 255.0, atol=1e-5)


def test_nclab_data_env_and_cache(tmp_path, monkeypatch):
    x_tr, *_ = _write_mnist_like(tmp_path / "env" / "mnist", gz=True, seed=1)
    monkeypatch.setenv("NCLAB_DATA", str(tmp_path / "env"))
    b = load_dataset("mnist")
    assert np.allclose(b.denormalize(b.x_train).numpy()[:, 0], x_tr / 255.0, atol=1e-5)
    monkeypatch.delenv("NCLAB_DATA")
    x_tr2, *_ = _write_mnist_like(tmp_path / "home" / ".cache" / "nclab" / "mnist", gz=1, seed=2)
    b2 = load_dataset("mnist")
    assert np.allclose(b2.denormalize(b2.x_train).numpy()[:, 0], x_tr2 / 255.0, atol=1e-5)


def test_read_idx_header_and_errors(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a", arr, gz=False)
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def test_missing_files_error_lists_searched_places(tmp_path, monkeypatch):
    monkeypatch.setenv("NCLAB_DATA", str(tmp_path / "envdir"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # an explicit data_dir is the only place looked at: not $NCLAB_DATA, not the cache
    with pytest.raises(FileNotFoundError) as exc:
        load_dataset("mnist", tmp_path / "mydata")
    msg = str(exc.value)
    for place in (tmp_path / "mydata", tmp_path / "mydata" / "MNIST" / "raw"):
        assert str(place) in msg
    assert str(tmp_path / "envdir") not in msg and ".cache" not in msg
    assert "train-images-idx3-ubyte" in msg and "--data-dir" in msg
    # without one: $NCLAB_DATA, the cache and (fashion-mnist) the Debian location
    monkeypatch.setitem(data_mod._IDX_SYSTEM_DIRS, "fashion-mnist", (tmp_path / "usr-share",))
    with pytest.raises(FileNotFoundError) as exc:
        load_dataset("fashion-mnist")
    msg = str(exc.value)
    assert str(tmp_path / "usr-share") in msg and "apt-get install dataset-fashion-mnist" in msg
    for place in (tmp_path / "envdir", tmp_path / "home" / ".cache" / "nclab" / "fashion-mnist"):
        assert str(place) in msg
    with pytest.raises(FileNotFoundError) as exc:
        load_dataset("fashion-mnist", tmp_path / "mydata")
    assert str(tmp_path / "usr-share") not in str(exc.value)


@pytest.mark.slow
def test_real_fashion_mnist(fashion_mnist_dir):
    # installed by `apt-get install dataset-fashion-mnist` (scripts/setup.sh); skipped without it
    b = load_dataset("fashion-mnist", per_class=50, seed=0)
    assert b.x_test.shape == (10000, 1, 28, 28) and b.y_train.shape == (500,)
    assert torch.equal(torch.bincount(b.y_train), torch.full((10,), 50))
    full = load_dataset("fashion-mnist")
    assert full.x_train.shape == (60000, 1, 28, 28) and full.x_test.shape == (10000, 1, 28, 28)
    assert full.num_classes == 10 and len(full.class_names) == 10
    assert torch.equal(torch.bincount(full.y_train), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(full.y_test), torch.full((10,), 1000))
    # the well-known Fashion-MNIST training statistics
    assert abs(full.mean[0] - 0.2860) < 1e-3 and abs(full.std[0] - 0.3530) < 1e-3
    assert abs(full.x_train.double().mean().item()) < 1e-5
    assert abs(full.x_train.double().std().item() - 1.0) < 1e-4
    # same test set either way, and the subset's statistics are those of the subset
    assert torch.equal(b.y_test, full.y_test)
    raw_test = full.denormalize(full.x_test[:100])
    assert torch.allclose(b.denormalize(b.x_test[:100]), raw_test, atol=1e-5)
    assert b.mean != full.mean


# ----------------------------------------------------------------------------------- CIFAR


def _folder(root: Path, name: str) -> Path:
    """The new folder ``root/name`` (where a dataset's files go)."""
    (root / name).mkdir()
    return root / name


def _write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10(tmp_path):
    d = _folder(tmp_path, "cifar-10-batches-py")
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        y = [(2 * i + j) % 10 for j in range(4)]
        _write_pickle(d / f"data_batch_{i}", {b"data": x, b"labels": y})
        xs.append(x)
        ys += y
    xt = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    _write_pickle(d / "test_batch", {b"data": xt, b"labels": [9, 8, 7, 0, 1, 2]})
    names = [f"c{i}".encode() for i in range(10)]
    _write_pickle(d / "batches.meta", {b"label_names": names})
    b = load_dataset("cifar10", tmp_path)
    assert b.input_shape == (3, 32, 32) and b.x_train.shape == (20, 3, 32, 32)
    assert b.y_train.tolist() == ys and b.y_test.tolist() == [9, 8, 7, 0, 1, 2]
    assert b.class_names == tuple(f"c{i}" for i in range(10))
    x_train = np.concatenate(xs).reshape(-1, 3, 32, 32)
    # channel-major: the first 1024 bytes of a row are the red plane
    assert np.allclose(
        b.denormalize(b.x_train)[0, 0].numpy().ravel(), xs[0][0, :1024] / 255, 0, 1e-5
    )
    _check_roundtrip(b, x_train, xt.reshape(-1, 3, 32, 32), 255.0)
    # data_dir pointing at the batch folder itself also works
    assert load_dataset("cifar10", d).y_train.tolist() == ys


def test_cifar_label_count_mismatch(tmp_path):
    d = _folder(tmp_path, "cifar-100-python")
    x = np.zeros((3, 3072), np.uint8)
    _write_pickle(d / "train", {b"data": x, b"fine_labels": [0, 1]})
    _write_pickle(d / "test", {b"data": x, b"fine_labels": [0, 1, 2]})
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        load_dataset("cifar100", tmp_path)


def test_cifar100(tmp_path):
    d = _folder(tmp_path, "cifar-100-python")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(200, 3072), dtype=np.uint8)
    y = list(range(100)) * 2
    xt = rng.integers(0, 256, size=(5, 3072), dtype=np.uint8)
    _write_pickle(d / "train", {b"data": x, b"fine_labels": y, b"coarse_labels": [0] * 200})
    _write_pickle(d / "test", {b"data": xt, b"fine_labels": [99, 0, 5, 6, 7]})
    _write_pickle(d / "meta", {b"fine_label_names": [f"n{i}".encode() for i in range(100)]})
    b = load_dataset("cifar100", tmp_path, per_class=1, seed=3)
    assert b.num_classes == 100 and b.class_names[99] == "n99"
    assert b.y_train.shape == (100,) and torch.equal(b.y_train.bincount(), torch.ones(100).long())
    assert b.y_test.tolist() == [99, 0, 5, 6, 7]
    idx = class_balanced_indices(np.array(y), 1, seed=3)
    _check_roundtrip(b, x[idx].reshape(-1, 3, 32, 32), xt.reshape(-1, 3, 32, 32), 255.0)


def test_cifar_missing_file_names_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as exc:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path) in str(exc.value)
    (tmp_path / "cifar-10-batches-py").mkdir()
    _write_pickle(
        tmp_path / "cifar-10-batches-py" / "data_batch_1",
        {b"data": np.zeros((0, 3072), np.uint8), b"labels": []},
    )
    with pytest.raises(FileNotFoundError, match="data_batch_2"):
        load_dataset("cifar10", tmp_path)


# ----------------------------------------------------------------------------------- STL-10


def test_stl10_column_major(tmp_path):
    d = _folder(tmp_path, "stl10_binary")
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, size=(12, 3, 96, 96), dtype=np.uint8)
    timgs = rng.integers(0, 256, size=(3, 3, 96, 96), dtype=np.uint8)
    # the official files store each channel column by column (Fortran order)
    for name, a in (("train_X.bin", imgs), ("test_X.bin", timgs)):
        with open(d / name, "wb") as f:
            for img in a:
                for ch in img:
                    f.write(ch.tobytes(order="F"))
    y = np.array([1 + i % 10 for i in range(12)], dtype=np.uint8)
    y.tofile(d / "train_y.bin")
    np.array([10, 1, 5], dtype=np.uint8).tofile(d / "test_y.bin")
    (d / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)) + "\n")
    b = load_dataset("stl10", tmp_path)
    assert b.input_shape == (3, 96, 96) and b.num_classes == 10
    assert b.y_train.tolist() == (y.astype(int) - 1).tolist() and b.y_test.tolist() == [9, 0, 4]
    assert b.class_names == tuple(f"k{i}" for i in range(10))
    _check_roundtrip(b, imgs, timgs, 255.0)


def test_stl10_bad_labels(tmp_path):
    d = _folder(tmp_path, "stl10_binary")
    np.zeros((2, 3, 96, 96), np.uint8).tofile(d / "train_X.bin")
    np.zeros((1, 3, 96, 96), np.uint8).tofile(d / "test_X.bin")
    np.array([0, 1], np.uint8).tofile(d / "train_y.bin")
    np.array([1], np.uint8).tofile(d / "test_y.bin")
    with pytest.raises(ValueError, match="1..10"):
        load_dataset("stl10", tmp_path)


# ----------------------------------------------------------------------------------- Tiny ImageNet


def _write_tiny_imagenet(root: Path) -> dict:
    from PIL import Image

    d = root / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # unsorted on purpose: classes are indexed in sorted order
    (d / "val" / "images").mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (d / "words.txt").write_text("n01\tgoldfish, Carassius\nn02\tsalamander\nn03\tfrog\n")
    colours = {"n01": (200, 30, 30), "n02": (30, 200, 30), "n03": (30, 30, 200)}
    for w in wnids:
        (d / "train" / w / "images").mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (64, 64), colours[w]).save(
                d / "train" / w / "images" / f"{w}_{j}.JPEG"
            )
    Image.new("L", (64, 64), 90).save(d / "val" / "images" / "val_0.JPEG")  # grayscale
    Image.new("RGB", (64, 64), colours["n03"]).save(d / "val" / "images" / "val_1.JPEG")
    (d / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02\t0\t0\t10\t10\nval_1.JPEG\tn03\t1\t1\t20\t20\n"
    )
    return {"dir": d, "colours": colours}


def test_tiny_imagenet(tmp_path):
    from PIL import Image

    info = _write_tiny_imagenet(tmp_path)
    d = info["dir"]
    b = load_dataset("tiny-imagenet", tmp_path)
    assert b.num_classes == 3 and b.input_shape == (3, 64, 64)
    assert b.class_names == ("goldfish", "salamander", "frog")
    assert b.y_train.tolist() == [0, 0, 1, 1, 2, 2] and b.y_test.tolist() == [1, 2]
    order = [
        d / "train" / w / "images" / f"{w}_{j}.JPEG" for w in ("n01", "n02", "n03") for j in (0, 1)
    ]
    ref_train = np.stack(
        [np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in order]
    )
    gray = np.asarray(Image.open(d / "val" / "images" / "val_0.JPEG"))
    rgb = np.asarray(Image.open(d / "val" / "images" / "val_1.JPEG")).transpose(2, 0, 1)
    ref_test = np.stack([np.stack([gray] * 3), rgb])
    _check_roundtrip(b, ref_train, ref_test, 255.0)
    # JPEG of a flat colour is (nearly) that colour
    back = b.denormalize(b.x_train).numpy() * 255
    assert np.abs(back[0].mean(axis=(1, 2)) - np.array(info["colours"]["n01"])).max() < 3


def test_tiny_imagenet_missing_pieces(tmp_path):
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        load_dataset("tiny-imagenet", tmp_path)
    info = _write_tiny_imagenet(tmp_path)
    (info["dir"] / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match="val_1.JPEG"):
        load_dataset("tiny-imagenet", tmp_path)


# ----------------------------------------------------------------------------------- npz


def test_npz_formats(tmp_path):
    rng = np.random.default_rng(4)
    # N x C x H x W uint8 -> scaled by 1/255
    x = rng.integers(0, 256, size=(12, 2, 4, 4), dtype=np.uint8)
    xt = rng.integers(0, 256, size=(5, 2, 4, 4), dtype=np.uint8)
    y, yt = np.arange(12) % 3, np.array([0, 1, 2, 2, 1])
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    b = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    assert b.num_classes == 3 and b.input_shape == (2, 4, 4) and len(b.mean) == 2
    assert b.y_test.tolist() == yt.tolist()
    _check_roundtrip(b, x, xt, 255.0)
    # N x H x W -> one channel
    np.savez(tmp_path / "b.npz", x_train=x[:, 0], y_train=y, x_test=xt[:, 0], y_test=yt)
    b = load_dataset(f"npz:{tmp_path / 'b.npz'}")
    assert b.input_shape == (1, 4, 4)
    _check_roundtrip(b, x[:, :1], xt[:, :1], 255.0)
    # flat float vectors -> per-coordinate statistics, no 1/255 scaling
    xf, xft = rng.normal(3, 2, size=(12, 7)), rng.normal(size=(5, 7))
    names = np.array(["a", "b", "c"])
    np.savez(tmp_path / "c.npz", x_train=xf, y_train=y, x_test=xft, y_test=yt, class_names=names)
    b = load_dataset(f"npz:{tmp_path / 'c.npz'}", per_class=2, seed=1)
    assert b.input_shape == (7,) and b.class_names == ("a", "b", "c") and len(b.std) == 7
    idx = class_balanced_indices(y, 2, seed=1)
    _check_roundtrip(b, xf[idx], xft, 1.0)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"y_train": np.array([0, 1, 3, 0, 1, 3])}, "no training samples for class 2"),
        ({"y_train": np.array([0, 1, 10**9, 0, 1, 2])}, "largest label is 1000000000"),
        ({"y_train": np.array([0, 1, 2**40, 0, 1, 2])}, "outside any sensible class index"),
        ({"y_test": np.array([0, 4])}, "y_test"),
        ({"y_train": np.array([0, 1, 2, 0, 1])}, "samples"),
        ({"x_train": np.full((6, 3), np.nan)}, "NaN"),
        ({"y_train": np.array([0, 1, 2, 0, 1, 2.5])}, "non-integer"),
        ({"x_test": np.zeros((2, 4))}, "must match"),
        ({"y_train": np.array([0, 1, 2, 0, 1, -1])}, "negative"),
    ],
)
def test_npz_validation(tmp_path, change, match):
    arrays = {
        "x_train": np.zeros((6, 3)),
        "y_train": np.array([0, 1, 2, 0, 1, 2]),
        "x_test": np.zeros((2, 3)),
        "y_test": np.array([0, 1]),
    }
    arrays.update(change)
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_npz_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    np.savez(tmp_path / "e.npz", x_train=np.zeros((2, 3)), y_train=np.array([0, 1]))
    with pytest.raises(ValueError, match="x_test"):
        load_dataset(f"npz:{tmp_path / 'e.npz'}")


# ----------------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_determinism():
    def mixture(seed: int):  # noqa: ANN202
        return load_dataset(
            "synthetic",
            num_classes=5,
            synthetic_dim=8,
            synthetic_train_per_class=30,
            synthetic_test_per_class=7,
            seed=seed,
        )

    b = mixture(3)
    assert b.input_shape == (8,) and b.num_classes == 5
    assert b.x_train.shape == (150, 8) and b.x_test.shape == (35, 8)
    assert torch.equal(b.y_train.bincount(), torch.full((5,), 30))
    again = mixture(3)
    assert torch.equal(b.x_train, again.x_train) and torch.equal(b.x_test, again.x_test)
    other = mixture(4)
    assert not torch.allclose(b.x_train, other.x_train)
    assert torch.allclose(
        b.x_train.double().mean(0), torch.zeros(8, dtype=torch.float64), atol=1e-6
    )


def test_synthetic_is_learnable_but_not_trivial():
    b = load_dataset("synthetic", seed=0)  # K = 10, D = 32, 100 per class
    x, y = b.x_train, b.y_train
    # nearest class mean on the test set: high but not perfect accuracy (classes overlap a bit)
    means = torch.stack([x[y == k].mean(0) for k in range(10)])
    ncm_acc = (torch.cdist(b.x_test, means).argmin(1) == b.y_test).float().mean().item()
    assert 0.9 < ncm_acc < 1.0
    # a small MLP fits the training set perfectly within a few epochs
    torch.manual_seed(0)
    model = build_model("mlp", 10, b.input_shape, width=64, depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        for xb, yb in iterate_batches(x, y, 100, shuffle=True, generator=gen):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean().item() == 1.0


# ----------------------------------------------------------------------------------- per_class


def test_per_class_balance_determinism_and_stats(tmp_path):
    x_tr, y_tr, x_te, y_te = _write_mnist_like(tmp_path, gz=True, n_train=200, seed=5)
    a = load_dataset("mnist", tmp_path, per_class=7, seed=11)
    b = load_dataset("mnist", tmp_path, per_class=7, seed=11)
    c = load_dataset("mnist", tmp_path, per_class=7, seed=12)
    assert torch.equal(a.y_train.bincount(), torch.full((10,), 7))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    idx = class_balanced_indices(y_tr, 7, seed=11)
    assert len(set(idx.tolist())) == 70 and np.array_equal(y_tr[idx], a.y_train.numpy())
    # normalisation uses the subset's statistics; test set untouched
    _check_roundtrip(a, x_tr[idx][:, None], x_te[:, None], 255.0)
    assert np.array_equal(a.y_test.numpy(), y_te)
    with pytest.raises(ValueError, match="has only 20"):
        load_dataset("mnist", tmp_path, per_class=21)
    with pytest.raises(ValueError, match="positive"):
        load_dataset("mnist", tmp_path, per_class=0)


# ----------------------------------------------------------------------------------- batching


def test_iterate_batches_order_and_coverage():
    x = torch.arange(23, dtype=torch.float32)[:, None].repeat(1, 3)
    y = torch.arange(23)
    plain = list(iterate_batches(x, y, 5, shuffle=False))
    assert [len(yb) for _, yb in plain] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat([yb for _, yb in plain]), y)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    s1 = torch.cat([yb for _, yb in iterate_batches(x, y, 5, shuffle=True, generator=g1)])
    s2 = torch.cat([yb for _, yb in iterate_batches(x, y, 5, shuffle=True, generator=g2)])
    assert torch.equal(s1, s2) and torch.equal(s1.sort().values, y) and not torch.equal(s1, y)
    assert torch.equal(s1, torch.randperm(23, generator=torch.Generator().manual_seed(7)))
    for xb, yb in iterate_batches(x, y, 5, shuffle=True, generator=g1):
        assert torch.equal(xb[:, 0].long(), yb)  # x and y stay paired
    dropped = list(iterate_batches(x, y, 5, shuffle=True, generator=g1, drop_last=True))
    assert [len(yb) for _, yb in dropped] == [5, 5, 5, 5]


def test_iterate_batches_bad_inputs():
    with pytest.raises(ValueError, match="flat vector"):
        next(iterate_batches(torch.zeros(4, 3), torch.zeros(4), 2, shuffle=False, augment=True))
    with pytest.raises(ValueError, match="must match"):
        next(iterate_batches(torch.zeros(4, 3), torch.zeros(5), 2, shuffle=False))
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(torch.zeros(4, 3), torch.zeros(4), 0, shuffle=False))


def test_augment_identity_flip_and_crop():
    x = torch.randn(16, 3, 8, 6)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(x, g, padding=0, flip_prob=0.0), x)
    flipped = augment_batch(x, g, padding=0, flip_prob=1.0)
    assert torch.equal(flipped, x[:, :, :, torch.arange(5, -1, -1)])
    half = augment_batch(x, g, padding=0, flip_prob=0.5)
    is_orig = [torch.equal(half[i], x[i]) for i in range(16)]
    is_flip = [torch.equal(half[i], flipped[i]) for i in range(16)]
    assert all(a or b for a, b in zip(is_orig, is_flip, strict=True))
    assert any(is_orig) and any(is_flip)
    # crops: each output is an 8x6 window of the zero-padded image (possibly mirrored)
    out = augment_batch(x, g)
    assert out.shape == x.shape
    padded = torch.zeros(16, 3, 16, 14)
    padded[:, :, 4:12, 4:10] = x
    shifts = set()
    for i in range(16):
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            for cand in (padded[i, :, dy : dy + 8, dx : dx + 6],)
            if torch.equal(out[i], cand) or torch.equal(out[i], cand.flip(2))
        ]
        assert matches, f"sample {i} is not a crop of the padded image"
        shifts.add(matches[0])
    assert len(shifts) > 1
    # same generator state -> same augmentation
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(augment_batch(x, ga), augment_batch(x, gb))


def test_iterate_batches_augment_driven_by_generator():
    x = torch.randn(10, 1, 5, 5)
    y = torch.arange(10)
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(3)
        runs.append(list(iterate_batches(x, y, 4, shuffle=True, generator=g, augment=True)))
    for (xa, ya), (xb, yb) in zip(*runs, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape[1:] == (1, 5, 5)


# ----------------------------------------------------------------------------------- names


def test_dataset_names_and_unknown():
    assert DATASETS[0] == "fashion-mnist"
    assert set(DATASETS) >= {"mnist", "cifar10", "cifar100", "stl10", "tiny-imagenet", "synthetic"}
    with pytest.raises(ValueError, match="available"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="npz:"):
        load_dataset("npz:")
