"""PyTorch Lightning callback for NC tracking (``pip install 'nclab[lightning]'``).

:class:`NCCallback` wraps :class:`nclab.track.NCTracker`: at the end of every training epoch it
evaluates the module (eval mode, no gradients, each submodule's mode restored) on the given
train and test loaders, appends the row to the run directory (the layout of ``nclab train``,
so ``nclab report`` reads it) and logs the same numbers to Lightning's own loggers under
``nc/`` + the tags of ``nclab train --tensorboard`` (``nc/train/nc1``, ``nc/test/acc``,
``nc/test/ece``; :mod:`nclab.train.loggers`) with the step and the ``epoch`` value equal to
the row's epoch (1 after the first epoch, as in ``metrics.jsonl``; Lightning itself counts
epochs from 0), and puts them in ``trainer.callback_metrics``, so a ``ModelCheckpoint`` can
monitor ``nc/train/nc1``. When fitting ends it writes
``predictions.npz`` and ``DONE``. Under DDP every rank evaluates its shard and rank 0 writes.

Uses the ``lightning`` package (``lightning.pytorch``), or ``pytorch_lightning`` when only that
is installed.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning import Callback, LightningModule, Trainer
    except ImportError:
        raise ImportError(
            "nclab.integrations.lightning needs PyTorch Lightning: pip install 'nclab[lightning]'"
        ) from None

from nclab.track import NCTracker
from nclab.train.loggers import row_scalars

__all__ = ["NCCallback"]


def _resolve_layer(module: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """``layer`` itself, the submodule at a dotted path (``"model.fc"``), or (None) the last
    ``nn.Linear`` registered in ``module``."""
    if isinstance(layer, nn.Module):
        return layer
    if isinstance(layer, str):
        try:
            return module.get_submodule(layer)
        except AttributeError:
            raise ValueError(
                f"the LightningModule has no submodule {layer!r}; pass the dotted path of its "
                "final nn.Linear, e.g. layer='model.fc'"
            ) from None
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the LightningModule has no nn.Linear; pass layer= (its classifier)")
    return linears[-1]


class NCCallback(Callback):
    """Track neural collapse during ``Trainer.fit``.

    ``run_dir`` and the keyword arguments in ``tracker_options`` (``train``, ``test``,
    ``num_classes``, ``loss``, ``smoothing``, ``seed``, ``config``, ``tensorboard``,
    ``overwrite``, ``resume``) are those of :class:`~nclab.track.NCTracker`; its ``model`` is
    the LightningModule, whose ``forward`` must return the logits. ``layer``: the final
    ``nn.Linear``, as a module or a dotted path in the LightningModule (default: its last
    registered ``nn.Linear``). ``every_n_epochs``: evaluate every n-th epoch and the last one
    completed when fitting stops.
    The row's ``lr`` is the first optimizer's lr at the start of the epoch.
    ``log_to_lightning``: also log the row to the trainer's loggers, tags ``prefix`` +
    ``train/…``/``test/…``, at step = the row's epoch.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        layer: str | nn.Module | None = None,
        every_n_epochs: int = 1,
        log_to_lightning: bool = True,
        prefix: str = "nc/",
        **tracker_options: Any,
    ) -> None:
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int):
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
        for name in ("model", "layer"):
            if name in tracker_options:
                raise ValueError(f"NCCallback sets the tracker's {name} itself; drop {name}=")
        self.run_dir = run_dir
        self.layer = layer
        self.every_n_epochs = every_n_epochs
        self.log_to_lightning = log_to_lightning
        self.prefix = prefix
        self._options = tracker_options
        self.tracker: NCTracker | None = None
        self._epoch_lr: float | None = None
        self.last_row: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        layer = _resolve_layer(pl_module, self.layer)
        self.tracker = NCTracker(self.run_dir, model=pl_module, layer=layer, **self._options)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the lr this epoch trains with (an epoch-wise scheduler has stepped by epoch end)
        self._epoch_lr = None
        if trainer.optimizers:
            self._epoch_lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.tracker is None:  # pragma: no cover - Lightning calls on_fit_start first
            return
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch
        if epoch % self.every_n_epochs and not last:
            return
        row = self.tracker.log_epoch(epoch, lr=self._epoch_lr)
        self.last_row = row
        if self.log_to_lightning:
            values = {f"{self.prefix}{tag}": v for tag, v in row_scalars(row).items()}
            # every rank holds the same reduced row: no further synchronisation needed. Logged
            # to the loggers directly, at step = epoch (LightningModule.log would use the global
            # step and Lightning's 0-based epoch); loggers write on rank 0 only.
            for logger in trainer.loggers:
                logger.log_metrics({**values, "epoch": epoch}, step=epoch)
            for name, value in values.items():
                trainer.callback_metrics[name] = torch.tensor(value)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.tracker is None:  # pragma: no cover - Lightning calls on_fit_start first
            return
        completed = int(trainer.current_epoch)  # epochs completed when fitting stops
        logged = int(self.tracker.rows[-1]["epoch"]) if self.tracker.rows else 0
        if completed > logged:
            # the last epoch fell between every_n_epochs (fit stopped by max_steps, early
            # stopping, ...): log it here (Lightning's loggers no longer accept values now)
            self.last_row = self.tracker.log_epoch(completed, lr=self._epoch_lr)
        if self.tracker.rows:
            self.tracker.finish()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        # fitting failed or was interrupted: the rows so far stay, the run is not complete, and
        # the directory is released (continue it with resume=True)
        if self.tracker is not None:
            self.tracker.close()
