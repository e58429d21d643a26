"""`nclab train`: train one classifier (one dataset, model, loss, seed) with per-epoch NC tracking.

Every :class:`~nclab.train.TrainConfig` field is an option (``--kebab-case``). ``--config FILE``
(YAML or JSON) supplies options; only options given explicitly on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Sequence
from typing import Any

from nclab.train.config import SCHEDULERS, TrainConfig

HELP = "Train one classifier with per-epoch neural-collapse tracking."
DESCRIPTION = (
    "Train one model on one dataset with one loss and one seed, evaluating every epoch: "
    "train/test loss and accuracy, test ECE and the neural-collapse metrics (NC1-NC4, CDNV, "
    "norms) of train and test features. Writes config.json, metrics.jsonl/.csv, "
    "checkpoints/last.pt, final.pt, predictions.npz and DONE to --out. Exit codes: 0 done, "
    "2 bad input, 3 training diverged (NaN/Inf loss), 130 interrupted. Multi-GPU/multi-process: "
    "launch with torchrun (see docs/training.md)."
)

_EXPLICIT = "_explicit_options"

# option -> help text (defaults are appended by the parser's formatter)
_HELP: dict[str, str] = {
    "dataset": "dataset: fashion-mnist, mnist, cifar10, cifar100, stl10, tiny-imagenet, "
    "synthetic, or npz:PATH",
    "data_dir": "folder holding the dataset files (unset: standard locations, see docs/data.md)",
    "per_class": "keep this many training samples per class (class-balanced, seeded), or 'all' "
    "(unset: all)",
    "test_per_class": "evaluate the per-epoch test metrics on a fixed class-balanced subset of "
    "this many test samples per class (the same for every seed and loss; the final epoch always "
    "uses the whole test set), or 'all' (unset: the whole test set every epoch)",
    "augment": "random crop (4-pixel padding) + horizontal flip on training images",
    "synthetic_classes": "number of classes of the synthetic dataset",
    "synthetic_dim": "input dimension of the synthetic dataset",
    "synthetic_train_per_class": "training samples per class of the synthetic dataset",
    "synthetic_test_per_class": "test samples per class of the synthetic dataset",
    "model": "model: mlp, cnn, resnet18, resnet34, resnet50",
    "width": "model width (unset: mlp 512 units, cnn 32 channels, resnets 64 channels)",
    "depth": "model depth (unset: mlp 3 hidden layers, cnn 4 conv blocks; resnets fixed)",
    "bias": "give the classifier a bias",
    "loss": "training loss: ce, ls (label smoothing), focal, mse",
    "smoothing": "label smoothing δ in [0, 1) for --loss ls",
    "epochs": "number of training epochs (with --resume: a larger value extends a run)",
    "batch_size": "global mini-batch size (split over the processes under torchrun)",
    "lr": "initial learning rate of SGD",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay (unset: 5e-4; in UFM-penalty mode unset means none, and "
    "a value applies to the backbone only)",
    "nesterov": "Nesterov momentum",
    "scheduler": f"learning-rate schedule, stepped per epoch: {', '.join(SCHEDULERS)}",
    "milestones": "epochs after which multistep multiplies the lr by --gamma "
    "(unset: 1/2 and 3/4 of --epochs)",
    "gamma": "multistep decay factor",
    "ufm_penalties": "UFM-penalty mode: no optimizer weight decay on the classifier; add "
    "λ_W/2||W||² + λ_b/2||b||² + λ_H/2·(N/B)||H_batch||² to the loss and log the closed-form "
    "UFM norms (ufm_w_norm, ufm_h_norm)",
    "lambda_w": "UFM-penalty mode: λ_W on the classifier weight",
    "lambda_h": "UFM-penalty mode: λ_H on the features",
    "lambda_b": "UFM-penalty mode: λ_b on the classifier bias",
    "seed": "seed of the model initialisation, data order and per-class subset",
    "device": "auto (CUDA when available), cpu or cuda",
    "bf16": "bfloat16 autocast (CUDA only)",
    "channels_last": "channels-last memory format (unset: on for conv nets on CPU)",
    "threads": "torch intra-op threads (unset: torch's default)",
    "eval_every": "evaluate every this many epochs (the last epoch is always evaluated)",
    "checkpoint_every": "write checkpoints/last.pt every this many epochs (and at the end)",
}

_METAVAR: dict[str, str] = {
    "dataset": "NAME",
    "data_dir": "DIR",
    "model": "NAME",
    "loss": "NAME",
    "scheduler": "NAME",
    "device": "DEVICE",
    "milestones": "EPOCH",
    "per_class": "N|all",
    "test_per_class": "N|all",
    "synthetic_classes": "K",
    "synthetic_dim": "D",
    "synthetic_train_per_class": "N",
    "synthetic_test_per_class": "N",
    "threads": "N",
    "eval_every": "EPOCHS",
    "checkpoint_every": "EPOCHS",
    "smoothing": "DELTA",
    "lambda_w": "LAMBDA",
    "lambda_h": "LAMBDA",
    "lambda_b": "LAMBDA",
    "width": "N",
    "depth": "N",
    "epochs": "N",
    "batch_size": "N",
    "momentum": "M",
    "gamma": "FACTOR",
}


class _Store(argparse.Action):
    """``store`` that also records the option as given explicitly."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        _mark(namespace, self.dest)


class _StoreBool(argparse.BooleanOptionalAction):
    """``--flag/--no-flag`` that also records the option as given explicitly."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        _mark(namespace, self.dest)


def _mark(namespace: argparse.Namespace, dest: str) -> None:
    explicit = set(getattr(namespace, _EXPLICIT, set()))
    explicit.add(dest)
    setattr(namespace, _EXPLICIT, explicit)


def per_class_arg(value: str) -> int | None:
    """argparse type of ``--per-class``/``--test-per-class``: a positive integer or ``all``."""
    from nclab.train.config import parse_per_class

    try:
        parsed = parse_per_class(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if parsed is not None and parsed < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value!r}")
    return parsed


def _value_type(field: dataclasses.Field[Any]) -> Any:
    if field.name in ("per_class", "test_per_class"):
        return per_class_arg
    annotation = str(field.type)
    if annotation.startswith("int") or annotation.startswith("list[int]"):
        return int
    if annotation.startswith("float"):
        return float
    return str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register every TrainConfig field as an option, plus --config/--out/--resume/..."""
    run = parser.add_argument_group("run directory")
    run.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or JSON file of options (option names as keys, '-' or '_'); options given "
        "on the command line override it; a run's config.json works too",
    )
    run.add_argument(
        "--out",
        metavar="DIR",
        help="run directory (unset: runs/<dataset>-<model>-<loss>-s<seed>)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (only --epochs may change)",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="discard a previous run in --out and start over"
    )
    run.add_argument("--quiet", action="store_true", help="print nothing")

    group = parser.add_argument_group("training options (TrainConfig fields)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "default": f.default, "help": _HELP[f.name]}
        if str(f.type).startswith("bool"):
            group.add_argument(flag, action=_StoreBool, **kwargs)
            continue
        if f.name == "milestones":
            kwargs["nargs"] = "+"
        if f.name == "scheduler":
            kwargs["choices"] = SCHEDULERS
        kwargs["metavar"] = _METAVAR.get(f.name, f.name.upper().split("_")[-1])
        group.add_argument(flag, action=_Store, type=_value_type(f), **kwargs)


def default_out_dir(config: TrainConfig) -> str:
    """``runs/<dataset>-<model>-<loss>-s<seed>`` (dataset name made file-name safe)."""
    dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(config.dataset).replace("npz:", "npz-"))
    dataset = dataset.strip("_") or "data"
    return f"runs/{dataset}-{config.model}-{config.loss}-s{config.seed}"


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the --config file (if any) with explicitly given options on top."""
    from nclab.train.config import config_from_dict, load_config_file

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    if args.config is None:
        return config_from_dict({name: getattr(args, name) for name in names})
    from_file = {str(k).replace("-", "_"): v for k, v in load_config_file(args.config).items()}
    values = dict(from_file)
    for name in getattr(args, _EXPLICIT, set()):
        if name in names:
            values[name] = getattr(args, name)
    try:
        return config_from_dict(values)
    except ValueError:
        try:
            config_from_dict(from_file)
        except ValueError as file_err:  # the file itself is at fault: name it
            raise ValueError(f"config file {args.config}: {file_err}") from None
        raise  # a command-line option is


def run(args: argparse.Namespace) -> int:
    """Train; print a one-line summary. Returns 0, or 3 when training diverged."""
    from nclab.train import TrainingDivergedError, train

    config = config_from_args(args)
    out = args.out or default_out_dir(config)
    try:
        result = train(config, out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    except TrainingDivergedError as err:
        print(f"nclab train: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(
            f"nclab train: interrupted; the last checkpoint is kept, continue with "
            f"`nclab train --out {out} --resume`",
            file=sys.stderr,
        )
        return 130
    if not args.quiet:
        perfect = result.first_perfect_epoch
        print(_summary_line(result.out_dir, result.final, perfect, result.reused))
    return 0


def _summary_line(out: Any, final: dict[str, Any], perfect: int | None, reused: bool) -> str:
    def fmt(key: str, spec: str) -> str:
        value = final.get(key)
        return f"{key} {'n/a' if value is None else format(value, spec)}"

    state = "already complete" if reused else "complete"
    parts: Sequence[str] = [
        f"{out}: {state}",
        f"epoch {final.get('epoch')}",
        fmt("train_acc", ".4f"),
        fmt("test_acc", ".4f"),
        fmt("ece", ".4f"),
        fmt("nc1", ".4g"),
        f"first 100% train acc: {'epoch ' + str(perfect) if perfect else 'never'}",
    ]
    return ", ".join(parts)
