"""Names of the registries' entries and the rules for them, importable without torch (for
``--help`` and validating options).

The registries themselves (:data:`nclab.data.DATASETS`, :data:`nclab.models.MODELS`,
:data:`nclab.losses.LOSSES`) import torch; ``tests/test_help.py`` checks that they hold exactly
these names, in this order.  The training options' choices (:mod:`nclab.config`) and
therefore the ``nclab train`` / ``nclab compare`` parsers come from here, and so do the checks
of a loss name with its δ (:func:`check_loss`) and of a ``synthetic:...`` dataset spec
(:func:`parse_synthetic`), which the option schema runs without building a loss or a dataset.
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


def check_loss(name: str, smoothing: float = 0.0) -> str:
    """The loss ``name`` in lower case; ValueError for an unknown name, a δ outside [0, 1) for
    ``ls``, or a δ other than 0 for the other losses."""
    key = str(name).lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available losses: {', '.join(LOSSES)}")
    if key == "ls" and not 0.0 <= float(smoothing) < 1.0:
        raise ValueError(
            f"label smoothing δ must lie in [0, 1), got {float(smoothing)}; "
            "typical values are 0.05-0.2"
        )
    if key != "ls" and float(smoothing) != 0.0:
        raise ValueError(
            f"loss {name!r} does not take a smoothing value (got {smoothing}); "
            "use loss 'ls' for label smoothing"
        )
    return key


#: Keys of the ``synthetic:k=K,d=D,n=N,test=M`` spec: meaning, default and smallest value.
SYNTHETIC_KEYS: dict[str, tuple[str, int, int]] = {
    "k": ("classes", 10, 2),
    "d": ("input dimension", 32, 1),
    "n": ("training samples per class", 100, 1),
    "test": ("test samples per class", 100, 1),
}


def parse_synthetic(name: str) -> dict[str, int]:
    """The keys given in ``synthetic`` or ``synthetic:k=5,d=48,n=100,test=20`` (validated).

    ``ValueError`` naming the bad part and the accepted form; missing keys take the defaults of
    :data:`SYNTHETIC_KEYS` (see :func:`synthetic_name`).
    """
    head, _, body = str(name).strip().partition(":")
    form = "synthetic:k=K,d=D,n=N,test=M (any subset of the keys, e.g. synthetic:k=5,d=48,n=100)"
    if head.lower() != "synthetic":
        raise ValueError(f"{name!r} is not a synthetic dataset spec; use {form}")
    given: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in SYNTHETIC_KEYS or key in given:
            raise ValueError(f"bad part {part!r} in dataset {name!r}; use {form}")
        meaning, _, lowest = SYNTHETIC_KEYS[key]
        text = value.strip()
        if not text.isdigit() or int(text) < lowest:
            raise ValueError(
                f"{key} ({meaning}) must be an integer >= {lowest} in {name!r}, got {text!r}"
            )
        given[key] = int(text)
    return given


def synthetic_name(**keys: int) -> str:
    """The full spec ``synthetic:k=..,d=..,n=..,test=..`` with defaults for the keys not given."""
    values = {key: keys.get(key, default) for key, (_, default, _) in SYNTHETIC_KEYS.items()}
    return "synthetic:" + ",".join(f"{key}={value}" for key, value in values.items())
