"""Shared helpers of the fault suite (one test module per promise) and its tally.

Every case goes through :func:`expect_clear_error` or :func:`expect_works`; both count what they
saw in :data:`TALLY`, which ``conftest.py`` prints at the end of the run ("inputs tried, clear
errors, tracebacks, silent results, files lost or changed, code executed, hangs"). A case that
would raise the count of anything but inputs and clear errors fails its test first.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from nclab import cli

TALLY: Counter[str] = Counter()

#: Seconds an in-process case may take before it counts as a hang (a report build on two
#: shared cores takes up to a minute; the bounded inputs must end in 10 s, test_bounds.py).
HANG_SECONDS = 120.0

TINY = [
    "--dataset", "synthetic", "--synthetic-classes", "3", "--synthetic-dim", "8",
    "--synthetic-train-per-class", "20", "--synthetic-test-per-class", "10",
    "--width", "16", "--depth", "1", "--batch-size", "20", "--lr", "0.05",
    "--scheduler", "constant", "--threads", "1", "--quiet",
]  # fmt: skip


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
    changed = sorted(k for k in before if before[k] != after.get(k))
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
    the files under ``watch`` unchanged (files added there are allowed only outside them), no
    ``marker``. Returns stderr."""
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
    """Run ``argv``; assert exit 0 and the files under ``watch`` unchanged."""
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


def write_npz(path: Path, *, shift: float = 0.0) -> Path:
    """A small npz dataset (3 classes, 6 features); ``shift`` changes its values."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    np.savez(
        path,
        x_train=(rng.standard_normal((30, 6)) + shift).astype(np.float32),
        y_train=y,
        x_test=rng.standard_normal((9, 6)).astype(np.float32),
        y_test=np.repeat(np.arange(3), 3),
    )
    return path
