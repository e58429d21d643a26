"""Which samples, in which order: class-balanced subsets and a seeded mini-batch iterator."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from nclab.data.augment import augment_batch


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
