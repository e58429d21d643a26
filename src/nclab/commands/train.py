"""`nclab train`: train one classifier (one dataset, model, loss, seed) with per-epoch NC tracking.

Every :class:`~nclab.train.TrainConfig` field is an option (``--kebab-case``). ``--config FILE``
(YAML or JSON) supplies options; only options given explicitly on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nclab.config import OPTION_GROUPS, TrainConfig, options

DESCRIPTION = (
    "Train one model on one dataset with one loss and one seed, evaluating every epoch: "
    "train/test loss and accuracy, test ECE and the neural-collapse metrics (NC1-NC4, CDNV, "
    "norms) of train and test features. Writes config.json, metrics.jsonl/.csv, "
    "checkpoints/last.pt, final.pt, predictions.npz and DONE to --out. Exit codes: 0 done, "
    "2 bad input, 3 training diverged (NaN/Inf loss), 130 interrupted (Ctrl-C), 143 SIGTERM, "
    "129 SIGHUP (the last checkpoint is kept; a job requeued by SLURM resumes on its own). "
    "Multi-GPU/multi-process: launch with torchrun (see docs/training.md)."
)

_EXPLICIT = "_explicit_options"


class _Explicit(argparse.Action):
    """Mixin: the action also records its option as given explicitly (``--config`` merging)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        _mark(namespace, self.dest)


class _StoreValue(argparse.Action):
    """Plain ``store`` (argparse's own store action is private)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, *_: Any) -> None:
        setattr(namespace, self.dest, values)


class _Store(_Explicit, _StoreValue):
    """``store`` that also records the option as given explicitly."""


class _StoreBool(_Explicit, argparse.BooleanOptionalAction):
    """``--flag/--no-flag`` that also records the option as given explicitly (and, unlike
    Python 3.11's, leaves the help text as given: the schema writes the default)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = kwargs.get("help")


def _mark(namespace: argparse.Namespace, dest: str) -> None:
    explicit = set(getattr(namespace, _EXPLICIT, set()))
    explicit.add(dest)
    setattr(namespace, _EXPLICIT, explicit)


def _value_type(field: dataclasses.Field[Any], parse: Callable[[Any], Any] | None) -> Any:
    """argparse ``type`` of a field: its option's ``parse`` (a ``ValueError`` becomes argparse's
    error message) or the converter of its annotation."""
    if parse is not None:

        def convert(text: str) -> Any:
            try:
                return parse(text)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        return convert
    annotation = str(field.type)
    if annotation.startswith("int") or annotation.startswith("list[int]"):
        return int
    if annotation.startswith("float"):
        return float
    return str


def _shown_default(field: dataclasses.Field[Any], unset: str | None) -> str:
    if field.default is None:
        return unset or "unset"
    if isinstance(field.default, bool):
        return "on" if field.default else "off"
    return str(field.default)


def option_groups(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The ``--help`` sections of :data:`~nclab.config.OPTION_GROUPS`, created on ``parser`` in
    that order (argparse leaves out a section no option joins)."""
    return {name: parser.add_argument_group(title) for name, title in OPTION_GROUPS.items()}


def add_config_options(
    group: Any,
    *,
    prefix: str = "",
    defaults: bool = True,
    only: tuple[str, ...] | None = None,
) -> None:
    """One ``--kebab-case`` option per :class:`TrainConfig` field, generated from its schema
    (:func:`nclab.config.options`) into ``group``: one argument group, or the sections of
    :func:`option_groups` (each option into the one its ``group`` names); help, placeholder,
    choices (listed in the help;
    :class:`TrainConfig` checks them, with a one-line error) and, with ``defaults``, the
    default (shown once).  ``nclab compare`` calls it with ``prefix="train_"`` and
    ``defaults=False`` (its defaults are the preset's) and leaves out the per-run options;
    ``only`` limits the options to those names (``nclab study``: the machine's knobs)."""
    for name, (f, opt) in options().items():
        if (prefix and opt.per_run) or (only is not None and name not in only):
            continue
        target = group[opt.group] if isinstance(group, dict) else group
        text = opt.help
        if opt.choices:
            text += f": {', '.join(opt.choices)}"
        if defaults:
            text += f" (default: {_shown_default(f, opt.unset)})"
        kwargs: dict[str, Any] = {
            "dest": prefix + name,
            "default": f.default if defaults else argparse.SUPPRESS,
            "help": text.replace("%", "%%"),
        }
        flag = "--" + name.replace("_", "-")
        if str(f.type).startswith("bool"):
            target.add_argument(flag, action=_StoreBool, **kwargs)
            continue
        if str(f.type).startswith("list"):
            kwargs["nargs"] = "+"
        kind = _value_type(f, opt.parse)
        kwargs["metavar"] = opt.metavar or ("N" if kind is int else name.upper())
        target.add_argument(flag, action=_Store, type=kind, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register every TrainConfig field as an option, plus --config/--out/--resume/..."""
    parser.usage = "%(prog)s [-h] [--config FILE] [--out DIR] [--resume] [training options]"
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or JSON file of options (option names as keys, '-' or '_'); options given "
        "on the command line override it; a run's config.json works too",
    )
    groups = option_groups(parser)
    run = groups["output"]
    run.add_argument(
        "--out",
        metavar="DIR",
        help="run directory (default: runs/<dataset>-<model>-<loss>-s<seed>)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (only --epochs may change)",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="discard a previous run in --out and start over"
    )
    groups["logging"].add_argument("--quiet", action="store_true", help="print nothing")
    add_config_options(groups)


def default_out_dir(config: TrainConfig) -> str:
    """``runs/<dataset>-<model>-<loss>-s<seed>`` (dataset name made file-name safe:
    ``synthetic:k=5,d=48`` becomes ``synthetic-k5-d48``)."""
    spec = str(config.dataset).replace(":", "-").replace(",", "-").replace("=", "")
    dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)
    dataset = dataset.strip("_") or "data"
    return f"runs/{dataset}-{config.model}-{config.loss}-s{config.seed}"


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the --config file (if any) with explicitly given options on top."""
    from nclab.config import config_from_dict, load_config_file

    names = list(options())
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
    from nclab.runs.lifecycle import environ_requeued as requeued
    from nclab.train import TrainingDivergedError, train

    config = config_from_args(args)
    if config.threads is None:  # a share of the cores, not torch's default on a busy machine
        import torch

        from nclab.threads import training_threads

        torch.set_num_threads(training_threads(None))
    out = args.out or default_out_dir(config)
    resume, overwrite = args.resume, args.overwrite
    if requeued():  # SLURM restarted the job after preempting it: continue where it stopped
        resume, overwrite = True, False
    try:
        result = train(config, out, resume=resume, overwrite=overwrite, quiet=args.quiet)
    except TrainingDivergedError as err:
        print(f"nclab train: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM, SIGHUP: cli.main prints the one line
        err.add_note(
            f"the last checkpoint is kept, continue with `nclab train --out {out} --resume`"
        )
        raise
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
