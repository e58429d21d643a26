"""Evaluation passes: loss/accuracy, ECE and neural-collapse metrics on train and test features.

One evaluation = one eval-mode forward pass over the whole training set and one over the test
set (no augmentation). The NC metrics come from :class:`~nclab.metrics.NCAccumulator`
(``compute(W, b)``, ``all_reduce()`` under DDP), fed in one of two ways:

* **kept features (default).** The pass keeps its features (float64) and logits (float32) on
  the compute device, in buffers reused from one evaluation to the next (``N · d · 8`` bytes,
  60 MB for Fashion-MNIST per-class 500 plus its test set at d = 512), and feeds each batch to
  a ``mode="projected"`` accumulator on the same device: class sums (pass 1, batch by batch),
  then the within-class statistics along the class-mean directions plus the nearest-class-mean
  tallies against the train means (pass 2 over the kept features, no second forward pass).
  O(N d K) float64 work instead of the d x d scatter's O(N d²), exact for every metric (see
  docs/metrics.md).
* **streaming (fallback)**, when the kept features would exceed
  :data:`KEEP_FEATURES_MAX_BYTES`: ``mode="streaming"`` accumulators fed per batch, then a
  second forward pass for ``update_ncc``.

Under label noise (``y_train_clean``) the loss and accuracy use the labels trained on and the NC
statistics the clean labels; ``train_acc_clean``, ``noisy_fit`` and ``noisy_clean_fit`` are added.
With ``nc_layers`` the train pass also feeds :class:`~nclab.layers.LayerNC` through forward hooks
(``layer_nc1/<name>``, ``layer_nc2/<name>``).

Under DDP every rank evaluates its rank-strided shard; the accumulators are all-reduced after
each pass (the second pass needs the global means), then the loss sums; the test logits are
gathered (for the calibration metrics and ``predictions.npz``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nclab.calibration import calibration_metrics
from nclab.hooks import eval_mode
from nclab.layers import LayerNC, resolve_taps
from nclab.losses import CrossEntropyLoss
from nclab.metrics import NCAccumulator
from nclab.train.distributed import DistContext

__all__ = [
    "EVAL_BATCH_SIZE",
    "KEEP_FEATURES_MAX_BYTES",
    "EvalResult",
    "Evaluator",
    "NonFiniteFeaturesError",
]

#: Batch size of the evaluation passes (eval mode: the result does not depend on it).
EVAL_BATCH_SIZE = 1024
#: Largest feature store kept per pass; bigger passes use the streaming path.
KEEP_FEATURES_MAX_BYTES = 2 * 2**30
#: Calibration metrics of the test logits logged besides ``ece`` (see nclab.calibration).
_CALIBRATION_KEYS = ("mce", "ece_adaptive", "ece_classwise", "brier", "top5_acc")
#: NCMetrics fields left out of metrics.jsonl, whose every value must be a finite number:
#: undefined in some epochs (nc1_incorrect at 100% accuracy, bias_collapse without a bias,
#: nc5 without out-of-distribution data) or overflowing while class means are nearly parallel
#: (the Riesz kernel ||u_k - u_l||^-(d-2)). NCAccumulator.compute() gives them on demand.
_NOT_LOGGED = ("hsu_riesz_mean", "hsu_riesz_var", "bias_collapse", "nc1_correct",
               "nc1_incorrect", "nc5")  # fmt: skip

Autocast = Callable[[], contextlib.AbstractContextManager[None]]


class NonFiniteFeaturesError(FloatingPointError):
    """The evaluation produced NaN/Inf features or logits."""


@dataclass
class PassOutput:
    """One evaluation pass over a (rank-local) split."""

    labels: Tensor
    logits: Tensor
    features: Tensor | None  # kept features, float64 (None: streaming path)
    acc: NCAccumulator  # first pass fed batch by batch
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
    #: ``{"train": {...}, "test": {...}}``: per-class ``count``, ``variability`` (σ_k²) and
    #: ``nc1`` (tr(Σ_W^k Σ_B⁺)), lists of length K (:meth:`NCAccumulator.per_class`)
    per_class: dict[str, dict[str, list[float] | None]] = field(default_factory=dict)


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
    loss_fn: nn.Module  # mean loss of (logits, labels)
    ctx: DistContext
    autocast: Autocast = contextlib.nullcontext
    channels_last: bool = False
    batch_size: int = EVAL_BATCH_SIZE
    keep_limit_bytes: int = KEEP_FEATURES_MAX_BYTES
    #: clean training labels under label noise (``y_train``: the labels trained on): the NC
    #: metrics use them, and ``train_acc_clean`` / ``noisy_fit`` / ``noisy_clean_fit`` are added
    y_train_clean: Tensor | None = None
    #: ``--nc-layers``: taps whose NC1/NC2 (train split) are added as ``layer_nc1/<name>``,
    #: ``layer_nc2/<name>`` (:mod:`nclab.layers`): a spec for
    #: :func:`~nclab.layers.resolve_taps` or a name -> module mapping
    nc_layers: str | Mapping[str, nn.Module] | None = None
    _buffers: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)
    _layer_nc: tuple[int, LayerNC] | None = field(default=None, init=False, repr=False)

    def __call__(self, model: nn.Module) -> EvalResult:
        """Evaluate ``model`` (put in eval mode; its modules' previous modes are restored)."""
        with eval_mode(model), torch.no_grad():
            return self._evaluate(model)

    def _layers(self, model: nn.Module) -> LayerNC | None:
        if self.nc_layers is None:
            return None
        if self._layer_nc is None or self._layer_nc[0] != id(model):
            spec = self.nc_layers
            taps = dict(spec) if isinstance(spec, Mapping) else resolve_taps(model, spec)
            layer_nc = LayerNC(taps, self.num_classes)
            # a tap on the body of a FeatureClassifier gives model.features(x): its NC1/NC2
            # are the train metrics computed anyway, not recomputed
            body = getattr(model, "body", None)
            layer_nc.skip = frozenset(n for n, m in taps.items() if m is body)
            self._layer_nc = (id(model), layer_nc)
        return self._layer_nc[1]

    def _evaluate(self, model: nn.Module) -> EvalResult:
        t0 = time.perf_counter()
        for name, param in model.classifier.named_parameters():
            if not bool(torch.isfinite(param).all()):
                raise NonFiniteFeaturesError(f"the classifier {name} contains NaN or Inf values")
        layer_nc = self._layers(model)
        train = self._pass(
            model, self.x_train, self.y_train, "train", self.y_train_clean, layer_nc
        )  # fmt: skip
        test = self._pass(model, self.x_test, self.y_test, "test")
        t1 = time.perf_counter()
        in_pass = train.metric_seconds + test.metric_seconds  # first-pass updates in the passes
        weight = model.classifier.weight.detach().double()
        bias = model.classifier.bias
        bias = None if bias is None else bias.detach().double()

        recompute = self._accumulators(model, train, test)
        train_acc, test_acc = train.acc, test.acc
        train_nc = _logged(train_acc.compute(weight, bias).as_dict())
        test_all = test_acc.compute(weight, bias).as_dict()
        test_nc = _logged(test_all)
        per_class = {
            "train": train_acc.per_class().as_dict(),
            "test": test_acc.per_class().as_dict(),
        }
        sums = self.ctx.sum(
            [train.loss_sum, train.ce_sum, train.correct, train.count]
            + [test.loss_sum, test.ce_sum, test.correct, test.count]
        )
        test_logits = self.ctx.gather_strided(test.logits.cpu().clone(), self.num_test)
        test_labels = self.ctx.gather_strided(test.labels.cpu().clone(), self.num_test)
        calib = calibration_metrics(test_logits, test_labels, n_bins=15)
        noise = self._noise_metrics(train)
        layers = {}
        if layer_nc is not None:
            same = (train_nc["nc1"], train_nc["nc2_h"])
            layers = layer_nc.compute(dict.fromkeys(layer_nc.skip, same))
        paper = _paper_extras(test_all, test_logits, test_labels)
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
            "ece": calib["ece"],
            # the rest of the calibration set (test_ce is the NLL)
            **{key: calib[key] for key in _CALIBRATION_KEYS},
            **train_nc,
            **{f"test_{k}": v for k, v in test_nc.items()},
            **noise,
            **layers,
            **paper,
        }
        timings = {
            "forward": (t1 - t0) - in_pass + recompute,
            "metrics": in_pass + (t2 - t1) - recompute,
        }
        return EvalResult(metrics, test_logits, test_labels, timings, per_class)

    def _noise_metrics(self, train: PassOutput) -> dict[str, float | None]:
        """Under label noise: accuracy on the clean labels and, over the flipped samples, the
        fractions predicted as their noisy label (memorised) and as their clean label."""
        if self.y_train_clean is None:
            return {}
        pred = train.logits.argmax(1)
        clean = self.y_train_clean
        flipped = clean != self.y_train
        counts = self.ctx.sum(
            [
                float((pred == clean).sum()),
                float(clean.shape[0]),
                float((flipped & (pred == self.y_train)).sum()),
                float((flipped & (pred == clean)).sum()),
                float(flipped.sum()),
            ]
        )
        n_flipped = counts[4]
        return {
            "train_acc_clean": counts[0] / counts[1],
            "noisy_fit": counts[2] / n_flipped if n_flipped else None,
            "noisy_clean_fit": counts[3] / n_flipped if n_flipped else None,
        }

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

    def _buffer(
        self,
        key: str,
        rows: int,
        cols: int,
        device: torch.device,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        """A (rows, cols) buffer reused across evaluations (no re-allocation)."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape != (rows, cols) or buf.device != device:
            buf = torch.empty(rows, cols, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf

    def _pass(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        split: str,
        nc_labels: Tensor | None = None,
        layer_nc: LayerNC | None = None,
    ) -> PassOutput:
        """One pass: loss and accuracy against ``y``; the NC statistics (and ``layer_nc``'s)
        against ``nc_labels`` (default ``y``). The accumulator takes each batch while it is
        fresh in the cache (its first pass)."""
        n, dim = int(x.shape[0]), int(model.classifier.in_features)
        keep = n * dim * 8 <= self.keep_limit_bytes
        out = PassOutput(
            labels=y if nc_labels is None else nc_labels,
            logits=self._buffer(f"{split}_logits", n, self.num_classes, x.device, torch.float32),
            features=self._buffer(f"{split}_features", n, dim, x.device) if keep else None,
            acc=self._accumulator("projected" if keep else "streaming", dim, x.device),
        )
        start = 0
        layers = contextlib.nullcontext() if layer_nc is None else layer_nc.recording(n, x.device)
        with layers:
            for xb, yb in self._batches(x, y):
                h, logits = self._forward(model, xb)
                rows = slice(start, start + yb.shape[0])
                start = rows.stop
                out.logits[rows] = logits
                if layer_nc is not None:
                    layer_nc.update(out.labels[rows])
                if out.features is not None:
                    out.features[rows] = h  # float64: the accumulator reads it without a copy
                    h = out.features[rows]
                elif not bool(torch.isfinite(h).all()):  # the streaming accumulator would raise
                    raise NonFiniteFeaturesError("the evaluation features contain NaN or Inf")
                t = time.perf_counter()
                out.acc.update(h, out.labels[rows])
                out.metric_seconds += time.perf_counter() - t
        if n:  # loss, cross-entropy and accuracy of the whole pass at once, in float64
            z = out.logits.double()
            out.ce_sum = float(F.cross_entropy(z, y, reduction="sum"))
            is_ce = isinstance(self.loss_fn, CrossEntropyLoss)
            out.loss_sum = out.ce_sum if is_ce else float(self.loss_fn(z, y)) * n
            out.correct = float((z.argmax(1) == y).sum())
        return out

    # ------------------------------------------------------------------ accumulators

    def _accumulator(self, mode: str, dim: int, device: torch.device) -> NCAccumulator:
        # one sync per pass is paid below (finite sums); none per batch
        return NCAccumulator(self.num_classes, dim, mode=mode, device=device, validate=False)

    def _accumulators(self, model: nn.Module, train: PassOutput, test: PassOutput) -> float:
        """Reduce the first passes over the ranks, then NCC-tally both splits against the train
        means (second pass: over the kept features, else a second forward pass) and reduce
        again. Returns the seconds spent in a second forward pass."""
        for out in (train, test):
            out.acc.all_reduce()  # NaN/Inf features surface in the class sums
            if not bool(torch.isfinite(out.acc.shifted_sums).all()):
                raise NonFiniteFeaturesError("the evaluation features contain NaN or Inf values")
        recompute = 0.0
        for out, x in ((train, self.x_train), (test, self.x_test)):
            # the test split is scored with the train means (frozen by the train pass, scale 1)
            means = None if out is train else train.acc.frozen_means
            if out.features is not None:
                out.acc.update_ncc(out.features, out.labels, means=means, logits=out.logits)
            else:
                start = 0
                for xb, yb in self._batches(x, out.labels):
                    t = time.perf_counter()
                    h = self._forward(model, xb)[0]
                    recompute += time.perf_counter() - t
                    logits = out.logits[start : start + yb.shape[0]]
                    start += yb.shape[0]
                    out.acc.update_ncc(h, yb, means=means, logits=logits)
            out.acc.all_reduce()
        return recompute


def _logged(metrics: dict[str, float | None]) -> dict[str, float | None]:
    return {k: v for k, v in metrics.items() if k not in _NOT_LOGGED}


def _paper_extras(
    test_nc: dict[str, float | None], logits: Tensor, labels: Tensor
) -> dict[str, float | None]:
    """Per-epoch quantities of Guo et al. (2024)'s figures: test NC1 of the correctly and of the
    incorrectly classified test samples (the accumulator's split NC1: each subset's scatter
    around its true class's mean, against the spread of all class means; left out when a
    subset is empty), and ECE after temperature scaling (T fitted by NLL on the report's fit
    half of the test set, ECE on the other half, the split of :mod:`nclab.report.summary`)."""
    import math

    from nclab.calibration import (
        expected_calibration_error,
        fit_temperature,
        split_for_temperature,
    )

    out: dict[str, float | None] = {}  # a value that is undefined this epoch is left out
    for key in ("nc1_correct", "nc1_incorrect"):
        value = test_nc.get(key)
        if value is not None and math.isfinite(value):
            out[f"test_{key}"] = float(value)
    if labels.shape[0] >= 4:
        fit, ev = split_for_temperature(int(labels.shape[0]), 0.5, seed=0)
        z, y = logits.double().numpy(), labels.numpy()
        t = fit_temperature(z[fit], y[fit])
        out["temperature"] = t
        out["ece_ts"] = expected_calibration_error(z[ev] / t, y[ev])
    return out
