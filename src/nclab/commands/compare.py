"""`nclab compare`: train CE and label smoothing side by side and write the report."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from typing import Any

from nclab.commands.train import per_class_arg
from nclab.compare import MANAGED_FIELDS, PRESETS
from nclab.train.config import TrainConfig

HELP = "Main job: train CE and label smoothing side by side and write a report."
DESCRIPTION = (
    "Train the same model on the same data with cross-entropy and with label smoothing at one "
    "or more δ, from the same initialisation and data order (one seed = one init and batch "
    "order), then write DIR/report/report.html (self-contained), summary.md, summary.json and "
    "PNG/PDF figures: convergence of errors and NC1-NC4, NC1 vs NC2, NC2 at matched NC1, "
    "calibration before/after temperature scaling, norms, UFM theory, and verdicts from paired "
    "seeds (effect, 95% interval) on the claims of Guo, Andriopoulos, Zhao, Dong, Ling, Ross "
    "(2024), 'Cross Entropy versus Label Smoothing: A Neural Collapse Perspective', arXiv "
    "2402.03979. Complete runs in --out are reused; interrupted ones resume. Training options "
    "override the preset's (see --preset)."
)

# Help for the most used training overrides (the rest: see `nclab train --help`).
_TRAIN_HELP = {
    "dataset": "dataset (fashion-mnist, mnist, cifar10, cifar100, stl10, tiny-imagenet, "
    "synthetic, npz:PATH)",
    "data_dir": "folder holding the dataset files",
    "per_class": "training samples per class (class-balanced subset), or 'all'; with --dataset "
    "the preset's value does not apply",
    "test_per_class": "test samples per class evaluated every epoch (fixed class-balanced subset; "
    "the final epoch uses the whole test set), or 'all'; with --dataset the preset's value does "
    "not apply",
    "model": "model: mlp, cnn, resnet18, resnet34, resnet50",
    "width": "model width",
    "depth": "model depth",
    "epochs": "training epochs",
    "lr": "initial SGD learning rate",
    "batch_size": "mini-batch size",
    "weight_decay": "SGD weight decay",
    "ufm_penalties": "UFM-penalty mode: explicit λ_W, λ_H, λ_b penalties instead of weight decay "
    "on the classifier; the report draws the closed-form norms and uses these λ in the theory",
    "lambda_w": "UFM-penalty mode: λ_W",
    "lambda_h": "UFM-penalty mode: λ_H",
    "lambda_b": "UFM-penalty mode: λ_b",
}


def _option_type(annotation: str) -> tuple[str, Any]:
    """(kind, converter) from a TrainConfig field annotation string."""
    if "bool" in annotation:
        return "bool", None
    if annotation.startswith("list[int]"):
        return "list", int
    if annotation.startswith("int"):
        return "scalar", int
    if annotation.startswith("float"):
        return "scalar", float
    return "scalar", str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `nclab compare`."""
    parser.add_argument(
        "--preset",
        default="quick",
        choices=list(PRESETS),
        help="named setting: "
        + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()).replace("%", "%%"),
    )
    parser.add_argument(
        "--smoothing",
        type=float,
        nargs="+",
        default=None,
        metavar="DELTA",
        help="label-smoothing δ values in [0, 1); CE (0) is always included "
        "(default: the preset's, quick: 0 0.05 0.1)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="seeds: CE and LS runs of one seed share initialisation and data order and are "
        "compared as pairs; 3 or more make the verdicts more than indicative (default: the "
        "preset's; quick and paper: 0 1 2, smoke: 0)",
    )
    parser.add_argument(
        "--out",
        default="runs/compare",
        metavar="DIR",
        help="output directory (runs/, report/, compare.json)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="J",
        help="runs trained in parallel by spawned worker processes "
        "(default: the preset's; quick/smoke: min(2, CPU count))",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="torch threads per job (default: CPU count // jobs)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="retrain every run, discarding what --out holds for it",
    )
    parser.add_argument("--no-report", action="store_true", help="train only")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    group = parser.add_argument_group(
        "training options", "override the preset (same meaning as in `nclab train`)"
    )
    for f in dataclasses.fields(TrainConfig):
        if f.name in MANAGED_FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind, conv = _option_type(str(f.type))
        help_text = _TRAIN_HELP.get(f.name, f"TrainConfig.{f.name} (see `nclab train --help`)")
        common = dict(dest=f"train_{f.name}", default=argparse.SUPPRESS, help=help_text)
        if f.name in ("per_class", "test_per_class"):
            group.add_argument(flag, type=per_class_arg, metavar="N|all", **common)
        elif kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind == "list":
            group.add_argument(flag, type=conv, nargs="+", **common)
        else:
            group.add_argument(flag, type=conv, metavar=re.sub(r"\W", "", f.name.upper()), **common)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig options given on the command line."""
    return {k[len("train_") :]: v for k, v in vars(args).items() if k.startswith("train_")}


def run(args: argparse.Namespace) -> int:
    """Run the comparison and print where the report is."""
    from nclab.compare import CompareConfig, compare

    cfg = CompareConfig(
        preset=args.preset,
        smoothings=args.smoothing,
        seeds=args.seeds,
        train=train_overrides(args),
        out=args.out,
        jobs=args.jobs,
        threads=args.threads,
        overwrite=args.overwrite,
        report=not args.no_report,
        quiet=args.quiet,
    )
    try:
        result = compare(cfg)
    except KeyboardInterrupt:
        print(
            "nclab compare: interrupted; every run keeps its last checkpoint: rerun the same "
            "command to resume",
            file=sys.stderr,
        )
        return 130
    if not args.quiet:
        print(f"done in {result.seconds:.1f} s")
        if result.report is not None:
            for v in result.report.summary.verdicts:
                print(f"  ({v.claim}) {v.statement}: {v.verdict}")
            print(f"report: {result.report.html}")
            print(f"summary: {result.report.markdown}")
        print(f"runs: {result.out_dir / 'runs'}")
    return 0
