"""Training: one run = one dataset, one model, one loss, one seed (``nclab train``).

Public API::

    from nclab.train import TrainConfig, train
    result = train(TrainConfig(dataset="synthetic", epochs=5), "runs/demo")

:class:`TrainConfig` is importable without torch (the CLI builds ``--help`` from it); the
training code (:func:`train`, :class:`RunResult`, :class:`TrainingDivergedError`,
:func:`load_model`, ...) is imported on first use. See ``docs/training.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nclab.train.config import SCHEDULERS, TrainConfig, config_from_dict, load_config_file

if TYPE_CHECKING:
    from nclab.runs.files import RunFiles, read_metrics, read_rows
    from nclab.train.loop import (
        RunResult,
        TrainingDivergedError,
        build_optimizer,
        epoch_permutation,
        load_model,
        lr_factor,
        read_checkpoint,
        train,
        ufm_penalty,
    )

__all__ = [
    "SCHEDULERS",
    "RunFiles",
    "RunResult",
    "TrainConfig",
    "TrainingDivergedError",
    "build_optimizer",
    "config_from_dict",
    "epoch_permutation",
    "load_config_file",
    "load_model",
    "lr_factor",
    "read_checkpoint",
    "read_metrics",
    "read_rows",
    "train",
    "ufm_penalty",
]

_LAZY = {
    "RunResult": "nclab.train.loop",
    "TrainingDivergedError": "nclab.train.loop",
    "build_optimizer": "nclab.train.loop",
    "epoch_permutation": "nclab.train.loop",
    "load_model": "nclab.train.loop",
    "lr_factor": "nclab.train.loop",
    "read_checkpoint": "nclab.train.loop",
    "train": "nclab.train.loop",
    "ufm_penalty": "nclab.train.loop",
    "RunFiles": "nclab.runs.files",
    "read_metrics": "nclab.runs.files",
    "read_rows": "nclab.runs.files",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nclab.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
