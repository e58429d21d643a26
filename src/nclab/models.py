"""Model registry: ``mlp``, ``cnn``, ``resnet18``, ``resnet34``, ``resnet50`` (CIFAR style).

Every model is a :class:`FeatureClassifier`: a feature extractor ``body`` mapping an input batch
to penultimate features ``h`` of shape (B, d) and a final ``nn.Linear`` ``classifier``, with

    forward(x) = classifier(features(x)) = W h + b.

``feature_dim`` is d. ``bias=False`` builds the classifier without b (``classifier.bias is None``).
Weights use PyTorch's default initialisation (Kaiming-uniform for conv/linear layers, BatchNorm
weight 1 and bias 0); no custom init is applied.

Build by name with :func:`build_model`; :data:`MODELS` maps names to builders. Two options of
Guo et al. (2024)'s code apply to every model: ``feature_bn`` appends a ``BatchNorm1d`` on the
features (their UFM-regularised setting) and ``classifier="etf"`` makes ``W`` a fixed simplex
ETF (:func:`simplex_etf_weight`), not trained, with a zero bias that is not trained either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from nclab.names import CLASSIFIERS  # classifier heads: a trained nn.Linear or a fixed ETF

__all__ = [
    "CLASSIFIERS",
    "MODELS",
    "FeatureClassifier",
    "build_model",
    "count_parameters",
    "simplex_etf_weight",
]

ETF_SEED = 0  # the fixed rotation of the ETF classifier (the same for every run and seed)


class FeatureClassifier(nn.Module):
    """``body`` (input -> (B, d) features) followed by ``classifier`` (nn.Linear(d, K))."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, bias: bool) -> None:
        super().__init__()
        self.body = body
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.classifier = nn.Linear(self.feature_dim, self.num_classes, bias=bias)
        #: feature taps for ``--nc-layers`` (:mod:`nclab.layers`): tap name -> module path,
        #: every block in forward order, last ``features`` (the body: the penultimate features)
        self.tap_paths: dict[str, str] = {"features": "body"}

    def feature_taps(self) -> dict[str, nn.Module]:
        """Tap name -> module whose output (globally average-pooled when it is a map) are the
        features of that block; the last, ``features``, gives :meth:`features` itself."""
        modules = dict(self.named_modules())
        return {name: modules[path] for name, path in self.tap_paths.items()}

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features h, shape (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------------------- MLP


class _MLPBody(nn.Module):
    def __init__(self, in_dim: int, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            d = width
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


def _build_mlp(
    num_classes: int, input_shape: tuple[int, ...], width: int | None, depth: int | None, bias: bool
) -> FeatureClassifier:
    width = _positive("width", 512 if width is None else width)
    depth = _positive("depth", 3 if depth is None else depth)
    in_dim = 1
    for s in input_shape:
        in_dim *= s
    model = FeatureClassifier(_MLPBody(in_dim, width, depth), width, num_classes, bias)
    # each hidden layer's ReLU output; the last one is the features themselves
    taps = {f"layer{i + 1}": f"body.net.{3 * i + 2}" for i in range(depth - 1)}
    model.tap_paths = {**taps, "features": "body"}
    return model


# ----------------------------------------------------------------------------------------- CNN


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _build_cnn(
    num_classes: int, input_shape: tuple[int, ...], width: int | None, depth: int | None, bias: bool
) -> FeatureClassifier:
    """VGG-style: ``depth`` (default 4) conv3x3-BN-ReLU blocks with ``width·2^i`` channels
    (capped at ``8·width``), 2x2 max-pool after every second block while the map is >= 2x2,
    then global average pooling (features of dimension ``8·width`` for depth 4)."""
    c, h, w = _image_shape("cnn", input_shape)
    width = _positive("width", 32 if width is None else width)
    depth = _positive("depth", 4 if depth is None else depth)
    layers: list[nn.Module] = []
    taps: dict[str, str] = {}
    c_in = c
    for i in range(depth):
        c_out = width * 2 ** min(i, 3)
        taps[f"block{i + 1}"] = f"body.{len(layers)}"
        layers.append(_conv_bn_relu(c_in, c_out))
        c_in = c_out
        if i % 2 == 1 and h >= 2 and w >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    if not isinstance(layers[-1], nn.MaxPool2d):  # its pooled output is the features
        taps.pop(f"block{depth}")
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    model = FeatureClassifier(nn.Sequential(*layers), c_in, num_classes, bias)
    model.tap_paths = {**taps, "features": "body"}
    return model


# -------------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(c_in, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4) conv-BN layers with a shortcut."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
    )


class _ResNetBody(nn.Module):
    """CIFAR-style ResNet trunk: 3x3 stride-1 stem, no max-pool, 4 stages (strides 1,2,2,2)
    with ``width, 2·width, 4·width, 8·width`` planes, global average pooling."""

    def __init__(
        self, block: type[BasicBlock] | type[Bottleneck], blocks: Sequence[int], c: int, width: int
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(c, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        c_in = width
        for i, n in enumerate(blocks):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            layer: list[nn.Module] = []
            for j in range(n):
                layer.append(block(c_in, planes, stride if j == 0 else 1))
                c_in = planes * block.expansion
            stages.append(nn.Sequential(*layer))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = c_in

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


def _resnet_builder(
    block: type[BasicBlock] | type[Bottleneck], blocks: Sequence[int], name: str
) -> Callable[..., FeatureClassifier]:
    def build(
        num_classes: int,
        input_shape: tuple[int, ...],
        width: int | None,
        depth: int | None,
        bias: bool,
    ) -> FeatureClassifier:
        c, _, _ = _image_shape(name, input_shape)
        if depth is not None:
            raise ValueError(
                f"{name} has a fixed depth (its name); leave depth unset or pick another resnet"
            )
        width = _positive("width", 64 if width is None else width)
        body = _ResNetBody(block, blocks, c, width)
        model = FeatureClassifier(body, body.out_dim, num_classes, bias)
        # the stem and every residual block; the last block's pooled output is the features
        taps = {"stem": "body.stem"}
        for i, n in enumerate(blocks):
            for j in range(n):
                taps[f"stage{i + 1}.block{j + 1}"] = f"body.stages.{i}.{j}"
        taps.popitem()
        model.tap_paths = {**taps, "features": "body"}
        return model

    build.__doc__ = f"{name}: CIFAR-style ResNet with {block.__name__} blocks {list(blocks)}."
    return build


# ------------------------------------------------------------------------------------ registry

ModelBuilder = Callable[[int, tuple[int, ...], "int | None", "int | None", bool], FeatureClassifier]

MODELS: dict[str, ModelBuilder] = {
    "mlp": _build_mlp,
    "cnn": _build_cnn,
    "resnet18": _resnet_builder(BasicBlock, (2, 2, 2, 2), "resnet18"),
    "resnet34": _resnet_builder(BasicBlock, (3, 4, 6, 3), "resnet34"),
    "resnet50": _resnet_builder(Bottleneck, (3, 4, 6, 3), "resnet50"),
}


def build_model(
    name: str,
    num_classes: int,
    input_shape: Sequence[int],
    *,
    width: int | None = None,
    depth: int | None = None,
    bias: bool = True,
    classifier: str = "linear",
    feature_bn: bool = False,
) -> FeatureClassifier:
    """Build model ``name`` for ``num_classes`` classes and inputs of shape ``input_shape``
    ((C, H, W) for images, (D,) for vectors; ``mlp`` accepts both).

    ``width``: hidden units (mlp, default 512), base channels (cnn, default 32; resnets,
    default 64, 16 is the fast CPU setting). ``depth``: hidden layers (mlp, default 3) or conv
    blocks (cnn, default 4); the resnets have a fixed depth. ``bias``: classifier bias.
    ``classifier``: ``linear`` (trained) or ``etf`` (fixed simplex ETF, not trained);
    ``feature_bn``: a BatchNorm1d on the features (module docstring).
    """
    builder = MODELS.get(str(name).lower())
    if builder is None:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(MODELS)}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 0 or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be non-empty positive sizes, got {tuple(input_shape)}")
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}")
    _check_size(str(name).lower(), int(num_classes), shape, width, depth)
    model = builder(int(num_classes), shape, width, depth, bool(bias))
    if feature_bn:
        model.body = nn.Sequential(model.body, nn.BatchNorm1d(model.feature_dim))
    if classifier == "etf":
        import torch

        weight = simplex_etf_weight(model.num_classes, model.feature_dim)
        with torch.no_grad():
            model.classifier.weight.copy_(weight)
            if model.classifier.bias is not None:
                model.classifier.bias.zero_()
        for param in model.classifier.parameters():
            param.requires_grad_(False)
    return model


def simplex_etf_weight(num_classes: int, feature_dim: int) -> Tensor:
    """A K × d simplex equiangular tight frame ``sqrt(K/(K-1)) (I_K - 11ᵀ/K) Uᵀ`` with ``U``
    (d × K) orthonormal columns drawn from a fixed seed: unit-norm rows with pairwise cosine
    ``-1/(K-1)``. Needs ``d >= K``."""
    import torch

    k, d = int(num_classes), int(feature_dim)
    if d < k:
        raise ValueError(
            f"classifier etf needs feature dimension >= classes (got d={d}, K={k}); "
            "raise --width or use --classifier linear"
        )
    gen = torch.Generator().manual_seed(ETF_SEED)
    u, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    centre = torch.eye(k, dtype=torch.float64) - 1.0 / k
    return (math.sqrt(k / (k - 1)) * centre @ u.T).float()


#: Parameters of a resnet per width², (11.2M, 21.3M, 23.5M at width 64).
_RESNET_PARAMS_PER_WIDTH2 = {"resnet18": 2734, "resnet34": 5200, "resnet50": 5740}


def _check_size(
    name: str, k: int, shape: tuple[int, ...], width: int | None, depth: int | None
) -> None:
    """Bound width, depth and classes, and the parameters' memory, before building anything."""
    from nclab.limits import MAX_CLASSES, MAX_DEPTH, MAX_WIDTH, check_bytes, check_count

    check_count("num_classes", k, MAX_CLASSES, "NC statistics hold K x K matrices")
    if width is not None and int(width) == width:
        check_count("--width", int(width), MAX_WIDTH)
    if depth is not None and int(depth) == depth:
        check_count("--depth", int(depth), MAX_DEPTH)
    if width is not None and int(width) != width or depth is not None and int(depth) != depth:
        return  # the builders name the bad value
    in_dim = math.prod(shape)
    if name == "mlp":
        w, d = width or 512, depth or 3
        params = in_dim * w + (d - 1) * w * w + w * k
    elif name == "cnn":
        w, d = width or 32, depth or 4
        chans = [shape[0], *(w * 2 ** min(i, 3) for i in range(d))]
        params = sum(9 * a * b for a, b in zip(chans, chans[1:], strict=False)) + chans[-1] * k
    else:
        w = width or 64
        params = _RESNET_PARAMS_PER_WIDTH2.get(name, 6000) * w * w + 8 * w * k
    # float32 weights, gradients, momentum buffer and one spare copy (checkpoint state)
    check_bytes(
        f"model {name} (width {width or 'default'}, depth {depth or 'default'}, {params:.3g} "
        "parameters)",
        16.0 * params,
        "choose a smaller --width or --depth",
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _positive(what: str, value: int) -> int:
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(
            f"model {name!r} needs image inputs of shape (C, H, W), got {input_shape}; "
            "use model 'mlp' for flat vector data"
        )
    c, h, w = input_shape
    return c, h, w
