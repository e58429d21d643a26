"""Names of the registries' entries, importable without torch (for ``--help`` and validation).

The registries themselves (:data:`nclab.data.DATASETS`, :data:`nclab.models.MODELS`,
:data:`nclab.losses.LOSSES`) import torch; ``tests/test_help.py`` checks that they hold exactly
these names, in this order.  The training options' choices (:mod:`nclab.train.config`) and
therefore the ``nclab train`` / ``nclab compare`` parsers come from here.
"""

from __future__ import annotations

#: Dataset names (besides the parameterised forms ``npz:PATH`` and ``synthetic:k=..,d=..``).
DATASETS: tuple[str, ...] = (
    "fashion-mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "stl10",
    "tiny-imagenet",
    "digits",
    "synthetic",
)
MODELS: tuple[str, ...] = ("mlp", "cnn", "resnet18", "resnet34", "resnet50")
CLASSIFIERS: tuple[str, ...] = ("linear", "etf")
LOSSES: tuple[str, ...] = ("ce", "ls", "focal", "mse")
SCHEDULERS: tuple[str, ...] = ("multistep", "cosine", "constant")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: ``--label-noise-mode``: how a noisy label is drawn (nclab.conditions).
LABEL_NOISE_MODES: tuple[str, ...] = ("symmetric", "pairflip")
#: ``--imbalance-profile``: long-tailed per-class training counts (nclab.conditions).
IMBALANCE_PROFILES: tuple[str, ...] = ("exp", "step")
