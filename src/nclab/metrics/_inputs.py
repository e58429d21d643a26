"""Input conversion and validation shared by the NC formulas and the accumulator.

Numpy-side helpers (``as_float64``, ``as_labels``, ...) serve the pure formulas, which run on the
host in float64. Torch-side helpers (``as_tensor``, ``input_eps``) serve the device-resident
accumulator and never copy data to the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_numpy(x: Any, name: str) -> np.ndarray:
    """Torch tensor (any device/dtype) or array-like -> numpy array, without gradient."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        t = x.detach().cpu()
        if t.is_floating_point() and str(t.dtype) not in ("torch.float32", "torch.float64"):
            t = t.double()  # float16 / bfloat16 have no (or no exact) numpy equivalent
        return t.numpy()
    try:
        return np.asarray(x)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} could not be converted to an array: {err}") from err


def raise_nonfinite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if not bad.any():
        raise ValueError(f"{name} are too large: their sums overflow float64; rescale the {name}")
    where = f" in {int(bad.any(axis=1).sum())} of {arr.shape[0]} rows" if arr.ndim == 2 else ""
    raise ValueError(
        f"{name} contains {int(bad.sum())} non-finite value(s) (NaN/Inf){where}; "
        "drop or fix those samples (e.g. lower the learning rate if training diverged)"
    )


def as_real(x: Any, name: str, ndim: int) -> np.ndarray:
    """Array of real numbers with ``ndim`` dimensions, dtype kept (no finiteness check)."""
    arr = to_numpy(x, name)
    if arr.dtype.kind not in "fiu":
        raise ValueError(
            f"{name} must hold real numbers, got dtype {arr.dtype}; convert it to float32/float64"
        )
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {tuple(arr.shape)}")
    return arr


def as_float64(x: Any, name: str, ndim: int) -> np.ndarray:
    """Finite float64 array with ``ndim`` dimensions; ``ValueError`` otherwise."""
    arr = np.asarray(as_real(x, name, ndim), dtype=np.float64)
    if not np.isfinite(arr).all():
        raise_nonfinite(arr, name)
    return arr


def check_weight(weight: Any, num_classes: int, dim: int) -> np.ndarray:
    w = as_float64(weight, "weight", 2)
    if w.shape != (num_classes, dim):
        raise ValueError(
            f"weight must have shape (K, d) = ({num_classes}, {dim}) as stored by "
            f"torch.nn.Linear, got {tuple(w.shape)}; pass classifier.weight, not its transpose"
        )
    return w


def check_bias(bias: Any, num_classes: int) -> np.ndarray:
    b = as_float64(bias, "bias", 1)
    if b.shape != (num_classes,):
        raise ValueError(f"bias must have shape (K,) = ({num_classes},), got {tuple(b.shape)}")
    return b


def check_num_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


# ------------------------------------------------------------------------------ torch side


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """Torch tensor (kept on its device, without gradient) or array-like -> tensor.

    Numpy arrays are wrapped without a copy where possible (they live on the host already).
    Only real dtypes are accepted; the check reads metadata only, so no device sync.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiub":
            raise ValueError(
                f"{name} must hold real numbers, got dtype {arr.dtype}; convert it to "
                "float32/float64"
            )
        arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr) if arr.flags.writeable else torch.tensor(arr)
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t


def input_eps(dtype: torch.dtype) -> float:
    """Relative precision of values stored in ``dtype`` (float64's for integers)."""
    if dtype.is_floating_point:
        return float(torch.finfo(dtype).eps)
    return float(np.finfo(np.float64).eps)
