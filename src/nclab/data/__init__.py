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

from nclab.data.augment import augment_batch
from nclab.data.readers import read_idx, read_npz
from nclab.data.registry import DATASETS, DataBundle, load_dataset
from nclab.data.sampling import class_balanced_indices, iterate_batches
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
