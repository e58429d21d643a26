"""`nclab export PATHS --out FILE`: the metrics of run directories as one CSV or Parquet table."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = (
    "Write the per-epoch metrics of run directories (of `nclab train`, `nclab compare` or the "
    "tracker; any mix of datasets, models and losses) as one tidy table: one row per run and "
    "evaluated epoch, the run's identity and config as columns (nclab.frame.load_frame, for "
    "those who do not use Python). The format follows --out's suffix: .csv, or .parquet (needs "
    "pyarrow). An existing --out file is kept unless --force; the file is written atomically. "
    "Needs pandas: pip install 'nclab[pandas]'."
)

FORMATS = (".csv", ".parquet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `nclab export`."""
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="run directories, or directories containing them"
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="the table to write: FILE.csv or FILE.parquet"
    )
    parser.add_argument(
        "--per-class",
        action="store_true",
        help="one row per run, epoch, split and class (from per_class.jsonl) instead",
    )
    parser.add_argument("--force", action="store_true", help="replace --out when it exists already")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def check_out(out: Path, force: bool) -> str:
    """The format of ``out`` (``.csv``/``.parquet``); ValueError for an unknown suffix, a
    directory, or an existing file without ``force``."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; name a file such as {out}/metrics.csv")
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"--out {out}: name a .csv or .parquet file (the suffix picks the format)")
    if (out.exists() or out.is_symlink()) and not force:
        raise ValueError(f"--out {out} exists already; pass --force to replace it")
    return suffix


def run(args: argparse.Namespace) -> int:
    """Load the runs and write the table."""
    from nclab.frame import load_frame, require_pandas
    from nclab.runs import atomic_write

    out = Path(args.out)
    suffix = check_out(out, args.force)
    require_pandas()
    if suffix == ".parquet":
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:
            raise ValueError(
                "Parquet output needs pyarrow: pip install 'nclab[pandas]' (or write a .csv)"
            )
    frame = load_frame(args.paths, per_class=args.per_class)
    if suffix == ".csv":
        atomic_write(out, lambda f: frame.to_csv(f, index=False, encoding="utf-8"))
    else:
        atomic_write(out, lambda f: frame.to_parquet(f, index=False))
    if not args.quiet:
        runs = frame["run"].nunique() if len(frame) else 0
        print(f"{out}: {len(frame)} rows, {len(frame.columns)} columns, {runs} runs")
    return 0
