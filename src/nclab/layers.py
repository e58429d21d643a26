"""Collapse across layers: NC1 and NC2 of intermediate features (``--nc-layers``).

A *tap* is a named module whose output is a feature vector per sample.  The built-in models
declare theirs (:meth:`nclab.models.FeatureClassifier.feature_taps`: every block, and last
``features``, the penultimate features, whose NC1 is the run's ``nc1``); with
:class:`nclab.track.NCTracker` any module of the user's model can be named by its
``named_modules()`` path.

Convolutional maps (B, C, H, W) are reduced by **global average pooling** to (B, C) inside the
forward hook (as the built-in models do before their classifier, and as Papyan et al. 2020 and
Rangamani et al. 2023 measure intermediate collapse), any other output is flattened to (B, -1);
a tap wider than :data:`LAYER_DIM_MAX` after that is refused.  Statistics are float64
:class:`~nclab.metrics.NCAccumulator`\\ s: the features of one pass are kept (float32, like the
evaluator's own) and fed to the projected two-pass engine when they fit in
``keep_limit_bytes``, else a streaming accumulator (d x d scatter) is fed batch by batch.

Rows: ``layer_nc1/<name>`` (NC1 = tr(Σ_W Σ_B⁺)/K) and ``layer_nc2/<name>`` (``nc2_h``, the
distance of the centred class means' Gram matrix to a simplex ETF) in ``metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from nclab.hooks import capture
from nclab.metrics import NCAccumulator

__all__ = ["LAYER_DIM_MAX", "LayerNC", "pool_features", "resolve_taps"]

#: Largest feature dimension of a tap after pooling (a streaming accumulator's d x d float64
#: scatter is 128 MiB at this size).
LAYER_DIM_MAX = 4096


def pool_features(t: Tensor) -> Tensor:
    """(B, C, ...) spatial maps -> (B, C) by global average pooling; (B, d) kept (copied, so a
    later in-place operation of the model cannot change it); float32."""
    if t.dim() > 2:
        return t.float().mean(dim=tuple(range(2, t.dim())))
    return t.reshape(t.shape[0], -1).float().clone()


def resolve_taps(model: nn.Module, layers: str | Sequence[str] | None) -> dict[str, nn.Module]:
    """Name -> module of the taps ``layers`` selects: ``all`` (every tap the model declares),
    tap names, or ``named_modules()`` paths.  ``ValueError`` names an unknown one and lists the
    available names."""
    if layers is None:
        return {}
    names = [n.strip() for n in layers.split(",")] if isinstance(layers, str) else list(layers)
    declared: dict[str, nn.Module] = {}
    taps = getattr(model, "feature_taps", None)
    if callable(taps):
        declared = dict(taps())
    if names == ["all"]:
        if not declared:
            raise ValueError(
                "nc_layers='all' needs a model that declares its blocks (the built-in models "
                "do); name modules by their named_modules() path instead"
            )
        return declared
    modules = dict(model.named_modules())
    out: dict[str, nn.Module] = {}
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"nc_layers: a layer name must be a non-empty string, got {name!r}")
        if name in declared:
            out[name] = declared[name]
        elif name in modules and name:
            out[name] = modules[name]
        else:
            known = ", ".join(declared) if declared else "the model's named_modules() paths"
            raise ValueError(f"nc_layers: unknown layer {name!r}; available: all, {known}")
    return out


class LayerNC:
    """NC1/NC2 of the taps' features over one pass (one evaluation of the training split).

    Use::

        layer_nc = LayerNC(taps, num_classes)
        with layer_nc.recording(rows=N, device=x.device):
            for xb, yb in batches:
                model(xb)            # the hooks record each tap's pooled output
                layer_nc.update(yb)  # feeds the accumulators with this batch's labels
        row = layer_nc.compute()     # {"layer_nc1/<name>": ..., "layer_nc2/<name>": ...}
    """

    def __init__(
        self,
        taps: Mapping[str, nn.Module],
        num_classes: int,
        *,
        keep_limit_bytes: int = 2**30,
        max_dim: int = LAYER_DIM_MAX,
    ) -> None:
        self.taps = dict(taps)
        self.num_classes = int(num_classes)
        self.keep_limit_bytes = int(keep_limit_bytes)
        self.max_dim = int(max_dim)
        #: taps the caller measures itself (:meth:`compute`'s ``known``): not hooked
        self.skip: frozenset[str] = frozenset()
        self._store: dict[str, Tensor] | None = None
        self._kept: dict[str, Tensor] = {}
        self._labels: Tensor | None = None
        self._accs: dict[str, NCAccumulator] = {}
        self._rows = 0
        self._filled = 0

    @contextlib.contextmanager
    def recording(self, rows: int, device: torch.device) -> Iterator[LayerNC]:
        """Hooks on the taps for one pass of ``rows`` samples (fresh statistics)."""
        self._kept, self._accs, self._rows, self._filled = {}, {}, int(rows), 0
        self._labels = torch.empty(int(rows), dtype=torch.int64, device=device)
        hooked = {n: m for n, m in self.taps.items() if n not in self.skip}
        with capture(hooked, transform=pool_features) as store:
            self._store = store
            try:
                yield self
            finally:
                self._store = None

    def update(self, labels: Tensor) -> None:
        """Feed the features the hooks recorded in the last forward pass, with their labels."""
        if self._store is None:
            raise RuntimeError("LayerNC.update() is called inside recording() only")
        b = int(labels.shape[0])
        rows = slice(self._filled, self._filled + b)
        self._labels[rows] = labels
        for name in self.taps:
            if name in self.skip:
                continue
            h = self._store.pop(name, None)
            if h is None:
                raise ValueError(
                    f"nc_layers: layer {name!r} did not run during the forward pass; name a "
                    "module the model calls"
                )
            if h.shape[0] != b:
                raise ValueError(
                    f"nc_layers: layer {name!r} produced {h.shape[0]} rows for a batch of {b}; "
                    "name a module whose output has one row per sample"
                )
            self._feed(name, h, rows)
        self._filled = rows.stop

    def _feed(self, name: str, h: Tensor, rows: slice) -> None:
        d = int(h.shape[1])
        if name not in self._kept and name not in self._accs:
            if d > self.max_dim:
                raise ValueError(
                    f"nc_layers: layer {name!r} has {d} features after pooling, more than "
                    f"{self.max_dim}; choose layers with fewer channels"
                )
            per_tap = self.keep_limit_bytes // max(1, len(self.taps))
            if self._rows * d * 4 <= per_tap:
                self._kept[name] = torch.empty(self._rows, d, dtype=torch.float32, device=h.device)
            else:
                self._accs[name] = NCAccumulator(
                    self.num_classes, d, mode="streaming", device=h.device, validate=False
                )
        if name in self._kept:
            self._kept[name][rows] = h
        else:
            self._accs[name].update(h, self._labels[rows])

    def compute(self, known: Mapping[str, tuple[float, float]] | None = None) -> dict[str, float]:
        """``layer_nc1/<name>`` and ``layer_nc2/<name>`` of every tap, in tap order (the
        accumulators are all-reduced: call it on every rank under DDP).  ``known``: name ->
        (nc1, nc2) the caller has already computed (the penultimate features)."""
        out: dict[str, float] = {}
        labels = self._labels[: self._filled] if self._labels is not None else None
        known = known or {}
        for name in self.taps:
            if name in known:
                out[f"layer_nc1/{name}"], out[f"layer_nc2/{name}"] = map(float, known[name])
                continue
            if name in self._kept:
                feats = self._kept[name][: self._filled]
                # labels come from the evaluator (checked); NaN/Inf features raise in compute()
                acc = NCAccumulator(
                    self.num_classes, int(feats.shape[1]), mode="projected",
                    device=feats.device, validate=False,
                )  # fmt: skip
                acc.update(feats, labels)
                acc.all_reduce()
                acc.update_ncc(feats, labels)
                acc.all_reduce()
            elif name in self._accs:
                acc = self._accs[name]
                acc.all_reduce()
            else:
                continue
            metrics = acc.compute()
            out[f"layer_nc1/{name}"] = float(metrics.nc1)
            out[f"layer_nc2/{name}"] = float(metrics.nc2_h)
        return out
