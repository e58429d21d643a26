"""Training configuration: :class:`TrainConfig`, its option schema, validation and file loading.

Each field is declared with :func:`option` (through the helper of its ``--help`` section,
``_data``, ``_model``, ...), which stores an :class:`Option` (help, placeholder, choices, and the
field's role: identity, knob, per-run) in the field's metadata; the
``nclab train``/``nclab compare`` parsers and the rules of resume (:data:`COMPARABLE_EXCEPT`),
compare (:data:`PER_RUN_FIELDS`) and the report (:data:`SETTING_FIELDS`) are derived from it.
This module imports no heavy library (torch, numpy), neither to build ``--help`` nor to
validate a config: names, a loss with its δ and dataset specs are checked by :mod:`nclab.names`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nclab.names import (
    CLASSIFIERS,
    DATASETS,
    DEVICES,
    IMBALANCE_PROFILES,
    LABEL_NOISE_MODES,
    LOSSES,
    MODELS,
    SCHEDULERS,
    check_loss,
    parse_synthetic,
    synthetic_name,
)

__all__ = [
    "COMPARABLE_EXCEPT",
    "DATASET_SPECIFIC_FIELDS",
    "PER_RUN_FIELDS",
    "SCHEDULERS",
    "SETTING_FIELDS",
    "Option",
    "TrainConfig",
    "config_differences",
    "config_from_dict",
    "load_config_file",
    "options",
    "OPTION_GROUPS",
    "parse_layers",
    "parse_per_class",
]

#: Largest seed: numpy's legacy global generator, seeded for reproducibility, takes 32 bits.
MAX_SEED = 2**32 - 1

#: Weight decay used for every parameter when ``weight_decay`` is left unset (outside UFM mode).
DEFAULT_WEIGHT_DECAY = 5e-4


@dataclass(frozen=True)
class Option:
    """What the command line, resume, ``nclab compare`` and the report need to know about one
    :class:`TrainConfig` field: the one place to describe a training option.

    Attributes:
        help: one-line help (without the default: the parsers add it once).
        metavar: placeholder in ``--help`` (default: from the type, ``N`` for integers).
        unset: what ``None`` means, shown as the default of an optional field.
        choices: the accepted values (from :mod:`nclab.names`, so ``--help`` needs no torch).
        identity: part of a run's identity: a stopped run resumes, and ``nclab compare`` reuses
            a run, only when every identity option is unchanged.  False for what may change
            without changing what a run computes or means (``epochs`` extends a run).
        knob: changes how or where a run executes, not its results (threads, device, paths):
            the report does not require runs to agree on it.
        per_run: ``nclab compare`` sets it for each run (from ``--smoothing``, ``--seeds``,
            ``--jobs``); it is not a compare option and runs of one comparison differ in it.
        parse: converts a value written on the command line or in a config file (default: by
            the field's type); raises ``ValueError`` with what to write instead.
        dataset_specific: a value that belongs to one dataset (a subset size): a preset's value
            is dropped when ``nclab compare --dataset`` names another dataset.
        group: the ``--help`` section the option is listed in (one of :data:`OPTION_GROUPS`).
    """

    help: str
    metavar: str | None = None
    unset: str | None = None
    choices: tuple[str, ...] | None = None
    identity: bool = True
    knob: bool = False
    per_run: bool = False
    parse: Callable[[Any], Any] | None = None
    dataset_specific: bool = False
    group: str = "execution"

    def __post_init__(self) -> None:
        if self.group not in OPTION_GROUPS:
            raise ValueError(f"group must be one of {', '.join(OPTION_GROUPS)}, got {self.group!r}")


#: The ``--help`` sections of ``nclab train`` and ``nclab compare``, in order: name -> title
#: (an :class:`Option` names its section with ``group``).
OPTION_GROUPS: dict[str, str] = {
    "data": "data",
    "conditions": "training conditions (label noise, class imbalance)",
    "model": "model",
    "loss": "loss",
    "optimisation": "optimisation",
    "evaluation": "evaluation",
    "logging": "logging",
    "execution": "execution",
    "output": "output",
}


def parse_per_class(value: Any) -> int | None:
    """``per_class``/``test_per_class`` from a command line or file: a positive integer, or
    ``all`` (None: every sample)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ValueError(
                f"expected a positive integer or 'all' (every sample), got {value!r}"
            ) from None
    return value


def parse_layers(value: Any) -> str | None:
    """``nc_layers`` from a command line or file: ``all``, or block names separated by commas
    (a list in a config file), normalised to ``"a,b"``; None or ``none``: off."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    names = [str(item).strip() for item in items]
    if any(not name for name in names) or not names:
        raise ValueError(
            f"expected 'all' or block names separated by commas (e.g. layer1,layer2), got {value!r}"
        )
    if names == ["none"]:
        return None
    if "all" in names and len(names) > 1:
        raise ValueError(f"'all' already names every block; give it alone, got {value!r}")
    return ",".join(names)


def option(default: Any, help: str, **schema: Any) -> Any:
    """A :class:`TrainConfig` field with its :class:`Option` in the field's metadata."""
    return dataclasses.field(default=default, metadata={"option": Option(help, **schema)})


def _section(group: str) -> Callable[..., Any]:
    """:func:`option` for the fields of one ``--help`` section (a key of :data:`OPTION_GROUPS`)."""
    return functools.partial(option, group=group)


_data = _section("data")
_conditions = _section("conditions")
_model = _section("model")
_loss = _section("loss")
_optimisation = _section("optimisation")
_evaluation = _section("evaluation")
_logging = _section("logging")
_execution = _section("execution")


#: Schema of the options that change how a run executes or what it logs besides its files, never
#: what it computes: not part of its identity, and runs of one comparison may differ in them.
_RUNTIME: dict[str, Any] = {"identity": False, "knob": True}

#: Schema of the sample-count options that also accept ``all``.
_COUNT_OR_ALL: dict[str, Any] = {
    "metavar": "N|all",
    "parse": parse_per_class,
    "dataset_specific": True,
}


@dataclass
class TrainConfig:
    """Every option of one training run (one dataset, model, loss and seed).

    Each field declares its help, placeholder, choices and role in its :class:`Option`
    metadata (:func:`options`); the ``nclab train`` and ``nclab compare`` parsers, resume's and
    compare's identity checks and the report's like-for-like check are generated from it.
    Defaults train the default MLP on Fashion-MNIST to 100% training accuracy.
    ``per_class``/``test_per_class`` also accept ``"all"`` (= None, every sample).
    """

    dataset: str = _data(
        "fashion-mnist",
        f"dataset: {', '.join(DATASETS)}; synthetic:k=K,d=D,n=N,test=M (K classes, input "
        "dimension D, N training and M test samples per class; defaults 10, 32, 100, 100); or "
        "npz:PATH (your own arrays)",
        metavar="NAME",
    )
    data_dir: str | None = _data(
        None,
        "folder holding the dataset files",
        metavar="DIR",
        unset="standard locations, see docs/data.md",
        **_RUNTIME,
    )
    per_class: int | None = _data(
        None,
        "keep this many training samples per class (class-balanced, seeded), or 'all'",
        unset="all",
        **_COUNT_OR_ALL,
    )
    test_per_class: int | None = _data(
        None,
        "evaluate the per-epoch test metrics on a fixed class-balanced subset of this many test "
        "samples per class (the same for every seed and loss; the final epoch always uses the "
        "whole test set), or 'all'",
        unset="the whole test set every epoch",
        **_COUNT_OR_ALL,
    )
    augment: bool = _data(False, "random crop (4-pixel padding) + horizontal flip on images")
    label_noise: float = _conditions(
        0.0,
        "flip exactly round(P·N) training labels, drawn from --seed (the same for every loss); "
        "NC metrics use the clean labels, test labels stay clean",
        metavar="P",
    )
    label_noise_mode: str = _conditions(
        "symmetric",
        "how --label-noise flips a label (symmetric: to a uniformly drawn other class; pairflip: "
        "to the next class)",
        metavar="MODE",
        choices=LABEL_NOISE_MODES,
    )
    imbalance: float | None = _conditions(
        None,
        "long-tailed training set with n_max/n_min = RATIO (the test set stays balanced)",
        metavar="RATIO",
        unset="balanced",
    )
    imbalance_profile: str = _conditions(
        "exp",
        "per-class counts of --imbalance (exp: n_k = n_max·RATIO^(-k/(K-1)); step: the second "
        "half of the classes n_max/RATIO)",
        metavar="NAME",
        choices=IMBALANCE_PROFILES,
    )
    model: str = _model("mlp", "model", metavar="NAME", choices=MODELS)
    width: int | None = _model(
        None, "model width", unset="mlp 512 units, cnn 32 channels, resnets 64 channels"
    )
    depth: int | None = _model(
        None, "model depth", unset="mlp 3 hidden layers, cnn 4 conv blocks; resnets fixed"
    )
    bias: bool = _model(True, "give the classifier a bias")
    classifier: str = _model(
        "linear",
        "classifier head: linear (trained) or etf (a fixed simplex ETF, not trained, zero bias; "
        "an option of Guo et al.'s code)",
        metavar="HEAD",
        choices=CLASSIFIERS,
    )
    feature_bn: bool = _model(
        False, "a BatchNorm1d on the penultimate features (Guo et al.'s UFM-regularised setting)"
    )
    loss: str = _loss(
        "ce", "training loss (ls: label smoothing)", metavar="NAME", choices=LOSSES, per_run=True
    )
    smoothing: float = _loss(
        0.0, "label smoothing δ in [0, 1) for --loss ls", metavar="DELTA", per_run=True
    )
    epochs: int = _optimisation(
        60, "training epochs (with --resume: a larger value extends a run)", identity=False
    )
    batch_size: int = _optimisation(
        128, "global mini-batch size (split over the processes under torchrun)"
    )
    lr: float = _optimisation(0.01, "initial learning rate of SGD")
    momentum: float = _optimisation(0.9, "SGD momentum", metavar="M")
    weight_decay: float | None = _optimisation(
        None,
        "SGD weight decay",
        metavar="DECAY",
        unset="5e-4; in UFM-penalty mode none, and a value applies to the backbone only",
    )
    nesterov: bool = _optimisation(False, "Nesterov momentum")
    scheduler: str = _optimisation(
        "cosine", "learning-rate schedule, stepped per epoch", metavar="NAME", choices=SCHEDULERS
    )
    milestones: list[int] | None = _optimisation(
        None,
        "epochs after which multistep multiplies the lr by --gamma",
        metavar="EPOCH",
        unset="1/2 and 3/4 of --epochs",
    )
    gamma: float = _optimisation(0.1, "multistep decay factor", metavar="FACTOR")
    ufm_penalties: bool = _loss(
        False,
        "UFM-penalty mode: no optimizer weight decay on the classifier; add λ_W/2||W||² + "
        "λ_b/2||b||² + λ_H/2·(N/B)||H_batch||² to the loss and log the closed-form UFM norms "
        "(ufm_w_norm, ufm_h_norm), which the report draws",
    )
    lambda_w: float = _loss(5e-4, "UFM-penalty mode: λ_W on the classifier", metavar="LAMBDA")
    lambda_h: float = _loss(5e-4, "UFM-penalty mode: λ_H on the features", metavar="LAMBDA")
    lambda_b: float = _loss(5e-4, "UFM-penalty mode: λ_b on the bias", metavar="LAMBDA")
    seed: int = _optimisation(
        0, "seed of the model initialisation, data order and per-class subset", per_run=True
    )
    device: str = _execution(
        "auto", "device (auto: CUDA when available)", metavar="DEVICE", choices=DEVICES, knob=True
    )
    bf16: bool = _execution(False, "bfloat16 autocast (CUDA only)")
    channels_last: bool | None = _execution(
        None, "channels-last memory format", unset="on for conv nets on CUDA", knob=True
    )
    threads: int | None = _execution(
        None,
        "torch intra-op threads",
        unset="the cores this process may use (OMP_NUM_THREADS if exported)",
        **_RUNTIME,
        per_run=True,
    )
    eval_every: int = _evaluation(
        1, "evaluate every this many epochs (the last epoch is always evaluated)", metavar="EPOCHS"
    )
    nc_layers: str | None = _evaluation(
        None,
        "also record NC1 and NC2 (train split) of intermediate features each evaluated epoch: "
        "all, or block names separated by commas (docs/training.md)",
        metavar="all|NAMES",
        unset="penultimate features only",
        parse=parse_layers,
        knob=True,
    )
    checkpoint_every: int | None = _execution(
        None,
        "write checkpoints/last.pt every this many epochs (always after the last epoch and "
        "when stopped by Ctrl-C, SIGTERM or SIGHUP)",
        metavar="EPOCHS",
        unset="by time, see --checkpoint-seconds",
        **_RUNTIME,
    )
    checkpoint_seconds: float = _execution(
        60.0,
        "without --checkpoint-every: write checkpoints/last.pt after the first epoch that ends "
        "this many seconds of wall time after the last one (0: every epoch)",
        metavar="SECONDS",
        **_RUNTIME,
    )
    tensorboard: bool = _logging(
        False,
        "also write every logged scalar as TensorBoard events in the run directory (needs "
        "pip install 'nclab[tensorboard]')",
        **_RUNTIME,
    )
    wandb: bool = _logging(
        False,
        "also log every row and the config to Weights & Biases, files in RUN_DIR/wandb "
        "(WANDB_MODE=offline works with no network; needs pip install 'nclab[wandb]')",
        **_RUNTIME,
    )
    wandb_project: str | None = _logging(
        None, "W&B project of --wandb", metavar="NAME", unset="nclab", **_RUNTIME
    )
    wandb_group: str | None = _logging(
        None,
        "W&B group of --wandb (runs of one comparison share one)",
        metavar="NAME",
        unset="none; compare: its --out folder",
        **_RUNTIME,
    )
    wandb_name: str | None = _logging(
        None,
        "W&B run name of --wandb",
        metavar="NAME",
        unset="the run directory's name",
        **_RUNTIME,
        per_run=True,
    )

    def __post_init__(self) -> None:
        if self.milestones is not None and not isinstance(self.milestones, list | tuple):
            raise ValueError(f"milestones must be a list of epochs, got {self.milestones!r}")
        if self.milestones is not None:
            self.milestones = [_as_int("milestones", m) for m in self.milestones]
        self.dataset = _dataset_spec(self.dataset)
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid option and how to fix it."""
        _check_names(self)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("eval_every", self.eval_every)
        _finite("checkpoint_seconds", self.checkpoint_seconds, nonnegative=True)
        optional = ("checkpoint_every", "per_class", "test_per_class", "width", "depth")
        for name in (*optional, "threads"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(name, value)
        from nclab.limits import MAX_DEPTH, MAX_WIDTH, check_count

        for name, limit in (("width", MAX_WIDTH), ("depth", MAX_DEPTH)):
            if getattr(self, name) is not None:  # before anything is built or read
                check_count(name, int(getattr(self, name)), limit)
        _check_conditions(self)
        _finite("lr", self.lr, positive=True)
        _finite("momentum", self.momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}; 0.9 is usual")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError(
                "nesterov momentum needs momentum > 0; set --momentum or drop --nesterov"
            )
        if self.weight_decay is not None:
            _finite("weight_decay", self.weight_decay, nonnegative=True)
        for name in ("lambda_w", "lambda_h", "lambda_b"):
            _finite(name, getattr(self, name), nonnegative=True)
        if self.ufm_penalties and (self.lambda_w <= 0 or self.lambda_h <= 0):
            raise ValueError(
                "UFM-penalty mode needs lambda_w > 0 and lambda_h > 0 (got "
                f"{self.lambda_w}, {self.lambda_h}); without them the UFM has no minimizer"
            )
        _check_schedule(self)
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int | float)
            or self.seed != int(self.seed)
            or not 0 <= int(self.seed) <= MAX_SEED
        ):
            raise ValueError(
                f"seed must be an integer in [0, {MAX_SEED}] (2**32 - 1), got {self.seed!r}"
            )

    # ------------------------------------------------------------------ resolved values

    def resolved_milestones(self) -> list[int]:
        """Milestones of the multistep scheduler (default: 1/2 and 3/4 of the epochs)."""
        if self.milestones is not None:
            return list(self.milestones)
        return sorted({max(1, self.epochs // 2), max(1, (3 * self.epochs) // 4)})

    def backbone_weight_decay(self) -> float:
        """Optimizer weight decay on the feature extractor's parameters."""
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 0.0 if self.ufm_penalties else DEFAULT_WEIGHT_DECAY

    def classifier_weight_decay(self) -> float:
        """Optimizer weight decay on the classifier (0 in UFM mode: explicit penalties instead)."""
        return 0.0 if self.ufm_penalties else self.backbone_weight_decay()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every option."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- the schema


@functools.cache
def options() -> dict[str, tuple[dataclasses.Field[Any], Option]]:
    """Every training option: name -> (dataclass field, :class:`Option`), in field order.

    ``TypeError`` (at import, through the rules below) for a field declared without
    :func:`option`, naming it."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if not isinstance(f.metadata.get("option"), Option):
            raise TypeError(
                f"TrainConfig.{f.name} has no option schema: declare it as "
                f"{f.name}: ... = option(default, help, ...)"
            )
        out[f.name] = (f, f.metadata["option"])
    return out


def _names(keep: Any) -> frozenset[str]:
    return frozenset(name for name, (_, opt) in options().items() if keep(opt))


#: Options that may differ between a stopped run and its resumption, and between a finished run
#: and the one ``nclab compare`` would train in its place (``epochs`` is checked separately).
COMPARABLE_EXCEPT: frozenset[str] = _names(lambda o: not o.identity)
#: Options ``nclab compare`` sets for each run; they are not compare options.
PER_RUN_FIELDS: frozenset[str] = _names(lambda o: o.per_run)
#: Options the runs of one comparison must share for it to be like for like (the report warns
#: about the others' differences only when they are here).
SETTING_FIELDS: frozenset[str] = _names(lambda o: not (o.per_run or o.knob))
#: Options whose preset value belongs to the preset's dataset (``nclab compare --dataset``).
DATASET_SPECIFIC_FIELDS: frozenset[str] = _names(lambda o: o.dataset_specific)


def _dataset_spec(dataset: str) -> str:
    """``dataset``, with a synthetic dataset written out in full
    (``synthetic:k=10,d=32,n=100,test=100``) so that equal data compare equal."""
    name = str(dataset)
    if not name.strip().lower().startswith("synthetic"):
        return name
    return synthetic_name(**parse_synthetic(name))


# ---------------------------------------------------------------------------- helpers


def _check_names(cfg: TrainConfig) -> None:
    name = str(cfg.dataset)
    if not (name.lower() in DATASETS or name.startswith(("npz:", "synthetic:"))):
        raise ValueError(
            f"unknown dataset {cfg.dataset!r}; available: {', '.join(DATASETS)}, "
            "synthetic:k=K,d=D,n=N,test=M or npz:PATH"
        )
    if str(cfg.model).lower() not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; available models: {', '.join(MODELS)}")
    _finite("smoothing", cfg.smoothing)
    check_loss(cfg.loss, cfg.smoothing)
    if cfg.device not in DEVICES:
        raise ValueError(f"unknown device {cfg.device!r}; use one of {', '.join(DEVICES)}")


def _check_conditions(cfg: TrainConfig) -> None:
    _finite("label_noise", cfg.label_noise)
    if not 0.0 <= cfg.label_noise < 1.0:
        raise ValueError(f"label_noise must be a fraction in [0, 1), got {cfg.label_noise}")
    if cfg.label_noise_mode not in LABEL_NOISE_MODES:
        raise ValueError(
            f"unknown label_noise_mode {cfg.label_noise_mode!r}; use one of "
            + ", ".join(LABEL_NOISE_MODES)
        )
    if cfg.imbalance is not None:
        _finite("imbalance", cfg.imbalance)
        if cfg.imbalance < 1.0:
            raise ValueError(
                f"imbalance is n_max/n_min and must be >= 1, got {cfg.imbalance}; leave it "
                "unset for a balanced training set"
            )
    if cfg.imbalance_profile not in IMBALANCE_PROFILES:
        raise ValueError(
            f"unknown imbalance_profile {cfg.imbalance_profile!r}; use one of "
            + ", ".join(IMBALANCE_PROFILES)
        )
    if cfg.nc_layers is not None:
        cfg.nc_layers = parse_layers(cfg.nc_layers)


def _check_schedule(cfg: TrainConfig) -> None:
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {cfg.scheduler!r}; use one of {', '.join(SCHEDULERS)}")
    _finite("gamma", cfg.gamma, positive=True)
    if cfg.milestones is not None:
        ms = list(cfg.milestones)
        if any(m < 1 for m in ms):
            raise ValueError(f"milestones must be epochs >= 1, got {ms}")
        if any(b <= a for a, b in zip(ms, ms[1:], strict=False)):
            raise ValueError(f"milestones must be strictly increasing, got {ms}")
        if any(m > cfg.epochs for m in ms):
            raise ValueError(
                f"milestones {ms} lie past the last epoch ({cfg.epochs}), where they would never "
                "change the learning rate; use epochs <= --epochs"
            )


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"{name} must be integers, got {value!r}")
    return int(value)


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _finite(name: str, value: Any, *, positive: bool = False, nonnegative: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


# ---------------------------------------------------------------------------- dicts and files


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _accepted_names() -> set[str]:
    """Option names a configuration may hold: the fields."""
    return set(_field_names())


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a config from a mapping of option names (``-`` or ``_`` spelling); unknown keys
    raise ``ValueError`` listing the valid ones."""
    known = _accepted_names()
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in known:
            values[name] = _coerce(name, value)
        else:
            unknown.append(str(key))
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} in the configuration; valid options: "
            + ", ".join(_field_names())
        )
    return TrainConfig(**values)


_FLOAT_FIELDS = frozenset(
    name for name, (f, _) in options().items() if str(f.type).startswith("float")
)


def _coerce(name: str, value: Any) -> Any:
    """A value from a config file: the option's own ``parse`` (``per_class: all`` becomes None);
    numbers written as strings (YAML reads ``1e-3`` as a string) become floats."""
    parse = options()[name][1].parse if name in options() else None  # None: an alias
    if parse is not None:
        return parse(value)
    if name in _FLOAT_FIELDS and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    return value


def _bounded_int(text: str) -> int:
    from nclab.limits import MAX_INT_DIGITS

    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits exceeds the limit of {MAX_INT_DIGITS}")
    return int(text)


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a number an option accepts")


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses more than ``MAX_YAML_ALIASES`` aliases or nesting deeper
    than ``MAX_YAML_DEPTH`` while parsing (an alias bomb is refused at once, never expanded)."""
    import yaml

    from nclab.limits import MAX_YAML_ALIASES, MAX_YAML_DEPTH

    class _Bounded(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise ValueError(
                        f"it uses more than {MAX_YAML_ALIASES} YAML aliases (*name); write the "
                        "options out"
                    )
            depth = len(getattr(self, "_nclab_stack", ()))
            if depth > MAX_YAML_DEPTH:
                raise ValueError(f"it nests deeper than {MAX_YAML_DEPTH} levels")
            self.__dict__.setdefault("_nclab_stack", []).append(parent)
            try:
                return super().compose_node(parent, index)
            finally:
                self._nclab_stack.pop()

    loader = _Bounded(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise ValueError(" ".join(str(err).split())) from None
    finally:
        loader.dispose()


def _check_nesting(data: Any) -> None:
    """Refuse nesting deeper than ``MAX_YAML_DEPTH`` and more than ``MAX_CONFIG_VALUES`` values
    once aliases are expanded (counted with shared parts once, so a bomb is never walked)."""
    from nclab.limits import MAX_CONFIG_VALUES, MAX_YAML_DEPTH

    sizes: dict[int, int] = {}

    def size(node: Any, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise ValueError(f"it nests deeper than {MAX_YAML_DEPTH} levels")
        if not isinstance(node, dict | list):
            return 1
        if id(node) not in sizes:
            children = node.values() if isinstance(node, dict) else node
            sizes[id(node)] = 1 + sum(size(c, depth + 1) for c in children)
            if sizes[id(node)] > MAX_CONFIG_VALUES:
                raise ValueError(
                    f"it holds more than {MAX_CONFIG_VALUES} values once its aliases are "
                    "expanded; a file of options needs far fewer"
                )
        return sizes[id(node)]

    size(data, 0)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of options. A run directory's ``config.json`` works too
    (its option keys are used; the recorded versions, host etc. are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    from nclab.limits import MAX_CONFIG_BYTES

    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(
            f"config file {path} is {size} bytes, more than the limit {MAX_CONFIG_BYTES} for a "
            "file of options; pass a config file of options"
        )
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
        else:
            data = _load_yaml(text)
        _check_nesting(data)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, YAML syntax, limits
        raise ValueError(f"config file {path} cannot be parsed: {err}") from None
    except RecursionError:
        raise ValueError(f"config file {path} cannot be parsed: it is nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value")
    if "versions" in data and "hostname" in data:  # a run directory's config.json
        known = _accepted_names()
        data = {k: v for k, v in data.items() if k in known}
    return data


def config_differences(
    saved: dict[str, Any], current: TrainConfig, ignore: frozenset[str] = COMPARABLE_EXCEPT
) -> list[str]:
    """Names of the options whose values differ between a saved config dict and ``current``,
    as ``"name: saved -> current"`` strings (options in ``ignore`` are skipped).  A saved
    synthetic dataset compares by the full spec it stands for; an option the saved config
    lacks (added to nclab after the run started) counts as its default,
    which is what that run used, so adding an option does not orphan existing runs."""
    saved = dict(saved)
    if "dataset" in saved:
        try:
            saved["dataset"] = _dataset_spec(saved["dataset"])
        except ValueError:
            pass  # a saved value that no longer parses simply differs
    now = current.to_dict()
    out = []
    for name, (f, _) in options().items():
        before = saved.get(name, f.default)
        if name not in ignore and _normal(before) != _normal(now[name]):
            out.append(f"{name}: {before!r} -> {now[name]!r}")
    return out


def _normal(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
