"""The NC statistics engine: a device-resident float64 accumulator with two exact modes.

:class:`NCAccumulator` keeps its state as float64 torch tensors on one device (the first input's,
or ``device=``); batches from any device (or numpy arrays) are moved there and reduced there, so
inside a CUDA loop nothing is copied to the host per batch. Results (:meth:`compute`) are
assembled on the host from a few small matrices by :mod:`nclab.metrics.formulas`.

Modes
-----
``streaming`` (one pass, O(d^2 + K d) memory whatever N)
    Each sample is shifted by a per-class reference point ``c_k`` (the class mean of the first
    batch that contains class k) and the shifted scatter ``sum (h - c_y)(h - c_y)^T`` is summed
    with one rank-B product per batch. The centred scatter is recovered once, at the end, as
    ``S = sum_i (h_i - c)(h_i - c)^T - sum_k t_k t_k^T / n_k`` with
    ``t_k = sum_{y_i=k} (h_i - c_k)``
    (the shifted-data algorithm; Chan, Golub & LeVeque 1983). Because ``c_k`` is a class mean of
    real samples, ``||t_k|| / n_k`` is of the order of the within-class spread, so the subtraction
    never cancels catastrophically, unlike ``E[h h^T] - mu mu^T``.
``projected`` (two passes, O(N d K) work)
    Pass 1 (:meth:`update`) sums features per class. Pass 2 (:meth:`update_ncc`) centres each
    sample on its class mean and keeps, per class, its squared coordinates along the right
    singular vectors ``v_j`` of the centred means (the only directions in which NC1 sees
    ``Sigma_W``, because ``Sigma_B^+`` vanishes elsewhere), the squared norms, and the
    nearest-class-mean tallies. Exact for every metric; it never forms the d x d scatter, so a
    projected accumulator has no full ``Sigma_W`` to offer.

In both modes :meth:`update_ncc` (the second pass) also records per-class NC1 and NC1 over
correctly / incorrectly classified samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from nclab.metrics._inputs import (
    as_tensor,
    check_bias,
    check_num_classes,
    check_weight,
    input_eps,
)
from nclab.metrics.formulas import (
    EPS64,
    NCMetrics,
    NCPerClass,
    assemble_metrics,
    nc1_from_directions,
    nc1_from_stats,
    numerical_rank_mask,
)

__all__ = ["MODES", "NCAccumulator"]

MODES = ("streaming", "projected")
_TALLIES = ("ncc_total", "ncc_correct", "nc4_total", "nc4_mismatch")
#: Rows per chunk of float64 work (bounds the temporaries; ~4 MiB at d = 512).
_CHUNK = 1024
#: Rows per chunk of the second pass (measured faster than 1024 on CPU: smaller buffers).
_CHUNK_NCC = 512
#: Up to this many classes, classifier and NCC scores are float64 products fused with the
#: projection; above it they are float32 products with an error certificate (:class:`_Scores`).
_FUSE_CLASSES = 32


def _nonfinite_error(x: torch.Tensor, name: str) -> ValueError:
    bad = ~torch.isfinite(x)
    count = int(bad.sum())
    if count == 0:
        return ValueError(f"{name} are too large: their sums overflow float64; rescale the {name}")
    where = f" in {int(bad.any(dim=1).sum())} of {x.shape[0]} rows" if x.dim() == 2 else ""
    return ValueError(
        f"{name} contains {count} non-finite value(s) (NaN/Inf){where}; drop or fix those "
        "samples (e.g. lower the learning rate if training diverged)"
    )


class NCAccumulator:
    """Float64 sufficient statistics for NC metrics, on a torch device.

    Args:
        num_classes: K >= 2.
        dim: feature dimension d.
        mode: ``"streaming"`` (default: one pass, d x d state) or ``"projected"`` (two passes,
            no d x d state; :meth:`update` then :meth:`update_ncc` over the same samples).
        device: where the state lives; default: the device of the first batch (CPU until then).
        validate: check every batch (finite values, labels in ``[0, K)``). Each check reads a
            value back from the device, i.e. synchronises a CUDA stream; pass ``False`` inside
            hot loops. Shapes and dtypes are always checked (metadata only); non-finite inputs
            are then reported by :meth:`compute`, and out-of-range labels are undefined
            behaviour (a device assert on CUDA).

    Example (streaming)::

        acc = NCAccumulator(num_classes=10, dim=512)
        for feats, logits, y in collect(model, train_loader, model.classifier):
            acc.update(feats, y)
        for feats, logits, y in collect(model, train_loader, model.classifier):
            acc.update_ncc(feats, y, logits=logits)
        metrics = acc.compute(model.classifier.weight, model.classifier.bias)

    Under ``torch.distributed``: :meth:`all_reduce` after the first pass and again after the
    second (each call reduces only what was added since; a second call is a no-op).
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        mode: str = "streaming",
        device: Any = None,
        validate: bool = True,
    ) -> None:
        self.num_classes = check_num_classes(num_classes)
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.validate = bool(validate)
        self._device_fixed = device is not None
        self.device = torch.device("cpu") if device is None else torch.device(device)
        #: Inputs are multiplied by this power of two before any statistic (set by
        #: :func:`~nclab.metrics.nc_metrics` for features of extreme magnitude).
        self.scale = 1.0
        self.reset()

    # -- state -----------------------------------------------------------------------------

    def _zeros(self, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def reset(self) -> NCAccumulator:
        """Forget every sample, tally and reduction. Returns ``self``."""
        k, d = self.num_classes, self.dim
        self.counts = self._zeros(k)
        self.shift = self._zeros(k, d)  # c_k (streaming); stays 0 in projected mode
        self.shifted_sums = self._zeros(k, d)  # t_k = sum (h - c_k)
        self.shifted_scatter = self._zeros(d, d) if self.mode == "streaming" else None
        self.shifted_sq = self._zeros(k)  # sum ||h - c_k||^2 (streaming)
        self.ood_sum = self._zeros(d)
        self.ood_count = self._zeros(1)
        self._reset_second_pass()
        self.input_eps = EPS64
        self._first_pass_fed = False  # host-side: update() saw samples (no device read)
        self._synced = {"stats": False, "second": False}
        self._buffers: dict[str, torch.Tensor] = {}
        return self

    def _reset_second_pass(self) -> None:
        k = self.num_classes
        self.frozen_means: torch.Tensor | None = None  # own means when pass 2 began
        self.basis: torch.Tensor | None = None  # (r, d) right singular vectors of Mbar
        self.basis_sv: torch.Tensor | None = None  # (r,) their singular values
        self.proj_sq: torch.Tensor | None = None  # (K, r) sum (v_j . z)^2 per class
        self.split_sq: torch.Tensor | None = None  # (2, r): classifier right / wrong
        self.split_count = self._zeros(2)
        self.centred_sq = self._zeros(k)  # sum ||h - mu_k||^2 per class (pass 2)
        self.tally = self._zeros(len(_TALLIES), dtype=torch.int64)
        self._second_stale = False
        self._radius: torch.Tensor | None = None  # cache of _own_radius()

    def _tensors(self) -> dict[str, torch.Tensor]:
        names = ("counts", "shift", "shifted_sums", "shifted_scatter", "shifted_sq", "ood_sum",
                 "ood_count", "frozen_means", "basis", "basis_sv", "proj_sq", "split_sq",
                 "split_count", "centred_sq", "tally")  # fmt: skip
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def to(self, device: Any) -> NCAccumulator:
        """Move the state to ``device`` (and keep it there). Returns ``self``."""
        self.device = torch.device(device)
        self._device_fixed = True
        for name, t in self._tensors().items():
            setattr(self, name, t.to(self.device))
        self._buffers = {}
        self._radius = None
        return self

    @property
    def num_samples(self) -> int:
        """Number of samples accumulated by :meth:`update` (reads the device)."""
        return int(self.counts.sum())

    @property
    def tallies(self) -> dict[str, int]:
        """Nearest-class-mean tallies ``ncc_total, ncc_correct, nc4_total, nc4_mismatch``."""
        return dict(zip(_TALLIES, (int(v) for v in self.tally.tolist()), strict=True))

    @property
    def second_pass_started(self) -> bool:
        return self.frozen_means is not None

    def _centred(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(sums, centred scatter S or None, centred per-class squared norms), scaled units."""
        n = self.counts.clamp(min=1.0)
        t = self.shifted_sums
        sums = self.shift * self.counts[:, None] + t
        if self.mode == "projected":
            return sums, None, self.centred_sq.clone()
        scaled = t / n.sqrt()[:, None]
        scatter = self.shifted_scatter - scaled.T @ scaled
        sq = self.shifted_sq - (t * t).sum(dim=1) / n
        return sums, scatter, sq

    def state_dict(self) -> dict[str, Any]:
        """The state as tensors and plain numbers (loadable with ``torch.load(weights_only=True)``).

        A copy of every state tensor (on the accumulator's device), so :meth:`load_state_dict`
        restores it bit for bit.
        """
        state: dict[str, Any] = {
            "num_classes": self.num_classes,
            "dim": self.dim,
            "mode": self.mode,
            "scale": self.scale,
            "input_eps": self.input_eps,
            "second_stale": self._second_stale,
            "synced": sorted(part for part, done in self._synced.items() if done),
        }
        for name, t in self._tensors().items():
            state[name] = t.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> NCAccumulator:
        """Restore a :meth:`state_dict`; sizes and mode must match. Returns ``self``.

        Also accepts the centred form ``counts, sums, scatter, class_scatter`` (+ tallies).
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        missing = [key for key in ("num_classes", "dim", "counts") if key not in state]
        if missing:
            raise ValueError(
                f"state lacks {', '.join(missing)}: pass the dict returned by state_dict()"
            )
        if int(state["num_classes"]) != self.num_classes or int(state["dim"]) != self.dim:
            raise ValueError(
                f"state is for K={state['num_classes']}, d={state['dim']} but this accumulator "
                f"has K={self.num_classes}, d={self.dim}; create a matching NCAccumulator"
            )
        mode = state.get("mode", "streaming")
        if mode != self.mode:
            raise ValueError(f"state is for mode={mode!r} but this accumulator is {self.mode!r}")
        k, d = self.num_classes, self.dim
        r = int(np.shape(state["basis"])[0]) if "basis" in state else 0
        shapes = {"counts": (k,), "shift": (k, d), "shifted_sums": (k, d),
                  "shifted_scatter": (d, d), "shifted_sq": (k,), "ood_sum": (d,),
                  "ood_count": (1,), "frozen_means": (k, d), "basis": (r, d), "basis_sv": (r,),
                  "proj_sq": (k, r), "split_sq": (2, r), "split_count": (2,),
                  "centred_sq": (k,), "tally": (len(_TALLIES),)}  # fmt: skip

        def tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            t = as_tensor(state[name], name).to(self.device, dtype).clone()
            if tuple(t.shape) != shape:
                raise ValueError(f"state[{name!r}] has shape {tuple(t.shape)}, expected {shape}")
            return t

        if "sums" in state and "shifted_sums" not in state:  # centred form
            state = dict(state)
            counts = as_tensor(state["counts"], "counts").double()
            sums = as_tensor(state["sums"], "sums").double()
            state["shift"] = sums / counts.clamp(min=1.0)[:, None]
            state["shifted_scatter"] = state["scatter"]
            state["shifted_sq"] = state["class_scatter"]
            state["tally"] = [int(state.get(name, 0)) for name in _TALLIES]
        loaded = {}
        for name, shape in shapes.items():
            if name in state and (self.mode == "streaming" or name != "shifted_scatter"):
                dtype = torch.int64 if name == "tally" else torch.float64
                loaded[name] = tensor(name, shape, dtype)
        self.reset()
        for name, t in loaded.items():
            setattr(self, name, t)
        self.scale = float(state.get("scale", 1.0))
        self.input_eps = float(state.get("input_eps", EPS64))
        self._first_pass_fed = bool(self.counts.any())
        self._second_stale = bool(state.get("second_stale", False))
        for part in state.get("synced", []):
            self._synced[str(part)] = True
        return self

    # -- input handling --------------------------------------------------------------------

    def _adopt_device(self, x: torch.Tensor) -> None:
        """The first batch decides the device unless ``device=`` or :meth:`to` fixed it."""
        if self._device_fixed or x.device == self.device:
            return
        empty = not self.second_pass_started and not bool(self.counts.any())
        if empty and not bool(self.ood_count.any()):
            self.to(x.device)
        self._device_fixed = True

    def _features(self, features: Any, name: str = "features") -> torch.Tensor:
        x = as_tensor(features, name)
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-dimensional, got shape {tuple(x.shape)}")
        if x.shape[1] != self.dim:
            raise ValueError(
                f"{name} have dimension {x.shape[1]} but the accumulator was built with "
                f"dim={self.dim}; pass (N, {self.dim}) {name}"
            )
        self._adopt_device(x)
        x = x.to(self.device)
        if self.validate and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise _nonfinite_error(x, name)
        return x

    def _labels(self, labels: Any, n: int, name: str = "labels") -> torch.Tensor:
        y = as_tensor(labels, name)
        k = self.num_classes
        if y.dim() != 1:
            raise ValueError(f"{name} must be 1-dimensional (N,), got shape {tuple(y.shape)}")
        if y.shape[0] != n:
            raise ValueError(
                f"{name} has {y.shape[0]} entries but features have {n} rows; "
                "pass one label per feature row"
            )
        y = y.to(self.device)
        if y.is_floating_point():
            integral = self.validate and bool((torch.isfinite(y) & (y == y.round())).all())
            if not integral:
                raise ValueError(
                    f"{name} must be integer class indices in [0, {k}), got dtype {y.dtype}"
                    f"{' with non-integer values' if self.validate else ''}; pass class "
                    "indices, not one-hot vectors"
                )
        y = y.long()
        if self.validate and y.numel():
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= k:
                bad = int(((y < 0) | (y >= k)).sum())
                raise ValueError(
                    f"{name} must lie in [0, {k}) but {bad} label(s) fall outside "
                    f"(min {lo}, max {hi}); check num_classes (it is {k})"
                )
        return y

    def _note_precision(self, x: torch.Tensor) -> None:
        self.input_eps = max(self.input_eps, input_eps(x.dtype))

    def _buffer(self, name: str, rows: int, cols: int) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
            buf = torch.empty(max(rows, 1), cols, dtype=torch.float64, device=self.device)
            self._buffers[name] = buf
        return buf[:rows]

    def _chunks(
        self, x: torch.Tensor, y: torch.Tensor, size: int = _CHUNK
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """``(z, y)`` per chunk of ``size`` rows: ``z = scale * x`` in float64 in a reused
        buffer."""
        for start in range(0, int(x.shape[0]), size):
            stop = min(int(x.shape[0]), start + size)
            z = self._buffer("z", stop - start, self.dim)
            z.copy_(x[start:stop])
            if self.scale != 1.0:
                z.mul_(self.scale)
            yield z, y[start:stop]

    def _check_unsynced(self, part: str, method: str) -> None:
        if self._synced[part]:
            raise ValueError(
                f"{method} after all_reduce(): this accumulator already holds the statistics of "
                "every rank, and adding local samples would count them twice at the next "
                "reduction; call reset() to start a new round"
            )

    # -- first pass ------------------------------------------------------------------------

    def update(self, features: Any, labels: Any) -> NCAccumulator:
        """Add a batch: ``features`` (B, d) and integer ``labels`` (B,), torch (any device, any
        real dtype) or numpy. Statistics are taken in float64 on the accumulator's device.
        Returns ``self``.
        """
        self._check_unsynced("stats", "update()")
        if self.mode == "projected" and self.second_pass_started:
            raise ValueError(
                "update() after update_ncc() in projected mode: the second pass has fixed the "
                "class means; call reset() and start again with update()"
            )
        x = self._features(features)
        y = self._labels(labels, int(x.shape[0]))
        if x.shape[0] == 0:
            return self
        self._note_precision(x)
        self._first_pass_fed = True
        if self.second_pass_started:  # streaming: the second-pass statistics no longer apply
            self._second_stale = True
        k = self.num_classes
        for z, yc in self._chunks(x, y):
            ones = self._buffer("ones", z.shape[0], 1)[:, 0].fill_(1.0)
            batch_counts = self._zeros(k).index_add_(0, yc, ones)
            if self.mode == "projected":
                self.shifted_sums.index_add_(0, yc, z)
                self.counts += batch_counts
                continue
            self._update_shift(z, yc, batch_counts)
            g = self._buffer("g", z.shape[0], self.dim)
            torch.index_select(self.shift, 0, yc, out=g)
            z.sub_(g)  # h - c_y
            self._add_gram(z)
            self.shifted_sums.index_add_(0, yc, z)
            self.shifted_sq.index_add_(0, yc, torch.mul(z, z, out=g).sum(dim=1))
            self.counts += batch_counts
        return self

    def _update_shift(self, z: torch.Tensor, y: torch.Tensor, batch_counts: torch.Tensor) -> None:
        """``c_k`` := this batch's class-k mean for classes seen for the first time."""
        new = (self.counts == 0) & (batch_counts > 0)
        if self.device.type == "cpu" and not bool(new.any()):
            return  # reading a CPU tensor costs no synchronisation
        batch_sums = self._zeros(self.num_classes, self.dim).index_add_(0, y, z)
        batch_means = batch_sums / batch_counts.clamp(min=1.0)[:, None]
        self.shift = torch.where(new[:, None], batch_means, self.shift)

    def _add_gram(self, z: torch.Tensor) -> None:
        """``shifted_scatter += z^T z``; on CPU through numpy, whose ``A.T @ A`` calls the
        symmetric rank-k BLAS kernel (half the work of torch's general product)."""
        if self.device.type == "cpu":
            zn = z.numpy()
            self.shifted_scatter.numpy()[...] += zn.T @ zn
        else:
            self.shifted_scatter.addmm_(z.T, z)

    def update_ood(self, features: Any) -> NCAccumulator:
        """Add out-of-distribution features (B, d), for ``nc5``. Returns ``self``."""
        self._check_unsynced("stats", "update_ood()")
        x = self._features(features, "ood_features")
        for start in range(0, int(x.shape[0]), _CHUNK):
            z = self._buffer("z", min(_CHUNK, int(x.shape[0]) - start), self.dim)
            self.ood_sum += z.copy_(x[start : start + _CHUNK]).sum(dim=0) * self.scale
        self.ood_count += float(x.shape[0])
        return self

    # -- second pass -----------------------------------------------------------------------

    def _begin_second_pass(self) -> None:
        import torch.distributed as dist

        if (
            dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
            and not self._synced["stats"]
        ):
            raise ValueError(
                "update_ncc() before all_reduce(): under torch.distributed the second pass needs "
                "the global class means; call acc.all_reduce() after the first pass"
            )
        self._check_complete()
        self._check_finite()  # one read when the pass begins; the SVD needs finite means
        means = self._scaled_means()
        _, s, vh = torch.linalg.svd(means - means.mean(dim=0), full_matrices=False)
        r = min(self.num_classes - 1, self.dim)
        tally = self.tally  # tallies survive a restart after new first-pass samples (streaming)
        self._reset_second_pass()
        self.tally = tally
        self.frozen_means = means
        self.basis, self.basis_sv = vh[:r].contiguous(), s[:r].contiguous()
        self.proj_sq = self._zeros(self.num_classes, r)
        self.split_sq = self._zeros(2, r)

    def _own_radius(self) -> torch.Tensor:
        """(K,) half the distance from each frozen mean to the nearest other one, less 1e-6.

        A sample closer to its own mean than that is nearest to its own mean (triangle
        inequality), so its NCC scores are not needed; the relative margin of 1e-6 is far above
        float64 rounding. Cached per second pass (it depends on the frozen means only).
        """
        if self._radius is None:
            own = self.frozen_means
            gaps = torch.cdist(own, own).fill_diagonal_(math.inf).amin(dim=1)
            self._radius = 0.5 * (1.0 - 1e-6) * gaps
        return self._radius

    def update_ncc(
        self,
        features: Any,
        labels: Any,
        means: Any = None,
        logits: Any = None,
        weight: Any = None,
        bias: Any = None,
    ) -> NCAccumulator:
        """Second pass over the samples of :meth:`update`.

        Tallies the nearest-class-mean rule ``argmin_k ||h - nu_k||`` against ``means`` (K, d)
        when given (pass the *train* means when this accumulator holds *test* features), else
        against this accumulator's class means, for ``ncc_acc``; with classifier predictions
        (``argmax`` of ``logits`` (B, K), else of ``features @ weight.T + bias``) also ``nc4``
        and NC1 over correctly / incorrectly classified samples. Records per-class NC1 and, in
        projected mode, the within-class statistics. Returns ``self``.

        The first call fixes the class means and their directions (one read from the device);
        later calls read nothing back per batch on CUDA.
        """
        self._check_unsynced("second", "update_ncc()")
        if self.mode == "projected" and not self._first_pass_fed:
            raise ValueError("update_ncc() before update(): feed the first pass first")
        x = self._features(features)
        y = self._labels(labels, int(x.shape[0]))
        k, d, n = self.num_classes, self.dim, int(x.shape[0])
        ref = None
        if means is not None:
            ref = as_tensor(means, "means").to(self.device, torch.float64)
            if tuple(ref.shape) != (k, d):
                raise ValueError(
                    f"means must have shape (K, d) = ({k}, {d}), got {tuple(ref.shape)}"
                )
            if self.validate and not bool(torch.isfinite(ref).all()):
                raise ValueError("means contain NaN or Inf values")
            ref = ref * self.scale
        z_logits, w, b = self._classifier(n, logits, weight, bias)
        if not self.second_pass_started or self._second_stale:
            self._begin_second_pass()
        if n == 0:
            return self
        self._note_precision(x)
        own = self.frozen_means
        own_ref = ref is None
        ref = own if ref is None else ref
        centre = ref.mean(dim=0)
        m = ref - centre  # nu_k - c
        # NCC: argmin_k ||h - nu_k||^2 = argmax_k 2 (h - c).m_k - ||m_k||^2, with
        # (h - c).m_k = z.m_k + (mu_y - c).m_k for the class-centred sample z = h - mu_y
        ncc_add = 2.0 * ((own - centre) @ m.T) - (m * m).sum(dim=1)  # (K, K), row = class y
        # the own centred means lie in span(basis): score them in r coordinates
        ncc_mat = 2.0 * (m @ self.basis.T if own_ref else m)
        # Few classes: the K-row products are bound by reading the chunk, so they ride along
        # with the float64 projection (exact scores). Many classes: float32 with a certificate.
        fuse = k <= _FUSE_CLASSES
        rows = [self.basis]
        if w is not None:  # W h + b = W z + (W mu_y + b), in scaled units
            cls_add = own @ w.T + (0.0 if b is None else b * self.scale)
            if fuse:
                rows.append(w)
            else:
                raw = x.dtype == torch.float32 and self.scale == 1.0
                # raw: W h + b straight from the float32 input (no table lookup per row)
                b_add = torch.zeros_like(w[:, 0]) if b is None else b
                cls = _Scores(w, b_add if raw else cls_add)
                own_norm = torch.linalg.vector_norm(own, dim=1)
        if fuse and not own_ref:
            rows.append(ncc_mat)
        else:
            ncc = _Scores(ncc_mat, ncc_add)
        if own_ref and ncc.fast:
            own_radius = self._own_radius()
        rows = torch.cat(rows) if len(rows) > 1 else rows[0]
        rows_t, n_rows = None, rows.shape[0]
        if self.device.type == "cpu":  # zero columns up to a multiple of 4: BLAS runs faster
            rows_t = torch.zeros(d, -(-n_rows // 4) * 4, dtype=torch.float64)
            rows_t[:, :n_rows] = rows.T
        r = self.basis.shape[0]
        has_cls = z_logits is not None or w is not None
        # per (class, classifier right/wrong) pair: rows 2 y + wrong, summed into proj_sq and
        # split_sq after the pass; row 2 K parks the rows whose prediction is not yet certain
        pair_sq = self._zeros(2 * k + 1, r)
        pred_ncc = torch.empty(n, dtype=torch.int64, device=self.device)
        pred_cls = torch.empty_like(pred_ncc) if has_cls else None
        unsure_ncc = torch.zeros(n, dtype=torch.bool, device=self.device)
        unsure_cls = torch.zeros_like(unsure_ncc)
        chunks = self._chunks(x, y, _CHUNK_NCC)
        for start, (z, yc) in zip(range(0, n, _CHUNK_NCC), chunks, strict=True):
            stop = start + yc.shape[0]
            g = self._buffer("g", z.shape[0], d)
            torch.index_select(own, 0, yc, out=g)
            z.sub_(g)  # h - mu_y
            if rows_t is None:
                scores = (rows @ z.T).T  # (chunk, rows); the (rows, chunk) product is faster
            else:  # numpy's BLAS: faster than torch's on some CPUs, into a reused buffer
                scores = self._buffer("s", z.shape[0], rows_t.shape[1])
                np.matmul(z.numpy(), rows_t.numpy(), out=scores.numpy())
            proj = scores[:, :r]  # coordinates along the class-mean directions
            # squares into a row-major buffer: index_add_ over rows of a transposed view is slow
            proj_sq = torch.mul(proj, proj, out=self._buffer("p", z.shape[0], r))
            z_norm = torch.linalg.vector_norm(z, dim=1)  # ||h - mu_y||
            self.centred_sq.index_add_(0, yc, z_norm * z_norm)
            unsure = None
            if own_ref and ncc.fast:
                p_norm = proj_sq.sum(dim=1).sqrt_()  # ||h - mu_y|| within span(basis)
                pred = yc.clone()
                far = (p_norm >= own_radius[yc]).nonzero().flatten()
                if len(far):
                    pred[far], unsure_far = ncc.argmax(proj[far], p_norm[far], yc[far])
                    unsure = torch.zeros_like(pred, dtype=torch.bool)
                    unsure[far] = unsure_far
            elif own_ref:
                pred, unsure = ncc.argmax(proj, proj_sq.sum(dim=1).sqrt_(), yc)
            elif fuse:
                pred = scores[:, n_rows - k : n_rows].add(ncc_add[yc]).argmax(dim=1)
            else:
                pred, unsure = ncc.argmax(z, z_norm, yc)
            pred_ncc[start:stop] = pred
            if unsure is not None:
                unsure_ncc[start:stop] = unsure
            unsure = None
            if z_logits is not None:
                pred = z_logits[start:stop].argmax(dim=1)
            elif w is None:
                pred = None
            elif fuse:
                pred = scores[:, r : r + k].add(cls_add[yc]).argmax(dim=1)
            elif raw:  # W h + b from the float32 input itself: no conversion
                x_norm = z_norm + own_norm[yc]  # >= ||h|| (triangle inequality)
                pred, unsure = cls.argmax(x[start:stop], x_norm, yc)
            else:
                pred, unsure = cls.argmax(z, z_norm, yc)
            pair = 2 * yc
            if pred is not None:
                pred_cls[start:stop] = pred
                pair += pred != yc
            if unsure is not None:
                unsure_cls[start:stop] = unsure
                pair.masked_fill_(unsure, 2 * k)  # parked until its prediction is certain
            pair_sq.index_add_(0, pair, proj_sq)
        # near ties of the float32 scores, redone in float64 (a few rows)
        for unsure, scorer in ((unsure_ncc, "ncc"), (unsure_cls, "cls")):
            if self.device.type != "cpu" or not bool(unsure.any()):
                continue
            idx = unsure.nonzero().flatten()
            yi = y[idx]
            zi = x[idx].double() * self.scale - own[yi]  # h - mu_y
            if scorer == "ncc":
                pred_ncc[idx] = ncc.exact(zi @ self.basis.T if own_ref else zi, yi)
            else:
                pred_cls[idx] = cls.exact(x[idx] if raw else zi, yi)
                p = zi @ self.basis.T
                pair_sq.index_add_(0, 2 * yi + (pred_cls[idx] != yi), p * p)
        pair_sq = pair_sq[: 2 * k].view(k, 2, r)
        self.proj_sq += pair_sq.sum(dim=1)
        tally = [n, (pred_ncc == y).sum(), 0, 0]
        if has_cls:
            wrong = (pred_cls != y).sum()
            self.split_sq += pair_sq.sum(dim=0)
            self.split_count += torch.stack([n - wrong, wrong]).double()
            tally[2:] = [n, (pred_cls != pred_ncc).sum()]
        self.tally += torch.stack([torch.as_tensor(t, device=self.device) for t in tally])
        return self

    def _classifier(
        self, n: int, logits: Any, weight: Any, bias: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Checked ``(logits, None, None)`` or ``(None, W, b)`` (float64, on the device)."""
        k, d = self.num_classes, self.dim
        if logits is not None:
            z = as_tensor(logits, "logits")
            if tuple(z.shape) != (n, k):
                raise ValueError(
                    f"logits must have shape (B, K) = ({n}, {k}), got {tuple(z.shape)}"
                )
            z = z.to(self.device)
            if self.validate and not bool(torch.isfinite(z).all()):
                raise _nonfinite_error(z, "logits")
            return z, None, None
        if weight is None:
            if bias is not None:
                raise ValueError("bias was given without weight; pass weight (and bias) or logits")
            return None, None, None
        if isinstance(weight, torch.Tensor) and (bias is None or isinstance(bias, torch.Tensor)):
            # tensors: shape checks from metadata, no copy to the host (finiteness if validating)
            w = weight.detach().to(self.device, torch.float64)
            if tuple(w.shape) != (k, d):
                check_weight(weight, k, d)  # raises the usual message
            b = None if bias is None else bias.detach().to(self.device, torch.float64)
            if b is not None and tuple(b.shape) != (k,):
                check_bias(bias, k)
            if self.validate:
                check_weight(weight, k, d)
                if bias is not None:
                    check_bias(bias, k)
            return None, w, b
        w = torch.from_numpy(check_weight(weight, k, d)).to(self.device)
        b = None if bias is None else torch.from_numpy(check_bias(bias, k)).to(self.device)
        return None, w, b

    # -- combining -------------------------------------------------------------------------

    def merge(self, other: NCAccumulator) -> NCAccumulator:
        """Fold another accumulator's samples and tallies into this one. Returns ``self``.

        First-pass statistics combine with Chan et al.'s pairwise rule (in centred form).
        Second-pass statistics add up when both accumulators froze the same class means;
        otherwise the merged accumulator needs a new second pass for per-class / split NC1 (the
        tallies still add).
        """
        if not isinstance(other, NCAccumulator):
            raise ValueError(f"merge expects an NCAccumulator, got {type(other).__name__}")
        if (other.num_classes, other.dim, other.mode) != (self.num_classes, self.dim, self.mode):
            raise ValueError(
                f"cannot merge an accumulator with K={other.num_classes}, d={other.dim}, "
                f"mode={other.mode!r} into one with K={self.num_classes}, d={self.dim}, "
                f"mode={self.mode!r}"
            )
        if other.scale != self.scale:
            raise ValueError("cannot merge accumulators with different input scales")
        self._check_unsynced("stats", "merge()")
        if self.mode == "projected" and (self.second_pass_started or other.second_pass_started):
            if not self._same_second_pass(other):
                raise ValueError(
                    "cannot merge projected accumulators whose second passes used different "
                    "class means; merge after the first pass, before update_ncc()"
                )
        dev = self.device
        n_a, n_b = self.counts, other.counts.to(dev)
        sums_a, scatter_a, sq_a = self._centred()
        sums_b, scatter_b, sq_b = (t if t is None else t.to(dev) for t in other._centred())
        n = n_a + n_b
        delta = sums_a / n_a.clamp(min=1.0)[:, None] - sums_b / n_b.clamp(min=1.0)[:, None]
        c = n_a * n_b / n.clamp(min=1.0)  # 0 where either side is empty
        if self.mode == "streaming":
            scaled = delta * c.sqrt()[:, None]
            self.shifted_scatter = scatter_a + scatter_b + scaled.T @ scaled
            self.shifted_sq = sq_a + sq_b + c * (delta * delta).sum(dim=1)
            self.shift = (sums_a + sums_b) / n.clamp(min=1.0)[:, None]
            self.shifted_sums = self._zeros(self.num_classes, self.dim)
        else:
            self.shifted_sums = sums_a + sums_b
        self.counts = n
        self.ood_sum = self.ood_sum + other.ood_sum.to(dev)
        self.ood_count = self.ood_count + other.ood_count.to(dev)
        self.input_eps = max(self.input_eps, other.input_eps)
        self._first_pass_fed = self._first_pass_fed or other._first_pass_fed
        same = self._same_second_pass(other)
        if same and other.second_pass_started:
            for name in ("proj_sq", "split_sq", "split_count", "centred_sq"):
                setattr(self, name, getattr(self, name) + getattr(other, name).to(dev))
        elif self.second_pass_started or other.second_pass_started:
            self._second_stale = True
        self.tally = self.tally + other.tally.to(dev)
        return self

    def _same_second_pass(self, other: NCAccumulator) -> bool:
        if self.frozen_means is None or other.frozen_means is None:
            return self.frozen_means is None and other.frozen_means is None
        return bool(torch.equal(self.frozen_means, other.frozen_means.to(self.device)))

    def all_reduce(
        self, group: Any = None, *, stats: bool = True, tallies: bool = True
    ) -> NCAccumulator:
        """Combine the state of every ``torch.distributed`` rank, in place, on all ranks.

        No-op when ``torch.distributed`` is unavailable or not initialised. Works with gloo and
        NCCL (state on CPU is staged on the current CUDA device for NCCL). Must be called on
        every rank of ``group`` with the same arguments.

        ``stats``: the first pass (:meth:`update`, :meth:`update_ood`). Streaming state is
        combined with two sum-reductions: counts and sums, then each rank's centred scatter plus
        its correction ``n_kr (mu_kr - mu_k)(mu_kr - mu_k)^T`` towards the global means (the
        K-way form of Chan's rule). ``tallies``: the second pass (:meth:`update_ncc`: tallies and
        second-pass statistics, centred on the global means, so a plain sum).

        Guard against reducing twice: each part is reduced once; calling again is a no-op for
        the parts already reduced, and adding local samples to a reduced part raises
        ``ValueError`` (call :meth:`reset` for a new round). Returns ``self``.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        if stats and not self._synced["stats"]:
            self._reduce_first_pass(group)
            self._synced["stats"] = True
        if tallies and not self._synced["second"] and self.second_pass_started:
            names = ["centred_sq", "split_count", "proj_sq", "split_sq"]
            parts = [getattr(self, n) for n in names] + [self.tally.double()]
            reduced = _all_sum(parts, group)
            for name, t in zip(names, reduced, strict=False):
                setattr(self, name, t)
            self.tally = reduced[-1].round().long()
            self._synced["second"] = True
        return self

    def _reduce_first_pass(self, group: Any) -> None:
        sums, scatter, sq = self._centred()
        counts, sums_g, ood_sum, ood_count = _all_sum(
            [self.counts, sums, self.ood_sum, self.ood_count], group
        )
        self.ood_sum, self.ood_count = ood_sum, ood_count
        self._first_pass_fed = True
        if self.mode == "projected":
            self.counts, self.shifted_sums = counts, sums_g
            return
        # each rank adds n_kr (mu_kr - mu_k)(mu_kr - mu_k)^T towards the global means mu_k
        local_n = self.counts
        delta = sums / local_n.clamp(min=1.0)[:, None] - sums_g / counts.clamp(min=1.0)[:, None]
        delta = torch.where(local_n[:, None] > 0, delta, torch.zeros_like(delta))
        scaled = delta * local_n.sqrt()[:, None]
        scatter = scatter + scaled.T @ scaled
        sq = sq + local_n * (delta * delta).sum(dim=1)
        scatter, sq = _all_sum([scatter, sq], group)
        self.counts = counts
        self.shift = sums_g / counts.clamp(min=1.0)[:, None]
        self.shifted_sums = self._zeros(self.num_classes, self.dim)
        self.shifted_scatter, self.shifted_sq = scatter, sq

    # -- results ---------------------------------------------------------------------------

    def _check_complete(self) -> None:
        empty = torch.nonzero(self.counts == 0).flatten().tolist()
        if empty:
            shown = ", ".join(str(c) for c in empty[:20]) + (" ..." if len(empty) > 20 else "")
            raise ValueError(
                f"class(es) {shown} have no samples ({len(empty)} of {self.num_classes} classes "
                "empty); NC metrics need every class: feed all classes or lower num_classes"
            )

    def _scaled_means(self) -> torch.Tensor:
        return self.shift + self.shifted_sums / self.counts.clamp(min=1.0)[:, None]

    def class_means(self) -> np.ndarray:
        """(K, d) float64 class means (numpy, host); raises ``ValueError`` naming empty classes."""
        self._check_complete()
        return self._scaled_means().cpu().numpy() / self.scale

    def within_class_covariance(self) -> np.ndarray:
        """``Sigma_W`` (d, d) = total within-class scatter / N (numpy, host); streaming only."""
        if self.mode != "streaming":
            raise ValueError(
                "a projected accumulator holds Sigma_W only along the class-mean directions; "
                "use mode='streaming' for the full within-class covariance"
            )
        self._check_complete()
        scatter = self._centred()[1].cpu().numpy()
        return scatter / self.num_samples / self.scale**2

    def class_variances(self) -> np.ndarray:
        """(K,) ``sigma_k^2``: mean squared distance of class k's samples to ``mu_k``."""
        self._check_complete()
        if self.mode == "projected":
            self._require_second_pass()
        sq = self._centred()[2]
        return (sq / self.counts).cpu().numpy() / self.scale**2

    def _require_second_pass(self) -> None:
        if not self.second_pass_started or self._second_stale:
            raise ValueError(
                "a projected accumulator needs its second pass: call update_ncc() over the same "
                "samples after update()"
            )

    def _check_finite(self) -> None:
        parts = [self.shifted_sums, self.shift, self.centred_sq]
        if self.shifted_scatter is not None:
            parts += [self.shifted_scatter, self.shifted_sq]
        if not all(bool(torch.isfinite(p).all()) for p in parts):
            hint = " (per-batch validation was off)" if not self.validate else ""
            raise ValueError(
                f"the accumulated statistics are not finite{hint}: the features contained "
                "NaN/Inf values or are too large for float64 sums; fix or rescale the features"
            )

    def _second_pass_nc1(self, n: torch.Tensor, means: np.ndarray) -> dict[str, Any]:
        """nc1 (projected mode), per-class NC1 and the correct/incorrect split, from the squared
        coordinates along the frozen basis; directions below the rank cutoff are dropped."""
        s = self.basis_sv.cpu().numpy()
        keep = numerical_rank_mask(s, means, self.input_eps, stacklevel=5)
        s = s[keep]
        proj = self.proj_sq.cpu().numpy()[:, keep]
        counts = n.cpu().numpy()
        out: dict[str, Any] = {
            "nc1": nc1_from_directions(proj.sum(axis=0) / counts.sum(), s),
            # nc1_from_directions for every class at once
            "per_class": (proj / counts[:, None] / s**2).sum(axis=1)
            if s.size
            else np.full(len(counts), np.inf),
            "nc1_correct": None,
            "nc1_incorrect": None,
        }
        split_n = self.split_count.cpu().numpy()
        tallies = self.tallies
        if tallies["nc4_total"] and tallies["nc4_total"] == tallies["ncc_total"]:
            split = self.split_sq.cpu().numpy()[:, keep]
            for i, key in enumerate(("nc1_correct", "nc1_incorrect")):
                if split_n[i] > 0:
                    out[key] = nc1_from_directions(split[i] / split_n[i], s)
        return out

    def compute(
        self, weight: Any = None, bias: Any = None, *, cdnv_dist_exp: float = 1.0
    ) -> NCMetrics:
        """All NC metrics of the accumulated features (host-side float64).

        ``weight`` (K, d) enables the W-metrics, ``weight`` and ``bias`` (K,) ``bias_collapse``;
        ``nc4`` / ``ncc_acc`` come from the :meth:`update_ncc` tallies (``None`` without them),
        ``nc5`` from :meth:`update_ood`. See :func:`~nclab.metrics.nc_metrics_from_stats`.
        """
        k, d = self.num_classes, self.dim
        w = None if weight is None else check_weight(weight, k, d)
        b = None if bias is None else check_bias(bias, k)
        self._check_complete()
        self._check_finite()
        if self.mode == "projected":
            self._require_second_pass()
        n = self.counts
        means = self._scaled_means().cpu().numpy()
        sums, scatter, sq = self._centred()
        class_var = (sq / n).cpu().numpy()
        total = float(n.sum())
        second = None
        if self.second_pass_started and not self._second_stale:
            second = self._second_pass_nc1(n, means)
        if self.mode == "streaming":
            sigma_w = scatter.cpu().numpy() / total
            nc1 = nc1_from_stats(sigma_w, means, input_eps=self.input_eps)
            trace_w = float(np.trace(sigma_w))
        else:
            nc1 = second["nc1"]
            trace_w = float(sq.sum()) / total
        t = self.tallies
        ood = None
        if float(self.ood_count) > 0:
            ood = (self.ood_sum / self.ood_count).cpu().numpy()
        return assemble_metrics(
            means,
            class_var,
            nc1,
            trace_w,
            w,
            b,
            unit=1.0 / self.scale,
            nc4=t["nc4_mismatch"] / t["nc4_total"] if t["nc4_total"] else None,
            ncc_acc=t["ncc_correct"] / t["ncc_total"] if t["ncc_total"] else None,
            nc1_correct=None if second is None else second["nc1_correct"],
            nc1_incorrect=None if second is None else second["nc1_incorrect"],
            ood_mean=ood,
            cdnv_dist_exp=cdnv_dist_exp,
        )

    def per_class(self) -> NCPerClass:
        """Per-class sample counts, variability ``sigma_k^2`` and NC1 (``None`` without a
        second pass); see :class:`~nclab.metrics.NCPerClass`."""
        variability = self.class_variances()
        nc1 = None
        if self.second_pass_started and not self._second_stale:
            means = self._scaled_means().cpu().numpy()
            nc1 = self._second_pass_nc1(self.counts, means)["per_class"]
        return NCPerClass(count=self.counts.cpu().numpy(), variability=variability, nc1=nc1)

    def __repr__(self) -> str:
        return (
            f"NCAccumulator(num_classes={self.num_classes}, dim={self.dim}, mode={self.mode!r}, "
            f"device={str(self.device)!r})"
        )


def _all_sum(tensors: list[torch.Tensor], group: Any) -> list[torch.Tensor]:
    """Sum-all-reduce float64 tensors in one flat buffer (on CUDA for NCCL); same devices back."""
    import torch.distributed as dist

    device = tensors[0].device
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    flat = torch.cat([t.reshape(-1).to(device, torch.float64) for t in tensors])
    dist.all_reduce(flat, group=group)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape).to(t.device))
        start += t.numel()
    return out


_U32 = 2.0**-24  # unit round-off of float32


class _Scores:
    """Row-wise ``argmax_k (a @ mat.T + add)`` as in float64, computed mostly in float32.

    ``add`` is a (K,) vector or a (T, K) table whose row ``keys[i]`` is added to row i.
    On CPU the scores are computed in float32 (about twice the speed of float64) with a
    rigorous bound on their error: for rows of length p,
    ``|fl32(a_i . m_k) - a_i . m_k| <= gamma_{p+2} ||a_i|| ||m_k||`` with
    ``gamma_q = q u / (1 - q u)``, ``u = 2^-24`` (the dot-product bound of Higham, "Accuracy and
    Stability of Numerical Algorithms", Sec. 3.1, which holds for any summation order, with one
    more ``u`` each for rounding ``a`` and ``mat`` to float32), plus
    ``2u (||a_i|| ||m|| + max |add|)`` for rounding ``add`` and the sum. A row whose best score
    beats the runner-up by more than twice the bound has the float64 argmax; the other rows
    (near ties) are marked, for the caller to redo with :meth:`exact`. On other devices the
    scores are float64 throughout (no read-back to decide which rows to redo).
    """

    def __init__(self, mat: torch.Tensor, add: torch.Tensor) -> None:
        self.mat, self.add = mat, add
        self.fast = mat.device.type == "cpu"
        if self.fast:
            self.mat32_t = mat.T.float().contiguous().numpy()
            self.add32 = add.float()
            p = mat.shape[1]
            gamma = (p + 2) * _U32 / (1.0 - (p + 2) * _U32)
            mat_norm = float(torch.linalg.vector_norm(mat, dim=1).max()) if mat.numel() else 0.0
            add_max = float(add.abs().max()) if add.numel() else 0.0
            self.norm_factor = (gamma + 2 * _U32) * 1.01 * mat_norm
            self.add_bound = 2.02 * _U32 * add_max
            self._scores: np.ndarray | None = None  # reused (rows, K) float32 buffer

    def _add(self, table: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return table[keys] if table.dim() == 2 else table

    def argmax(
        self, a: torch.Tensor, a_norm: torch.Tensor, keys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(argmax, unsure)`` for ``a`` (n, p), ``a_norm`` (n,) upper bounds of its row
        norms and ``keys`` (n,) rows of the ``add`` table (ignored for a vector). ``unsure``
        (n,) bool marks the rows whose float32 argmax is not certified (redo them with
        :meth:`exact`); ``None`` where the scores were float64 throughout."""
        if not self.fast:
            return self.exact(a, keys), None
        a32 = a if a.dtype == torch.float32 else a.float()
        n = a32.shape[0]
        if self._scores is None or self._scores.shape[0] < n:
            self._scores = np.empty((n, self.mat32_t.shape[1]), dtype=np.float32)
            self._rows = np.arange(n)
        # numpy's BLAS (faster than torch's on some CPUs), into a reused buffer
        scores = np.matmul(a32.numpy(), self.mat32_t, out=self._scores[:n])
        scores += self._add(self.add32, keys).numpy()
        idx = scores.argmax(axis=1)
        rows = self._rows[:n]
        gap = scores[rows, idx].astype(np.float64)
        scores[rows, idx] = -np.inf
        gap -= torch.from_numpy(scores).amax(dim=1).numpy()  # best minus runner-up
        bound = a_norm.numpy() * (2.0 * self.norm_factor) + 2.0 * self.add_bound
        return torch.from_numpy(idx), torch.from_numpy(gap <= bound)

    def exact(self, a: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Row-wise argmax of the float64 scores."""
        return torch.addmm(self._add(self.add, keys), a.double(), self.mat.T).argmax(dim=1)
