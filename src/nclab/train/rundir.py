"""Run-directory I/O: atomic writes, the metrics log (JSONL + CSV mirror), markers.

Layout of a run directory (see ``docs/training.md``)::

    config.json          resolved config, versions, seed, device, host, start time
    metrics.jsonl        one JSON object per evaluated epoch (appended, fsync'ed)
    metrics.csv          mirror of metrics.jsonl (regenerated after every row)
    checkpoints/last.pt  latest checkpoint (written atomically: tmp file + os.replace)
    final.pt             final model state + config
    predictions.npz      test_logits, test_labels of the final model
    summary.json         final row, first epoch at 100% train accuracy, "completed": true
    DONE                 marker: the run is complete

Everything here is plain file handling (no torch import at module level).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RunFiles",
    "append_row",
    "atomic_write",
    "read_json",
    "read_rows",
    "rewrite_rows",
    "write_json",
]


@dataclass(frozen=True)
class RunFiles:
    """Paths of the files of one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def final(self) -> Path:
        return self.root / "final.pt"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.npz"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def done(self) -> Path:
        return self.root / "DONE"

    def owned(self) -> list[Path]:
        """Every file a run writes (what ``overwrite`` removes)."""
        return [
            self.config,
            self.metrics,
            self.metrics_csv,
            self.checkpoint,
            self.final,
            self.predictions,
            self.summary,
            self.done,
        ]

    def clear(self) -> None:
        """Remove the files of a previous run (other files in the directory are left alone)."""
        for path in self.owned():
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` atomically: ``write(f)`` into a temporary file in the same directory,
    fsync it, then ``os.replace`` it over ``path`` (readers see the old or the new file, never
    a partial one, even if the process is killed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (colleagues on a
        # shared cluster can read the run).
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (non-finite floats become ``null``)."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object; the run directory is corrupt")
    return data


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------- metrics log


def _row_line(row: dict[str, Any]) -> str:
    return json.dumps(_jsonable(row), allow_nan=False) + "\n"


def append_row(files: RunFiles, row: dict[str, Any]) -> None:
    """Append one metrics row to ``metrics.jsonl`` (flushed and fsync'ed), then regenerate
    ``metrics.csv``."""
    with files.metrics.open("a", encoding="utf-8") as f:
        f.write(_row_line(row))
        f.flush()
        os.fsync(f.fileno())
    write_csv(files.metrics_csv, read_rows(files.metrics))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of a metrics JSONL file: a last line cut off by a kill (no newline or
    not valid JSON) is ignored; so is anything after it."""
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows


def rewrite_rows(files: RunFiles, max_epoch: int) -> list[dict[str, Any]]:
    """Keep only complete rows with ``epoch <= max_epoch`` (first row per epoch), atomically
    rewrite ``metrics.jsonl`` and ``metrics.csv`` with them, and return them."""
    kept: list[dict[str, Any]] = []
    seen: set[int] = set()
    for row in read_rows(files.metrics):
        epoch = int(row["epoch"])
        if epoch <= max_epoch and epoch not in seen:
            seen.add(epoch)
            kept.append(row)
    text = "".join(_row_line(r) for r in kept)
    atomic_write(files.metrics, lambda f: f.write(text.encode()))
    write_csv(files.metrics_csv, kept)
    return kept


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Atomically write ``rows`` as CSV; columns in order of first appearance."""
    rows = list(rows)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    data = buf.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))
