"""Progress reporting: tqdm bars on a terminal, one plain line per epoch otherwise, or nothing.

The mode is chosen once per run: ``quiet`` -> silent; stderr is a TTY -> tqdm bars (epochs and
batches); otherwise (logs, pipes, worker processes) one line per epoch on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

__all__ = ["Progress", "format_row"]

_SHOWN = (
    ("train_loss", "train_loss", "{:.4f}"),
    ("train_acc", "train_acc", "{:.4f}"),
    ("test_acc", "test_acc", "{:.4f}"),
    ("ece", "ece", "{:.4f}"),
    ("nc1", "nc1", "{:.4g}"),
    ("nc2_wh", "nc2_wh", "{:.4g}"),
    ("nc3", "nc3", "{:.4g}"),
)


def format_row(row: dict[str, Any], epochs: int) -> str:
    """One-line summary of a metrics row, e.g. ``epoch 3/60 lr 0.05 train_loss 0.41 ...``."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['lr']:.4g}"]
    for key, label, fmt in _SHOWN:
        value = row.get(key)
        if value is not None:
            parts.append(f"{label} {fmt.format(value)}")
    parts.append(f"({row['seconds']:.1f}s)")
    return " ".join(parts)


class Progress:
    """Epoch/batch progress for one run."""

    def __init__(
        self,
        epochs: int,
        start_epoch: int,
        *,
        quiet: bool,
        stream: TextIO | None = None,
        prefix: str = "",
    ) -> None:
        self.epochs = epochs
        self.stream = sys.stderr if stream is None else stream
        self.prefix = prefix
        self.mode = "quiet" if quiet else ("bar" if _isatty(self.stream) else "lines")
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._tqdm = tqdm
            self._bar = tqdm(
                total=epochs, initial=start_epoch, desc=f"{prefix}epochs", file=self.stream
            )

    def batches(self, steps: Iterable[int], total: int, epoch: int) -> Iterator[int]:
        """Wrap the batch loop of ``epoch`` (a bar on a terminal, unchanged otherwise)."""
        if self.mode != "bar":
            yield from steps
            return
        with self._tqdm(
            steps, total=total, desc=f"epoch {epoch}", leave=False, file=self.stream
        ) as bar:
            yield from bar

    def epoch_done(self, epoch: int, row: dict[str, Any] | None) -> None:
        """Report the end of an epoch (``row`` is its metrics row, or None if not evaluated)."""
        if self.mode == "bar":
            if row is not None:
                self._bar.set_postfix(
                    train_acc=f"{row['train_acc']:.3f}",
                    test_acc=f"{row['test_acc']:.3f}",
                    nc1=f"{row['nc1']:.3g}",
                )
            self._bar.update(1)
        elif self.mode == "lines" and row is not None:
            self.message(format_row(row, self.epochs))

    def message(self, text: str) -> None:
        """Print a line (not in quiet mode)."""
        if self.mode == "quiet":
            return
        if self.mode == "bar":
            self._tqdm.write(f"{self.prefix}{text}", file=self.stream)
        else:
            print(f"{self.prefix}{text}", file=self.stream, flush=True)

    def close(self) -> None:
        """Close the bars."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
