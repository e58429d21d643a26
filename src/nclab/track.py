"""NC tracking for any PyTorch training loop: :class:`NCTracker`.

A researcher who trains with their own loop gets the same run directory as ``nclab train``::

    from nclab.track import NCTracker

    tracker = NCTracker("runs/my_ls", model=model, layer=model.fc, train=train_eval_loader,
                        test=test_loader, num_classes=10, loss="ls", smoothing=0.1, seed=0)
    for epoch in range(1, epochs + 1):
        ...                                            # the user's own training
        tracker.log_epoch(epoch, lr=lr, running_loss=avg_loss)
    tracker.finish()

and ``nclab report runs/my_ce runs/my_ls`` builds the report from it. The evaluation is the one
``nclab train`` runs (:class:`nclab.train.evaluate.Evaluator`), the files are written by the
same atomic writers (:mod:`nclab.runs.files`), so a row has the same keys and, for the same
weights and data, the same values as a row of ``nclab train``. See ``docs/integrations.md``.

How the user's model is evaluated: the input of ``layer`` (the final ``nn.Linear``) is the
feature vector ``h``, captured by a forward pre-hook during ``model(x)`` (as
:func:`nclab.metrics.collect` does), and the logits are ``layer(h)``; the first evaluation
checks that these equal ``model(x)``. The ``train`` and ``test`` loaders are read once, at the
first evaluation, into tensors on the model's device (as ``nclab train`` holds its data), so
pass loaders without random augmentation, and subsets when the full sets do not fit.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import platform
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nclab import __version__
from nclab.hooks import capture, eval_mode
from nclab.layers import resolve_taps
from nclab.losses import get_loss
from nclab.runs import lifecycle
from nclab.runs.files import RunFiles, append_per_class, append_row, lock_directory, read_json
from nclab.train.distributed import DistContext
from nclab.train.evaluate import Evaluator

__all__ = ["NCTracker"]

#: Keys of ``config.json`` that the tracker sets itself (``config=`` may not override them).
_TRACKER_KEYS = ("loss", "smoothing", "seed", "num_classes", "nc_layers")


class _LayerInputModel(nn.Module):
    """The user's model seen as nclab's ``FeatureClassifier``: ``features(x)`` is the input of
    ``layer`` during ``model(x)`` (flattened to (B, d)); ``classifier`` is ``layer``."""

    def __init__(self, model: nn.Module, layer: nn.Linear) -> None:
        super().__init__()
        self.model = model
        self.classifier = layer
        self.check_output = True  # the first batch checks model(x) == layer(h)

    def features(self, x: Tensor) -> Tensor:
        with capture({"classifier": self.classifier}, inputs=True) as captured:
            output = self.model(x)
        if "classifier" not in captured:
            raise ValueError(
                "the given layer was not called during model(x); pass the classifier module "
                "whose input is the feature vector (e.g. layer=model.fc)"
            )
        h = captured["classifier"].flatten(1)
        if self.check_output:
            self.check_output = False
            logits = self.classifier(h)
            if not (
                isinstance(output, Tensor)
                and output.shape == logits.shape
                and torch.allclose(output.float(), logits.float(), rtol=1e-4, atol=1e-5)
            ):
                raise ValueError(
                    "model(x) is not layer(features): pass as layer the last module of the "
                    "model, the nn.Linear that produces its logits"
                )
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _dist_context(device: torch.device) -> DistContext:
    """Rank and world size of an initialised ``torch.distributed`` group (else one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return DistContext()
    nccl = dist.get_backend() == "nccl"
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=(device.index or 0) if device.type == "cuda" else 0,
        comm_device=device if nccl else torch.device("cpu"),
    )


def _read_split(
    batches: Iterable[Any], name: str, device: torch.device, ctx: DistContext
) -> tuple[Tensor, Tensor, int]:
    """All ``(x, y)`` batches of a loader as two tensors on ``device``: this rank's
    rank-strided shard (every row under one process), and the total row count."""
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    total = 0
    for batch in batches:
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            raise ValueError(
                f"the {name} loader must yield (inputs, labels) pairs, got {type(batch).__name__}"
            )
        x, y = torch.as_tensor(batch[0]), torch.as_tensor(batch[1]).long().reshape(-1)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"a {name} batch has {x.shape[0]} inputs but {y.shape[0]} labels; the loader "
                "must yield (inputs, labels) of equal length"
            )
        keep = torch.arange(total, total + len(y)) % ctx.world_size == ctx.rank
        total += len(y)
        xs.append(x[keep].to(device))
        ys.append(y[keep].to(device))
    if total == 0:
        raise ValueError(f"the {name} loader yielded no samples")
    return torch.cat(xs), torch.cat(ys), total


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _wandb_options(wandb: Any) -> Any:
    """NCTracker's ``wandb`` argument as :class:`nclab.train.loggers.WandbOptions` (or None)."""
    if wandb is False or wandb is None:
        return None
    from nclab.train.loggers import WandbOptions, require_wandb

    if wandb is True:
        options = WandbOptions()
    elif isinstance(wandb, Mapping):
        unknown = set(wandb) - {"project", "group", "name"}
        if unknown:
            raise ValueError(
                f"wandb= accepts the keys project, group, name; got {', '.join(sorted(unknown))}"
            )
        bad = [k for k, v in wandb.items() if v is not None and not isinstance(v, str)]
        if bad:
            raise ValueError(f"wandb[{bad[0]!r}] must be a string, got {wandb[bad[0]]!r}")
        options = WandbOptions(**wandb)
    else:
        raise ValueError(
            f"wandb must be True, False or a dict of project/group/name, got {wandb!r}"
        )
    require_wandb()
    return options


class NCTracker:
    """Evaluate a model after each epoch of any training loop and write an ``nclab`` run
    directory (``config.json``, ``metrics.jsonl``/``.csv``, ``predictions.npz``, ``DONE``).

    Parameters
    ----------
    run_dir:
        Output directory. A directory that already holds a run is refused unless
        ``overwrite=True`` (start over) or ``resume=True`` (continue it: rows from the first
        epoch logged now on are replaced).
    model, layer:
        The model and its final ``nn.Linear`` (``model(x) == layer(h)``; ``h``, the input of
        ``layer``, is the feature vector). A ``DistributedDataParallel`` model is unwrapped.
    train, test:
        DataLoaders (or any iterables) of ``(inputs, labels)`` batches, without augmentation:
        the training set as evaluated for NC1-NC4 and the test set. Under DDP pass the full
        sets on every rank; each rank evaluates its rank-strided shard.
    num_classes, loss, smoothing, seed:
        K; the training loss (``ce``, ``ls``, ``focal``, ``mse``; :func:`nclab.losses.get_loss`)
        and δ, which give the ``train_loss``/``test_loss`` columns and the report's grouping
        (CE vs LS δ); the seed (the report's repeats).
    config:
        Further JSON-able settings recorded in ``config.json`` (optimiser, model name, ...).
    tensorboard:
        Also write every logged scalar as TensorBoard events in ``run_dir``
        (needs ``pip install nclab[tensorboard]``).
    wandb:
        Also log every row and the config to Weights & Biases (files in ``run_dir/wandb``;
        needs ``pip install nclab[wandb]``): ``True``, or a mapping with any of ``project``,
        ``group``, ``name`` (default: project ``nclab``, the run directory's name). Tags as
        TensorBoard's: ``train/…``, ``test/…`` (:mod:`nclab.train.loggers`).
    layers:
        Collapse across layers: module names of ``model`` (``named_modules()`` paths, e.g.
        ``["layer1", "layer2.0"]``; on an nclab model also its tap names or ``"all"``) whose
        outputs' NC1 and NC2 (training set; maps globally average-pooled) are logged each
        epoch as ``layer_nc1/<name>`` and ``layer_nc2/<name>`` (:mod:`nclab.layers`).

    Under ``torch.distributed`` every rank must call :meth:`log_epoch` and :meth:`finish`;
    statistics are reduced over the ranks and rank 0 writes the files.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        model: nn.Module,
        layer: nn.Module,
        train: Iterable[Any],
        test: Iterable[Any],
        num_classes: int,
        loss: str = "ce",
        smoothing: float = 0.0,
        seed: int = 0,
        config: Mapping[str, Any] | None = None,
        tensorboard: bool = False,
        wandb: bool | Mapping[str, str] = False,
        overwrite: bool = False,
        resume: bool = False,
        layers: Sequence[str] | None = None,
    ) -> None:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(layer, nn.Linear):
            raise ValueError(
                f"layer must be the model's final nn.Linear (e.g. model.fc), got "
                f"{type(layer).__name__}"
            )
        if not any(m is layer for m in model.modules()):
            raise ValueError("layer is not a module of model; pass e.g. layer=model.fc")
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
            raise TypeError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        num_classes = int(num_classes)  # numpy integers too
        if num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if layer.out_features != num_classes:
            raise ValueError(
                f"layer has {layer.out_features} outputs but num_classes is {num_classes}"
            )
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other; pick one")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.loss_fn = get_loss(loss, num_classes, smoothing)  # raises on a bad loss or δ
        if isinstance(layers, str):
            layers = [layers]
        # --nc-layers: modules of `model` by their named_modules() path (or, on a built-in
        # model, its tap names / "all"); NC1 and NC2 of their outputs become layer_nc* columns
        self.layers = resolve_taps(model, None if layers is None else list(layers))
        if tensorboard:
            from nclab.train.tensorboard import require_tensorboard

            require_tensorboard()
        self._wandb = _wandb_options(wandb)
        extra = dict(config or {})
        clash = [k for k in _TRACKER_KEYS if k in extra]
        if clash:
            raise ValueError(
                f"config must not set {', '.join(clash)}: pass them as NCTracker arguments"
            )
        for key, value in extra.items():
            try:
                json.dumps(value, default=lambda o: os.fspath(o))  # paths are written as text
            except (TypeError, ValueError):
                raise ValueError(
                    f"config[{key!r}] is a {type(value).__name__}, which config.json cannot "
                    "hold; give numbers, strings, lists or dicts of them"
                ) from None
        self.model, self.layer = model, layer
        self.train_batches, self.test_batches = train, test
        self.num_classes = num_classes
        self.settings: dict[str, Any] = {
            "loss": str(loss).lower(),
            "smoothing": float(smoothing),
            "seed": int(seed),
            **extra,
        }
        if self.layers:
            self.settings["nc_layers"] = ",".join(self.layers)
        self.files = RunFiles(Path(run_dir))
        lifecycle.refuse_system_folder(self.files.root, "run_dir")
        self._check_run_dir(overwrite, resume)
        self.overwrite, self.resume = overwrite, resume
        self.tensorboard = tensorboard
        self._writer: Any = None
        self._evaluator: Evaluator | None = None
        self._adapter = _LayerInputModel(model, layer)
        self._ctx = DistContext()
        self._last: Any = None
        self._last_time = time.perf_counter()
        self._started = False
        self._closed = False
        self._lock = contextlib.ExitStack()
        self.rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ run directory

    def _check_run_dir(self, overwrite: bool, resume: bool) -> None:
        """Checked when the tracker is made and again once the folder is locked (another
        tracker may have written a run there in between)."""
        root = self.files.root
        if root.exists() and not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a directory; choose another run_dir")
        if overwrite:
            lifecycle.check_overwritable(self.files, "overwrite=True")
            return
        self.files.refuse_links()
        if not self.files.config.is_file():
            present = self.files.present()
            if present:
                names = ", ".join(str(p.relative_to(root)) for p in present)
                raise FileExistsError(
                    f"{root} holds run files ({names}) but no config.json; pass overwrite=True "
                    "to discard them, or choose another run_dir"
                )
            return
        if not resume:
            raise FileExistsError(
                f"{root} already holds a run; pass resume=True to continue it or "
                "overwrite=True to start over (or choose another run_dir)"
            )
        saved = read_json(self.files.config)
        keys = ("loss", "smoothing", "seed", "nc_layers")
        differ = [k for k in keys if saved.get(k) != self.settings.get(k)]
        if differ:
            raise ValueError(
                f"cannot resume {root}: it was tracked with a different "
                f"{', '.join(differ)}; use overwrite=True to start over"
            )

    def _start(self, first_epoch: int) -> None:
        """Read the data, build the evaluator, prepare the directory (rank 0)."""
        first = next(iter(self.model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
        self._ctx = _dist_context(device)
        x_train, y_train, n_train = _read_split(self.train_batches, "train", device, self._ctx)
        x_test, y_test, n_test = _read_split(self.test_batches, "test", device, self._ctx)
        for name, y in (("train", y_train), ("test", y_test)):
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(
                    f"the {name} labels must lie in [0, {self.num_classes - 1}] "
                    f"(num_classes={self.num_classes})"
                )
        self._evaluator = Evaluator(
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            num_test=n_test,
            num_classes=self.num_classes,
            loss_fn=self.loss_fn,
            ctx=self._ctx,
            nc_layers=self.layers or None,
        )
        if self._ctx.is_main:
            # one writer per run directory, as nclab train (released by close()/finish())
            self._lock.enter_context(lock_directory(self.files.root))
            try:
                self._check_run_dir(self.overwrite, self.resume)  # again, now that it is ours
                self._prepare_files(first_epoch, n_train, n_test, device, (x_train, y_train))
            except BaseException:
                self._lock.close()
                raise
            if self.tensorboard or self._wandb is not None:
                from nclab.train.loggers import open_loggers

                self._writer = open_loggers(
                    self.files.root,
                    tensorboard=self.tensorboard,
                    wandb=self._wandb,
                    config=read_json(self.files.config),
                    fresh=not self.rows,
                )
        self._ctx.barrier()
        self._started = True

    def _prepare_files(
        self, first_epoch: int, n_train: int, n_test: int, device: Any, data: tuple
    ) -> None:
        files = self.files
        previous = read_json(files.config) if self.resume and files.config.is_file() else {}
        if self.resume and previous:
            self.rows = lifecycle.prepare_resume(files, first_epoch - 1)
        else:
            lifecycle.prepare_fresh(files)
        kept = previous.get("identity") if isinstance(previous.get("identity"), dict) else None
        fingerprint = lifecycle.data_fingerprint({"x_train": data[0], "y_train": data[1]})
        self.identity = lifecycle.new_identity(fingerprint, kept)
        doc = {
            **self.settings,
            "source": "nclab.track.NCTracker",
            "num_classes": self.num_classes,
            "train_size": n_train,
            "test_size": n_test,
            "feature_dim": int(self.layer.in_features),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_class": type(self.model).__name__,
            "tensorboard": bool(self.tensorboard),
            "wandb": self._wandb is not None,
            "resolved": {"device": str(device), "world_size": self._ctx.world_size},
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "numpy": np.__version__,
                "nclab": __version__,
            },
            "hostname": socket.gethostname(),
            "start_time": previous.get("start_time", _now()),
            "identity": self.identity,
        }
        lifecycle.write_config(files, doc)

    # ------------------------------------------------------------------ per epoch

    def evaluate(self) -> dict[str, float | None]:
        """Evaluate the model now (eval mode; each module's mode is restored afterwards) and
        return the metrics of a row (without ``epoch``, ``lr``, ``seconds``)."""
        if self._evaluator is None:
            raise RuntimeError("call log_epoch first: the evaluation data are read there")
        with eval_mode(self.model):  # restores each module's own mode
            self._ctx.broadcast_buffers(self.model)
            self._last = self._evaluator(self._adapter)
        return dict(self._last.metrics)

    def log_epoch(self, epoch: int, *, lr: float | None = None, **extra: Any) -> dict[str, Any]:
        """Evaluate the model after ``epoch`` and append a row to ``metrics.jsonl``.

        The row holds ``epoch``, ``lr``, every metric of ``nclab train``'s rows, ``test_size``
        (the number of test samples evaluated: the whole test loader), the extra
        keyword arguments (numbers or None) and ``seconds`` (wall time since the previous call
        or the tracker's creation). An extra key that the evaluation also produces (say
        ``train_loss``: ``nclab train`` logs the eval-mode loss over the training set) keeps the
        evaluated value, and yours is logged as ``user_<key>``. Returns the row (on every rank).
        """
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 1:
            raise ValueError(f"epoch must be an integer >= 1, got {epoch!r}")
        epoch = int(epoch)  # numpy integers too
        if self.rows and epoch <= int(self.rows[-1]["epoch"]):
            raise ValueError(
                f"epoch {epoch} was already logged (last: {self.rows[-1]['epoch']}); "
                "log increasing epochs"
            )
        if self._closed:
            raise RuntimeError(
                "this NCTracker was closed (finish() or close()); make a new one with "
                "resume=True to continue the run"
            )
        if not self._started:
            self._start(epoch)
        metrics = self.evaluate()
        row: dict[str, Any] = {"epoch": epoch, "lr": None if lr is None else float(lr), **metrics}
        row["test_size"] = self._evaluator.num_test  # test samples evaluated (as nclab train)
        for key, value in extra.items():
            if value is not None and not isinstance(value, int | float):
                try:
                    value = float(value)  # 0-d tensors, numpy scalars
                except (TypeError, ValueError, RuntimeError):
                    raise ValueError(
                        f"log_epoch({key}=...) must be a number or None, got {type(value).__name__}"
                    ) from None
            row[f"user_{key}" if key in row or key == "seconds" else key] = value
        now = time.perf_counter()
        row["seconds"] = now - self._last_time
        self._last_time = now
        if self._ctx.is_main:
            append_row(self.files, row)
            append_per_class(self.files, epoch, self._last.per_class)
            if self._writer is not None:
                self._writer.write_row(row)
        self.rows.append(row)
        return row

    def finish(self) -> None:
        """Write ``predictions.npz`` (test logits and labels of the last :meth:`log_epoch`'s
        evaluation, as ``nclab train`` writes those of its final model) and ``DONE``."""
        if self._closed:
            return  # finished (or closed) already: the folder may be another tracker's now
        if self._evaluator is None:
            raise RuntimeError("nothing was logged: call log_epoch at least once before finish")
        if self._ctx.is_main:
            logits = self._last.test_logits.float().numpy()
            labels = self._last.test_labels.long().numpy()
            lifecycle.write_outcome(self.files, logits=logits, labels=labels)
        self.close()
        self._ctx.barrier()

    def close(self) -> None:
        """Close the TensorBoard file and the W&B run, and release the run directory's lock (done by
        :meth:`finish`; call it to stop tracking without marking the run complete)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._lock.close()
        self._closed = self._started or self._closed
