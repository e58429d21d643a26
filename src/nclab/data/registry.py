"""The dataset registry: names, :class:`DataBundle` and :func:`load_dataset` (read, subset,
normalise by training-set statistics)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nclab import conditions, names
from nclab.data.readers import _FOLDERS, _LOADERS, _find_folder, _load_npz, _take
from nclab.data.sampling import class_balanced_indices
from nclab.data.synthetic import _check_synthetic_size, _make_synthetic
from nclab.names import parse_synthetic

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
    files: tuple[str, ...] = ()  #: the files (or the folder) the data were read from
    #: the training labels before ``label_noise`` flipped some (None: no label noise);
    #: ``y_train`` holds the labels trained on
    y_train_clean: Tensor | None = None

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
        files=raw.files,
        y_train_clean=y_clean,
    )


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
