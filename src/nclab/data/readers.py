"""File readers, one per on-disk format: IDX (MNIST, Fashion-MNIST), CIFAR-10/100 pickle batches
(a restricted unpickler), STL-10 binaries, Tiny ImageNet JPEG folders and ``npz:PATH`` arrays
(``allow_pickle=False``), each bounded before it allocates; :data:`_LOADERS` maps the registry's
names to them."""

from __future__ import annotations

import codecs
import gzip
import math
import os
import pickle
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


_MAX_LABEL = 2**31 - 1  # labels beyond this cannot be class indices of an in-memory dataset


class _LazyImages:
    """Images decoded on demand (for datasets stored as one file per image)."""

    def __init__(self, paths: Sequence[Path], loader: Callable[[Path], np.ndarray]) -> None:
        self.paths = list(paths)
        self.loader = loader

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, idx: np.ndarray) -> np.ndarray:
        if len(idx) == 0:
            raise ValueError("no images selected")
        return np.stack([self.loader(self.paths[i]) for i in idx])


_ArrayLike = np.ndarray | _LazyImages


@dataclass
class _Raw:
    """Raw splits before subsetting / normalisation. ``scale`` divides the raw values."""

    x_train: _ArrayLike
    y_train: np.ndarray
    x_test: _ArrayLike
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    scale: float = 255.0
    files: tuple[str, ...] = ()  # the files (or folder) read


def _take(x: _ArrayLike, idx: np.ndarray | None) -> np.ndarray:
    if isinstance(x, _LazyImages):
        return x.take(np.arange(len(x)) if idx is None else idx)
    return x if idx is None else x[idx]


def _read_text(path: Path) -> str:
    """The text of a dataset's metadata file; ``ValueError`` naming it when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); it is corrupt, "
            "re-download the dataset"
        ) from None


def _search_roots(data_dir: Path | None, name: str) -> list[Path]:
    """An explicit data_dir is the only place looked at; without one, $NCLAB_DATA, then
    ~/.cache/nclab/<name> (existence not checked)."""
    if data_dir is not None:
        return [data_dir]
    roots: list[Path] = []
    env = os.environ.get("NCLAB_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(Path.home() / ".cache" / "nclab" / name)
    return roots


def _not_found(
    name: str, searched: Sequence[Path], layout: str, how: str, data_dir: Path | None = None
) -> FileNotFoundError:
    places = ", ".join(str(p) for p in searched)
    if data_dir is not None:
        return FileNotFoundError(
            f"--data-dir {data_dir} does not hold the {name} files (looked in {places}; an "
            f"explicit --data-dir is the only place looked at); expected layout: {layout}; how "
            f"to get them: {how}"
        )
    return FileNotFoundError(
        f"{name} files not found (looked in {places}); expected layout: {layout}; how to get "
        f"them: {how}; then pass --data-dir DIR (or set $NCLAB_DATA)"
    )


_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic ``00 00 <dtype> <ndim>``, then ``ndim``
    big-endian uint32 sizes, then the data in big-endian C order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = _read_idx_bounded(f, path)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(
            f"{path} is not a complete gzip file ({err}); it is truncated or corrupt, "
            "re-download it"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an IDX file (bad magic number {data[:4].hex()}); "
            "re-download the dataset files"
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header says shape {dims} ({expected} bytes) but the file holds "
            f"{len(data) - header} data bytes; the file is truncated or corrupt, re-download it"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _read_idx_bounded(f: Any, path: Path) -> bytes:
    """The bytes of an IDX file, reading (decompressing) no more than its header announces
    plus one byte, after checking that size against the memory available: a gzip bomb or a
    header claiming terabytes is refused before the allocation."""
    from nclab.limits import check_bytes

    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        return head  # read_idx names the bad magic number
    dims_raw = f.read(4 * head[3])
    if len(dims_raw) < 4 * head[3]:
        return head + dims_raw
    dims = [int(d) for d in np.frombuffer(dims_raw, dtype=">u4")]
    expected = math.prod(dims) * _IDX_DTYPES[head[2]].itemsize
    check_bytes(
        f"{path} (shape {tuple(dims)} in its header)",
        2.0 * expected,
        "the file is truncated or corrupt (or not this dataset): re-download it",
    )
    return head + dims_raw + f.read(expected + 1)


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


_IDX_SUBDIRS = {
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
    "mnist": ("mnist", "MNIST/raw", "MNIST"),
}


_IDX_SYSTEM_DIRS = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "mnist": (),
}


_IDX_HOWTO = {
    "fashion-mnist": (
        "on Debian/Ubuntu `apt-get install dataset-fashion-mnist` (installs them in "
        "/usr/share/datasets/fashion-mnist), or download the four .gz files from "
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion)"
    ),
    "mnist": (
        "download the four .gz files from https://ossci-datasets.s3.amazonaws.com/mnist/ "
        "(mirror of http://yann.lecun.com/exdb/mnist/)"
    ),
}


def _find_idx_dir(name: str, data_dir: Path | None) -> tuple[dict[str, Path], list[Path]]:
    candidates: list[Path] = []
    for root in _search_roots(data_dir, name):
        candidates.append(root)
        candidates.extend(root / sub for sub in _IDX_SUBDIRS[name])
    if data_dir is None:
        candidates.extend(_IDX_SYSTEM_DIRS[name])
    for d in candidates:
        found: dict[str, Path] = {}
        for base in _IDX_FILES:
            for fname in (base, base + ".gz"):
                if (d / fname).is_file():
                    found[base] = d / fname
                    break
        if len(found) == len(_IDX_FILES):
            return found, candidates
    return {}, candidates


def _load_idx_dataset(name: str, data_dir: Path | None) -> _Raw:
    files, searched = _find_idx_dir(name, data_dir)
    if not files:
        raise _not_found(
            name,
            searched,
            "the four IDX files " + ", ".join(f"{b}[.gz]" for b in _IDX_FILES) + " in one folder",
            _IDX_HOWTO[name],
            data_dir,
        )
    x_train = read_idx(files[_IDX_FILES[0]])
    y_train = read_idx(files[_IDX_FILES[1]]).astype(np.int64)
    x_test = read_idx(files[_IDX_FILES[2]])
    y_test = read_idx(files[_IDX_FILES[3]]).astype(np.int64)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{name} {split} files disagree: images {x.shape}, labels {y.shape}; "
                "expected (N, H, W) images and N labels"
            )
        _check_labels(y, 10, f"{name} {split} labels")
    names = FASHION_MNIST_CLASSES if name == "fashion-mnist" else tuple(str(i) for i in range(10))
    read = tuple(str(files[b]) for b in _IDX_FILES)
    return _Raw(x_train[:, None], y_train, x_test[:, None], y_test, 10, names, files=read)


def _check_labels(y: np.ndarray, k: int, what: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(
            f"{what} must lie in [0, {k}), found [{y.min()}, {y.max()}]; the files are corrupt"
        )


def _find_folder(name: str, data_dir: Path | None, folder: str, marker: str) -> Path:
    searched: list[Path] = []
    for root in _search_roots(data_dir, name):
        for d in (root / folder, root):
            searched.append(d)
            if (d / marker).is_file():
                return d
    raise _not_found(
        name,
        searched,
        _LAYOUTS[name],
        _HOWTO[name],
        data_dir,
    )


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes (latin-1 only)."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"encoding {encoding!r} is not allowed")
    return text.encode("latin1")


def _numpy_reconstruct() -> Callable[..., np.ndarray]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python batches that admits only what the official files hold:
    dicts, lists, bytes/str, ints and numpy arrays (numpy's array reconstructor, ``ndarray``,
    ``dtype``; ``_codecs.encode`` to latin-1 for bytes written by Python 3). Any other global
    (``os.system``, ``builtins.eval``, ...) raises ``UnpicklingError``, so a planted file cannot
    run code."""

    def find_class(self, module: str, name: str) -> object:
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: np.dtype,
            ("_codecs", "encode"): lambda: _latin1_encode,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"it references {module}.{name}, which no CIFAR batch holds"
            )
        return allowed[(module, name)]()


def _unpickle(path: Path) -> dict[bytes, object]:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; expected the complete {path.parent.name} folder")
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - a corrupt pickle raises almost any type
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(
            f"{path} is corrupt or unsafe, not an official CIFAR python batch ({reason}); "
            "nothing in it was run. Re-download the dataset"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a CIFAR batch dict; re-download the dataset")
    return obj


def _key(batch: dict[bytes, object], key: bytes, path: Path) -> object:
    if key not in batch:
        raise ValueError(
            f"{path} lacks the key {key!r} (found {sorted(batch)}); it is not an official "
            "CIFAR python batch, re-download the dataset"
        )
    return batch[key]


def _cifar_images(batch: dict[bytes, object], path: Path) -> np.ndarray:
    data = _key(batch, b"data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise ValueError(f"{path}: b'data' is not a uint8 array; re-download the dataset")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' has shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32)


def _cifar_labels(batch: dict[bytes, object], key: bytes, path: Path) -> np.ndarray:
    values = _key(batch, key, path)
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(f"{path}: {key!r} is not a list of integers; re-download the dataset")
    return np.asarray(values, dtype=np.int64)


def _decode_names(values: object, path: Path) -> tuple[str, ...]:
    if not isinstance(values, list):
        raise ValueError(f"{path}: the class names are not a list; re-download the dataset")
    return tuple(v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values)


def _cifar_split(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one CIFAR python batch file."""
    batch = _unpickle(path)
    return _cifar_images(batch, path), _cifar_labels(batch, label_key, path)


def _cifar_names(meta: Path, key: bytes, num_classes: int) -> tuple[str, ...]:
    """Class names from a CIFAR meta file; the class indices where the file is missing."""
    if not meta.is_file():
        return tuple(str(i) for i in range(num_classes))
    return _decode_names(_key(_unpickle(meta), key, meta), meta)


def _load_cifar10(data_dir: Path | None) -> _Raw:
    d = _find_folder("cifar10", data_dir, "cifar-10-batches-py", "data_batch_1")
    train = [_cifar_split(d / f"data_batch_{i}", b"labels") for i in range(1, 6)]
    x_test, y_test = _cifar_split(d / "test_batch", b"labels")
    names = _cifar_names(d / "batches.meta", b"label_names", 10)
    y_train = np.concatenate([y for _, y in train])
    _check_labels(y_train, 10, "cifar10 train labels")
    _check_labels(y_test, 10, "cifar10 test labels")
    return _Raw(np.concatenate([x for x, _ in train]), y_train, x_test, y_test, 10, names)


def _load_cifar100(data_dir: Path | None) -> _Raw:
    d = _find_folder("cifar100", data_dir, "cifar-100-python", "train")
    x_train, y_train = _cifar_split(d / "train", b"fine_labels")
    x_test, y_test = _cifar_split(d / "test", b"fine_labels")
    names = _cifar_names(d / "meta", b"fine_label_names", 100)
    _check_labels(y_train, 100, "cifar100 train labels")
    _check_labels(y_test, 100, "cifar100 test labels")
    return _Raw(x_train, y_train, x_test, y_test, 100, names)


def _load_stl10(data_dir: Path | None) -> _Raw:
    d = _find_folder("stl10", data_dir, "stl10_binary", "train_X.bin")

    def images(fname: str) -> np.ndarray:
        p = d / fname
        if not p.is_file():
            raise FileNotFoundError(f"missing {p}; expected the complete stl10_binary folder")
        raw = np.fromfile(p, dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise ValueError(f"{p} size {raw.size} is not a multiple of 3*96*96; re-download it")
        # each image is stored channel by channel, column-major within a channel
        return raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)

    def labels(fname: str, n: int) -> np.ndarray:
        p = d / fname
        if not p.is_file():
            raise FileNotFoundError(f"missing {p}; expected the complete stl10_binary folder")
        y = np.fromfile(p, dtype=np.uint8).astype(np.int64)
        if y.size != n:
            raise ValueError(f"{p} holds {y.size} labels for {n} images; re-download it")
        if y.size and (y.min() < 1 or y.max() > 10):
            raise ValueError(f"{p}: STL-10 labels must lie in 1..10, found {y.min()}..{y.max()}")
        return y - 1

    x_train, x_test = images("train_X.bin"), images("test_X.bin")
    y_train, y_test = labels("train_y.bin", len(x_train)), labels("test_y.bin", len(x_test))
    names_file = d / "class_names.txt"
    names = (
        tuple(line.strip() for line in _read_text(names_file).splitlines() if line.strip())
        if names_file.is_file()
        else tuple(str(i) for i in range(10))
    )
    return _Raw(
        np.ascontiguousarray(x_train), y_train, np.ascontiguousarray(x_test), y_test, 10, names
    )


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL raises UnidentifiedImageError (an OSError) for unknown bytes, OSError for a
        # truncated file and SyntaxError for some broken headers.
        raise ValueError(
            f"{path} is not a readable image ({err}); it is truncated or corrupt, "
            "re-download the dataset"
        ) from None
    if arr.shape != (64, 64, 3):
        raise ValueError(f"{path} is {arr.shape[1]}x{arr.shape[0]}, Tiny ImageNet images are 64x64")
    return arr.transpose(2, 0, 1)


def _load_tiny_imagenet(data_dir: Path | None) -> _Raw:
    d = _find_folder("tiny-imagenet", data_dir, "tiny-imagenet-200", "wnids.txt")
    wnids = sorted({w.strip() for w in _read_text(d / "wnids.txt").split() if w.strip()})
    index = {w: i for i, w in enumerate(wnids)}
    train_paths: list[Path] = []
    train_labels: list[int] = []
    for w in wnids:
        img_dir = d / "train" / w / "images"
        files = sorted(img_dir.glob("*.JPEG")) if img_dir.is_dir() else []
        if not files:
            raise FileNotFoundError(
                f"no training images in {img_dir}; expected tiny-imagenet-200/train/<wnid>/"
                "images/*.JPEG for every wnid in wnids.txt"
            )
        train_paths += files
        train_labels += [index[w]] * len(files)
    ann = d / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise FileNotFoundError(
            f"missing {ann}; expected tiny-imagenet-200/val/val_annotations.txt "
            "(tab-separated: file, wnid, bbox) and val/images/*.JPEG"
        )
    test_paths: list[Path] = []
    test_labels: list[int] = []
    for line in _read_text(ann).splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        fname, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in index:
            raise ValueError(f"{ann}: wnid {wnid!r} of {fname} is not listed in wnids.txt")
        p = d / "val" / "images" / fname
        if not p.is_file():
            raise FileNotFoundError(f"missing validation image {p} listed in {ann}")
        test_paths.append(p)
        test_labels.append(index[wnid])
    words = d / "words.txt"
    names = tuple(wnids)
    if words.is_file():
        lookup = {}
        for line in _read_text(words).splitlines():
            parts = line.split("\t", 1)
            if len(parts) == 2:
                lookup[parts[0].strip()] = parts[1].split(",")[0].strip()
        names = tuple(lookup.get(w, w) for w in wnids)
    return _Raw(
        _LazyImages(train_paths, _read_rgb),
        np.asarray(train_labels, dtype=np.int64),
        _LazyImages(test_paths, _read_rgb),
        np.asarray(test_labels, dtype=np.int64),
        len(wnids),
        names,
    )


def read_npz(path: str | os.PathLike[str], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``names`` that the ``.npz`` file ``path`` holds (absent ones are left out).

    Safe on untrusted files: ``np.load(allow_pickle=False)`` (object arrays are refused, never
    unpickled), and each array's header is checked against the bytes stored for it before
    anything is allocated, so a forged shape cannot claim more memory than the file holds.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file, one
    line) for anything that is not a complete, numeric ``.npz``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file; give the path of an .npz file")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not an .npz file (not a zip archive: wrong format, truncated or corrupt); "
            "write it with numpy.savez"
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            out = {}
            for name in names:
                if name in f.files:
                    _check_npy_size(f.zip, name)
                    out[name] = f[name]
            return out
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        if "pickle" in reason:
            reason = "it holds Python objects, which nclab never unpickles; store numeric arrays"
        raise ValueError(f"{path} is not a readable .npz file ({reason})") from None


def _check_npy_size(archive: zipfile.ZipFile, name: str) -> None:
    """Refuse an array whose header claims more data than its archive member holds."""
    info = archive.getinfo(f"{name}.npy")
    with archive.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if header is None:
            raise ValueError(f"array {name!r} has an unknown .npy format version {version}")
        shape, _, dtype = header(fp)
        needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
        available = info.file_size - fp.tell()
    if needed > available:
        raise ValueError(
            f"array {name!r}: the header says shape {shape} ({needed} bytes) but the file holds "
            f"{available} bytes; it is truncated or corrupt"
        )


def _load_npz(path: Path) -> _Raw:
    if not path.exists():
        raise FileNotFoundError(
            f"npz file {path} does not exist; give 'npz:PATH' with a file holding "
            "x_train, y_train, x_test, y_test"
        )
    arrays = read_npz(path, ("x_train", "y_train", "x_test", "y_test", "class_names"))
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ValueError(
            f"{path} lacks arrays {missing}; it must hold x_train, y_train, x_test, y_test "
            f"(found {sorted(arrays)})"
        )
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    names_arr = arrays.get("class_names")

    def fix_x(x: np.ndarray, split: str) -> np.ndarray:
        if x.dtype.kind not in "uifb":
            raise ValueError(f"{path}: x_{split} has dtype {x.dtype}; use a numeric array")
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim not in (2, 4) or 0 in x.shape[1:]:
            raise ValueError(
                f"{path}: x_{split} has shape {x.shape}; use (N, C, H, W), (N, H, W) or (N, D) "
                "with non-zero sizes"
            )
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError(f"{path}: x_{split} contains NaN or infinite values; clean the data")
        return x

    def fix_y(y: np.ndarray, split: str) -> np.ndarray:
        if y.ndim != 1:
            raise ValueError(f"{path}: y_{split} has shape {y.shape}; labels must be 1-D")
        if y.dtype.kind == "f":
            if not np.isfinite(y).all() or (y != np.round(y)).any():
                raise ValueError(
                    f"{path}: y_{split} holds non-integer values; labels must be class indices"
                )
        elif y.dtype.kind not in "ui":
            raise ValueError(f"{path}: y_{split} has dtype {y.dtype}; use integer class indices")
        if y.size and (y.max() > _MAX_LABEL or y.min() < -_MAX_LABEL):
            raise ValueError(
                f"{path}: y_{split} holds the label {y.max() if y.max() > 0 else y.min()}, "
                "outside any sensible class index; labels must be 0..K-1"
            )
        return y.astype(np.int64)

    x_train, x_test = fix_x(x_train, "train"), fix_x(x_test, "test")
    y_train, y_test = fix_y(y_train, "train"), fix_y(y_test, "test")
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{path}: x_{split} has {x.shape[0]} samples but y_{split} has {y.shape[0]}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{path}: the {split} split is empty")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{path}: train inputs have shape {x_train.shape[1:]} but test inputs "
            f"{x_test.shape[1:]}; they must match"
        )
    if y_train.min() < 0:
        raise ValueError(f"{path}: negative label {y_train.min()} in y_train; use 0..K-1")
    present = np.unique(y_train)  # sized by the data, whatever the label values
    k = int(present[-1]) + 1
    if k > len(present):
        absent = np.setdiff1d(np.arange(len(present) + 1), present)[:5].tolist()
        raise ValueError(
            f"{path}: y_train's largest label is {k - 1} but only {len(present)} distinct "
            f"labels occur (no training samples for class {absent[0]}"
            f"{', ...' if k - len(present) > 1 else ''}); labels must be 0..K-1 with every "
            "class present in y_train"
        )
    if y_test.min() < 0 or y_test.max() >= k:
        raise ValueError(
            f"{path}: y_test values must lie in [0, {k}) (the classes of y_train), "
            f"found [{y_test.min()}, {y_test.max()}]"
        )
    if names_arr is not None:
        names = tuple(str(s) for s in names_arr.tolist())
        if len(names) != k:
            raise ValueError(f"{path}: class_names has {len(names)} entries for {k} classes")
    else:
        names = tuple(str(i) for i in range(k))
    scale = 255.0 if x_train.dtype == np.uint8 else 1.0
    if x_train.dtype != x_test.dtype and np.uint8 in (x_train.dtype, x_test.dtype):
        raise ValueError(
            f"{path}: x_train is {x_train.dtype} but x_test {x_test.dtype}; match them"
        )
    return _Raw(x_train, y_train, x_test, y_test, k, names, scale=scale)


_LOADERS: dict[str, Callable[[Path | None], _Raw]] = {
    "fashion-mnist": lambda d: _load_idx_dataset("fashion-mnist", d),
    "mnist": lambda d: _load_idx_dataset("mnist", d),
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "stl10": _load_stl10,
    "tiny-imagenet": _load_tiny_imagenet,
    "digits": lambda d: _load_digits(d),
}


def _load_digits(data_dir: Path | None) -> _Raw:
    """scikit-learn's 8x8 digits (:mod:`nclab.digits`): ``DIR/digits.csv.gz`` with an explicit
    ``data_dir``, else the file inside the installed scikit-learn."""
    from nclab import digits

    if data_dir is not None:
        path = data_dir / "digits.csv.gz"
        if not path.is_file():
            how = f"copy sklearn/datasets/data/digits.csv.gz there, or {digits.INSTALL_HINT}"
            raise _not_found("digits", [data_dir], "digits.csv.gz", how, data_dir)
    else:
        path = digits.find_digits_file()
    x_train, y_train, x_test, y_test = digits.load_digits_arrays(path)
    names = tuple(str(k) for k in range(10))
    return _Raw(x_train, y_train, x_test, y_test, 10, names, scale=digits.SCALE, files=(str(path),))


_FOLDERS = {  # dataset -> (its folder, a file that marks it)
    "cifar10": ("cifar-10-batches-py", "data_batch_1"),
    "cifar100": ("cifar-100-python", "train"),
    "stl10": ("stl10_binary", "train_X.bin"),
    "tiny-imagenet": ("tiny-imagenet-200", "wnids.txt"),
}


_LAYOUTS = {
    "cifar10": "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (python pickles)",
    "cifar100": "cifar-100-python/{train, test, meta} (python pickles)",
    "stl10": "stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt}",
    "tiny-imagenet": (
        "tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
        "val/val_annotations.txt}"
    ),
}


_HOWTO = {
    "cifar10": "download and extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "download and extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "stl10": "download and extract https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    "tiny-imagenet": "download and unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip",
}
