"""Promise: NCAccumulator, NCTracker, nc_metrics and the UFM functions raise ValueError or
TypeError naming the bad argument and what is accepted, never a torch or Python internal error;
numpy integer types are accepted where Python integers are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from faultkit import TALLY, expect_library_error

import nclab.ufm as ufm
from nclab.metrics import NCAccumulator, nc_metrics

ERR = (ValueError, TypeError)
X = torch.randn(6, 4, dtype=torch.float64)
Y = torch.tensor([0, 1, 2, 0, 1, 2])
UFM = dict(num_classes=3, n_per_class=2, lambda_w=1e-3, lambda_h=1e-3)


def _filled() -> NCAccumulator:
    acc = NCAccumulator(3, 4)
    acc.update(X, Y)
    return acc


def _tracker(**kw):  # noqa: ANN003, ANN202
    from nclab.track import NCTracker

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    args = dict(model=model, layer=model[1], train=[(X.float(), Y)], test=[(X.float(), Y)],
                num_classes=3)  # fmt: skip
    return NCTracker("unused-run-dir", **{**args, **kw})


CASES = {
    # NCAccumulator
    "acc num_classes 0": (lambda: NCAccumulator(0, 4), "num_classes"),
    "acc num_classes str": (lambda: NCAccumulator("3", 4), "num_classes"),
    "acc num_classes float": (lambda: NCAccumulator(2.5, 4), "num_classes"),
    "acc dim -1": (lambda: NCAccumulator(3, -1), "dim"),
    "acc features dim": (lambda: NCAccumulator(3, 4).update(torch.randn(5, 3), Y[:5]), "dim"),
    "acc labels range": (lambda: NCAccumulator(3, 4).update(X, Y + 5), "labels"),
    "acc labels length": (lambda: NCAccumulator(3, 4).update(X, Y[:4]), "labels"),
    "acc labels one-hot": (
        lambda: NCAccumulator(3, 4).update(X, torch.eye(3)[Y]),
        "labels",
    ),
    "acc weight shape": (lambda: _filled().compute(torch.randn(2, 4)), "weight"),
    "acc weight str": (lambda: _filled().compute("W"), "weight"),
    "acc merge other K": (lambda: NCAccumulator(3, 4).merge(NCAccumulator(4, 4)), "K="),
    "acc merge str": (lambda: NCAccumulator(3, 4).merge("x"), "merge"),
    "acc state junk": (lambda: NCAccumulator(3, 4).load_state_dict({"a": 1}), "state"),
    "acc state list": (lambda: NCAccumulator(3, 4).load_state_dict([1, 2]), "state"),
    # nc_metrics
    "nc features 1-d": (lambda: nc_metrics(torch.randn(5), Y[:5]), "features"),
    "nc labels str": (lambda: nc_metrics(X, "abc"), "labels"),
    "nc features None": (lambda: nc_metrics(None, Y), "features"),
    "nc num_classes -1": (lambda: nc_metrics(X, Y, num_classes=-1), "num_classes"),
    "nc labels nan": (
        lambda: nc_metrics(X, torch.tensor([0.0, 1, 2, 0, 1, float("nan")])),
        "labels",
    ),  # fmt: skip
    "nc labels empty": (lambda: nc_metrics(torch.randn(0, 4), Y[:0]), "labels"),
    "nc weight shape": (lambda: nc_metrics(X, Y, torch.randn(3, 5)), "weight"),
    # UFM
    "ufm K 1": (lambda: ufm.closed_form(**{**UFM, "num_classes": 1}), "num_classes"),
    "ufm K str": (lambda: ufm.closed_form(**{**UFM, "num_classes": "4"}), "num_classes"),
    "ufm lambda_w -1": (lambda: ufm.closed_form(**{**UFM, "lambda_w": -1}), "lambda_w"),
    "ufm lambda_h nan": (
        lambda: ufm.closed_form(**{**UFM, "lambda_h": float("nan")}),
        "lambda_h",
    ),  # fmt: skip
    "ufm smoothing 1": (lambda: ufm.closed_form(**UFM, smoothing=1.0), "smoothing"),
    "ufm unknown": (lambda: ufm.closed_form(**UFM, foo=1), "foo"),
    "ufm problem str": (lambda: ufm.closed_form("x"), "UFMProblem"),
    "gd lr str": (lambda: ufm.solve_gd(**UFM, lr="a", max_iters=3), "lr"),
    "gd max_iters -1": (lambda: ufm.solve_gd(**UFM, max_iters=-1), "max_iters"),
    "gd x0 shape": (lambda: ufm.solve_gd(**UFM, x0=np.zeros(3), max_iters=3), "x0"),
    "gd record_every 0": (
        lambda: ufm.solve_gd(**UFM, record_every=0, max_iters=3),
        "record_every",
    ),  # fmt: skip
    "gd seed str": (lambda: ufm.solve_gd(**UFM, seed="a", max_iters=3), "seed"),
    "lbfgs seed str": (lambda: ufm.solve_lbfgs(**UFM, seed="a", max_iters=3), "seed"),
    "lbfgs init_scale str": (
        lambda: ufm.solve_lbfgs(**UFM, init_scale="x", max_iters=3),
        "init_scale",
    ),  # fmt: skip
    "convergence smoothings str": (
        lambda: ufm.convergence(**UFM, smoothings="ab", max_iters=3),
        "smoothings",
    ),  # fmt: skip
    "convergence smoothings 1.5": (
        lambda: ufm.convergence(**UFM, smoothings=[1.5], max_iters=3),
        "smoothing",
    ),  # fmt: skip
    "objective x shape": (lambda: ufm.objective(ufm.UFMProblem(**UFM), np.zeros(2)), "x"),
    "condition method": (lambda: ufm.condition(ufm.UFMProblem(**UFM), method="x"), "method"),
    # NCTracker
    "tracker num_classes str": (lambda: _tracker(num_classes="3"), "num_classes"),
    "tracker num_classes 1": (lambda: _tracker(num_classes=1), "num_classes"),
    "tracker layer": (lambda: _tracker(layer=torch.nn.ReLU()), "layer"),
    "tracker model": (lambda: _tracker(model="m"), "model"),
    "tracker loss": (lambda: _tracker(loss="nope"), "loss"),
    "tracker seed": (lambda: _tracker(seed="x"), "seed"),
    "tracker config": (lambda: _tracker(config={"x": object()}), "config"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_library_errors_name_the_argument(case):
    call, name = CASES[case]
    expect_library_error(call, ERR, name)


NUMPY_INTS = [np.int64, np.int32, np.uint8, np.int16]


@pytest.mark.parametrize("kind", NUMPY_INTS, ids=lambda k: k.__name__)
def test_numpy_integers_are_accepted(kind, tmp_path):
    TALLY["inputs tried"] += 1
    acc = NCAccumulator(kind(3), kind(4))
    acc.update(X, Y)
    ref = nc_metrics(X, Y)
    assert nc_metrics(X, Y, num_classes=kind(3)).nc1 == pytest.approx(ref.nc1)
    cf = ufm.closed_form(num_classes=kind(3), n_per_class=kind(2), lambda_w=1e-3, lambda_h=1e-3)
    assert cf == ufm.closed_form(**UFM)
    ufm.solve_gd(**UFM, max_iters=kind(2), seed=kind(0), record_every=kind(1))
    from nclab.track import NCTracker

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    tracker = NCTracker(tmp_path / "run", model=model, layer=model[1], train=[(X.float(), Y)],
                        test=[(X.float(), Y)], num_classes=kind(3), seed=kind(1))  # fmt: skip
    row = tracker.log_epoch(kind(1))
    tracker.finish()
    assert row["epoch"] == 1 and isinstance(row["epoch"], int)
    TALLY["worked as promised"] += 1
