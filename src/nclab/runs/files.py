"""Run-directory files: names, atomic writes, the metrics log (JSONL + CSV mirror), the lock,
the manifest of the files nclab wrote.

Layout of a run directory (see ``docs/training.md``)::

    config.json          resolved config, versions, seed, device, host, start time
    metrics.jsonl        one JSON object per evaluated epoch (appended; fsync'ed per row, or by
                         nclab train before each checkpoint)
    metrics.csv          mirror of metrics.jsonl (a line appended per row; rewritten when a
                         column appears, and cut back with it on resume)
    per_class.jsonl      per evaluated epoch, per-class counts, variability and NC1 (train, test)
    checkpoints/last.pt  latest checkpoint (written atomically: tmp file + os.replace)
    final.pt             final model state + config
    predictions.npz      test_logits, test_labels of the final model
    summary.json         final row, first epoch at 100% train accuracy, "completed": true
    DONE                 marker: the run is complete
    .nclab.lock          lock file: the PID of the process writing the run (empty when none)
    .nclab-manifest.json the files nclab wrote here (only these are ever deleted or replaced)

One writer per directory: :func:`lock_directory` holds an exclusive ``fcntl.flock`` on
``.nclab.lock`` while a process writes the run (the OS releases it when the process dies, so a
SIGKILL never leaves a stale lock; the lock file is opened with ``O_NOFOLLOW``, so a symbolic
link planted there is refused, never emptied). :func:`read_metrics` is the one reader of
``metrics.jsonl``, :func:`append_row` its one writer. Every file name of a run is spelled only in
:class:`RunFiles`.

Everything here is plain file handling (no torch import at module level).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import math
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "DirectoryLockedError",
    "MetricsLogError",
    "RunFiles",
    "append_per_class",
    "append_row",
    "atomic_write",
    "lock_directory",
    "lock_holder",
    "read_json",
    "read_metrics",
    "read_rows",
    "rewrite_rows",
    "sync_logs",
    "write_json",
]


LOCK_NAME = ".nclab.lock"
MANIFEST_NAME = ".nclab-manifest.json"


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
    def per_class(self) -> Path:
        return self.root / "per_class.jsonl"

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

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    def owned(self) -> list[Path]:
        """Every file a run writes (the names a run may own)."""
        return [
            self.config,
            self.metrics,
            self.metrics_csv,
            self.per_class,
            self.checkpoint,
            self.final,
            self.predictions,
            self.summary,
            self.done,
        ]

    def present(self) -> list[Path]:
        """The run files (:meth:`owned`) that exist (a symbolic link counts as present)."""
        return [p for p in self.owned() if p.exists() or p.is_symlink()]

    def temporaries(self) -> list[Path]:
        """Temporary files :func:`atomic_write` left behind for run files (a process killed
        between writing and renaming one)."""
        found: list[Path] = []
        for path in self.owned():
            if path.parent.is_dir() and not path.parent.is_symlink():
                found += sorted(p for p in path.parent.glob(f".{path.name}.*.tmp") if _plain(p))
        return found

    def links(self) -> list[Path]:
        """Run files (and the checkpoint folder) that are symbolic links: nclab never writes
        through them, so a run holding one is refused."""
        # the folder itself may be a link (runs/x -> /scratch/x): the user chose where it is
        paths = [self.checkpoint_dir, *self.owned(), self.manifest]
        return [p for p in paths if p.is_symlink()]

    def refuse_links(self) -> None:
        """``ValueError`` naming the run files that are symbolic links (see :meth:`links`)."""
        links = self.links()
        if links:
            names = ", ".join(str(p) for p in links[:3])
            raise ValueError(
                f"{names} {'is a symbolic link' if len(links) == 1 else 'are symbolic links'}; "
                "nclab never writes through a link out of a run folder: remove the link or "
                "choose another --out"
            )

    # ------------------------------------------------------------------ the manifest

    def recorded(self) -> set[str]:
        """Names (relative to :attr:`root`) of the files the manifest says nclab wrote."""
        if not _plain(self.manifest):
            return set()
        try:
            data = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return set()
        names = data.get("files") if isinstance(data, dict) else None
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()

    def record(self, *paths: Path) -> None:
        """Add ``paths`` to the manifest (before they are first written: a kill in between
        leaves a recorded name without a file, never a written file nclab does not own)."""
        names = self.recorded()
        new = {str(Path(p).relative_to(self.root)) for p in paths} - names
        if new or not self.manifest.exists():
            doc = {"written_by": "nclab", "files": sorted(names | new)}
            text = json.dumps(doc, indent=1) + "\n"
            atomic_write(self.manifest, lambda f: f.write(text.encode()))

    def ours(self) -> list[Path]:
        """The files nclab may delete or replace here: those the manifest records. A run
        written before manifests existed (a readable ``config.json`` naming an nclab version)
        owns the standard run files."""
        if _plain(self.manifest):
            names = self.recorded()
        elif _legacy_run(self.config):
            names = {str(p.relative_to(self.root)) for p in self.owned()}
        else:
            names = set()
        paths = [self.root / n for n in sorted(names) if ".." not in Path(n).parts]
        return [p for p in paths if _plain(p) or _empty_dir(p)]

    def foreign(self) -> list[Path]:
        """Entries of :attr:`root` that are not the run's (not recorded, not the lock, manifest
        or a temporary of a run file, not the checkpoint folder holding only run files): a
        folder holding any of them is not nclab's to clear."""
        if not self.root.is_dir():
            return []
        ours = {p.name for p in self.ours() if p.parent == self.root}
        keep = {LOCK_NAME, MANIFEST_NAME, *ours}
        temps = {p for p in self.temporaries()}
        found = []
        for entry in sorted(self.root.iterdir()):
            if entry in temps or (entry.name in keep and _plain(entry)):
                continue
            if entry == self.checkpoint_dir and entry.is_dir() and not entry.is_symlink():
                inner_ours = {p for p in self.ours() if p.parent == entry}
                found += [e for e in sorted(entry.iterdir()) if e not in inner_ours | temps]
                continue
            if entry.name.startswith("events.out.tfevents.") and _plain(entry):
                continue  # --tensorboard's event files (written next to the metrics)
            found.append(entry)
        return found

    def clear(self) -> None:
        """Remove the files of a previous run that nclab wrote (:meth:`ours`); nothing else,
        never through a symbolic link. The checkpoint folder goes when it is left empty."""
        for path in self.ours():
            if _empty_dir(path):
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
        if self.checkpoint_dir.is_dir() and not self.checkpoint_dir.is_symlink():
            with contextlib.suppress(OSError):
                self.checkpoint_dir.rmdir()  # only when empty


def _plain(path: Path) -> bool:
    """A regular file that is not a symbolic link."""
    return path.is_file() and not path.is_symlink()


def _empty_dir(path: Path) -> bool:
    """An empty folder (not a link) where a run file belongs: nothing of anyone's is lost."""
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _legacy_run(config: Path) -> bool:
    """``config.json`` of a run written by an nclab without manifests."""
    if not _plain(config):
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    versions = data.get("versions") if isinstance(data, dict) else None
    return isinstance(versions, dict) and "nclab" in versions


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
    """Read a JSON object from ``path``; ``ValueError`` naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); the file is corrupt: restore it, or start the "
            "run over with --overwrite"
        ) from None
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


def _open_for_writing(path: Path, flags: int, what: str) -> int:
    """``os.open(path, flags)`` for writing that refuses a symbolic link planted at ``path``
    (``O_NOFOLLOW``) with a ``ValueError`` naming ``what``; other failures raise ``OSError``."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(
                f"{what} is a symbolic link; nclab never writes through a link out of a run "
                "folder: remove the link"
            ) from None
        raise


def _open_append(path: Path) -> int:
    return _open_for_writing(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, str(path))


def _append_line(path: Path, row: dict[str, Any], sync: bool = True) -> None:
    """Append one JSON line, flushed (a kill leaves at most a torn last line) and, with
    ``sync``, fsync'ed (a power cut too)."""
    with os.fdopen(_open_append(path), "w", encoding="utf-8") as f:
        f.write(_row_line(row))
        f.flush()
        if sync:
            os.fsync(f.fileno())


def sync_logs(files: RunFiles) -> None:
    """fsync ``metrics.jsonl`` and ``per_class.jsonl`` (rows appended with ``sync=False``): a
    training loop calls it before it writes a checkpoint, so that no crash leaves a checkpoint
    whose rows are lost (a kill never does: the rows are in the OS's cache)."""
    for path in (files.metrics, files.per_class):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # missing (nothing logged yet) or a link (never written through)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def append_row(files: RunFiles, row: dict[str, Any], sync: bool = True) -> None:
    """Append one metrics row to ``metrics.jsonl`` (flushed; fsync'ed unless ``sync=False``,
    see :func:`sync_logs`), then to
    ``metrics.csv``: one line when the CSV's header already names every key of the row (the
    line a full rewrite would write), else (a new column, no file, a torn last line, a link)
    an atomic rewrite from ``metrics.jsonl``. The CSV is a mirror: a kill between the two
    appends leaves it a row short until the resume rewrites it."""
    _append_line(files.metrics, row, sync)
    header = _csv_header(files.metrics_csv)
    if header is None or not set(row) <= set(header):
        write_csv(files.metrics_csv, read_rows(files.metrics))
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writerow({k: "" if v is None else v for k, v in row.items()})
    with os.fdopen(_open_append(files.metrics_csv), "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())


def _csv_header(path: Path) -> list[str] | None:
    """The column names of a CSV nclab wrote, or None when it is missing, empty, a link, or
    does not end with a complete line (a kill in the middle of an append)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or f.seek(0, os.SEEK_END) == 0:
            return None
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            return None
        f.seek(0)
        first = f.readline()
    try:
        return next(csv.reader([first.decode("utf-8")]))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        return None


def append_per_class(
    files: RunFiles, epoch: int, values: dict[str, Any], sync: bool = True
) -> None:
    """Append one epoch's per-class statistics (``{"train": {...}, "test": {...}}`` of lists,
    length K) to ``per_class.jsonl``: kept apart from ``metrics.jsonl``, whose rows are scalars,
    because it grows with K. Read with :func:`read_metrics` (same policy)."""
    _append_line(files.per_class, {"epoch": epoch, **values}, sync)


class MetricsLogError(ValueError):
    """A line of ``metrics.jsonl`` that is not the last one is malformed."""


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a ``metrics.jsonl`` file and warnings about it: the one reader, with one policy.

    - A torn last line (not a JSON object with an integer ``epoch``: a kill in the middle of a
      write) is dropped, with a warning. A complete row that lacks only its newline is kept.
    - A malformed line that is *not* the last raises :class:`MetricsLogError` naming the file and
      the line number: later rows are never dropped silently.
    - Blank lines are ignored. When an epoch appears twice the later row wins (it was trained
      after the earlier one); rows are returned in epoch order.

    A missing file has no rows.
    """
    if not path.is_file():
        return [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MetricsLogError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); the file is corrupt"
        ) from None
    lines = text.splitlines(keepends=True)
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    by_epoch: dict[int, dict[str, Any]] = {}
    warnings: list[str] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        row, problem = _parse_row(line)
        if problem and i == last:
            warnings.append(f"{path}: dropped the incomplete last line {i + 1} ({problem})")
            break
        if problem:
            raise MetricsLogError(
                f"{path}, line {i + 1}: {problem}; later lines hold rows, so this is not a cut-off "
                "write: repair or remove the line (or start over with --overwrite)"
            )
        by_epoch[row["epoch"]] = row
    return [by_epoch[e] for e in sorted(by_epoch)], warnings


def _parse_row(line: str) -> tuple[dict[str, Any], str]:
    """``(row, "")`` for a complete metrics line, else ``({}, what is wrong)``."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return {}, f"not valid JSON: {err.msg}"
    if not isinstance(row, dict):
        return {}, "not a JSON object"
    epoch = row.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int | float) or epoch != int(epoch):
        return {}, f"'epoch' is {epoch!r}, not an integer"
    row["epoch"] = int(epoch)
    return row, ""


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of :func:`read_metrics` (its warnings dropped; its errors raised)."""
    return read_metrics(path)[0]


def rewrite_rows(files: RunFiles, max_epoch: int) -> list[dict[str, Any]]:
    """Keep only the rows with ``epoch <= max_epoch``, atomically rewrite ``metrics.jsonl``,
    ``metrics.csv`` and (when present) ``per_class.jsonl`` with them, and return the metrics
    rows. Both logs are read before either is written."""
    kept = [row for row in read_rows(files.metrics) if row["epoch"] <= max_epoch]
    per_class = None
    if files.per_class.is_file():
        per_class = [row for row in read_rows(files.per_class) if row["epoch"] <= max_epoch]
    text = "".join(_row_line(r) for r in kept)
    atomic_write(files.metrics, lambda f: f.write(text.encode()))
    write_csv(files.metrics_csv, kept)
    if per_class is not None:
        lines = "".join(_row_line(r) for r in per_class)
        atomic_write(files.per_class, lambda f: f.write(lines.encode()))
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


# ---------------------------------------------------------------------------- lock

_LOCK_WAIT_SECONDS = 1.0  # a reader's brief shared lock (lock_holder) must not fail a writer


class DirectoryLockedError(ValueError):
    """Another process holds the directory's lock."""


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(
            f"{directory} exists and is not a directory; choose another --out"
        ) from None
    except NotADirectoryError:
        raise ValueError(
            f"cannot create {directory}: a part of the path is a regular file, not a directory; "
            "choose another --out"
        ) from None
    except OSError as err:
        raise ValueError(
            f"cannot create {directory}: {err.strerror}; choose a writable --out"
        ) from None


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"PID {text}" if text.isdigit() else "an unknown process"


@contextlib.contextmanager
def lock_directory(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``directory/.nclab.lock`` (creating the directory)
    for the duration of the ``with`` block; the file holds this process's PID meanwhile and is
    emptied on release. Raises :class:`DirectoryLockedError` naming the holder's PID when another
    process holds it. The OS drops the lock when the process dies (SIGKILL included).

    If the block fails, what this call created goes: the directory with the lock file when it
    holds nothing else, else the lock file alone (a refused command leaves a folder as it was)."""
    directory = Path(directory)
    created = not directory.exists()
    _make_directory(directory)
    path = directory / LOCK_NAME
    what, flags = f"the lock file {path}", os.O_RDWR | os.O_CREAT
    try:  # a symbolic link planted as the lock file is refused, never emptied
        lock_created = True
        try:
            fd = _open_for_writing(path, flags | os.O_EXCL, what)
        except FileExistsError:  # a planted link "exists" too: refused by the plain open
            lock_created = False
            fd = _open_for_writing(path, flags, what)
    except OSError as err:
        raise ValueError(f"cannot open the lock file {path}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"the lock file {path} is not a regular file; remove it")
    try:
        _acquire(fd, directory)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        except BaseException:
            if created and set(os.listdir(directory)) <= {LOCK_NAME, MANIFEST_NAME}:
                Path(directory, MANIFEST_NAME).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    directory.rmdir()
            elif lock_created:
                path.unlink(missing_ok=True)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(fd: int, directory: Path) -> None:
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise DirectoryLockedError(
                f"{directory} is in use by another nclab process ({_holder(fd)}); wait for it "
                "to finish or stop it, or choose another --out"
            )
        time.sleep(0.05)


def lock_holder(directory: Path) -> str | None:
    """``"PID n"`` when a process holds ``directory``'s lock (a run still being written), else
    None. Read-only: creates nothing."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
