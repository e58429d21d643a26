"""Tests for nclab.losses against torch's reference implementations and direct formulas."""

import pytest
import torch
import torch.nn.functional as F

from nclab.losses import LOSSES, get_loss


def _batch(k: int, n: int = 64, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    targets = torch.randint(0, k, (n,), generator=g)
    return logits, targets


def test_registry_names():
    assert set(LOSSES) == {"ce", "ls", "focal", "mse"}


@pytest.mark.parametrize("k", [2, 3, 10, 100])
def test_ce_matches_torch(k):
    logits, targets = _batch(k, seed=k)
    got = get_loss("ce", k)(logits, targets)
    assert torch.allclose(got, F.cross_entropy(logits, targets), atol=1e-12, rtol=0)


@pytest.mark.parametrize("k", [2, 5, 10, 100])
@pytest.mark.parametrize("delta", [0.0, 0.05, 0.1, 0.3, 0.9])
def test_ls_matches_torch_label_smoothing(k, delta):
    logits, targets = _batch(k, seed=k + int(100 * delta))
    got = get_loss("ls", k, smoothing=delta)(logits, targets)
    ref = F.cross_entropy(logits, targets, label_smoothing=delta)
    assert got.dtype == torch.float64
    assert abs(got.item() - ref.item()) < 1e-12


def test_ls_matches_explicit_smoothed_target():
    k, delta = 7, 0.2
    logits, targets = _batch(k, seed=3)
    q = torch.full((len(targets), k), delta / k, dtype=torch.float64)
    q[torch.arange(len(targets)), targets] += 1 - delta
    ref = -(q * torch.log(torch.softmax(logits, dim=1))).sum(1).mean()
    got = get_loss("ls", k, smoothing=delta)(logits, targets)
    assert abs(got.item() - ref.item()) < 1e-12


@pytest.mark.parametrize("k", [2, 7, 100])
@pytest.mark.parametrize("delta", [0.0, 0.1, 0.5, 0.99])
def test_ls_value_and_gradient_equal_the_smoothed_target_formula_in_float64(k, delta):
    """The loss is F.cross_entropy(label_smoothing=δ); this pins that it is the paper's
    L = (1 - δ)(-log p_y) + (δ/K) Σ_k (-log p_k) with gradient (softmax(z) - q) / N."""
    logits, targets = _batch(k, seed=k + int(100 * delta), scale=10.0)
    logits.requires_grad_(True)
    got = get_loss("ls", k, smoothing=delta)(logits, targets)
    (grad,) = torch.autograd.grad(got, logits)
    z = logits.detach()
    logp = z - torch.logsumexp(z, dim=1, keepdim=True)
    n = len(targets)
    want = ((1 - delta) * -logp[torch.arange(n), targets] + delta / k * -logp.sum(1)).mean()
    q = torch.full((n, k), delta / k, dtype=torch.float64)
    q[torch.arange(n), targets] += 1 - delta
    want_grad = (torch.softmax(z, dim=1) - q) / n
    assert got.dtype == grad.dtype == torch.float64
    assert abs(got.item() - want.item()) <= 1e-13 * max(1.0, abs(want.item()))
    assert torch.allclose(grad, want_grad, rtol=0, atol=1e-15)


def test_ls_zero_equals_ce_and_gradients_flow():
    logits, targets = _batch(10, seed=5)
    logits.requires_grad_(True)
    ls = get_loss("ls", 10, smoothing=0.0)(logits, targets)
    (g_ls,) = torch.autograd.grad(ls, logits)
    ce = get_loss("ce", 10)(logits, targets)
    (g_ce,) = torch.autograd.grad(ce, logits)
    assert abs(ls.item() - ce.item()) < 1e-14
    assert torch.allclose(g_ls, g_ce, atol=1e-15)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
def test_focal_direct_formula(gamma):
    logits, targets = _batch(6, seed=11)
    p = torch.softmax(logits, dim=1)
    py = p[torch.arange(len(targets)), targets]
    ref = (-((1 - py) ** gamma) * torch.log(py)).mean()
    got = get_loss("focal", 6, gamma=gamma)(logits, targets)
    assert abs(got.item() - ref.item()) < 1e-12


def test_focal_default_gamma_is_two_and_below_ce():
    logits, targets = _batch(6, seed=12)
    p = torch.softmax(logits, dim=1)[torch.arange(len(targets)), targets]
    ref = (-((1 - p) ** 2) * torch.log(p)).mean()
    focal = get_loss("focal", 6)(logits, targets)
    assert abs(focal.item() - ref.item()) < 1e-12
    assert focal.item() < get_loss("ce", 6)(logits, targets).item()


def test_mse_direct_loop():
    k = 4
    logits, targets = _batch(k, n=9, seed=13)
    total = 0.0
    for i in range(len(targets)):
        for c in range(k):
            t = 1.0 if c == int(targets[i]) else 0.0
            total += (float(logits[i, c]) - t) ** 2
    got = get_loss("mse", k)(logits, targets)
    assert abs(got.item() - total / len(targets)) < 1e-12


def test_float32_logits_work():
    logits, targets = _batch(10, seed=2)
    got = get_loss("ls", 10, smoothing=0.1)(logits.float(), targets)
    assert got.dtype == torch.float32
    ref = F.cross_entropy(logits, targets, label_smoothing=0.1)
    assert abs(got.item() - ref.item()) < 1e-5


def test_bad_inputs():
    with pytest.raises(ValueError, match="available losses"):
        get_loss("hinge", 10)
    with pytest.raises(ValueError, match="use loss 'ls'"):
        get_loss("ce", 10, smoothing=0.1)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            get_loss("ls", 10, smoothing=bad)
    loss = get_loss("ce", 3)
    logits = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss(logits, torch.tensor([0, -1, 2, 1]))
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(4, 5), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="integer"):
        loss(logits, torch.tensor([0.0, 1.0, 2.0, 1.0]))
