"""Tests for nclab.calibration against torchmetrics, direct loops and autograd."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from nclab.calibration import (
    ReliabilityBins,
    adaptive_calibration_error,
    brier_score,
    calibration_metrics,
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    nll,
    reliability_bins,
    split_for_temperature,
    top_k_accuracy,
)


def _data(n=2000, k=10, scale=3.0, seed=0):
    """Logits whose argmax is right about 60% of the time (labels drawn from a shifted softmax)."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.distributions.Categorical(logits=logits / scale).sample()
    return logits, labels


def _ece_loop(logits, labels, n_bins):
    p = torch.softmax(logits.double(), dim=1)
    conf, pred = p.max(dim=1)
    total = 0.0
    n = len(labels)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(n) if lo < float(conf[i]) <= hi]
        if not members:
            continue
        acc = sum(float(pred[i] == labels[i]) for i in members) / len(members)
        cf = sum(float(conf[i]) for i in members) / len(members)
        total += len(members) / n * abs(acc - cf)
    return total


@pytest.mark.parametrize("seed,scale", [(0, 3.0), (1, 1.0), (2, 6.0)])
def test_ece_matches_torchmetrics(seed, scale):
    logits, labels = _data(scale=scale, seed=seed)
    probs = torch.softmax(logits, dim=1)
    ref = multiclass_calibration_error(probs, labels, num_classes=10, n_bins=15, norm="l1")
    got = expected_calibration_error(logits, labels)
    assert isinstance(got, float)
    assert abs(got - float(ref)) < 1e-6
    assert got > 0.01  # these predictions are genuinely mis-calibrated


def test_ece_matches_direct_loop_and_numpy_input():
    logits, labels = _data(n=500, k=5, seed=4)
    for n_bins in (1, 7, 15):
        ref = _ece_loop(logits, labels, n_bins)
        assert abs(expected_calibration_error(logits, labels, n_bins) - ref) < 1e-12
        assert abs(expected_calibration_error(logits.numpy(), labels.numpy(), n_bins) - ref) < 1e-12


def test_ece_one_bin_is_abs_mean_gap():
    logits, labels = _data(n=300, k=4, seed=5)
    p = torch.softmax(logits, dim=1)
    conf, pred = p.max(1)
    ref = abs((pred == labels).double().mean() - conf.mean()).item()
    assert abs(expected_calibration_error(logits, labels, n_bins=1) - ref) < 1e-12


def test_bin_edges_are_right_closed():
    # two classes: logits (log c, log(1 - c)) give confidence exactly c for c >= 1/2
    conf = np.array([0.6, 0.8, 0.8 + 1e-9])
    logits = np.log(np.stack([conf, 1 - conf], axis=1))
    bins = reliability_bins(logits, np.array([0, 0, 1]), n_bins=5)
    # edges 0, .2, .4, .6, .8, 1: 0.6 -> bin (0.4, 0.6], 0.8 -> (0.6, 0.8], 0.8+ -> (0.8, 1]
    assert bins.count.tolist() == [0, 0, 1, 1, 1]


def test_reliability_bins_content():
    logits, labels = _data(n=1000, k=10, seed=6)
    bins = reliability_bins(logits, labels, n_bins=15)
    assert isinstance(bins, ReliabilityBins)
    assert np.allclose(bins.edges, np.linspace(0, 1, 16))
    assert bins.count.sum() == 1000
    empty = bins.count == 0
    assert np.isnan(bins.confidence[empty]).all() and np.isnan(bins.accuracy[empty]).all()
    full = ~empty
    lo, hi = bins.edges[:-1][full], bins.edges[1:][full]
    assert ((bins.confidence[full] > lo) & (bins.confidence[full] <= hi)).all()
    p = torch.softmax(logits, 1)
    acc = (p.argmax(1) == labels).double().mean().item()
    assert abs((bins.accuracy[full] * bins.count[full]).sum() / 1000 - acc) < 1e-12
    assert abs(bins.ece - expected_calibration_error(logits, labels)) < 1e-15


def _dnll_dt(logits, labels, t):
    tt = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(logits / tt, labels)
    (g,) = torch.autograd.grad(loss, tt)
    return g.item(), loss.item()


def test_temperature_is_stationary_point_and_minimum():
    logits, labels = _data(n=1500, seed=7)
    t = fit_temperature(logits, labels)
    grad, loss = _dnll_dt(logits, labels, t)
    assert abs(grad) < 1e-6
    assert abs(nll(logits, labels, t) - loss) < 1e-12
    for other in (0.9 * t, 1.1 * t):
        assert nll(logits, labels, other) > loss


@pytest.mark.parametrize("seed", range(6))
def test_temperature_matches_a_bounded_brent_search_on_the_nll(seed):
    """Against scipy's bounded Brent search on the NLL itself (over log T, tight tolerance),
    for logits from under- to over-confident, and a bound when the optimum lies beyond it."""
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(20, 800)), int(rng.integers(2, 12))
    logits, labels = _data(n=n, k=k, scale=float(rng.choice([0.3, 1.0, 3.0, 12.0])), seed=seed)
    logits = logits * float(rng.choice([0.2, 1.0, 6.0]))
    res = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=(math.log(0.05), math.log(20.0)),
        method="bounded",
        options={"xatol": 1e-12, "maxiter": 1000},
    )
    t = fit_temperature(logits, labels)
    assert 0.05 <= t <= 20.0
    assert nll(logits, labels, t) <= res.fun + 1e-12
    assert math.isclose(t, math.exp(res.x), rel_tol=1e-6)


def test_temperature_stops_at_the_bounds():
    logits, labels = _data(n=300, seed=3)
    separable = logits.clone()
    separable[torch.arange(300), labels] += 50.0  # every sample right by a wide margin
    assert fit_temperature(separable, labels) == 0.05  # sharper is always better
    flipped = -separable  # every sample confidently wrong: the flattest softmax is best
    assert fit_temperature(flipped, labels) == 20.0


def test_overconfident_logits_get_temperature_above_one():
    logits, labels = _data(n=1500, scale=1.0, seed=8)
    t_base = fit_temperature(logits, labels)
    t_hot = fit_temperature(5 * logits, labels)
    assert t_hot > 1.0
    # scaling logits by 5 scales the optimal temperature by 5
    assert math.isclose(t_hot, 5 * t_base, rel_tol=1e-5)
    # and temperature scaling reduces ECE of the over-confident logits
    assert expected_calibration_error(5 * logits / t_hot, labels) < expected_calibration_error(
        5 * logits, labels
    )


def test_split_for_temperature():
    fit, ev = split_for_temperature(101, fraction=0.5, seed=3)
    assert len(fit) == 50 and len(ev) == 51
    assert np.array_equal(np.sort(np.concatenate([fit, ev])), np.arange(101))
    fit2, ev2 = split_for_temperature(101, fraction=0.5, seed=3)
    assert np.array_equal(fit, fit2) and np.array_equal(ev, ev2)
    fit3, _ = split_for_temperature(101, fraction=0.5, seed=4)
    assert not np.array_equal(fit, fit3)
    assert len(split_for_temperature(10, fraction=0.2)[0]) == 2


def test_bad_inputs():
    logits, labels = _data(n=20, k=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        expected_calibration_error(logits, labels + 3)
    with pytest.raises(ValueError, match="shape"):
        expected_calibration_error(logits, labels[:5])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(logits, labels, n_bins=0)
    with pytest.raises(ValueError, match="integer"):
        fit_temperature(logits, labels.double())
    with pytest.raises(ValueError, match="fraction"):
        split_for_temperature(10, fraction=1.0)
    with pytest.raises(ValueError, match="n >= 2"):
        split_for_temperature(1)
    with pytest.raises(ValueError, match="NaN"):
        expected_calibration_error(logits * float("nan"), labels)


# ---------------------------------------------------------------- the rest of the calibration set


def _probs(logits):
    return torch.softmax(logits.double(), dim=1)


@pytest.mark.parametrize("seed,scale", [(0, 3.0), (1, 1.0), (2, 6.0)])
def test_mce_nll_and_top5_match_torch_and_torchmetrics(seed, scale):
    from torchmetrics.functional.classification import multiclass_accuracy

    logits, labels = _data(scale=scale, seed=seed)
    probs = _probs(logits)
    ref_mce = multiclass_calibration_error(probs, labels, num_classes=10, n_bins=15, norm="max")
    assert abs(maximum_calibration_error(logits, labels) - float(ref_mce)) < 1e-6
    assert maximum_calibration_error(logits, labels) >= expected_calibration_error(logits, labels)
    ref_nll = torch.nn.functional.cross_entropy(logits, labels)
    assert abs(nll(logits, labels) - float(ref_nll)) < 1e-12
    for k in (1, 5):
        ref = multiclass_accuracy(logits, labels, num_classes=10, top_k=k, average="micro")
        assert abs(top_k_accuracy(logits, labels, k) - float(ref)) < 1e-6
    assert top_k_accuracy(logits, labels, 10) == 1.0


def test_brier_adaptive_and_classwise_ece_match_direct_loops():
    logits, labels = _data(n=600, k=4, seed=5)
    p = _probs(logits).numpy()
    y = labels.numpy()
    n, k = p.shape
    onehot = np.eye(k)[y]
    assert abs(brier_score(logits, labels) - np.mean(np.sum((p - onehot) ** 2, axis=1))) < 1e-12

    conf, pred = p.max(axis=1), p.argmax(axis=1)
    order = sorted(range(n), key=lambda i: (conf[i], i))
    for n_bins in (1, 7, 15):
        size, extra = divmod(n, n_bins)
        ace, start = 0.0, 0
        for b in range(n_bins):  # equal-mass bins: the first `extra` bins hold one more sample
            members = order[start : start + size + (b < extra)]
            start += len(members)
            acc = np.mean([pred[i] == y[i] for i in members])
            ace += len(members) / n * abs(acc - np.mean(conf[members]))
        assert abs(adaptive_calibration_error(logits, labels, n_bins) - ace) < 1e-12

        cw = 0.0
        for c in range(k):
            for b in range(n_bins):
                lo, hi = b / n_bins, (b + 1) / n_bins
                members = [i for i in range(n) if lo < p[i, c] <= hi]
                if members:
                    freq = np.mean([y[i] == c for i in members])
                    cw += len(members) / n * abs(freq - np.mean(p[members, c]))
        assert abs(classwise_calibration_error(logits, labels, n_bins) - cw / k) < 1e-12


def test_calibration_metrics_bundle_and_perfect_predictions():
    logits, labels = _data(n=300, k=6, seed=7)
    got = calibration_metrics(logits, labels)
    assert set(got) == {"ece", "mce", "ece_adaptive", "ece_classwise", "nll", "brier", "top5_acc"}
    assert got["ece"] == expected_calibration_error(logits, labels)
    sharp = torch.full((50, 3), -1e3, dtype=torch.float64)
    y = torch.arange(50) % 3
    sharp[torch.arange(50), y] = 1e3  # confident and right: perfectly calibrated
    perfect = calibration_metrics(sharp, y)
    for key in ("ece", "mce", "ece_adaptive", "ece_classwise", "nll", "brier"):
        assert perfect[key] < 1e-12, key
    assert perfect["top5_acc"] == 1.0
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k_accuracy(logits, labels, 0)
