"""Training configuration: the :class:`TrainConfig` dataclass, its validation and file loading.

This module imports no heavy library at import time (torch, numpy), so the CLI can build
``nclab train --help`` from the dataclass fields quickly. Name checks against the dataset, model
and loss registries import those modules lazily, inside :meth:`TrainConfig.validate`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COMPARABLE_EXCEPT",
    "SCHEDULERS",
    "TrainConfig",
    "config_differences",
    "config_from_dict",
    "load_config_file",
    "parse_per_class",
]

SCHEDULERS = ("multistep", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")

#: Fields that may differ between a stopped run and its resumption: ``epochs`` (extending a run),
#: ``threads`` (a performance knob) and ``data_dir`` (where the same files are found; moving a
#: dataset folder does not change what is computed).
COMPARABLE_EXCEPT = frozenset({"epochs", "threads", "data_dir"})

#: Largest seed: numpy's legacy global generator, seeded for reproducibility, takes 32 bits.
MAX_SEED = 2**32 - 1

#: Weight decay used for every parameter when ``weight_decay`` is left unset (outside UFM mode).
DEFAULT_WEIGHT_DECAY = 5e-4


@dataclass
class TrainConfig:
    """Every option of one training run (one dataset, model, loss and seed).

    Defaults train the default MLP on Fashion-MNIST to 100% training accuracy.
    ``weight_decay=None`` means 5e-4 on all parameters, or, in UFM-penalty mode, no optimizer
    weight decay at all (give a value to keep it on the backbone in that mode).
    ``milestones=None`` means ``[epochs // 2, 3 * epochs // 4]`` for the multistep scheduler.
    ``channels_last=None`` enables channels-last memory format for conv nets on CPU.
    ``threads=None`` leaves torch's intra-op thread count as it is.
    ``test_per_class=N`` evaluates the per-epoch test metrics on a fixed class-balanced subset of
    N test images per class (drawn with seed 0: the same images for every seed and loss); the
    final epoch is always evaluated on the whole test set. ``per_class``/``test_per_class``
    also accept ``"all"`` (= None, every sample).
    """

    # data
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    per_class: int | None = None
    test_per_class: int | None = None
    augment: bool = False
    synthetic_classes: int = 10
    synthetic_dim: int = 32
    synthetic_train_per_class: int = 100
    synthetic_test_per_class: int = 100
    # model
    model: str = "mlp"
    width: int | None = None
    depth: int | None = None
    bias: bool = True
    # loss
    loss: str = "ce"
    smoothing: float = 0.0
    # optimisation
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float | None = None
    nesterov: bool = False
    scheduler: str = "cosine"
    milestones: list[int] | None = None
    gamma: float = 0.1
    # UFM-penalty mode
    ufm_penalties: bool = False
    lambda_w: float = 5e-4
    lambda_h: float = 5e-4
    lambda_b: float = 5e-4
    # run
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    channels_last: bool | None = None
    threads: int | None = None
    eval_every: int = 1
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.milestones is not None and not isinstance(self.milestones, list | tuple):
            raise ValueError(f"milestones must be a list of epochs, got {self.milestones!r}")
        if self.milestones is not None:
            self.milestones = [_as_int("milestones", m) for m in self.milestones]
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid option and how to fix it."""
        _check_names(self)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("eval_every", self.eval_every)
        _positive_int("checkpoint_every", self.checkpoint_every)
        _positive_int("synthetic_classes", self.synthetic_classes, minimum=2)
        _positive_int("synthetic_dim", self.synthetic_dim)
        _positive_int("synthetic_train_per_class", self.synthetic_train_per_class)
        _positive_int("synthetic_test_per_class", self.synthetic_test_per_class)
        for name in ("per_class", "test_per_class", "width", "depth", "threads"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(name, value)
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


# ---------------------------------------------------------------------------- helpers


def _check_names(cfg: TrainConfig) -> None:
    from nclab.data import DATASETS
    from nclab.losses import get_loss
    from nclab.models import MODELS

    name = str(cfg.dataset)
    if not (name.lower() in DATASETS or name.startswith("npz:")):
        raise ValueError(
            f"unknown dataset {cfg.dataset!r}; available: {', '.join(DATASETS)} or npz:PATH"
        )
    if str(cfg.model).lower() not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; available models: {', '.join(MODELS)}")
    _finite("smoothing", cfg.smoothing)
    get_loss(cfg.loss, 10, cfg.smoothing)  # raises on a bad loss/δ
    if cfg.device not in DEVICES:
        raise ValueError(f"unknown device {cfg.device!r}; use one of {', '.join(DEVICES)}")


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


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a config from a mapping of option names (``-`` or ``_`` spelling); unknown keys
    raise ``ValueError`` listing the valid ones."""
    known = set(_field_names())
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
    {"smoothing", "lr", "momentum", "weight_decay", "gamma", "lambda_w", "lambda_h", "lambda_b"}
)


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


def _coerce(name: str, value: Any) -> Any:
    """Numbers written as strings (YAML reads ``1e-3`` as a string) become floats;
    ``per_class: all`` becomes None."""
    if name in ("per_class", "test_per_class"):
        return parse_per_class(value)
    if name in _FLOAT_FIELDS and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of options. A run directory's ``config.json`` works too
    (its option keys are used; the recorded versions, host etc. are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise ValueError(" ".join(str(err).split())) from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, YAML syntax
        raise ValueError(f"config file {path} cannot be parsed: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value")
    if "versions" in data and "hostname" in data:  # a run directory's config.json
        known = set(_field_names())
        data = {k: v for k, v in data.items() if k in known}
    return data


def config_differences(
    saved: dict[str, Any], current: TrainConfig, ignore: frozenset[str] = COMPARABLE_EXCEPT
) -> list[str]:
    """Names of the options whose values differ between a saved config dict and ``current``,
    as ``"name: saved -> current"`` strings (options in ``ignore`` are skipped)."""
    now = current.to_dict()
    out = []
    for name in _field_names():
        if name in ignore:
            continue
        before = saved.get(name, dataclasses.MISSING)
        if before is dataclasses.MISSING or _normal(before) != _normal(now[name]):
            shown = "(missing)" if before is dataclasses.MISSING else repr(before)
            out.append(f"{name}: {shown} -> {now[name]!r}")
    return out


def _normal(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
