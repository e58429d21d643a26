"""The NC statistics engine: a device-resident float64 accumulator with two exact modes.

:class:`NCAccumulator` keeps its state as float64 torch tensors on one device (the first input's,
or ``device=``); batches from any device (or numpy arrays) are moved there and reduced there, so
inside a CUDA loop nothing is copied to the host per batch. Results (:meth:`compute`) are
assembled on the host from a few small matrices by :mod:`nclab.metrics.formulas`.

Every state tensor is declared once (:meth:`NCAccumulator._add_state`, the torchmetrics
``add_state`` pattern) with the part it belongs to; :meth:`reset`, :meth:`to`,
:meth:`state_dict`, :meth:`load_state_dict`, :meth:`merge` and :meth:`all_reduce` all walk that
declaration.

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
    never cancels catastrophically, unlike ``E[h h^T] - mu mu^T``. Two accumulators combine by
    re-expressing both around the pooled means (:meth:`_first_pass_state`), after which every
    first-pass tensor is a plain sum.
``projected`` (two passes, O(N d K) work)
    Pass 1 (:meth:`update`) sums features per class. Pass 2 (:meth:`update_ncc`) centres each
    sample on its class mean and keeps, per class, its squared coordinates along the right
    singular vectors ``v_j`` of the centred means (the only directions in which NC1 sees
    ``Sigma_W``, because ``Sigma_B^+`` vanishes elsewhere), the squared norms, and the
    nearest-class-mean tallies. Exact for every metric; it never forms the d x d scatter, so a
    projected accumulator has no full ``Sigma_W`` to offer.

In both modes :meth:`update_ncc` (the second pass, plain float64 products on every device) also
records per-class NC1 and NC1 over correctly / incorrectly classified samples.
"""

from __future__ import annotations

from collections.abc import Mapping
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
#: The parts of the state, as :meth:`NCAccumulator._add_state` declares them: ``first`` (summed
#: once both sides share the shift ``c_k``), ``shift`` (the ``c_k`` themselves), ``frozen`` (the
#: class means and directions the second pass fixed: must be equal to combine), ``second``
#: (second-pass sums) and ``tally`` (nearest-class-mean counts: always summed).
_PARTS = ("first", "shift", "frozen", "second", "tally")


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

    #: Second-pass state: None until :meth:`update_ncc` begins the pass.
    frozen_means: torch.Tensor | None  # own means when pass 2 began
    basis: torch.Tensor | None  # (r, d) right singular vectors of the centred means
    basis_sv: torch.Tensor | None  # (r,) their singular values
    proj_sq: torch.Tensor | None  # (K, r) sum (v_j . z)^2 per class
    split_sq: torch.Tensor | None  # (2, r): classifier right / wrong
    split_count: torch.Tensor | None  # (2,)
    centred_sq: torch.Tensor | None  # (K,) sum ||h - mu_k||^2 per class (pass 2)

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

    # -- state: declared once, everything else walks the declaration --------------------------

    def _add_state(
        self, name: str, shape: tuple[int, ...], part: str, dtype: torch.dtype = torch.float64
    ) -> None:
        """Declare state tensor ``name`` (zeros of ``shape``) as belonging to ``part``."""
        setattr(self, name, torch.zeros(shape, dtype=dtype, device=self.device))
        self._state[name] = part

    def _tensors(self, *parts: str) -> dict[str, torch.Tensor]:
        """The declared state tensors (of ``parts``, default all), in declaration order."""
        return {n: getattr(self, n) for n, p in self._state.items() if not parts or p in parts}

    def reset(self) -> NCAccumulator:
        """Forget every sample, tally and reduction. Returns ``self``."""
        k, d = self.num_classes, self.dim
        self._state: dict[str, str] = {}
        self.shifted_scatter = self.shifted_sq = None
        self._add_state("counts", (k,), "first")
        self._add_state("shift", (k, d), "shift")  # c_k (streaming); stays 0 in projected mode
        self._add_state("shifted_sums", (k, d), "first")  # t_k = sum (h - c_k)
        if self.mode == "streaming":
            self._add_state("shifted_scatter", (d, d), "first")  # sum (h - c_y)(h - c_y)^T
            self._add_state("shifted_sq", (k,), "first")  # sum ||h - c_k||^2
        self._add_state("ood_sum", (d,), "first")
        self._add_state("ood_count", (1,), "first")
        self._add_state("tally", (len(_TALLIES),), "tally", torch.int64)
        self._drop_second_pass()
        self.input_eps = EPS64
        self._first_pass_fed = False  # host-side: update() saw samples (no device read)
        self._synced = {"stats": False, "second": False}
        return self

    def _drop_second_pass(self) -> None:
        for name in ("frozen_means", "basis", "basis_sv", "proj_sq", "split_sq", "split_count",
                     "centred_sq"):  # fmt: skip
            setattr(self, name, None)
            self._state.pop(name, None)
        self._second_stale = False

    def _declare_second_pass(self, rank: int) -> None:
        k, d = self.num_classes, self.dim
        self._add_state("frozen_means", (k, d), "frozen")
        self._add_state("basis", (rank, d), "frozen")
        self._add_state("basis_sv", (rank,), "frozen")
        self._add_state("proj_sq", (k, rank), "second")
        self._add_state("split_sq", (2, rank), "second")
        self._add_state("split_count", (2,), "second")
        self._add_state("centred_sq", (k,), "second")
        self._second_stale = False

    def to(self, device: Any) -> NCAccumulator:
        """Move the state to ``device`` (and keep it there). Returns ``self``."""
        self.device = torch.device(device)
        self._device_fixed = True
        for name, t in self._tensors().items():
            setattr(self, name, t.to(self.device))
        return self

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
        state.update({name: t.clone() for name, t in self._tensors().items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> NCAccumulator:
        """Restore a :meth:`state_dict`; sizes and mode must match. Returns ``self``."""
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
        self.reset()
        if "frozen_means" in state:
            self._declare_second_pass(int(np.shape(state["basis"])[0]))
        for name, default in self._tensors().items():
            if name not in state:
                raise ValueError(f"state has no {name!r}; pass a NCAccumulator.state_dict()")
            t = as_tensor(state[name], name).to(self.device, default.dtype).clone()
            if t.shape != default.shape:
                raise ValueError(
                    f"state[{name!r}] has shape {tuple(t.shape)}, expected {tuple(default.shape)}"
                )
            setattr(self, name, t)
        self.scale = float(state.get("scale", 1.0))
        self.input_eps = float(state.get("input_eps", EPS64))
        self._first_pass_fed = bool(self.counts.any())
        self._second_stale = bool(state.get("second_stale", False))
        for part in state.get("synced", []):
            self._synced[str(part)] = True
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

    def _sums(self) -> torch.Tensor:
        """(K, d) per-class sums, scaled units."""
        return self.shift * self.counts[:, None] + self.shifted_sums

    def _centred(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(sums, centred scatter S or None, centred per-class squared norms), scaled units."""
        sums = self._sums()
        if self.mode == "projected":
            return sums, None, None if self.centred_sq is None else self.centred_sq.clone()
        n, t = self.counts.clamp(min=1.0), self.shifted_sums
        scaled = t / n.sqrt()[:, None]
        scatter = self.shifted_scatter - scaled.T @ scaled
        sq = self.shifted_sq - (t * t).sum(dim=1) / n
        return sums, scatter, sq

    def _first_pass_state(self, shift: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The ``first`` tensors re-expressed around ``shift`` (K, d) (streaming; projected state
        has no shift): the centred statistics plus ``n_k d_k d_k^T`` with ``d_k = mu_k - shift_k``
        (Chan et al.'s pairwise rule once summed), so that accumulators around the same shift
        combine by plain sums."""
        state = self._tensors("first")
        if self.mode == "projected":
            return state
        n = self.counts
        sums, scatter, sq = self._centred()
        delta = sums / n.clamp(min=1.0)[:, None] - shift
        delta = torch.where(n[:, None] > 0, delta, torch.zeros_like(delta))
        scaled = delta * n.sqrt()[:, None]
        state["shifted_sums"] = delta * n[:, None]
        state["shifted_scatter"] = scatter + scaled.T @ scaled
        state["shifted_sq"] = sq + n * (delta * delta).sum(dim=1)
        return state

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

    def _float64(self, x: torch.Tensor, rows: slice, copy: bool = True) -> torch.Tensor:
        """``scale * x[rows]`` in float64: a fresh tensor, or with ``copy=False`` for a caller
        that only reads it, ``x[rows]`` itself when that is float64 and unscaled."""
        z = x[rows].to(torch.float64, copy=copy)
        return z * self.scale if self.scale != 1.0 else z

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
        k, d = self.num_classes, self.dim
        for start in range(0, int(x.shape[0]), _CHUNK):
            rows = slice(start, start + _CHUNK)
            z, yc = self._float64(x, rows, copy=self.mode == "streaming"), y[rows]
            ones = torch.ones(yc.shape[0], dtype=torch.float64, device=self.device)
            batch_counts = torch.zeros(k, dtype=torch.float64, device=self.device)
            batch_counts.index_add_(0, yc, ones)
            if self.mode == "streaming":
                # c_k := this chunk's class-k mean for classes seen for the first time
                sums = torch.zeros(k, d, dtype=torch.float64, device=self.device)
                sums.index_add_(0, yc, z)
                new = (self.counts == 0) & (batch_counts > 0)
                means = sums / batch_counts.clamp(min=1.0)[:, None]
                self.shift = torch.where(new[:, None], means, self.shift)
                z -= self.shift[yc]  # h - c_y
                self.shifted_scatter.addmm_(z.T, z)
                self.shifted_sq.index_add_(0, yc, (z * z).sum(dim=1))
            self.shifted_sums.index_add_(0, yc, z)
            self.counts += batch_counts
        return self

    def update_ood(self, features: Any) -> NCAccumulator:
        """Add out-of-distribution features (B, d), for ``nc5``. Returns ``self``."""
        self._check_unsynced("stats", "update_ood()")
        x = self._features(features, "ood_features")
        for start in range(0, int(x.shape[0]), _CHUNK):
            self.ood_sum += self._float64(x, slice(start, start + _CHUNK)).sum(dim=0)
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
        # tallies survive a restart after new first-pass samples (streaming)
        self._drop_second_pass()
        self._declare_second_pass(r)
        self.frozen_means = means
        self.basis, self.basis_sv = vh[:r].contiguous(), s[:r].contiguous()

    def update_ncc(
        self,
        features: Any,
        labels: Any,
        means: Any = None,
        logits: Any = None,
        weight: Any = None,
        bias: Any = None,
    ) -> NCAccumulator:
        """Second pass over the samples of :meth:`update`, in float64.

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
        ref = own if ref is None else ref
        # Scores of the class-centred sample z = h - mu_y (no large offset in any product):
        # NCC: argmin_k ||h - nu_k||^2 = argmax_k 2 z.m_k + [2 (mu_y - c).m_k - ||m_k||^2] with
        # m_k = nu_k - c; classifier: W h + b = W z + [W mu_y + b]. Brackets: (K, K) per class y.
        centre = ref.mean(dim=0)
        m = ref - centre
        ncc_add = 2.0 * ((own - centre) @ m.T) - (m * m).sum(dim=1)
        cls_add = None if w is None else own @ w.T + (0.0 if b is None else b * self.scale)
        has_cls = z_logits is not None or w is not None
        r = self.basis.shape[0]
        # one product per chunk: the coordinates along the r directions, then 2 z.m_k
        directions = torch.cat([self.basis, 2.0 * m]).T
        # per (class, classifier right/wrong) pair: row 2 y + wrong
        pair_sq = torch.zeros(2 * k, r, dtype=torch.float64, device=self.device)
        pred_ncc = torch.empty(n, dtype=torch.int64, device=self.device)
        pred_cls = torch.empty_like(pred_ncc)
        for start in range(0, n, _CHUNK):
            rows = slice(start, start + _CHUNK)
            yc = y[rows]
            # z = h - mu_y as one product: the one-hot rows pick mu_y exactly, and addmm rounds
            # h - mu_y once, as a subtraction would, without a gathered (B, d) copy of the means
            onehot = torch.nn.functional.one_hot(yc, k).to(torch.float64)
            z = torch.addmm(self._float64(x, rows, copy=False), onehot, own, alpha=-1.0)
            coords = z @ directions
            proj = coords[:, :r]  # coordinates along the class-mean directions
            self.centred_sq.index_add_(0, yc, torch.linalg.vector_norm(z, dim=1).square_())
            pred_ncc[rows] = (coords[:, r:] + ncc_add[yc]).argmax(dim=1)
            pair = 2 * yc
            if has_cls:
                scores = z_logits[rows] if z_logits is not None else z @ w.T + cls_add[yc]
                pred_cls[rows] = scores.argmax(dim=1)
                pair += pred_cls[rows] != yc
            pair_sq.index_add_(0, pair, proj * proj)
        pair_sq = pair_sq.view(k, 2, r)
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

        First-pass statistics combine with Chan et al.'s pairwise rule (both sides re-expressed
        around the pooled means, then summed). Second-pass statistics add up when both
        accumulators froze the same class means; otherwise the merged accumulator needs a new
        second pass for per-class / split NC1 (the tallies still add).
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
        same = self._same_second_pass(other)
        if self.mode == "projected" and not same:
            raise ValueError(
                "cannot merge projected accumulators whose second passes used different "
                "class means; merge after the first pass, before update_ncc()"
            )
        dev = self.device
        n = self.counts + other.counts.to(dev)
        pooled = (self._sums() + other._sums().to(dev)) / n.clamp(min=1.0)[:, None]
        theirs = other._first_pass_state(pooled.to(other.device))
        for name, mine in self._first_pass_state(pooled).items():
            setattr(self, name, mine + theirs[name].to(dev))
        if self.mode == "streaming":
            self.shift = pooled
        parts = ("tally", "second") if same and other.second_pass_started else ("tally",)
        for name, theirs_t in other._tensors(*parts).items():
            setattr(self, name, getattr(self, name) + theirs_t.to(dev))
        if not same:
            self._second_stale = True
        self.input_eps = max(self.input_eps, other.input_eps)
        self._first_pass_fed = self._first_pass_fed or other._first_pass_fed
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

        ``stats``: the first pass (:meth:`update`, :meth:`update_ood`): counts and sums give
        the global means, then every rank's first-pass state re-expressed around them is summed
        (the K-way form of Chan's rule). ``tallies``: the second pass (:meth:`update_ncc`:
        tallies and second-pass statistics, centred on the global means, so a plain sum).

        Guard against reducing twice: each part is reduced once; calling again is a no-op for
        the parts already reduced, and adding local samples to a reduced part raises
        ``ValueError`` (call :meth:`reset` for a new round). Returns ``self``.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        if stats and not self._synced["stats"]:
            counts, sums = _all_sum([self.counts, self._sums()], group)
            pooled = sums / counts.clamp(min=1.0)[:, None]
            self._set(_all_sum_dict(self._first_pass_state(pooled), group))
            if self.mode == "streaming":
                self.shift = pooled
            self._first_pass_fed = True
            self._synced["stats"] = True
        if tallies and not self._synced["second"] and self.second_pass_started:
            self._set(_all_sum_dict(self._tensors("second", "tally"), group))
            self._synced["second"] = True
        return self

    def _set(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            setattr(self, name, t)

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
        parts = self._tensors("first", "shift", "second").values()
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
    """Sum-all-reduce tensors in one flat float64 buffer (on CUDA for NCCL); same devices and
    dtypes back (integer tallies are exact in float64 up to 2**53)."""
    import torch.distributed as dist

    device = tensors[0].device
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    flat = torch.cat([t.reshape(-1).to(device, torch.float64) for t in tensors])
    dist.all_reduce(flat, group=group)
    out, start = [], 0
    for t in tensors:
        part = flat[start : start + t.numel()].reshape(t.shape)
        if not t.is_floating_point():
            part = part.round()
        out.append(part.to(t.device, t.dtype))
        start += t.numel()
    return out


def _all_sum_dict(tensors: dict[str, torch.Tensor], group: Any) -> dict[str, torch.Tensor]:
    return dict(zip(tensors, _all_sum(list(tensors.values()), group), strict=True))
