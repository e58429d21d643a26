"""The ``digits`` dataset: the 1,797 8x8 handwritten digits (10 classes) that scikit-learn ships
inside its wheel (``sklearn/datasets/data/digits.csv.gz``, the UCI "Optical Recognition of
Handwritten Digits" test set), read straight from the installed package without importing
scikit-learn.

File format: gzip-compressed CSV, one image per line, 64 pixel values (row-major 8x8, integers
0..16) followed by the label (0..9); no header.

Train/test split: fixed and class-stratified, the same on every machine and for every run's
seed: within each class, the images (in file order) are permuted by
``numpy.random.default_rng(SPLIT_SEED)`` and the first ``round(TEST_FRACTION · n_class)`` go to
the test set (360 test and 1,437 training images for the shipped file). Pixels are scaled by
1/16 (the values' range) before the usual normalisation by training statistics.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["SPLIT_SEED", "TEST_FRACTION", "find_digits_file", "read_digits_csv", "split_digits"]

SPLIT_SEED = 20240203
TEST_FRACTION = 0.2
#: Pixel values run 0..16.
SCALE = 16.0
_SIDE = 8
_MAX_BYTES = 16 * 2**20  # the shipped file decompresses to ~0.3 MB
INSTALL_HINT = "pip install scikit-learn (or pip install 'nclab[digits]')"


def find_digits_file() -> Path:
    """Path of ``digits.csv.gz`` inside the installed scikit-learn (found with
    :func:`importlib.util.find_spec`; scikit-learn itself is not imported).
    FileNotFoundError naming the fix when scikit-learn is not installed."""
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in locations:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    if not locations:
        raise FileNotFoundError(
            f"the digits dataset is read from scikit-learn's package files, and scikit-learn is "
            f"not installed: {INSTALL_HINT}"
        )
    raise FileNotFoundError(
        f"scikit-learn is installed but holds no datasets/data/digits.csv.gz (looked in "
        f"{', '.join(locations)}); reinstall it: {INSTALL_HINT}"
    )


def read_digits_csv(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 8, 8) uint8 and labels (N,) int64 from a digits CSV (gzipped or not).
    ValueError naming the file and the line for anything but 64 integers in 0..16 and a label
    in 0..9 per line."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path} cannot be read as a digits CSV: {err}") from None
    if len(raw) > _MAX_BYTES:
        raise ValueError(f"{path} is larger than {_MAX_BYTES} bytes: not the digits CSV")
    lines = [line for line in raw.decode("ascii", errors="replace").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no images")
    values = np.empty((len(lines), _SIDE * _SIDE + 1), dtype=np.float64)
    for i, line in enumerate(lines):
        fields = line.split(",")
        if len(fields) != _SIDE * _SIDE + 1:
            raise ValueError(
                f"{path} line {i + 1}: {len(fields)} values, expected {_SIDE * _SIDE} pixels and "
                "a label; the file is corrupt, reinstall scikit-learn"
            )
        try:
            values[i] = [float(v) for v in fields]
        except ValueError:
            raise ValueError(f"{path} line {i + 1}: a value is not a number") from None
    pixels, labels = values[:, :-1], values[:, -1]
    bad_pixel = ~np.isfinite(pixels) | (pixels < 0) | (pixels > SCALE) | (pixels % 1 != 0)
    bad_label = ~np.isfinite(labels) | (labels < 0) | (labels > 9) | (labels % 1 != 0)
    for name, bad in (("pixel", bad_pixel.any(axis=1)), ("label", bad_label)):
        if bad.any():
            line = int(np.flatnonzero(bad)[0]) + 1
            raise ValueError(
                f"{path} line {line}: a {name} outside its range (pixels 0..16, labels 0..9)"
            )
    x = pixels.astype(np.uint8).reshape(-1, 1, _SIDE, _SIDE)
    return x, labels.astype(np.int64)


def split_digits(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training and test indices of the fixed stratified split (module docstring), each sorted."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for k in range(10):
        idx = np.flatnonzero(labels == k)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(TEST_FRACTION * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits_arrays(
    path: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x_train, y_train, x_test, y_test`` (uint8 images, int64 labels) of the fixed split,
    from ``path`` or the installed scikit-learn's file."""
    x, y = read_digits_csv(find_digits_file() if path is None else path)
    train, test = split_digits(y)
    return x[train], y[train], x[test], y[test]
