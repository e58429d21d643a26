"""Promise: every size is checked before anything is allocated (width, depth, classes, samples,
decompressed bytes, YAML aliases and nesting, JSON numbers): one line naming the option and a
limit, exit 2, at once (no hang, no allocation first), nothing created."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from faultkit import TALLY, TINY, expect_clear_error, expect_library_error, write_idx_set

from nclab.limits import MAX_CLASSES, MAX_DEPTH, MAX_WIDTH

ALIAS_BOMB = "\n".join(
    ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    + [
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
)

CONFIG_CASES = {
    "yaml-alias-bomb": ("c.yaml", ALIAS_BOMB, "aliases are expanded"),
    "yaml-many-aliases": ("c.yaml", "a: &a 1\nb: [" + ",".join(["*a"] * 200) + "]\n", "aliases"),
    "yaml-deep-nesting": ("c.yaml", "a: " + "[" * 200 + "]" * 200 + "\n", "nest"),
    "yaml-deep-mapping": (
        "c.yaml",
        "".join("  " * i + f"k{i}:\n" for i in range(60)) + "  " * 60 + "v: 1\n",
        "nest",
    ),  # fmt: skip
    "json-huge-int": ("c.json", '{"epochs": ' + "9" * 5000 + "}", "digits"),
    "json-infinity": ("c.json", '{"lr": Infinity}', "Infinity"),
    "json-1e999": ("c.json", '{"epochs": 1e999}', "epochs"),
    "json-deep": ("c.json", '{"a": ' + "[" * 100 + "]" * 100 + "}", "nest"),
    "json-very-deep": ("c.json", '{"a": ' + "[" * 100000 + "]" * 100000 + "}", "nest"),
    "huge-file": ("c.yaml", "# " + "x" * (2 << 20) + "\n", "limit"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_files_are_bounded(case, tmp_path, capsys):
    name, text, says = CONFIG_CASES[case]
    path = tmp_path / name
    path.write_text(text)
    out = tmp_path / "run"
    t0 = time.monotonic()
    expect_clear_error(["train", *TINY, "--config", str(path), "--out", str(out)], capsys,
                       watch=(tmp_path,), says=(says, str(path)))  # fmt: skip
    assert time.monotonic() - t0 < 10 and not out.exists()


SMALL = ["--width", "16", "--depth", "1", "--threads", "1", "--quiet"]

OPTION_CASES = {
    "width-1e7": (["--width", "10000000"], f"width 10000000 is larger than the limit {MAX_WIDTH}"),
    "depth-1e6": (["--depth", "1000000"], f"depth 1000000 is larger than the limit {MAX_DEPTH}"),
    "depth-just-over": (["--depth", str(MAX_DEPTH + 1)], "depth"),
    "width-memory": (["--width", str(MAX_WIDTH), "--depth", "200"], "GiB"),
    "classes-20000": (["--dataset", "synthetic:k=20000"], f"limit {MAX_CLASSES}"),
    "samples": (["--dataset", "synthetic:k=10,n=1000000000"], "GiB"),
    "dims": (["--dataset", "synthetic:d=1000000000"], "GiB"),
    "test-samples": (["--dataset", "synthetic:test=1000000000"], "GiB"),
    "classes-spec-over": (["--dataset", "synthetic:k=50000"], f"limit {MAX_CLASSES}"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_sizes_are_bounded_before_allocating(case, tmp_path, capsys):
    extra, says = OPTION_CASES[case]
    out = tmp_path / "run"
    t0 = time.monotonic()
    base = TINY if extra[0] in ("--width", "--depth") else SMALL
    expect_clear_error(["train", *base, *extra, "--epochs", "1", "--out", str(out)], capsys,
                       says=says)  # fmt: skip
    assert time.monotonic() - t0 < 10 and not out.exists()


def _bomb(claim: tuple[int, ...], zeros: int) -> bytes:
    header = bytes([0, 0, 8, len(claim)]) + b"".join(s.to_bytes(4, "big") for s in claim)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip format
    parts = [c.compress(header)]
    chunk = bytes(1 << 20)
    for _ in range(zeros >> 20):
        parts.append(c.compress(chunk))
    return b"".join(parts) + c.flush()


IDX_CASES = {
    "gzip-bomb": ((20, 28, 28), 256 << 20, "truncated or corrupt"),
    "header-claims-terabytes": ((100000, 100000, 1000), 1 << 20, "GiB"),
    "header-claims-2^32": ((2**32 - 1, 2**32 - 1, 2**32 - 1), 1 << 20, "GiB"),
}


@pytest.mark.parametrize("case", sorted(IDX_CASES))
def test_decompressed_bytes_are_bounded(case, tmp_path, capsys):
    claim, zeros, says = IDX_CASES[case]
    data = write_idx_set(tmp_path / "fm", **{"train-images-idx3-ubyte": _bomb(claim, zeros)})
    t0 = time.monotonic()
    expect_clear_error(["train", *TINY[:0], "--dataset", "fashion-mnist", "--data-dir",
                        str(data), "--epochs", "1", "--out", str(tmp_path / "run")], capsys,
                       watch=(data,), says=says)  # fmt: skip
    assert time.monotonic() - t0 < 10


def test_library_sizes_are_bounded():
    from nclab.models import build_model

    expect_library_error(lambda: build_model("mlp", 3, (8,), width=10**7), (ValueError,), "width")
    expect_library_error(lambda: build_model("mlp", 3, (8,), depth=10**6), (ValueError,), "depth")
    expect_library_error(lambda: build_model("mlp", 10**6, (8,)), (ValueError,), "num_classes")
    expect_library_error(lambda: build_model("cnn", 3, (3, 8, 8), width=40000, depth=8),
                         (ValueError,), "GiB")  # fmt: skip
    from nclab.data import load_dataset

    expect_library_error(lambda: load_dataset("synthetic:k=100000"), (ValueError,), "limit")
    TALLY["hangs"] += 0
    assert np.isfinite(1.0)


def test_npz_header_claims_are_bounded(tmp_path, capsys):
    """A .npz member whose header claims a huge array is refused without allocating it."""
    path = tmp_path / "big.npz"
    import zipfile

    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 10), }"
    header = header + b" " * (118 - len(header)) + b"\n"
    member = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64)
    with zipfile.ZipFile(path, "w") as z:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            z.writestr(f"{name}.npy", member)
    expect_clear_error(["train", "--dataset", f"npz:{path}", "--epochs", "1", "--out",
                        str(tmp_path / "run"), "--quiet"], capsys, watch=(path,))  # fmt: skip


def test_bounds_leave_nothing(tmp_path):
    assert not any(Path(tmp_path).iterdir())


def test_memory_estimate_grows_with_the_problem():
    """The estimate the UFM commands check against the free memory before allocating."""
    from nclab.commands.ufm import memory_estimate

    def args(command: str, **kw: object):  # noqa: ANN202
        import argparse

        base = dict(ufm_command=command, num_classes=10, n_per_class=50, dim=32, method="auto")
        return argparse.Namespace(**{**base, **kw})

    small = memory_estimate(args("solve"))
    # P = Kd + dN + K = 320 + 16000 + 10 parameters, 70 float64 copies, plus 8 copies of K·N + N
    assert small == 8 * (70 * 16330 + 8 * (5000 + 500))
    assert memory_estimate(args("solve", n_per_class=500)) > 9 * small
    dense = memory_estimate(args("condition", method="dense"))
    assert dense >= 8 * 3 * 16330**2
    assert memory_estimate(args("closed-form")) == 0
