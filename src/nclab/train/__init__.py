"""Training: one run = one dataset, one model, one loss, one seed (``nclab train``).

Public API::

    from nclab.train import TrainConfig, train
    result = train(TrainConfig(dataset="synthetic", epochs=5), "runs/demo")

:class:`TrainConfig` and its option schema live in :mod:`nclab.config` (no torch, for the
CLI's ``--help``); they are re-exported here. See ``docs/training.md``.
"""

from nclab.config import SCHEDULERS, TrainConfig, config_from_dict, load_config_file
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
