"""Shared helpers of the fault suite (one test module per promise) and its tally.

Every case goes through :func:`expect_clear_error` or :func:`expect_works`; both count what they
saw in :data:`TALLY`, which ``conftest.py`` prints at the end of the run ("inputs tried, clear
errors, tracebacks, silent results, files lost or changed, code executed, hangs"). A case that
would raise the count of anything but inputs and clear errors fails its test first.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from nclab import cli
from nclab.runs import RunFiles, read_rows
from nclab.runs.files import read_metrics

TALLY: Counter[str] = Counter()

#: Seconds an in-process case may take before it counts as a hang (a report build on two
#: shared cores takes up to a minute; the bounded inputs must end in 10 s, test_bounds.py).
HANG_SECONDS = 120.0

TINY = [
    "--dataset", "synthetic:k=3,d=8,n=20,test=10",
    "--width", "16", "--depth", "1", "--batch-size", "20", "--lr", "0.05",
    "--scheduler", "constant", "--threads", "1", "--quiet",
]  # fmt: skip

#: The model options of the cases that train on a dataset file (``--dataset`` given by the case).
DATA_OPTS = ["--width", "16", "--depth", "1", "--batch-size", "10", "--threads", "1", "--quiet"]

#: A run long enough (epochs of about a second) to be interrupted while it trains.
SLOW_RUN = [
    "--dataset", "synthetic:k=5,d=48,n=200,test=20",
    "--width", "64", "--depth", "2", "--batch-size", "20", "--lr", "0.05",
    "--scheduler", "cosine", "--threads", "1", "--seed", "3", "--quiet",
]  # fmt: skip

#: The environment of the ``nclab`` processes the suite starts.
NCLAB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Payload:
    """Unpickling this runs ``touch MARKER`` (what a malicious file would do)."""

    def __init__(self, marker: Path, how: str = "system") -> None:
        self.marker, self.how = str(marker), how

    def __reduce__(self):  # noqa: ANN204
        if self.how == "eval":
            return (eval, (f"open({self.marker!r}, 'w').close()",))
        if self.how == "exec":
            return (exec, (f"open({self.marker!r}, 'w').close()",))
        if self.how == "subprocess":
            return (subprocess.call, (["touch", self.marker],))
        return (os.system, (f"touch {self.marker}",))


#: The ways a :class:`Payload` runs its command.
PAYLOADS = ("system", "eval", "exec", "subprocess")


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every path under ``roots`` (following nothing) -> its bytes, link target or a marker."""
    out: dict[str, bytes] = {}
    for root in roots:
        paths = [root] if root.is_symlink() or root.is_file() else []
        if root.is_dir() and not root.is_symlink():
            paths += sorted(root.rglob("*"))
        for path in paths:
            if path.is_symlink():
                out[str(path)] = b"<link>" + str(path.readlink()).encode()
            elif path.is_file():
                out[str(path)] = path.read_bytes()
            else:
                out[str(path)] = b"<dir>"
    return out


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``nclab ARGV`` in-process: (exit code, stderr). An exception escaping ``main`` (a
    traceback for the user) fails the test."""
    capsys.readouterr()
    t0 = time.monotonic()
    try:
        code = cli.main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    except BaseException:
        TALLY["tracebacks"] += 1
        raise
    if time.monotonic() - t0 > HANG_SECONDS:
        TALLY["hangs"] += 1
    return int(code or 0), capsys.readouterr().err


def _check_files(before: dict[str, bytes], watch: tuple[Path, ...]) -> None:
    after = snapshot(*watch)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        TALLY["files lost or changed"] += 1
    assert not changed, f"files lost or changed: {changed}"


def expect_clear_error(
    argv: list[str],
    capsys,
    *,
    code: int = 2,
    watch: tuple[Path, ...] = (),
    says: str | tuple[str, ...] = (),
    marker: Path | None = None,
) -> str:
    """Run ``argv``; assert exit ``code``, one stderr line without a traceback naming ``says``,
    every path under ``watch`` unchanged (none changed, removed or added), no ``marker``.
    Returns stderr."""
    TALLY["inputs tried"] += 1
    before = snapshot(*watch)
    rc, err = run_cli(argv, capsys)
    if "Traceback" in err:
        TALLY["tracebacks"] += 1
    if rc == 0:
        TALLY["silent results"] += 1
    assert rc == code, err
    assert "Traceback" not in err
    assert err.strip() and err.strip().count("\n") == 0, err
    _check_files(before, watch)
    if marker is not None and marker.exists():
        TALLY["code executed"] += 1
        raise AssertionError("a planted payload ran")
    for word in (says,) if isinstance(says, str) else says:
        assert word in err, err
    TALLY["clear errors"] += 1
    return err


def expect_works(argv: list[str], capsys, *, watch: tuple[Path, ...] = ()) -> str:
    """Run ``argv``; assert exit 0 and every path under ``watch`` unchanged."""
    TALLY["inputs tried"] += 1
    before = snapshot(*watch)
    rc, err = run_cli(argv, capsys)
    assert rc == 0, err
    _check_files(before, watch)
    TALLY["worked as promised"] += 1
    return err


def expect_library_error(call, kinds: tuple[type[BaseException], ...], *names: str) -> str:
    """``call()`` must raise one of ``kinds`` whose message names every one of ``names``."""
    TALLY["inputs tried"] += 1
    try:
        call()
    except kinds as err:
        text = str(err)
        for name in names:
            assert name in text, text
        TALLY["clear errors"] += 1
        return text
    except BaseException as err:  # noqa: BLE001 - any other exception is an internal error
        TALLY["tracebacks"] += 1
        raise AssertionError(f"raised {type(err).__name__}: {err}") from err
    TALLY["silent results"] += 1
    raise AssertionError("no error was raised")


def train_argv(out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return ["train", *TINY, "--epochs", str(epochs), "--out", str(out), *extra]


def report_argv(*dirs: Path, out: Path | None = None) -> list[str]:
    """``nclab report DIRS`` without the theory panel (quick), to ``out`` when given."""
    argv = ["report", *map(str, dirs), "--no-theory", "--quiet"]
    return argv + (["--out", str(out)] if out is not None else [])


def strip_seconds(rows: list[dict]) -> list[dict]:
    """Rows without their wall-clock ``seconds``, the one value a resumed run may change."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def run_rows(out: Path) -> list[dict]:
    """The rows of the run in ``out``, ``seconds`` aside."""
    return strip_seconds(read_rows(RunFiles(out).metrics))


def uninterrupted_rows(tmp_path_factory, epochs: int, *extra: str) -> list[dict]:  # noqa: ANN001
    """The rows (``seconds`` aside) of the tiny run trained for ``epochs`` without a stop."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert cli.main(train_argv(out, *extra, epochs=epochs)) == 0
    return run_rows(out)


def raiser(exc: BaseException) -> Callable[..., None]:
    """A function that raises ``exc`` whatever it is called with (to patch into nclab)."""

    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


def spawn(argv: list[str], **kwargs: object) -> subprocess.Popen:
    """``nclab ARGV`` as a process of its own, its stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "nclab.cli", *argv],
        env=NCLAB_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def wait_rows(metrics: Path, count: int, proc: subprocess.Popen, limit: float = 120) -> None:
    """Wait until ``metrics`` holds ``count`` rows, ``proc`` ends or ``limit`` seconds pass."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(read_metrics(metrics)[0]) >= count:
            return
        time.sleep(0.01)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive holding ``members`` (name -> bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def idx_bytes(arr, code: int = 0x08) -> bytes:  # noqa: ANN001
    """An IDX file's bytes (uint8 data)."""
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.astype(">u1").tobytes()


def write_idx_set(folder: Path, **override: bytes) -> Path:
    """Four small Fashion-MNIST-format files (gzipped) in ``folder``; ``override`` replaces one
    file's (compressed) bytes."""
    import gzip

    import numpy as np

    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 255, (20, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte": idx_bytes(np.arange(20, dtype=np.uint8) % 10),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 255, (10, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": idx_bytes(np.arange(10, dtype=np.uint8)),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / f"{name}.gz").write_bytes(override.get(name, gzip.compress(data)))
    return folder


def npz_arrays(shift: float = 0.0) -> dict:
    """The arrays of a small npz dataset (3 classes, 6 features); ``shift`` changes x_train."""
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "x_train": (rng.standard_normal((30, 6)) + shift).astype(np.float32),
        "y_train": np.repeat(np.arange(3), 10),
        "x_test": rng.standard_normal((9, 6)).astype(np.float32),
        "y_test": np.repeat(np.arange(3), 3),
    }


def write_npz(path: Path, *, shift: float = 0.0, **changes: object) -> Path:
    """The small npz dataset of :func:`npz_arrays` at ``path``; ``changes`` replace arrays or
    add others, and a change to None leaves that array out."""
    import numpy as np

    arrays = {**npz_arrays(shift), **changes}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path
