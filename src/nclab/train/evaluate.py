"""Evaluation passes: loss/accuracy, ECE and neural-collapse metrics on train and test features.

One evaluation = one eval-mode forward pass over the whole training set and one over the test
set (no augmentation). The NC metrics come from :class:`~nclab.metrics.NCAccumulator`
(``compute(W, b)``, ``all_reduce()`` under DDP), fed in one of two ways:

* **kept features (default).** The pass keeps its features and logits (float32, on the compute
  device, in buffers reused from one evaluation to the next: ``N · d · 4`` bytes, 30 MB for
  Fashion-MNIST per-class 500 plus its test set at d = 512).
  Then, in float64, exact per-class counts, sums and scalar scatters (O(N d)) and the
  within-class scatter *restricted to the span of the centred class means* (O(N d K) instead of
  O(N d²)) are loaded into the accumulator with ``load_state_dict``, and the nearest-class-mean
  tallies (ncc_acc, nc4) are computed against the train means without a second forward pass.
  NC1 = tr(Σ_W Σ_B⁺)/K only sees Σ_W through ``v^T Σ_W v`` for v in that span (Σ_B⁺ vanishes on
  its complement), so every metric is the same as feeding the accumulator batch by batch
  (``tests/test_train.py`` checks this against the streaming path); the full d x d scatter,
  3-4x more work than everything else here for d = 512, is never formed.
* **streaming (fallback)**, when the kept features would exceed
  :data:`KEEP_FEATURES_MAX_BYTES`: ``NCAccumulator.update`` per batch, then a second forward
  pass for ``update_ncc``.

Under DDP every rank evaluates its rank-strided shard; counts/sums are all-reduced first (the
projection needs the global means), then the accumulators (``all_reduce``) and the loss sums;
the test logits are gathered (for the ECE and ``predictions.npz``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nclab.calibration import expected_calibration_error
from nclab.metrics import NCAccumulator
from nclab.train.distributed import DistContext

__all__ = [
    "EVAL_BATCH_SIZE",
    "KEEP_FEATURES_MAX_BYTES",
    "EvalResult",
    "Evaluator",
    "NonFiniteFeaturesError",
    "class_sums",
    "means_basis",
    "projected_statistics",
]

#: Batch size of the evaluation passes (eval mode: the result does not depend on it).
EVAL_BATCH_SIZE = 1024
#: Largest feature store kept per pass; bigger passes use the streaming path.
KEEP_FEATURES_MAX_BYTES = 2 * 2**30
#: Rows per chunk for the float64 statistics (bounds the temporaries).
_CHUNK = 1024

Autocast = Callable[[], contextlib.AbstractContextManager[None]]


class NonFiniteFeaturesError(FloatingPointError):
    """The evaluation produced NaN/Inf features or logits."""


@dataclass
class PassOutput:
    """One evaluation pass over a (rank-local) split."""

    labels: Tensor
    logits: Tensor
    features: Tensor | None  # kept features (None: streaming path)
    acc: NCAccumulator | None  # streaming path only
    loss_sum: float = 0.0
    ce_sum: float = 0.0
    correct: float = 0.0
    metric_seconds: float = 0.0

    @property
    def count(self) -> float:
        return float(self.labels.shape[0])


@dataclass
class EvalResult:
    """Metrics of one evaluation (keys of a ``metrics.jsonl`` row, without epoch/lr/seconds),
    the full test logits and labels (CPU), and a timing split (``forward``, ``metrics``)."""

    metrics: dict[str, float | None]
    test_logits: Tensor
    test_labels: Tensor
    timings: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------ statistics


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, _CHUNK):
        yield slice(start, min(n, start + _CHUNK))


class _Scratch:
    """Preallocated float64 chunk buffers: allocating a fresh multi-MB temporary per chunk
    costs page faults that dominate these memory-bound loops."""

    def __init__(self, dim: int, device: torch.device) -> None:
        self.z = torch.empty(_CHUNK, dim, dtype=torch.float64, device=device)
        self.g = torch.empty(_CHUNK, dim, dtype=torch.float64, device=device)

    def centred(self, h: Tensor, y: Tensor, means: Tensor) -> Tensor:
        """``h - means[y]`` in float64 (a view into the scratch buffer)."""
        n = h.shape[0]
        z, g = self.z[:n], self.g[:n]
        z.copy_(h)
        torch.index_select(means, 0, y, out=g)
        return z.sub_(g)

    def shifted(self, h: Tensor, centre: Tensor) -> Tensor:
        """``h - centre`` in float64 (a view into the scratch buffer)."""
        z = self.z[: h.shape[0]]
        z.copy_(h)
        return z.sub_(centre)


def class_sums(h: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class counts (K,) and feature sums (K, d), float64."""
    counts = torch.bincount(y, minlength=num_classes).double()
    sums = torch.zeros(num_classes, h.shape[1], dtype=torch.float64, device=h.device)
    buf = torch.empty(min(_CHUNK, h.shape[0]), h.shape[1], dtype=torch.float64, device=h.device)
    for s in _chunks(h.shape[0]):
        chunk = buf[: s.stop - s.start]
        chunk.copy_(h[s])
        sums.index_add_(0, y[s], chunk)
    return counts, sums


def means_basis(means: Tensor) -> Tensor:
    """(r, d) orthonormal rows spanning the centred class means, ``r = min(K-1, d)``."""
    centred = means - means.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    rank = min(means.shape[0] - 1, means.shape[1])
    return vh[:rank].contiguous()


def projected_statistics(
    h: Tensor,
    y: Tensor,
    num_classes: int,
    basis: Tensor,
    totals: tuple[Tensor, Tensor] | None = None,
    ncc: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Tensor | int]:
    """Sufficient statistics of ``(h, y)`` for :class:`~nclab.metrics.NCAccumulator`, float64:
    exact ``counts``, ``sums`` and ``class_scatter`` (Σ ||h_i - μ_k||² per class), and the
    within-class ``scatter`` projected on the rows of ``basis`` (r, d):
    ``Bᵀ (B Zᵀ Z Bᵀ) B = P S P`` with ``Z = H - μ_y`` (rows centred on their class mean) and
    ``P = Bᵀ B``. ``totals``: ``class_sums(h, y, num_classes)`` if already computed.

    ``ncc = (reference_means, logits)`` adds the nearest-class-mean tallies of
    :meth:`~nclab.metrics.NCAccumulator.update_ncc` (``ncc_*``, ``nc4_*``) in the same pass:
    with ``c`` the mean of the reference means ``ν_k`` and ``m_k = ν_k - c``, the NCC scores
    ``||m_k||² - 2 m_k·(h - c)`` need ``m_k·(h - c) = m_k·z + m_k·(μ_y - c)``, i.e. one more
    (K x d) product on the centred chunk ``z`` that is already in float64."""
    counts, sums = class_sums(h, y, num_classes) if totals is None else totals
    means = sums / counts.clamp(min=1.0)[:, None]
    class_scatter = torch.zeros(num_classes, dtype=torch.float64, device=h.device)
    r = basis.shape[0]
    gram = torch.zeros(r, r, dtype=torch.float64, device=h.device)
    rows = basis
    if ncc is not None:
        ref, logits = ncc
        m = ref - ref.mean(dim=0)
        offset = m @ (means - ref.mean(dim=0)).T  # (K, K): m_k · (μ_l - c)
        sq = (m * m).sum(dim=1)
        rows = torch.cat([basis, m])
        correct = mismatch = 0
    scratch = _Scratch(h.shape[1], h.device)
    for s in _chunks(h.shape[0]):
        z = scratch.centred(h[s], y[s], means)
        p = rows @ z.T  # (r [+ K], chunk)
        gram += p[:r] @ p[:r].T
        if ncc is not None:
            dots = p[r:].add_(offset[:, y[s]])  # m_k · (h - c)
            pred = dots.mul_(-2.0).add_(sq[:, None]).argmin(dim=0)
            correct += int((pred == y[s]).sum())
            mismatch += int((pred != logits[s].argmax(dim=1)).sum())
        class_scatter.index_add_(0, y[s], z.square_().sum(dim=1))
    out: dict[str, Tensor | int] = {
        "counts": counts,
        "sums": sums,
        "class_scatter": class_scatter,
        "scatter": basis.T @ gram @ basis,
    }
    if ncc is not None:
        n = int(h.shape[0])
        out.update(ncc_total=n, ncc_correct=correct, nc4_total=n, nc4_mismatch=mismatch)
    return out


# ------------------------------------------------------------------------------ evaluator


@dataclass
class Evaluator:
    """Evaluates a :class:`~nclab.models.FeatureClassifier` on fixed train and test tensors
    (the rank-local shards under DDP; ``num_test`` is the full test-set size)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_test: int
    num_classes: int
    loss_fn: nn.Module
    ctx: DistContext
    autocast: Autocast = contextlib.nullcontext
    channels_last: bool = False
    batch_size: int = EVAL_BATCH_SIZE
    keep_limit_bytes: int = KEEP_FEATURES_MAX_BYTES
    _buffers: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, model: nn.Module) -> EvalResult:
        """Evaluate ``model`` (put in eval mode; its previous mode is restored)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self._evaluate(model)
        finally:
            model.train(was_training)

    def _evaluate(self, model: nn.Module) -> EvalResult:
        t0 = time.perf_counter()
        for name, param in model.classifier.named_parameters():
            if not bool(torch.isfinite(param).all()):
                raise NonFiniteFeaturesError(f"the classifier {name} contains NaN or Inf values")
        train = self._pass(model, self.x_train, self.y_train, "train")
        test = self._pass(model, self.x_test, self.y_test, "test")
        t1 = time.perf_counter()
        in_pass = train.metric_seconds + test.metric_seconds  # streaming updates in the passes
        weight = model.classifier.weight.detach().double()
        bias = model.classifier.bias
        bias = None if bias is None else bias.detach().double()

        train_acc, test_acc, recompute = self._accumulators(model, train, test)
        train_nc = train_acc.compute(weight, bias).as_dict()
        test_nc = test_acc.compute(weight, bias).as_dict()
        sums = self.ctx.sum(
            [train.loss_sum, train.ce_sum, train.correct, train.count]
            + [test.loss_sum, test.ce_sum, test.correct, test.count]
        )
        test_logits = self.ctx.gather_strided(test.logits.cpu().clone(), self.num_test)
        test_labels = self.ctx.gather_strided(test.labels.cpu().clone(), self.num_test)
        ece = expected_calibration_error(test_logits, test_labels, n_bins=15)
        t2 = time.perf_counter()

        metrics: dict[str, float | None] = {
            "train_loss": sums[0] / sums[3],
            "train_ce": sums[1] / sums[3],
            "train_acc": sums[2] / sums[3],
            "train_error": 1.0 - sums[2] / sums[3],
            "test_loss": sums[4] / sums[7],
            "test_ce": sums[5] / sums[7],
            "test_acc": sums[6] / sums[7],
            "test_error": 1.0 - sums[6] / sums[7],
            "ece": ece,
            **train_nc,
            **{f"test_{k}": v for k, v in test_nc.items()},
        }
        timings = {
            "forward": (t1 - t0) - in_pass + recompute,
            "metrics": in_pass + (t2 - t1) - recompute,
        }
        return EvalResult(metrics, test_logits, test_labels, timings)

    # ------------------------------------------------------------------ passes

    def _batches(self, x: Tensor, y: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, int(x.shape[0]), self.batch_size):
            xb = x[start : start + self.batch_size]
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, y[start : start + self.batch_size]

    def _forward(self, model: nn.Module, xb: Tensor) -> tuple[Tensor, Tensor]:
        with self.autocast():
            h = model.features(xb)
            logits = model.classifier(h)
        return h.float(), logits.float()

    def _buffer(self, key: str, rows: int, cols: int, device: torch.device) -> Tensor:
        """A float32 (rows, cols) buffer reused across evaluations (no re-allocation)."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape != (rows, cols) or buf.device != device:
            buf = torch.empty(rows, cols, dtype=torch.float32, device=device)
            self._buffers[key] = buf
        return buf

    def _pass(self, model: nn.Module, x: Tensor, y: Tensor, split: str) -> PassOutput:
        n, dim = int(x.shape[0]), int(model.classifier.in_features)
        keep = n * dim * 4 <= self.keep_limit_bytes
        out = PassOutput(
            labels=y,
            logits=self._buffer(f"{split}_logits", n, self.num_classes, x.device),
            features=self._buffer(f"{split}_features", n, dim, x.device) if keep else None,
            acc=None if keep else NCAccumulator(self.num_classes, dim),
        )
        zero = torch.zeros((), dtype=torch.float64, device=x.device)
        loss_sum, ce_sum, correct = zero, zero, zero
        start = 0
        for xb, yb in self._batches(x, y):
            h, logits = self._forward(model, xb)
            loss_sum = loss_sum + self.loss_fn(logits, yb).double() * yb.shape[0]
            ce_sum = ce_sum + F.cross_entropy(logits, yb, reduction="sum").double()
            correct = correct + (logits.argmax(1) == yb).sum()
            rows = slice(start, start + yb.shape[0])
            start = rows.stop
            out.logits[rows] = logits
            if out.features is not None:
                out.features[rows] = h
            else:
                if not bool(torch.isfinite(h).all()):  # the accumulator would raise ValueError
                    raise NonFiniteFeaturesError("the evaluation features contain NaN or Inf")
                t = time.perf_counter()
                out.acc.update(h, yb)
                out.metric_seconds += time.perf_counter() - t
        out.loss_sum, out.ce_sum, out.correct = float(loss_sum), float(ce_sum), float(correct)
        return out

    # ------------------------------------------------------------------ accumulators

    def _class_totals(self, h: Tensor, y: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """Rank-local (counts, sums) and the global class means (all-reduced)."""
        local = class_sums(h, y, self.num_classes)
        k, d = local[1].shape
        flat = self.ctx.all_sum(torch.cat([local[0], local[1].reshape(-1)]))
        counts, sums = flat[:k], flat[k:].reshape(k, d)
        if not torch.isfinite(sums).all():
            raise NonFiniteFeaturesError("the evaluation features contain NaN or Inf values")
        return local, sums / counts.clamp(min=1.0)[:, None]

    def _accumulators(
        self, model: nn.Module, train: PassOutput, test: PassOutput
    ) -> tuple[NCAccumulator, NCAccumulator, float]:
        """NC accumulators of the train and test passes, NCC-tallied against the train means
        and reduced over the ranks, and the seconds spent in a second forward pass."""
        if train.features is None or test.features is None:
            return self._streaming_accumulators(model, train, test)
        splits = []
        for out in (train, test):
            h, y = out.features, out.labels
            splits.append((h, y, out.logits, *self._class_totals(h, y)))
        train_means = splits[0][4]
        accs = []
        for h, y, logits, local, means in splits:
            basis = means_basis(means)
            stats = projected_statistics(
                h, y, self.num_classes, basis, local, ncc=(train_means, logits)
            )
            state = {k: v.cpu().numpy() if isinstance(v, Tensor) else v for k, v in stats.items()}
            acc = NCAccumulator(self.num_classes, int(h.shape[1]))
            acc.load_state_dict({"num_classes": self.num_classes, "dim": acc.dim, **state})
            accs.append(acc.all_reduce())
        return accs[0], accs[1], 0.0

    def _streaming_accumulators(
        self, model: nn.Module, train: PassOutput, test: PassOutput
    ) -> tuple[NCAccumulator, NCAccumulator, float]:
        """Fallback: accumulators fed batch by batch; a second forward pass (its seconds are
        returned) for the NCC tallies."""
        train.acc.all_reduce()
        test.acc.all_reduce()
        means = train.acc.class_means()
        recompute = 0.0
        for out, x in ((train, self.x_train), (test, self.x_test)):
            tally = NCAccumulator(self.num_classes, out.acc.dim)
            start = 0
            for xb, yb in self._batches(x, out.labels):
                t = time.perf_counter()
                h = self._forward(model, xb)[0]
                recompute += time.perf_counter() - t
                logits = out.logits[start : start + yb.shape[0]]
                start += yb.shape[0]
                tally.update_ncc(h, yb, means=means, logits=logits)
            out.acc.merge(tally.all_reduce())
        return train.acc, test.acc, recompute
