"""Tests for nclab.models: shapes, the features/classifier split, bias option, parameter counts."""

import pytest
import torch
from torch import nn

from nclab.models import MODELS, build_model, count_parameters

# small widths keep every test fast on one CPU thread
SMALL_WIDTH = {"mlp": 32, "cnn": 4, "resnet18": 4, "resnet34": 4, "resnet50": 4}
EXPECTED_DIM = {"mlp": 32, "cnn": 32, "resnet18": 32, "resnet34": 32, "resnet50": 128}


def test_registry_names():
    assert set(MODELS) == {"mlp", "cnn", "resnet18", "resnet34", "resnet50"}


@pytest.mark.parametrize("name", sorted(SMALL_WIDTH))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_shapes_and_forward_is_classifier_of_features(name, shape):
    model = build_model(name, 7, shape, width=SMALL_WIDTH[name]).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        h = model.features(x)
        out = model(x)
        recomposed = model.classifier(h)
    assert h.shape == (3, EXPECTED_DIM[name]) == (3, model.feature_dim)
    assert out.shape == (3, 7)
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == model.feature_dim
    assert torch.allclose(out, recomposed, atol=1e-6)
    # the classifier really is W h + b
    assert torch.allclose(out, h @ model.classifier.weight.T + model.classifier.bias, atol=1e-5)


def test_default_widths_feature_dims():
    assert build_model("mlp", 10, (1, 28, 28)).feature_dim == 512
    assert build_model("cnn", 10, (1, 28, 28)).feature_dim == 8 * 32
    assert build_model("resnet18", 10, (3, 32, 32), width=16).feature_dim == 8 * 16
    assert build_model("resnet50", 10, (3, 32, 32), width=2).feature_dim == 8 * 2 * 4


def test_mlp_on_flat_vectors_and_depth():
    model = build_model("mlp", 4, (32,), width=16, depth=2).eval()
    linears = [m for m in model.body.modules() if isinstance(m, nn.Linear)]
    bns = [m for m in model.body.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(linears) == 2 and len(bns) == 2
    assert linears[0].in_features == 32
    h = model.features(torch.randn(5, 32))
    assert h.shape == (5, 16)
    assert (h >= 0).all()  # features are the output of a ReLU


@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 96, 96)])
def test_resnet_larger_inputs(shape):
    model = build_model("resnet18", 5, shape, width=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, *shape)).shape == (1, 5)


def test_bias_false():
    for name in MODELS:
        model = build_model(name, 3, (1, 28, 28), width=SMALL_WIDTH[name], bias=False)
        assert model.classifier.bias is None
        with_bias = build_model(name, 3, (1, 28, 28), width=SMALL_WIDTH[name])
        assert with_bias.classifier.bias is not None


def test_resnet18_cifar_parameter_count():
    model = build_model("resnet18", 10, (3, 32, 32), width=64)
    n_manual = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == n_manual == 11_173_962


def test_bad_inputs():
    with pytest.raises(ValueError, match="available models"):
        build_model("vgg16", 10, (3, 32, 32))
    with pytest.raises(ValueError, match="use model 'mlp'"):
        build_model("cnn", 10, (32,))
    with pytest.raises(ValueError, match="use model 'mlp'"):
        build_model("resnet18", 10, (32,))
    with pytest.raises(ValueError, match="width"):
        build_model("mlp", 10, (32,), width=0)
    with pytest.raises(ValueError, match="fixed depth"):
        build_model("resnet18", 10, (3, 32, 32), depth=3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", 1, (32,))
