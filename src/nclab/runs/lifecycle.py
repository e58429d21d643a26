"""The life of a run directory, written once: inspect, plan, prepare, resume checks, finish.

``nclab train`` (:mod:`nclab.train.loop`), the tracker (:mod:`nclab.track`), ``nclab compare``'s
reuse/resume (:func:`nclab.compare.run_state`) and the report's reader (:mod:`nclab.report.runs`)
all go through these functions, so each rule exists in one place:

- :class:`RunState`: what a folder holds for a wanted config (typed, not strings);
- :func:`check_overwritable`: ``--overwrite`` clears only a run nclab wrote (the manifest), never
  ``/``, the home folder or a folder holding other files;
- :func:`new_identity` / :func:`identity_differences`: a run's identity (a run id, the data's
  fingerprint, the code version) and what differs when a checkpoint, a dataset or a metrics log
  does not belong to the run;
- :func:`first_perfect_epoch`: the one definition of the "100% training accuracy" milestone;
- :func:`prepare_fresh`, :func:`prepare_resume`, :func:`write_outcome`: the changes to a run folder.

Plain file handling: no torch import at module level.
"""

from __future__ import annotations

import enum
import hashlib
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nclab.runs.files import (
    RunFiles,
    atomic_write,
    read_json,
    read_metrics,
    rewrite_rows,
    write_json,
)

__all__ = [
    "RunState",
    "check_metrics_cover",
    "check_overwritable",
    "code_version",
    "data_fingerprint",
    "first_perfect_epoch",
    "identity_differences",
    "identity_key",
    "inspect",
    "new_identity",
    "now",
    "prepare_fresh",
    "prepare_resume",
    "write_outcome",
]


class RunState(enum.Enum):
    """What a folder holds, measured against the run that is wanted there."""

    NEW = "new"  #: no run yet (the folder may not exist)
    DONE = "done"  #: the same run, complete
    RESUME = "resume"  #: the same run, stopped or with fewer epochs
    MISMATCH = "mismatch"  #: another run (different config) or run files without a config


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def first_perfect_epoch(rows: Sequence[Mapping[str, Any]]) -> int | None:
    """First logged epoch with 100% training accuracy (``train_acc >= 1``), else None: the one
    definition used by ``nclab train``'s summary, ``compare`` and the report."""
    for row in rows:
        acc = row.get("train_acc")
        if isinstance(acc, int | float) and not isinstance(acc, bool) and acc >= 1.0:
            return int(row["epoch"])
    return None


# ------------------------------------------------------------------------------ inspect


def inspect(
    files: RunFiles, differences: Callable[[dict[str, Any]], list[str]], epochs: int | None
) -> tuple[RunState, list[str], dict[str, Any] | None]:
    """The :class:`RunState` of ``files`` for a wanted run, the differing options (``MISMATCH``)
    and the saved config. ``differences(saved)`` lists the options that differ from the wanted
    run; ``epochs`` is the wanted epoch count (None: any). Read-only."""
    files.refuse_links()
    if not files.config.is_file():
        present = files.present()
        if present:
            names = ", ".join(str(p.relative_to(files.root)) for p in present)
            return RunState.MISMATCH, [f"run files ({names}) but no config.json"], None
        return RunState.NEW, [], None
    saved = read_json(files.config)
    diffs = differences(saved)
    if diffs:
        return RunState.MISMATCH, diffs, saved
    same_epochs = epochs is None or _int(saved.get("epochs")) == epochs
    done = files.done.is_file()
    return (RunState.DONE if done and same_epochs else RunState.RESUME), [], saved


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------ ownership


def check_overwritable(files: RunFiles, option: str = "--overwrite") -> None:
    """Refuse to clear ``files.root`` unless everything in it is a run nclab wrote: never
    ``/`` or the home folder, never a folder holding files the manifest does not record, never
    through a symbolic link. ``ValueError`` naming the folder, what is there and the way out."""
    root = files.root
    if not root.exists() and not root.is_symlink():
        return
    refuse_system_folder(root, option)
    files.refuse_links()
    foreign = files.foreign()
    if foreign:
        names = ", ".join(str(p.relative_to(root)) for p in foreign[:4])
        more = f" and {len(foreign) - 4} more" if len(foreign) > 4 else ""
        raise ValueError(
            f"{option} refuses {root}: it holds files nclab did not write ({names}{more}); nclab "
            "deletes only the files of its own runs: choose another --out, or move them away"
        )


def refuse_system_folder(root: Path, option: str = "--out") -> None:
    """A run never goes into ``/`` or the home folder itself (its files would mix with the
    user's, and ``--overwrite`` could reach them): ``ValueError`` naming the folder. Checked
    before the folder is locked, so nothing is created there."""
    resolved = Path(root).expanduser().resolve()
    home = Path.home().resolve()
    if resolved == Path(resolved.anchor) or resolved == home:
        raise ValueError(
            f"{option} refuses {root}: it is the {'home' if resolved == home else 'root'} folder, "
            "not a run folder; choose a folder of its own, e.g. --out runs/NAME"
        )


# ------------------------------------------------------------------------------ identity


def code_version() -> dict[str, str]:
    """The versions that make up the code a run was trained with."""
    import platform

    from nclab import __version__

    versions = {"python": platform.python_version(), "nclab": __version__}
    try:
        import numpy as np
        import torch

        versions.update(torch=torch.__version__, numpy=np.__version__)
    except ImportError:  # pragma: no cover - both are dependencies
        pass
    return versions


def data_fingerprint(arrays: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Cheap identity of a data set: per array its shape, dtype and a BLAKE2b hash of its bytes
    (tensors or numpy arrays)."""
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    for name, value in arrays.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().contiguous().numpy()
        arr = np.ascontiguousarray(value)
        digest = hashlib.blake2b(arr.view(np.uint8).reshape(-1).data, digest_size=16).hexdigest()
        out[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "blake2b": digest}
    return out


def new_identity(fingerprint: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict:
    """The ``identity`` entry of ``config.json``: the run id (kept on resume), the data's
    fingerprint and the code version."""
    run_id = (previous or {}).get("run_id") or uuid.uuid4().hex
    return {"run_id": run_id, "data": dict(fingerprint), "code": code_version()}


def identity_differences(
    saved: Mapping[str, Any] | None, fingerprint: Mapping[str, Any]
) -> list[str]:
    """What differs between a run's recorded data fingerprint and the data read now."""
    recorded = (saved or {}).get("data")
    if not isinstance(recorded, dict):
        return []  # a run written before identities were recorded: checked by sizes only
    diffs = []
    for name in sorted(set(recorded) | set(fingerprint)):
        a, b = recorded.get(name), fingerprint.get(name)
        if a is None or b is None:
            diffs.append(f"{name}: {'missing now' if b is None else 'new'}")
            continue
        for key in ("shape", "dtype", "blake2b"):
            if a.get(key) != b.get(key):
                change = "" if key == "blake2b" else f" {a.get(key)} -> {b.get(key)}"
                diffs.append(f"{name} {'values' if key == 'blake2b' else key}{change}")
                break
    return diffs


def identity_key(path: Path, config: Mapping[str, Any]) -> str:
    """The identity of a run as read back: its run id, else (runs of an nclab before run ids)
    a hash of its config, which records its start time and host, so a copied folder
    (``runs/ce_seed0.bak``) has the same key as the original. A config without a start time
    (not written by nclab) is its own run: keyed by its folder."""
    ident = config.get("identity")
    if isinstance(ident, dict) and isinstance(ident.get("run_id"), str):
        return ident["run_id"]
    if "start_time" not in config:
        return f"path:{Path(path).resolve()}"
    import json

    text = json.dumps(config, sort_keys=True, default=str)
    return "config:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def check_metrics_cover(files: RunFiles, checkpoint_epoch: int, eval_every: int) -> None:
    """Refuse a resume whose ``metrics.jsonl`` lacks rows the run logged before its checkpoint
    (emptied, cut or swapped for another run's log): resuming would leave a log with holes."""
    rows, _ = read_metrics(files.metrics)
    logged = {int(r["epoch"]) for r in rows}
    every = max(1, int(eval_every))
    missing = [e for e in range(every, checkpoint_epoch + 1, every) if e not in logged]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            f"cannot resume {files.root}: {files.metrics.name} lacks the rows of epoch(s) {shown} "
            f"that the run logged before its checkpoint (epoch {checkpoint_epoch}); the log was "
            "emptied or belongs to another run: restore it, or start over with --overwrite"
        )
    # rows after the checkpoint (a kill between a row and its checkpoint) are cut by
    # prepare_resume


# ------------------------------------------------------------------------------ changes


def prepare_fresh(files: RunFiles) -> None:
    """Start a run in a locked folder: remove temporaries of a killed writer and the files of
    a previous run nclab wrote (never anything else), record the manifest."""
    files.refuse_links()
    for tmp in files.temporaries():
        tmp.unlink(missing_ok=True)
    files.clear()
    files.record(*files.owned())


def prepare_resume(files: RunFiles, checkpoint_epoch: int) -> list[dict[str, Any]]:
    """Continue a run in a locked folder after ``checkpoint_epoch``: remove temporaries and the
    outcome files, cut both logs back to the checkpoint; returns the kept metrics rows."""
    files.refuse_links()
    for tmp in files.temporaries():
        tmp.unlink(missing_ok=True)
    files.record(*files.owned())
    for path in (files.done, files.summary, files.final, files.predictions):
        if path.is_file() and not path.is_symlink():
            path.unlink()
    return rewrite_rows(files, checkpoint_epoch)


def write_config(files: RunFiles, doc: Mapping[str, Any]) -> None:
    """Write ``config.json`` (atomically)."""
    write_json(files.config, dict(doc))


def write_outcome(
    files: RunFiles,
    *,
    logits: Any,
    labels: Any,
    summary: Mapping[str, Any] | None = None,
    final: Callable[[Any], None] | None = None,
) -> None:
    """Finish a run: ``final.pt`` (``final(f)`` writes it), ``predictions.npz``, ``summary.json``
    and last the ``DONE`` marker, each atomically."""
    import numpy as np

    files.record(*files.owned())
    if final is not None:
        atomic_write(files.final, final)
    atomic_write(files.predictions, lambda f: np.savez(f, test_logits=logits, test_labels=labels))
    if summary is not None:
        write_json(files.summary, dict(summary))
    atomic_write(files.done, lambda f: f.write(f"completed {now()}\n".encode()))


def saved_config(files: RunFiles) -> dict[str, Any]:
    return read_json(files.config)


def environ_requeued() -> bool:
    """True when SLURM restarted this job (``SLURM_RESTART_COUNT`` > 0): a requeued
    ``nclab train`` continues its run where the preempted one stopped."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    except ValueError:
        return False


# ------------------------------------------------------------------------------ report folders


def claim_output_folder(out: Path, names: Sequence[str], run_paths: Sequence[Path]) -> RunFiles:
    """Check that ``nclab report`` may write ``names`` into ``out`` and record them in its
    manifest: never a run folder (nor a folder inside one of the runs reported), never through
    a symbolic link, never over a file of these names that nclab did not write. Returns the
    folder's :class:`RunFiles` (for its manifest). ``ValueError`` naming the problem."""
    out = Path(out)
    folder = RunFiles(out)
    resolved = out.resolve()
    for run in run_paths:
        run_r = Path(run).resolve()
        if resolved == run_r or run_r in resolved.parents:
            raise ValueError(
                f"--out {out} is inside the run folder {run}; nclab report never writes into a "
                f"run folder: choose another --out, e.g. {Path(run).parent / 'report'}"
            )
    if folder.config.exists() or folder.metrics.exists():
        raise ValueError(
            f"--out {out} is a run folder (it holds {folder.config.name} or "
            f"{folder.metrics.name}); nclab report never writes into a run folder: choose "
            "another --out"
        )
    recorded = folder.recorded()
    legacy = _legacy_report(out / "summary.json") and not folder.manifest.exists()
    clashes = [
        n
        for n in names
        if ((out / n).exists() or (out / n).is_symlink())
        and ((out / n).is_symlink() or not (n in recorded or legacy))
    ]
    if clashes:
        raise ValueError(
            f"--out {out} holds {', '.join(clashes[:4])} that nclab did not write; the report "
            "never replaces files it did not write: choose another --out, or move them away"
        )
    out.mkdir(parents=True, exist_ok=True)
    folder.record(*(out / n for n in names))
    return folder


def _legacy_report(summary: Path) -> bool:
    """``summary.json`` of a report written before report folders had a manifest."""
    if not summary.is_file() or summary.is_symlink():
        return False
    try:
        data = read_json(summary)
    except ValueError:
        return False
    return "verdicts" in data and "groups" in data
