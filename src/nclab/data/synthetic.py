"""The ``synthetic`` dataset: a seeded Gaussian mixture, bounded before it is drawn."""

from __future__ import annotations

import numpy as np

from nclab.data.readers import _Raw


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
