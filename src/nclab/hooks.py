"""The one forward-hook helper and the one "evaluate, then restore the training modes" helper.

:func:`capture` records what named modules see (their first input) or produce (their output)
during forward passes; :func:`eval_mode` switches a model to eval mode and restores every
submodule's own ``training`` flag afterwards (not just the root's: a user may have frozen some
BatchNorm layers in eval mode on purpose).  Used by :func:`nclab.metrics.collect`,
:class:`nclab.track.NCTracker`, the evaluator and the per-layer NC metrics
(:mod:`nclab.layers`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["capture", "eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; each submodule's previous mode restored after
    it (also on an exception)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def capture(
    modules: Mapping[str, nn.Module],
    *,
    inputs: bool = False,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[dict[str, Tensor]]:
    """Forward hooks on ``modules`` (name -> module) for the duration of the block.

    Yields a dict that holds, after each forward pass, ``name ->`` the module's latest output
    (``inputs=True``: its first positional input), detached and passed through ``transform``
    (inside the hook, so a large activation can be reduced before the pass goes on).  A name is
    absent while its module has not run; clear the dict between passes to tell.  The hooks are
    removed on leaving the block."""
    store: dict[str, Tensor] = {}

    def keep(name: str, value: Any) -> None:
        if isinstance(value, tuple | list):
            value = value[0] if value else None
        if isinstance(value, Tensor):
            value = value.detach()
            store[name] = value if transform is None else transform(value)

    handles = []
    try:
        for name, module in modules.items():
            if inputs:
                hook = module.register_forward_pre_hook(
                    lambda _m, args, name=name: keep(name, args)
                )
            else:
                hook = module.register_forward_hook(lambda _m, _a, out, name=name: keep(name, out))
            handles.append(hook)
        yield store
    finally:
        for handle in handles:
            handle.remove()
