"""Classification losses by name: cross-entropy, label smoothing, focal loss and MSE.

Every loss is an ``nn.Module`` called as ``loss(logits, targets)`` with ``logits`` of shape
(B, K) and integer ``targets`` of shape (B,) in [0, K); it returns the mean over the batch.

With ``p = softmax(z)`` and ``e_y`` the one-hot vector of the label:

- ``ce``:    ``-log p_y``
- ``ls``:    cross-entropy against the smoothed target ``q = (1 - δ) e_y + δ/K · 1``:
  ``-Σ_k q_k log p_k = (1 - δ)(-log p_y) + δ · mean_k(-log p_k)``
  (identical to ``F.cross_entropy(z, y, label_smoothing=δ)``; δ = 0 is plain CE)
- ``focal``: ``-(1 - p_y)^γ log p_y`` (Lin et al. 2017, γ = 2 by default; γ = 0 is CE)
- ``mse``:   ``||z - e_y||²`` summed over the K classes (on the raw logits, no softmax),
  averaged over samples.

Use :func:`get_loss` to build one by name; :data:`LOSSES` lists the names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nclab.names import check_loss

__all__ = [
    "LOSSES",
    "ClassificationLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LabelSmoothingLoss",
    "MSELoss",
    "check_targets",
    "get_loss",
]


def check_targets(logits: Tensor, targets: Tensor, num_classes: int) -> None:
    """Validate a (logits, targets) pair; raise ValueError saying what is wrong."""
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"logits must have shape (batch, {num_classes}), got {tuple(logits.shape)}; "
            "pass the model output for the whole batch"
        )
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must have shape ({logits.shape[0]},) to match the logits, "
            f"got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(
            f"targets must be integer class indices (got dtype {targets.dtype}); "
            "convert with targets.long()"
        )
    if targets.numel() > 0:
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"targets must lie in [0, {num_classes}), got values in [{lo}, {hi}]; "
                "check num_classes and the labels"
            )


class ClassificationLoss(nn.Module):
    """Base: stores K; ``forward`` validates its inputs, then calls :meth:`compute` (the loss
    itself, for inputs already known to be valid)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_targets(logits, targets, self.num_classes)
        return self.compute(logits, targets.long())

    def compute(self, logits: Tensor, targets: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class CrossEntropyLoss(ClassificationLoss):
    """Mean of ``-log softmax(z)_y`` (``F.cross_entropy``)."""

    def compute(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets)


class LabelSmoothingLoss(ClassificationLoss):
    """Cross-entropy against ``(1 - δ) e_y + δ/K · 1``:
    ``L = (1 - δ)(-log p_y) + (δ/K) Σ_k (-log p_k)``, averaged over the batch.

    This is ``F.cross_entropy(z, y, label_smoothing=δ)`` (tests/test_losses.py checks value and
    gradient against the formula above in float64); the class adds the δ check and the name.
    """

    def __init__(self, num_classes: int, smoothing: float) -> None:
        super().__init__(num_classes)
        smoothing = float(smoothing)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(
                f"label smoothing δ must lie in [0, 1), got {smoothing}; "
                "typical values are 0.05-0.2"
            )
        self.smoothing = smoothing

    def compute(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.smoothing)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, smoothing={self.smoothing}"


class FocalLoss(ClassificationLoss):
    """Mean of ``-(1 - p_y)^γ log p_y``."""

    def __init__(self, num_classes: int, gamma: float = 2.0) -> None:
        super().__init__(num_classes)
        gamma = float(gamma)
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def compute(self, logits: Tensor, targets: Tensor) -> Tensor:
        logp_y = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
        p_y = logp_y.exp()
        return (-((1.0 - p_y) ** self.gamma) * logp_y).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, gamma={self.gamma}"


class MSELoss(ClassificationLoss):
    """Mean over samples of ``Σ_k (z_k - [k = y])²`` (logits against the one-hot target)."""

    def compute(self, logits: Tensor, targets: Tensor) -> Tensor:
        onehot = F.one_hot(targets, self.num_classes).to(logits.dtype)
        return ((logits - onehot) ** 2).sum(dim=1).mean()


def _build_ce(num_classes: int, smoothing: float, gamma: float) -> ClassificationLoss:
    return CrossEntropyLoss(num_classes)


def _build_ls(num_classes: int, smoothing: float, gamma: float) -> ClassificationLoss:
    return LabelSmoothingLoss(num_classes, smoothing)


def _build_focal(num_classes: int, smoothing: float, gamma: float) -> ClassificationLoss:
    return FocalLoss(num_classes, gamma)


def _build_mse(num_classes: int, smoothing: float, gamma: float) -> ClassificationLoss:
    return MSELoss(num_classes)


LOSSES: dict[str, Callable[[int, float, float], ClassificationLoss]] = {
    "ce": _build_ce,
    "ls": _build_ls,
    "focal": _build_focal,
    "mse": _build_mse,
}


def get_loss(
    name: str, num_classes: int, smoothing: float = 0.0, *, gamma: float = 2.0
) -> ClassificationLoss:
    """Build the loss ``name`` (one of :data:`LOSSES`) for ``num_classes`` classes.

    ``smoothing`` is δ for ``ls`` (in [0, 1)); the other losses require ``smoothing == 0``.
    ``gamma`` is the focusing parameter of ``focal`` (ignored otherwise).
    The returned module maps ``(logits (B, K), targets (B,))`` to the mean loss.
    """
    return LOSSES[check_loss(name, smoothing)](num_classes, smoothing, gamma)
