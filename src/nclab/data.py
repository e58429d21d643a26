"""Datasets as in-memory tensors, a seeded batch iterator and tensor augmentation.

:func:`load_dataset` returns a :class:`DataBundle` whose inputs are float32 tensors normalised by
the *training-set* statistics (computed after the optional ``per_class`` subset):

    x_norm[:, c] = (x[:, c] - mean_c) / std_c,  mean_c = E_train[x_c],  std_c = sqrt(Var_train[x_c])

where ``x`` is the raw input scaled to [0, 1] for uint8 images (x = pixel / 255), the expectation
runs over all training samples and pixels of channel c (population variance, ddof = 0), and, for
flat vector data of shape (D,), every coordinate is its own "channel". A zero std is replaced by 1.

Datasets (:data:`DATASETS`, plus ``npz:PATH``): ``fashion-mnist`` (default), ``mnist`` (IDX files),
``cifar10``, ``cifar100`` (python pickle batches), ``stl10`` (binary files), ``tiny-imagenet``
(JPEG folder tree), ``synthetic`` (a seeded Gaussian mixture) and ``npz:PATH`` (your own arrays).
``docs/data.md`` describes the expected on-disk layouts and how to obtain each dataset.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import math
import os
import pickle
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nclab import conditions, names
from nclab.names import parse_synthetic, synthetic_name

__all__ = [
    "DATASETS",
    "DataBundle",
    "augment_batch",
    "class_balanced_indices",
    "iterate_batches",
    "load_dataset",
    "parse_synthetic",
    "read_idx",
    "read_npz",
    "synthetic_name",
]

#: Names :func:`load_dataset` accepts (plus ``npz:PATH`` and ``synthetic:k=..``); kept in the
#: torch-free :mod:`nclab.names` so that ``--help`` can list them.
DATASETS: tuple[str, ...] = names.DATASETS

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "stl-10": "stl10",
    "tiny_imagenet": "tiny-imagenet",
    "tinyimagenet": "tiny-imagenet",
}

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
_CHUNK = 4096  # samples per chunk when converting / normalising (bounds float64 temporaries)


@dataclass
class DataBundle:
    """A dataset held in memory.

    ``x_*`` are float32 tensors of shape (N, *input_shape), normalised by the training-set
    per-channel ``mean`` / ``std`` (so ``x * std_c + mean_c`` recovers the [0, 1]-scaled input);
    ``y_*`` are int64 tensors with values in [0, num_classes).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(default_factory=tuple)
    #: the training labels before ``label_noise`` flipped some (None: no label noise);
    #: ``y_train`` holds the labels trained on
    y_train_clean: Tensor | None = None
    files: tuple[str, ...] = ()  #: the files (or the folder) the data were read from

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.y_test.shape[0])

    def denormalize(self, x: Tensor) -> Tensor:
        """Undo the normalisation: ``x * std + mean`` per channel (the [0, 1]-scaled input)."""
        shape = (1, -1) + (1,) * (len(self.input_shape) - 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return x * std + mean


# ------------------------------------------------------------------------------ raw containers


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


# ------------------------------------------------------------------------------ public API


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    per_class: int | None = None,
    seed: int = 0,
    num_classes: int = 10,
    synthetic_dim: int = 32,
    synthetic_train_per_class: int = 100,
    synthetic_test_per_class: int = 100,
    imbalance: float | None = None,
    imbalance_profile: str = "exp",
    label_noise: float = 0.0,
    label_noise_mode: str = "symmetric",
) -> DataBundle:
    """Load dataset ``name`` (one of :data:`DATASETS` or ``npz:PATH``) into memory.

    Files are looked up in ``data_dir`` (and its usual sub-folders), then ``$NCLAB_DATA``,
    ``~/.cache/nclab/<name>`` and, for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist``.
    ``per_class=N`` keeps a class-balanced, ``seed``-deterministic subset of N training samples per
    class (the test set is untouched). ``synthetic:k=K,d=D,n=N,test=M`` sets the synthetic
    dataset's size (:func:`parse_synthetic`); ``num_classes``, ``synthetic_dim`` and
    ``synthetic_*_per_class`` are the values of the keys the spec leaves out (ignored for other
    datasets). ``imbalance``/``imbalance_profile`` keep a long-tailed training subset and
    ``label_noise``/``label_noise_mode`` flip training labels (:mod:`nclab.conditions`).
    """
    canonical = _canonical_name(name)
    data_path = None if data_dir is None else Path(data_dir).expanduser()
    if canonical == "npz":
        raw = _load_npz(Path(str(name).split(":", 1)[1]).expanduser())
    elif canonical == "synthetic":
        given = dict(k=num_classes, d=synthetic_dim, n=synthetic_train_per_class)
        spec = {**given, "test": synthetic_test_per_class, **parse_synthetic(name)}
        _check_synthetic_size(spec)
        raw = _make_synthetic(spec["k"], spec["d"], spec["n"], spec["test"], seed)
    else:
        raw = _LOADERS[canonical](data_path)
        if not raw.files and canonical in _FOLDERS:  # the run records where its data came from
            folder = _find_folder(canonical, data_path, *_FOLDERS[canonical])
            raw = dataclasses.replace(raw, files=(str(folder),))
    if canonical == "npz":
        raw = dataclasses.replace(raw, files=(str(Path(str(name).split(":", 1)[1]).expanduser()),))

    for x, y, split in ((raw.x_train, raw.y_train, "train"), (raw.x_test, raw.y_test, "test")):
        if len(x) != len(y):
            raise ValueError(
                f"{name}: the {split} split has {len(x)} inputs but {len(y)} labels; "
                "the files are incomplete or corrupt, re-download them"
            )
    idx = None
    if imbalance is not None:
        idx = conditions.imbalanced_indices(
            raw.y_train, imbalance, imbalance_profile, per_class=per_class, seed=seed,
            num_classes=raw.num_classes,
        )  # fmt: skip
    elif per_class is not None:
        idx = class_balanced_indices(raw.y_train, per_class, seed, raw.num_classes)
    x_train_raw = _take(raw.x_train, idx)
    y_train = raw.y_train if idx is None else raw.y_train[idx]
    y_clean = None
    if label_noise:
        y_clean = torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64))
        y_train = conditions.noisy_labels(
            y_train, label_noise, label_noise_mode, num_classes=raw.num_classes, seed=seed
        )
    x_test_raw = _take(raw.x_test, None)

    mean, std = _channel_stats(x_train_raw, raw.scale)
    x_train = _normalise(x_train_raw, raw.scale, mean, std)
    x_test = _normalise(x_test_raw, raw.scale, mean, std)
    return DataBundle(
        name=canonical if canonical != "npz" else str(name),
        num_classes=raw.num_classes,
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(np.ascontiguousarray(raw.y_test, dtype=np.int64)),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        class_names=raw.class_names,
        y_train_clean=y_clean,
        files=raw.files,
    )


def class_balanced_indices(
    labels: np.ndarray | Tensor,
    per_class: int,
    seed: int = 0,
    num_classes: int | None = None,
    *,
    option: str = "per_class",
    split: str = "training",
) -> np.ndarray:
    """Sorted indices of ``per_class`` samples of every class, drawn without replacement.

    Deterministic in ``seed`` (``numpy.random.default_rng(seed)``, one permutation per class in
    class order). Raises ValueError, naming ``option`` and the smallest class of the ``split``
    set, if a class has fewer than ``per_class`` samples.
    """
    y = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if int(per_class) != per_class or per_class < 1:
        raise ValueError(f"{option} must be a positive integer, got {per_class!r}")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    counts = np.bincount(y, minlength=k)[:k]
    if per_class > counts.min():
        c = int(np.argmin(counts))
        raise ValueError(
            f"{option}={per_class} but class {c} has only {counts[c]} {split} samples; "
            f"choose {option} <= {counts[c]} or leave it unset to use all samples"
        )
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(k)]
    return np.sort(np.concatenate(chosen))


def iterate_batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    augment: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x[idx], y[idx])`` mini-batches of ``batch_size``.

    With ``shuffle`` the order is ``torch.randperm(N, generator=generator)`` (same generator state,
    same order); otherwise the natural order. ``augment`` applies :func:`augment_batch` (random
    4-pixel-padded crop + horizontal flip, driven by ``generator``) to each image batch.
    ``drop_last`` drops a final batch smaller than ``batch_size``.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}; they must match")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if augment and x.dim() != 4:
        raise ValueError(
            f"augmentation needs image tensors (N, C, H, W), got shape {tuple(x.shape)}; "
            "turn augmentation off for flat vector data"
        )
    n = int(x.shape[0])
    if shuffle:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=gen_device).to(x.device)
    else:
        order = torch.arange(n, device=x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        if augment:
            xb = augment_batch(xb, generator)
        yield xb, yb


def augment_batch(
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    padding: int = 4,
    flip_prob: float = 0.5,
) -> Tensor:
    """Random crop after ``padding`` pixels of zero padding, then a random horizontal flip.

    For every image independently: offsets ``(dy, dx)`` uniform in ``{0, ..., 2·padding}`` select
    ``out[c, i, j] = pad(x)[c, i + dy, j + dx]`` (zeros outside the image; zero is the mean colour
    of the normalised data), and with probability ``flip_prob`` the result is reversed along the
    width axis. Vectorised over the batch; all randomness comes from ``generator``.
    ``padding=0, flip_prob=0`` is the identity; ``padding=0, flip_prob=1`` is ``x.flip(3)``.
    """
    if x.dim() != 4:
        raise ValueError(
            f"augmentation needs image tensors (N, C, H, W), got shape {tuple(x.shape)}; "
            "turn augmentation off for flat vector data"
        )
    if padding < 0 or not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"need padding >= 0 and flip_prob in [0, 1], got {padding}, {flip_prob}")
    b, c, h, w = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    out = x
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=gen_device)
        offsets = offsets.to(x.device)
        rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # (B, W)
        out = padded[
            torch.arange(b, device=x.device)[:, None, None, None],
            torch.arange(c, device=x.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    if flip_prob > 0:
        flip = torch.rand(b, generator=generator, device=gen_device).to(x.device) < flip_prob
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


# ------------------------------------------------------------------------------ normalisation


def _channel_stats(x: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of ``x / scale`` in float64 (two passes, chunked).

    Channel axis is 1 for (N, C, H, W) images; for (N, D) vectors each coordinate is a channel.
    """
    n = x.shape[0]
    axes = (0,) + tuple(range(2, x.ndim))
    count = n * int(np.prod(x.shape[2:], dtype=np.int64))
    total = np.zeros(x.shape[1], dtype=np.float64)
    for s in range(0, n, _CHUNK):
        total += (x[s : s + _CHUNK].astype(np.float64) / scale).sum(axis=axes)
    mean = total / count
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    sq = np.zeros(x.shape[1], dtype=np.float64)
    for s in range(0, n, _CHUNK):
        d = x[s : s + _CHUNK].astype(np.float64) / scale - mean.reshape(bshape)
        sq += (d * d).sum(axis=axes)
    std = np.sqrt(sq / count)
    std[std < 1e-12] = 1.0
    return mean, std


def _normalise(x: np.ndarray, scale: float, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    m, sd = mean.reshape(bshape), std.reshape(bshape)
    out = np.empty(x.shape, dtype=np.float32)
    for s in range(0, x.shape[0], _CHUNK):
        out[s : s + _CHUNK] = (x[s : s + _CHUNK].astype(np.float64) / scale - m) / sd
    return out


# ------------------------------------------------------------------------------ helpers


def _read_text(path: Path) -> str:
    """The text of a dataset's metadata file; ``ValueError`` naming it when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); it is corrupt, "
            "re-download the dataset"
        ) from None


def _canonical_name(name: str) -> str:
    s = str(name).strip()
    if s.lower().startswith("npz:"):
        if len(s) == 4:
            raise ValueError("npz dataset needs a path: use 'npz:/path/to/file.npz'")
        return "npz"
    if s.lower().startswith("synthetic:"):
        parse_synthetic(s)  # a bad spec fails here, with what to write instead
        return "synthetic"
    key = s.lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; available: {', '.join(DATASETS)}, or 'npz:PATH' "
            "for your own arrays"
        )
    return key


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


# ------------------------------------------------------------------------------ IDX (MNIST-like)

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


# ------------------------------------------------------------------------------ CIFAR


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


def _load_cifar10(data_dir: Path | None) -> _Raw:
    d = _find_folder("cifar10", data_dir, "cifar-10-batches-py", "data_batch_1")
    xs, ys = [], []
    for i in range(1, 6):
        p = d / f"data_batch_{i}"
        b = _unpickle(p)
        xs.append(_cifar_images(b, p))
        ys.append(_cifar_labels(b, b"labels", p))
    tb = _unpickle(d / "test_batch")
    x_test = _cifar_images(tb, d / "test_batch")
    y_test = _cifar_labels(tb, b"labels", d / "test_batch")
    meta = d / "batches.meta"
    names = (
        _decode_names(_key(_unpickle(meta), b"label_names", meta), meta)
        if meta.is_file()
        else tuple(str(i) for i in range(10))
    )
    y_train = np.concatenate(ys)
    _check_labels(y_train, 10, "cifar10 train labels")
    _check_labels(y_test, 10, "cifar10 test labels")
    return _Raw(np.concatenate(xs), y_train, x_test, y_test, 10, names)


def _load_cifar100(data_dir: Path | None) -> _Raw:
    d = _find_folder("cifar100", data_dir, "cifar-100-python", "train")
    tr, te = _unpickle(d / "train"), _unpickle(d / "test")
    y_train = _cifar_labels(tr, b"fine_labels", d / "train")
    y_test = _cifar_labels(te, b"fine_labels", d / "test")
    meta = d / "meta"
    names = (
        _decode_names(_key(_unpickle(meta), b"fine_label_names", meta), meta)
        if meta.is_file()
        else tuple(str(i) for i in range(100))
    )
    _check_labels(y_train, 100, "cifar100 train labels")
    _check_labels(y_test, 100, "cifar100 test labels")
    x_train = _cifar_images(tr, d / "train")
    x_test = _cifar_images(te, d / "test")
    return _Raw(x_train, y_train, x_test, y_test, 100, names)


# ------------------------------------------------------------------------------ STL-10


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


# ------------------------------------------------------------------------------ Tiny ImageNet


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


# ------------------------------------------------------------------------------ npz


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


# ------------------------------------------------------------------------------ synthetic


def _check_synthetic_size(spec: dict[str, int]) -> None:
    """Classes and samples of a synthetic spec, bounded before anything is drawn."""
    from nclab.limits import MAX_CLASSES, check_bytes, check_count

    check_count("synthetic k (classes)", int(spec["k"]), MAX_CLASSES, "NC statistics are K x K")
    samples = int(spec["k"]) * (int(spec["n"]) + int(spec["test"]))
    # float64 draws, then float32 tensors (raw, normalised): about 16 bytes per value
    check_bytes(
        f"synthetic data of {samples} samples x {spec['d']} dimensions",
        16.0 * samples * int(spec["d"]),
        "choose smaller k, n, test or d",
    )


def _make_synthetic(
    num_classes: int, dim: int, train_per_class: int, test_per_class: int, seed: int
) -> _Raw:
    """Gaussian mixture: class means ``μ_k = 4 · g_k / ||g_k||`` with ``g_k ~ N(0, I_D)`` and
    samples ``x = μ_y + ε``, ``ε ~ N(0, I_D)``. Means are ≈ 4√2 ≈ 5.7 apart (pairwise Bayes error
    ≈ Φ(-2.8) ≈ 0.3%; nearest-mean test accuracy ≈ 96-97% at K=10, D=32), so classes overlap
    a little but are easily fit by a small MLP."""
    for what, v, lo in (
        ("num_classes", num_classes, 2),
        ("synthetic_dim", dim, 1),
        ("synthetic_train_per_class", train_per_class, 1),
        ("synthetic_test_per_class", test_per_class, 1),
    ):
        if int(v) != v or v < lo:
            raise ValueError(f"{what} must be an integer >= {lo}, got {v!r}")
    k, d = int(num_classes), int(dim)
    ss = np.random.SeedSequence(int(seed))
    rng_means, rng_train, rng_test = (np.random.default_rng(s) for s in ss.spawn(3))
    g = rng_means.standard_normal((k, d))
    means = 4.0 * g / np.linalg.norm(g, axis=1, keepdims=True)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(k), n)
        x = means[y] + rng.standard_normal((k * n, d))
        return x, y.astype(np.int64)

    x_train, y_train = sample(rng_train, int(train_per_class))
    x_test, y_test = sample(rng_test, int(test_per_class))
    names = tuple(f"class_{i}" for i in range(k))
    return _Raw(x_train, y_train, x_test, y_test, k, names, scale=1.0)


# ------------------------------------------------------------------------------ registry

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
