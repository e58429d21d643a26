"""Tensor augmentation: random crop after zero padding, random horizontal flip."""

from __future__ import annotations

import torch
from torch import Tensor


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
