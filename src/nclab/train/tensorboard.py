"""TensorBoard events for the metrics rows (``nclab train --tensorboard``, ``NCTracker``).

Every numeric value of a ``metrics.jsonl`` row (all keys but ``epoch``) becomes a scalar
with the row's ``epoch`` as the step and the tag of :func:`nclab.train.tags.row_scalars`
(``train/…``, ``test/…``: ``test_acc`` is ``test/acc``, ``ece`` is ``test/ece``; the same tags
as Weights & Biases), written by PyTorch's own
:class:`torch.utils.tensorboard.SummaryWriter` into the run directory, next to
``metrics.jsonl`` (``tensorboard --logdir RUN_DIR``). It needs the ``tensorboard`` package:
``pip install nclab[tensorboard]``. A run that starts over removes the event files of the
previous one; a resumed run adds a new event file (TensorBoard shows the union of the files,
so epochs trained after the last checkpoint of a killed run appear twice).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nclab.train.tags import row_scalars

__all__ = ["ScalarWriter", "require_tensorboard"]


def require_tensorboard() -> None:
    """Raise ValueError, saying how to install it, when the ``tensorboard`` package (needed
    by :class:`torch.utils.tensorboard.SummaryWriter`) is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "TensorBoard output needs the tensorboard package: pip install "
            "'nclab[tensorboard]' (or drop --tensorboard)"
        )


#: File-name prefix of TensorBoard event files.
EVENTS_PREFIX = "events.out.tfevents."


class ScalarWriter:
    """Write metrics rows as TensorBoard scalars in ``log_dir``. ``fresh=True`` (a run that
    starts over) first removes the event files of a previous run in ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike[str], *, fresh: bool) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        if fresh:
            for old in Path(log_dir).glob(EVENTS_PREFIX + "*"):
                if old.is_file() and not old.is_symlink():  # never through a link
                    old.unlink()

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write_row(self, row: Mapping[str, Any]) -> None:
        """One scalar per finite number in ``row`` at step ``row["epoch"]``, then flush (a
        reader sees each epoch as soon as it is logged)."""
        step = int(row["epoch"])
        for tag, value in row_scalars(row).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()
