"""Tests for nclab.metrics: every metric against a direct float64 computation written here."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nclab.cli import main as cli_main
from nclab.metrics import (
    MODES,
    NCAccumulator,
    NCMetrics,
    collect,
    nc_metrics,
    nc_metrics_from_stats,
    nc_metrics_ufm,
)

KEYS = [
    "nc1",
    "cdnv",
    "nc2_h",
    "nc2_w",
    "nc2_wh",
    "nc3",
    "nc4",
    "ncc_acc",
    "equinorm_h",
    "equinorm_w",
    "equiangle_h",
    "equiangle_w",
    "maxangle_h",
    "maxangle_w",
    "w_norm",
    "h_norm",
    "nc1_trace_ratio",
    "hsu_log_mean",
    "hsu_log_var",
    "hsu_riesz_mean",
    "hsu_riesz_var",
    "bias_collapse",
    "nc1_correct",
    "nc1_incorrect",
    "nc5",
]
W_KEYS = {"nc2_w", "nc2_wh", "nc3", "nc4", "equinorm_w", "equiangle_w", "maxangle_w", "w_norm"}
W_KEYS |= {"bias_collapse", "nc1_correct", "nc1_incorrect"}


# ------------------------------------------------------------------------------------------
# Independent reference: plain float64 formulas, written without the library's shortcuts
# ------------------------------------------------------------------------------------------


def ref_metrics(h, y, k, w=None, b=None, ood=None) -> dict[str, float | None]:
    h = np.asarray(h, dtype=np.float64)
    n, d = h.shape
    mu = np.stack([h[y == c].mean(axis=0) for c in range(k)])
    mbar = mu - mu.mean(axis=0)

    sigma_w = np.zeros((d, d))
    for i in range(n):  # rank-one sum, as in the definition
        diff = h[i] - mu[y[i]]
        sigma_w += np.outer(diff, diff)
    sigma_w /= n
    sigma_b = mbar.T @ mbar / k
    evals, evecs = np.linalg.eigh(sigma_b)
    r = min(k - 1, d)
    top = np.argsort(evals)[::-1][:r]
    pinv_b = evecs[:, top] @ np.diag(1.0 / evals[top]) @ evecs[:, top].T
    nc1 = np.trace(sigma_w @ pinv_b) / k

    var = np.array([np.mean(np.sum((h[y == c] - mu[c]) ** 2, axis=1)) for c in range(k)])
    diffs = mu[:, None, :] - mu[None, :, :]
    dist2 = np.sum(diffs**2, axis=-1)
    off = ~np.eye(k, dtype=bool)
    cdnv = np.mean((var[:, None] + var[None, :])[off] / (2 * dist2[off]))

    etf = (np.eye(k) - np.ones((k, k)) / k) / math.sqrt(k - 1)

    def nc2(g):
        return np.linalg.norm(g / np.linalg.norm(g) - etf)

    def cosines(rows):
        norms = np.sqrt(np.sum(rows**2, axis=1))
        return (rows @ rows.T / np.outer(norms, norms))[off]

    def row_norms(rows):
        return np.sqrt(np.sum(rows**2, axis=1))

    dists = np.sqrt(np.sum((h[:, None, :] - mu[None, :, :]) ** 2, axis=-1))
    ncc_pred = np.argmin(dists, axis=1)

    unit = mbar / row_norms(mbar)[:, None]
    pair_dist = [np.linalg.norm(unit[a] - unit[c]) for a in range(k) for c in range(a + 1, k)]
    log_kernel = -np.log(np.array(pair_dist))
    riesz = np.sign(d - 2) * np.array(pair_dist) ** (-(d - 2)) if d != 2 else log_kernel
    nc5 = None
    if ood is not None:
        ood_dir = np.mean(ood, axis=0) - mu.mean(axis=0)
        nc5 = np.mean(
            [abs(mbar[c] @ ood_dir) / (np.linalg.norm(mbar[c]) * np.linalg.norm(ood_dir))
             for c in range(k)]
        )  # fmt: skip

    def split_nc1(mask):
        diff = h[mask] - mu[y[mask]]
        return np.trace(diff.T @ diff / mask.sum() @ pinv_b) / k

    out = {
        "nc1": nc1,
        "cdnv": cdnv,
        "nc2_h": nc2(mbar @ mbar.T),
        "ncc_acc": np.mean(ncc_pred == y),
        "equinorm_h": np.std(row_norms(mbar)) / np.mean(row_norms(mbar)),
        "equiangle_h": np.std(cosines(mbar)),
        "maxangle_h": np.mean(np.abs(cosines(mbar) + 1 / (k - 1))),
        "h_norm": np.mean(row_norms(mbar)),
        "nc1_trace_ratio": np.trace(sigma_w) / np.trace(sigma_b),
        "hsu_log_mean": np.mean(log_kernel),
        "hsu_log_var": np.var(log_kernel),
        "hsu_riesz_mean": np.mean(riesz),
        "hsu_riesz_var": np.var(riesz),
        "nc5": nc5,
    }
    if w is None:
        out.update(dict.fromkeys(W_KEYS))
        return out
    w = np.asarray(w, dtype=np.float64)
    logits = h @ w.T + (0.0 if b is None else b)
    out.update(
        nc2_w=nc2(w @ w.T),
        nc2_wh=nc2(w @ mbar.T),
        nc3=np.sum((w / np.linalg.norm(w) - mbar / np.linalg.norm(mbar)) ** 2),
        nc4=np.mean(np.argmax(logits, axis=1) != ncc_pred),
        equinorm_w=np.std(row_norms(w)) / np.mean(row_norms(w)),
        equiangle_w=np.std(cosines(w)),
        maxangle_w=np.mean(np.abs(cosines(w) + 1 / (k - 1))),
        w_norm=np.mean(row_norms(w)),
        bias_collapse=None if b is None else np.linalg.norm(w @ mu.mean(axis=0) + b),
    )
    right = np.argmax(logits, axis=1) == y
    out["nc1_correct"] = split_nc1(right) if right.any() else None
    out["nc1_incorrect"] = split_nc1(~right) if (~right).any() else None
    return out


def assert_metrics_close(got: dict, want: dict, rtol: float = 1e-9) -> None:
    assert list(got) == KEYS
    for key in KEYS:
        if want[key] is None:
            assert got[key] is None, key
            continue
        assert got[key] is not None, key
        assert abs(got[key] - want[key]) <= rtol * abs(want[key]) + 1e-300, (
            key,
            got[key],
            want[key],
        )


def make_data(rng, k=5, d=8, per_class=(30, 30, 30, 30, 30), sep=2.0, dtype=np.float64):
    centres = rng.standard_normal((k, d)) * sep
    y = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    h = centres[y] + rng.standard_normal((len(y), d))
    perm = rng.permutation(len(y))
    return h[perm].astype(dtype), y[perm]


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def coinciding_means_data():
    """K = 4 classes in d = 6 whose means 0 and 1 coincide; the noise has exactly zero class
    means, so the class means are exactly ``centres`` (up to float64 rounding)."""
    rng = np.random.default_rng(19)
    k, d = 4, 6
    centres = rng.standard_normal((k, d)) * 3
    centres[1] = centres[0]
    y = np.repeat(np.arange(k), 25)
    noise = rng.standard_normal((len(y), d))
    for c in range(k):
        noise[y == c] -= noise[y == c].mean(axis=0)
    return rng, k, d, centres, y, noise


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(6, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Dropout(0.5), nn.Linear(10, 4)
        )
        self.classifier = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _dist_data():
    rng = np.random.default_rng(15)
    h, y = make_data(rng, per_class=(12, 30, 9, 21, 18))
    # Rank 0 never sees class 4: exercises ranks with locally empty classes.
    rank0 = np.flatnonzero(y != 4)[:40]
    rank1 = np.setdiff1d(np.arange(len(y)), rank0)
    w = rng.standard_normal((5, 8))
    return h, y, w, [rank0, rank1]


def _dist_worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world
    )
    try:
        h, y, w, parts = _dist_data()
        idx = parts[rank]
        for mode in MODES:
            acc = NCAccumulator(5, 8, mode=mode)
            for lo in range(0, len(idx), 16):
                acc.update(h[idx[lo : lo + 16]], y[idx[lo : lo + 16]])
            if mode == "projected":
                try:  # the second pass needs the global means
                    acc.update_ncc(h[idx], y[idx], weight=w)
                    raise AssertionError("update_ncc before all_reduce was accepted")
                except ValueError:
                    pass
            acc.all_reduce()
            acc.all_reduce()  # guard: already reduced, so a no-op (no double counting)
            try:
                acc.update(h[idx[:3]], y[idx[:3]])
                raise AssertionError("update after all_reduce was accepted")
            except ValueError:
                pass
            acc.update_ncc(h[idx], y[idx], weight=w)  # against the global means
            acc.all_reduce(stats=False)
            acc.all_reduce()  # both passes reduced: no-op
            Path(tmp, f"rank{rank}-{mode}.json").write_text(json.dumps(acc.compute(w).as_dict()))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------
# Every metric equals a direct float64 computation
# ------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("error")  # generic data must not trigger any rank warning
@pytest.mark.parametrize(
    "per_class", [(40, 40, 40, 40, 40), (7, 60, 3, 25, 90)], ids=["balanced", "unbalanced"]
)
def test_every_metric_matches_direct_float64(per_class):
    rng = np.random.default_rng(1)
    h, y = make_data(rng, per_class=per_class)
    w, b = rng.standard_normal((5, 8)), rng.standard_normal(5)
    want = ref_metrics(h, y, 5, w, b)

    assert_metrics_close(nc_metrics(h, y, w, b).as_dict(), want)

    # The streaming accumulator with uneven batches and the logits path gives the same numbers.
    acc = NCAccumulator(5, 8)
    for lo, hi in [(0, 13), (13, 14), (14, 100), (100, len(y))]:
        acc.update(h[lo:hi], y[lo:hi])
    for lo in range(0, len(y), 37):
        acc.update_ncc(h[lo : lo + 37], y[lo : lo + 37], logits=h[lo : lo + 37] @ w.T + b)
    assert_metrics_close(acc.compute(w, b).as_dict(), want)


def test_without_weight_w_metrics_are_none_and_h_metrics_match():
    rng = np.random.default_rng(2)
    h, y = make_data(rng, per_class=(20, 35, 20, 50, 11))
    got = nc_metrics(h, y).as_dict()
    assert_metrics_close(got, ref_metrics(h, y, 5))
    assert all(got[key] is None for key in W_KEYS)


def test_pure_function_on_stats_and_ufm_helper_match():
    rng = np.random.default_rng(3)
    h, y = make_data(rng, per_class=(10, 20, 30, 40, 50))
    w = rng.standard_normal((5, 8))
    mu = np.stack([h[y == c].mean(axis=0) for c in range(5)])
    centred = h - mu[y]
    sigma_w = centred.T @ centred / len(y)
    var = np.array([np.mean(np.sum(centred[y == c] ** 2, axis=1)) for c in range(5)])
    want = ref_metrics(h, y, 5, w)
    want["nc4"] = want["ncc_acc"] = want["nc1_correct"] = want["nc1_incorrect"] = None
    assert_metrics_close(nc_metrics_from_stats(mu, sigma_w, var, w).as_dict(), want)

    ufm = nc_metrics_ufm(w, h.T, y).as_dict()
    assert_metrics_close(ufm, ref_metrics(h, y, 5, w))
    with pytest.raises(ValueError, match="transpose H"):
        nc_metrics_ufm(w, h, y)


def test_exact_simplex_etf_is_fully_collapsed():
    k, d, n = 6, 9, 4
    rng = np.random.default_rng(4)
    basis, _ = np.linalg.qr(rng.standard_normal((d, k)))  # orthonormal columns
    means = 3.0 * (np.eye(k) - 1.0 / k) @ basis.T  # simplex ETF centred at the origin
    y = np.repeat(np.arange(k), n)
    h = means[y]
    w = 0.7 * means
    got = nc_metrics(h, y, w, np.zeros(k))
    for key in ("nc1", "nc2_h", "nc2_w", "nc2_wh", "nc3", "nc4", "cdnv"):
        assert getattr(got, key) < 1e-10, key
    for key in ("equinorm_h", "equinorm_w", "equiangle_h", "equiangle_w", "maxangle_h"):
        assert getattr(got, key) < 1e-10, key
    assert got.ncc_acc == 1.0
    # h_norm of the ETF rows: 3 * ||(e_k - 1/K) basis^T|| = 3 sqrt(1 - 1/K)
    assert rel(got.h_norm, 3.0 * math.sqrt(1 - 1 / k)) < 1e-12


def test_near_collapse_float32_input_is_accurate():
    """Class means of norm ~100 with noise of scale 1e-3, given as float32, in small batches.

    The accumulator centres each batch on its own class means in float64 and merges with Chan's
    rule, so nc1 matches a two-pass float64 computation to ~1e-12. The naive single-pass float32
    formula Sigma_W = E[h h^T] - mu mu^T subtracts numbers of size ~1e4 whose float32 rounding
    (~1e-3) dwarfs the true variance (~1e-6), so it would be off by orders of magnitude.
    """
    rng = np.random.default_rng(6)
    k, d, n = 4, 16, 200
    centres = rng.standard_normal((k, d))
    centres *= 100.0 / np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.permutation(np.repeat(np.arange(k), n))
    h32 = (centres[y] + 1e-3 * rng.standard_normal((k * n, d))).astype(np.float32)

    h64 = h32.astype(np.float64)  # the float32 values, exactly
    mu = np.stack([h64[y == c].mean(axis=0) for c in range(k)])
    centred = h64 - mu[y]
    sigma_w = centred.T @ centred / len(y)
    mbar = mu - mu.mean(axis=0)
    evals, evecs = np.linalg.eigh(mbar.T @ mbar / k)
    top = evecs[:, -(k - 1) :]
    want = np.trace(top.T @ sigma_w @ top @ np.diag(1 / evals[-(k - 1) :])) / k

    acc = NCAccumulator(k, d)
    for lo in range(0, len(y), 64):
        acc.update(torch.from_numpy(h32[lo : lo + 64]), torch.from_numpy(y[lo : lo + 64]))
    assert rel(acc.compute().nc1, want) < 1e-4


def test_many_classes_and_warning_when_d_below_k_minus_1():
    rng = np.random.default_rng(8)
    k, d = 300, 6
    y = np.concatenate([np.arange(k), rng.integers(0, k, 600)])
    h = rng.standard_normal((k, d))[y] * 3 + rng.standard_normal((len(y), d))
    acc = NCAccumulator(k, d).update(h[:500], y[:500]).update(h[500:], y[500:])
    mu = np.stack([h[y == c].mean(axis=0) for c in range(k)])
    centred = h - mu[y]
    scatter = acc.within_class_covariance() * len(y)
    assert np.max(np.abs(scatter - centred.T @ centred)) < 1e-9 * np.max(np.abs(scatter))
    with pytest.warns(UserWarning, match="simplex ETF cannot be reached"):
        got = acc.compute()
    want = ref_metrics(h, y, k)
    for key in ("nc1", "cdnv", "nc2_h", "equinorm_h", "h_norm"):
        assert rel(getattr(got, key), want[key]) < 1e-9, key


@pytest.mark.parametrize(("k", "d", "spread"), [(6, 40, 1.0), (6, 40, 1e-4), (10, 4, 0.5)])
def test_projected_mode_gives_the_streaming_metrics(k: int, d: int, spread: float) -> None:
    """The projected two-pass mode (scatter only along the class-mean directions) gives the
    same metrics as the streaming mode fed in small batches, also near collapse (tiny spread
    around far-away means) and for d < K - 1 (the span is all of R^d); both match the direct
    float64 reference."""
    gen = torch.Generator().manual_seed(k * d)
    y = torch.arange(k).repeat(50)[torch.randperm(50 * k, generator=gen)]
    mu = 5.0 + torch.randn(k, d, generator=gen)
    h = (mu[y] + spread * torch.randn(50 * k, d, generator=gen)).float()
    logits = torch.randn(50 * k, k, generator=gen)
    w, b = torch.randn(k, d, generator=gen), torch.randn(k, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # d < K - 1 warns in both paths
        proj = NCAccumulator(k, d, mode="projected").update(h, y)
        fast = proj.update_ncc(h, y, logits=logits).compute(w, b).as_dict()
        stream = NCAccumulator(k, d)
        for lo in range(0, len(y), 37):
            stream.update(h[lo : lo + 37], y[lo : lo + 37])
        ref = stream.update_ncc(h, y, logits=logits).compute(w, b).as_dict()
    assert set(fast) == set(ref) and all((fast[n] is None) == (ref[n] is None) for n in ref)
    present = {n: v for n, v in ref.items() if v is not None}
    assert {n: fast[n] for n in present} == pytest.approx(present, rel=1e-8, abs=1e-12)
    assert fast["nc1"] > 0
    want = ref_metrics(h.double().numpy(), y.numpy(), k, w.double().numpy(), b.double().numpy())
    for key in ("nc1", "cdnv", "nc1_trace_ratio", "h_norm"):
        assert rel(fast[key], want[key]) < 1e-8, key
    with pytest.raises(ValueError, match="only along the class-mean directions"):
        proj.within_class_covariance()
    with pytest.raises(ValueError, match="second pass has fixed the class means"):
        proj.update(h, y)
    with pytest.raises(ValueError, match="needs its second pass"):
        NCAccumulator(k, d, mode="projected").update(h, y).compute()


def test_second_pass_tallies_equal_direct_distances() -> None:
    """The NCC/NC4 tallies of update_ncc (scored on the class-centred chunk, in the class-mean
    basis for the own means) equal argmin of the direct distances, against the accumulator's own
    means and against other means (test features scored with train means), in both modes."""
    rng = np.random.default_rng(3)
    k, d, n = 7, 24, 700
    y = np.arange(n) % k
    h = (rng.standard_normal((k, d))[y] + 2.0 * rng.standard_normal((n, d))).astype(np.float32)
    logits = rng.standard_normal((n, k))
    own = np.stack([h[y == c].astype(np.float64).mean(axis=0) for c in range(k)])
    other = own + 0.3 * rng.standard_normal((k, d))
    for ref, means in ((own, None), (other, other)):
        dist = np.linalg.norm(h[:, None, :].astype(np.float64) - ref[None], axis=-1)
        ncc = dist.argmin(axis=1)
        want = {
            "ncc_correct": int((ncc == y).sum()),
            "nc4_mismatch": int((ncc != logits.argmax(1)).sum()),
        }
        assert 0 < want["ncc_correct"] < n and 0 < want["nc4_mismatch"] < n
        for mode in MODES:
            acc = NCAccumulator(k, d, mode=mode).update(h, y)
            tallies = acc.update_ncc(h, y, means=means, logits=logits).tallies
            assert {key: tallies[key] for key in want} == want, mode


def test_update_ncc_with_train_means_on_test_features_and_merge_sums_tallies():
    rng = np.random.default_rng(10)
    h_tr, y_tr = make_data(rng, per_class=(30, 20, 40, 25, 35), sep=1.0)
    h_te, y_te = make_data(rng, per_class=(10, 15, 12, 8, 20), sep=1.0)
    w, b = rng.standard_normal((5, 8)), rng.standard_normal(5)
    train_means = NCAccumulator(5, 8).update(h_tr, y_tr).class_means()
    want_means = np.stack([h_tr[y_tr == c].mean(axis=0) for c in range(5)])
    assert np.allclose(train_means, want_means, rtol=1e-12, atol=1e-14)

    dists = np.linalg.norm(h_te[:, None, :] - want_means[None], axis=-1)
    ncc_pred = np.argmin(dists, axis=1)
    cls_pred = np.argmax(h_te @ w.T + b, axis=1)
    want_acc = np.mean(ncc_pred == y_te)
    want_nc4 = np.mean(ncc_pred != cls_pred)
    assert 0 < want_nc4 < 1 and 0 < want_acc < 1  # a non-trivial case

    halves = []
    for sl in (slice(0, 30), slice(30, None)):
        a = NCAccumulator(5, 8).update(h_te[sl], y_te[sl])
        a.update_ncc(h_te[sl], y_te[sl], means=train_means, weight=w, bias=b)
        halves.append(a)
    tallies = {key: halves[0].tallies[key] + halves[1].tallies[key] for key in halves[0].tallies}
    merged = halves[0].merge(halves[1])
    assert merged.tallies == tallies
    got = merged.compute(w, b)
    assert got.ncc_acc == pytest.approx(want_acc, abs=1e-15)
    assert got.nc4 == pytest.approx(want_nc4, abs=1e-15)

    # Without a classifier only the NCC accuracy is tallied; without any pass both are None.
    only_ncc = NCAccumulator(5, 8).update(h_te, y_te).update_ncc(h_te, y_te, means=train_means)
    assert only_ncc.compute().nc4 is None
    assert only_ncc.compute().ncc_acc == pytest.approx(want_acc, abs=1e-15)
    fresh = NCAccumulator(5, 8).update(h_te, y_te).compute(w, b)
    assert fresh.nc4 is None and fresh.ncc_acc is None


def test_per_class_nc1_and_variability_match_direct_float64() -> None:
    rng = np.random.default_rng(21)
    k, d = 5, 8
    h, y = make_data(rng, k=k, d=d, per_class=(10, 40, 25, 31, 17))
    mu = np.stack([h[y == c].mean(axis=0) for c in range(k)])
    mbar = mu - mu.mean(axis=0)
    evals, evecs = np.linalg.eigh(mbar.T @ mbar / k)
    top = evecs[:, -(k - 1) :]  # rank K-1 = 4 of d = 8
    pinv_b = top @ np.diag(1 / evals[-(k - 1) :]) @ top.T
    for mode in MODES:
        acc = NCAccumulator(k, d, mode=mode).update(h, y).update_ncc(h, y)
        per = acc.per_class()
        for c in range(k):
            diff = h[y == c] - mu[c]
            assert per.count[c] == (y == c).sum()
            assert rel(per.variability[c], np.mean(np.sum(diff**2, axis=1))) < 1e-12
            assert rel(per.nc1[c], np.trace(diff.T @ diff / len(diff) @ pinv_b) / k) < 1e-9
        assert rel(float(per.count @ per.nc1) / len(y), acc.compute().nc1) < 1e-12
    assert NCAccumulator(k, d).update(h, y).per_class().nc1 is None


def test_nc5_and_cdnv_exponent_match_direct_float64(tmp_path, capsys) -> None:
    rng = np.random.default_rng(22)
    h, y = make_data(rng)
    ood = rng.standard_normal((40, 8)) + 0.5
    want = ref_metrics(h, y, 5, ood=ood)
    got = nc_metrics(h, y, ood_features=ood)
    assert rel(got.nc5, want["nc5"]) < 1e-12 and 0 < got.nc5 < 1
    mu = np.stack([h[y == c].mean(axis=0) for c in range(5)])
    var = np.array([np.mean(np.sum((h[y == c] - mu[c]) ** 2, axis=1)) for c in range(5)])
    pairs = [(a, c) for a in range(5) for c in range(5) if a != c]
    for p in (0.5, 1.0, 2.0):
        want_p = np.mean(
            [(var[a] + var[c]) / (2 * np.sum((mu[a] - mu[c]) ** 2) ** p) for a, c in pairs]
        )
        assert rel(nc_metrics(h, y, cdnv_dist_exp=p).cdnv, want_p) < 1e-12, p
    np.savez(tmp_path / "f.npz", features=h, labels=y)
    np.savez(tmp_path / "o.npz", features=ood)
    assert (
        cli_main(["metrics", str(tmp_path / "f.npz"), "--ood", str(tmp_path / "o.npz"), "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["metrics"]["nc5"] == pytest.approx(
        got.nc5, rel=1e-12
    )
    assert cli_main(["metrics", str(tmp_path / "f.npz"), "--ood", str(tmp_path / "x.npz")]) == 2
    assert "x.npz not found" in capsys.readouterr().err


@pytest.mark.parametrize("k", [40, 120])
def test_many_class_tallies_equal_float64_argmax_and_argmin_with_near_ties(k: int) -> None:
    """With many classes, on float32 input, the tallies equal the float64 argmax/argmin
    exactly, including planted near-ties (two classifier rows that differ by 1e-9 relative, far
    below float32 resolution, so every sample whose best class is 0 or 1 is a near tie)."""
    rng = np.random.default_rng(k)
    d, n = 48, 40 * k
    y = np.arange(n) % k
    means = rng.standard_normal((k, d)) * 3
    h = (means[y] + rng.standard_normal((n, d))).astype(np.float32)
    w = rng.standard_normal((k, d))
    w[1] = w[0] * (1 + 1e-9)  # classes 0 and 1 nearly tie for every sample
    b = rng.standard_normal(k)
    b[1] = b[0]
    h64 = h.astype(np.float64)
    own = np.stack([h64[y == c].mean(axis=0) for c in range(k)])
    other = own + 0.5 * rng.standard_normal((k, d))
    cls = np.argmax(h64 @ w.T + b, axis=1)
    for ref, means_arg in ((own, None), (other, other)):
        ncc = np.argmin(((h64[:, None, :] - ref[None]) ** 2).sum(-1), axis=1)
        acc = NCAccumulator(k, d, mode="projected").update(h, y)
        t = acc.update_ncc(h, y, means=means_arg, weight=w, bias=b).tallies
        assert t["ncc_correct"] == int((ncc == y).sum())
        assert t["nc4_mismatch"] == int((ncc != cls).sum())
    # float64 features too
    acc = NCAccumulator(k, d, mode="projected").update(h64, y)
    t = acc.update_ncc(h64, y, weight=w, bias=b).tallies
    ncc = np.argmin(((h64[:, None, :] - own[None]) ** 2).sum(-1), axis=1)
    assert t["nc4_mismatch"] == int((ncc != cls).sum())


@pytest.mark.parametrize("sep", [0.3, 1.5, 3.0], ids=["overlapping", "mixed", "separated"])
def test_many_classes_every_metric_matches_float64_with_near_ties(sep: float) -> None:
    """Many classes, on float32 input, overlapping to well separated, with classifier near
    ties: every metric matches the direct float64 formulas, NC1 over correctly / incorrectly
    classified samples included (the near-tie rows decide their split)."""
    k, d = 40, 48
    rng = np.random.default_rng(7)
    y = np.arange(30 * k) % k
    centres = rng.standard_normal((k, d)) * sep
    h = (centres[y] + rng.standard_normal((len(y), d))).astype(np.float32)
    w = rng.standard_normal((k, d))
    w[1] = w[0] * (1 + 1e-9)  # classes 0 and 1 nearly tie for every sample
    b = rng.standard_normal(k)
    b[1] = b[0]
    assert_metrics_close(nc_metrics(h, y, w, b).as_dict(), ref_metrics(h, y, k, w, b))


def test_as_dict_keys_follow_the_contract():
    fields = list(NCMetrics.__dataclass_fields__)
    assert fields == KEYS


# ------------------------------------------------------------------------------------------
# Results do not depend on batching, order, merging, scale, precision or where the state lives
# ------------------------------------------------------------------------------------------


def test_permutation_batching_merging_and_scaling_leave_nc1_unchanged():
    rng = np.random.default_rng(5)
    h, y = make_data(rng, per_class=(9, 31, 17, 4, 22))
    want = ref_metrics(h, y, 5)["nc1"]
    base = nc_metrics(h, y).nc1
    assert rel(base, want) < 1e-9

    perm = rng.permutation(len(y))
    assert rel(nc_metrics(h[perm], y[perm]).nc1, base) < 1e-10

    for size in (1, 2, 7, 50):
        acc = NCAccumulator(5, 8)
        for lo in range(0, len(y), size):
            acc.update(h[lo : lo + size], y[lo : lo + size])
        assert rel(acc.compute().nc1, base) < 1e-10, size

    cuts = [0, 3, 4, 40, 41, 70, len(y)]
    parts = [
        NCAccumulator(5, 8).update(h[a:z], y[a:z]) for a, z in zip(cuts[:-1], cuts[1:], strict=True)
    ]
    merged = parts[0]
    for part in parts[1:]:
        assert merged.merge(part) is merged
    assert rel(merged.compute().nc1, base) < 1e-10
    assert merged.num_samples == len(y)

    assert rel(nc_metrics(7.3 * h, y).nc1, base) < 1e-10


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(7)
    h, y = make_data(rng, dtype=np.float32)
    w = rng.standard_normal((5, 8)).astype(np.float32)
    from_numpy = nc_metrics(h, y, w).as_dict()
    from_torch = nc_metrics(torch.from_numpy(h), torch.from_numpy(y), torch.from_numpy(w))
    assert from_torch.as_dict() == from_numpy
    assert_metrics_close(from_numpy, ref_metrics(h, y, 5, w))


@pytest.mark.parametrize("factor", [1e-300, 1e200])
def test_metrics_do_not_depend_on_the_feature_scale(tmp_path, capsys, factor) -> None:
    rng = np.random.default_rng(25)
    h, y = make_data(rng)
    w, b = rng.standard_normal((5, 8)), rng.standard_normal(5)
    base = nc_metrics(h, y, w, b).as_dict()
    scaled = nc_metrics(h * factor, y, w, b * factor).as_dict()
    for key, value in base.items():
        if value is None:
            assert scaled[key] is None, key
        elif key in ("h_norm", "bias_collapse"):
            assert rel(scaled[key], value * factor) < 1e-12, key
        else:
            assert scaled[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
    path = tmp_path / "scaled.npz"
    np.savez(path, features=h * factor, labels=y)
    assert cli_main(["metrics", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["nc1"] == pytest.approx(base["nc1"], rel=1e-10)


def test_float32_coinciding_means_are_dropped_but_a_small_real_gap_counts() -> None:
    """Two class means that coincide up to float32 rounding: the cutoff accounts for the input's
    precision, warns, and gives the float64 answer (not ~1e15); two means 1e-3 ||mu|| apart in
    float32 data keep their direction (no warning) and match the direct float64 formula."""
    rng, k, d, centres, y, noise = coinciding_means_data()
    h64 = centres[y] + noise
    with pytest.warns(UserWarning, match="numerical rank 2 < 3"):
        want = nc_metrics(h64, y).nc1
    h32 = h64.astype(np.float32)
    for mode in MODES:
        acc = NCAccumulator(k, d, mode=mode).update(h32, y).update_ncc(h32, y)
        with pytest.warns(UserWarning, match="numerical rank 2 < 3"):
            got = acc.compute().nc1
        assert rel(got, want) < 1e-5, mode  # the float32 features differ from h64 by ~1e-7

    gap = 1e-3 * np.linalg.norm(centres[0])
    centres[1] = centres[0] + gap * rng.standard_normal(d) / np.sqrt(d)
    h32 = (centres[y] + noise).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = nc_metrics(h32, y).nc1
    assert rel(got, ref_metrics(h32.astype(np.float64), y, k)["nc1"]) < 1e-8
    assert got > 1e3  # the small gap makes NC1 large, but finite and real


def test_state_dict_round_trip_and_reset():
    rng = np.random.default_rng(9)
    h, y = make_data(rng)
    acc = NCAccumulator(5, 8).update(h[:80], y[:80])
    acc.update_ncc(h[:80], y[:80])
    clone = NCAccumulator(5, 8).load_state_dict(acc.state_dict())
    for a in (acc, clone):
        a.update(h[80:], y[80:])
    assert clone.compute() == acc.compute()
    assert clone.tallies == acc.tallies
    with pytest.raises(ValueError, match="K=5, d=8"):
        NCAccumulator(5, 9).load_state_dict(acc.state_dict())
    acc.reset()
    assert acc.num_samples == 0 and acc.tallies["ncc_total"] == 0
    assert not acc.shifted_scatter.any()


def test_state_follows_the_first_input_and_moves_with_to() -> None:
    h, y = make_data(np.random.default_rng(23), dtype=np.float32)
    acc = NCAccumulator(5, 8)
    assert acc.device == torch.device("cpu")
    acc.update(torch.from_numpy(h), torch.from_numpy(y)).update_ncc(h, y)
    assert all(t.device.type == "cpu" and t.dtype in (torch.float64, torch.int64)
               for t in acc._tensors().values())  # fmt: skip
    clone = NCAccumulator(5, 8).load_state_dict(acc.state_dict())
    assert clone.compute() == acc.compute()  # bit for bit
    assert acc.to("cpu").compute() == clone.compute()
    path_state = {k: v for k, v in acc.state_dict().items()}
    buf = __import__("io").BytesIO()
    torch.save(path_state, buf)
    buf.seek(0)
    reloaded = NCAccumulator(5, 8).load_state_dict(torch.load(buf, weights_only=True))
    assert reloaded.compute() == acc.compute()


def test_projected_merge_state_dict_and_half_precision_inputs() -> None:
    rng = np.random.default_rng(28)
    h, y = make_data(rng)
    w, b = rng.standard_normal((5, 8)), rng.standard_normal(5)
    want = nc_metrics(h, y, w, b).as_dict()
    # first passes merged, then one second pass over all samples
    left = NCAccumulator(5, 8, mode="projected").update(h[:70], y[:70])
    right = NCAccumulator(5, 8, mode="projected").update(h[70:], y[70:])
    merged = left.merge(right).update_ncc(h, y, weight=w, bias=b)
    assert_metrics_close(merged.compute(w, b).as_dict(), want)
    clone = NCAccumulator(5, 8, mode="projected").load_state_dict(merged.state_dict())
    assert clone.compute(w, b) == merged.compute(w, b)
    other = NCAccumulator(5, 8, mode="projected").update(h[:70], y[:70]).update_ncc(h, y)
    with pytest.raises(ValueError, match="different class means"):
        merged.merge(other)
    with pytest.raises(ValueError, match="mode='streaming'"):
        NCAccumulator(5, 8).merge(other)
    # half-precision inputs: statistics of the rounded values in float64, precision recorded
    for dtype in (torch.float16, torch.bfloat16):
        ht = torch.from_numpy(h).to(dtype)
        acc = NCAccumulator(5, 8).update(ht, torch.from_numpy(y))
        assert acc.input_eps == torch.finfo(dtype).eps
        ref = ref_metrics(ht.double().numpy(), y, 5)
        assert rel(acc.compute().nc1, ref["nc1"]) < 1e-9


def test_streaming_second_pass_restarts_after_new_samples_and_keeps_tallies() -> None:
    """In streaming mode, update() after update_ncc() makes the second-pass statistics stale
    (per-class and split NC1 become None) but keeps the tallies; a new second pass over all the
    samples gives the one-shot answer."""
    rng = np.random.default_rng(27)
    h, y = make_data(rng)
    w = rng.standard_normal((5, 8))
    acc = NCAccumulator(5, 8).update(h[:100], y[:100]).update_ncc(h[:100], y[:100], weight=w)
    acc.update(h[100:], y[100:])
    stale = acc.compute(w)
    assert stale.nc1_correct is None and acc.per_class().nc1 is None
    assert acc.tallies["ncc_total"] == 100 and stale.ncc_acc is not None
    fresh = NCAccumulator(5, 8).update(h, y).update_ncc(h, y, weight=w).compute(w).as_dict()
    assert_metrics_close(fresh, ref_metrics(h, y, 5, w))
    with pytest.raises(ValueError, match="unknown|mode must be one of"):
        NCAccumulator(5, 8, mode="full")


# ------------------------------------------------------------------------------------------
# Batches never read the device back (nothing synchronises a CUDA stream per batch)
# ------------------------------------------------------------------------------------------


def test_update_never_reads_the_device_back() -> None:
    """On the meta device every read of a value (``bool``, ``item``, ``cpu``, ``numpy``) raises,
    so updates that succeed there make no host copy and no synchronisation per batch (what a
    CUDA stream would pay). Checked for both modes with validation off."""
    k, d = 5, 8
    for mode in MODES:
        acc = NCAccumulator(k, d, mode=mode, device="meta", validate=False)
        for _ in range(3):
            acc.update(torch.randn(16, d, device="meta"), torch.randint(0, k, (16,), device="meta"))
        assert all(t.device.type == "meta" for t in acc._tensors().values())
    with pytest.raises(Exception):  # noqa: B017 - the meta device refuses any read-back
        bool(acc.counts.any())


@pytest.mark.parametrize("k", [5, 40])
def test_second_pass_batches_never_read_the_device_back(k: int) -> None:
    """After the first update_ncc call (which fixes the means: one read), further second-pass
    batches make no read-back: the state is moved to the meta device, where any read raises."""
    d = 8
    rng = np.random.default_rng(k)
    y = np.arange(20 * k) % k
    h = (rng.standard_normal((k, d))[y] + rng.standard_normal((len(y), d))).astype(np.float32)
    w, b = torch.randn(k, d, dtype=torch.float64), torch.randn(k, dtype=torch.float64)
    for mode in MODES:
        acc = NCAccumulator(k, d, mode=mode, validate=False).update(h, y)
        acc.update_ncc(h[:10], y[:10], weight=w, bias=b)
        acc.to("meta")
        hm, ym = torch.from_numpy(h).to("meta"), torch.from_numpy(y).to("meta")
        for _ in range(2):
            acc.update_ncc(hm, ym, weight=w.to("meta"), bias=b.to("meta"))
            acc.update_ncc(hm, ym, means=torch.zeros(k, d, device="meta"),
                           logits=torch.zeros(len(y), k, device="meta"))  # fmt: skip


def test_gpu_check_runs_in_tiny_mode_on_cpu(tmp_path, capsys) -> None:
    """benchmarks/gpu_check.py runs every step at tiny sizes on the CPU; on CUDA the same script
    compares the device engine with the CPU one (exactness must hold in both)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.json"
    assert module.main(["--tiny", "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert max(report["exactness"]["max_rel_diff"].values()) <= 1e-9
    assert report["speed"]["stream_all_metrics_s"] > 0 and report["training"]["epoch_s"] > 0
    assert "exactness vs CPU" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# Bad input: one clear ValueError (or a warning where the answer is still exact)
# ------------------------------------------------------------------------------------------


def test_non_finite_features_are_counted_and_state_untouched():
    rng = np.random.default_rng(11)
    h, y = make_data(rng)
    bad = h.copy()
    bad[3, 1] = np.nan
    bad[3, 2] = np.inf
    bad[10, 0] = -np.inf
    acc = NCAccumulator(5, 8)
    with pytest.raises(ValueError, match=r"3 non-finite value\(s\) \(NaN/Inf\) in 2 of 150 rows"):
        acc.update(bad, y)
    assert acc.num_samples == 0 and not acc.shifted_scatter.any()
    with pytest.raises(ValueError, match="non-finite"):
        nc_metrics(bad, y)
    # float32 features skip the separate range pass; their class sums reveal NaN/Inf
    for one in (bad, np.where(np.isnan(bad), 1.0, bad)):  # NaN and +-Inf; +-Inf only
        with pytest.raises(ValueError, match=r"non-finite value\(s\) \(NaN/Inf\) in . of 150 rows"):
            nc_metrics(one.astype(np.float32), y)
    with pytest.raises(ValueError, match="non-finite"):
        acc.update(h, y).update_ncc(bad, y)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda h, y: NCAccumulator(5, 8).update(h, np.where(y == 0, 5, y)), r"\[0, 5\)"),
        (lambda h, y: NCAccumulator(5, 8).update(h, np.where(y == 0, -1, y)), r"\[0, 5\)"),
        (lambda h, y: NCAccumulator(5, 8).update(h, y[:-1]), "one label per feature row"),
        (lambda h, y: NCAccumulator(5, 8).update(h[:, :7], y), "dimension 7"),
        (lambda h, y: NCAccumulator(5, 8).update(h[0], y[:1]), "2-dimensional"),
        (lambda h, y: NCAccumulator(5, 8).update(h, y + 0.5), "integer class indices"),
        (lambda h, y: NCAccumulator(1, 8), "num_classes must be an integer >= 2"),
        (lambda h, y: nc_metrics(h, np.zeros_like(y)), "num_classes must be an integer >= 2"),
        (lambda h, y: nc_metrics(h, y, np.ones((8, 5))), "not its transpose"),
        (
            lambda h, y: NCAccumulator(5, 8).update(h, y).compute(np.ones((8, 5))),
            r"\(K, d\) = \(5, 8\)",
        ),
        (lambda h, y: NCAccumulator(5, 8).update(h, y).compute(np.ones(8)), "2-dimensional"),
        (lambda h, y: nc_metrics(h, y, np.ones((5, 8)), np.ones(4)), r"bias must have shape"),
        (lambda h, y: NCAccumulator(5, 8).update(h, y).compute(None, np.ones(6)), "bias must"),
        (
            lambda h, y: NCAccumulator(5, 8).update(h, y).update_ncc(h, y, logits=np.ones((3, 5))),
            "logits must have shape",
        ),
        (
            lambda h, y: NCAccumulator(5, 8).update(h, y).update_ncc(h, y, means=np.ones((5, 7))),
            "means must have shape",
        ),
    ],
)
def test_bad_input_raises_clear_value_error(call, message):
    h, y = make_data(np.random.default_rng(12))
    with pytest.raises(ValueError, match=message):
        call(h, y)


def test_empty_class_is_named_at_compute_time():
    h, y = make_data(np.random.default_rng(13))
    keep = (y != 2) & (y != 4)
    acc = NCAccumulator(5, 8).update(h[keep], y[keep])
    with pytest.raises(ValueError, match=r"class\(es\) 2, 4 have no samples"):
        acc.compute()
    with pytest.raises(ValueError, match="2, 4 have no samples"):
        acc.update_ncc(h[keep], y[keep])  # default means need every class


def test_coinciding_class_means_drop_a_direction_with_a_warning():
    _, k, d, centres, y, noise = coinciding_means_data()
    h = centres[y] + noise
    mu = centres
    mbar = mu - mu.mean(axis=0)
    sigma_w = noise.T @ noise / len(y)
    evals, evecs = np.linalg.eigh(mbar.T @ mbar / k)
    top = evecs[:, -2:]  # Sigma_B has rank 2, not K-1 = 3
    want = np.trace(sigma_w @ top @ np.diag(1 / evals[-2:]) @ top.T) / k
    with pytest.warns(UserWarning, match="numerical rank 2 < 3"):
        got = nc_metrics(h, y)
    assert rel(got.nc1, want) < 1e-6  # the means agree with `centres` only to ~1e-15
    assert got.cdnv > 1e20  # coinciding means: the pair (0, 1) has ~zero distance


def test_low_dimension_warns_but_computes():
    rng = np.random.default_rng(14)
    h, y = make_data(rng, k=5, d=3)
    with pytest.warns(UserWarning, match="d=3 < K-1=4"):
        got = nc_metrics(h, y)
    assert rel(got.nc1, ref_metrics(h, y, 5)["nc1"]) < 1e-9


def test_unvalidated_non_finite_features_are_reported_by_compute() -> None:
    h, y = make_data(np.random.default_rng(29))
    h[5, 3] = np.nan
    for mode in MODES:
        acc = NCAccumulator(5, 8, mode=mode, validate=False).update(h, y)
        if mode == "projected":
            with pytest.raises(ValueError, match="not finite"):
                acc.update_ncc(h, y)
            continue
        with pytest.raises(ValueError, match=r"not finite \(per-batch validation was off\)"):
            acc.compute()


# ------------------------------------------------------------------------------------------
# collect(): features of a model's classifier input, model state restored
# ------------------------------------------------------------------------------------------


def test_collect_captures_classifier_input_and_restores_state():
    net = TinyNet()
    net.train()
    net.features[1].eval()  # a frozen BatchNorm inside a training model must stay frozen
    gen = torch.Generator().manual_seed(0)
    loader = [(torch.randn(5, 6, generator=gen), torch.tensor([0, 1, 2, 0, 1])) for _ in range(3)]

    batches = []
    for feats, logits, labels in collect(net, loader, net.classifier):
        assert torch.is_grad_enabled()  # no_grad must not leak into the caller's loop body
        assert not net.training
        batches.append((feats, logits, labels))
    assert len(batches) == 3
    assert net.training and not net.features[1].training and net.features[3].training
    assert len(net.classifier._forward_pre_hooks) == 0

    net.eval()
    with torch.no_grad():
        for (x, y), (feats, logits, labels) in zip(loader, batches, strict=True):
            assert torch.equal(feats, net.features(x))
            assert torch.equal(logits, net(x))
            assert torch.equal(labels, y)
            assert not feats.requires_grad

    net.train()
    for _ in collect(net, loader, net.classifier):
        break  # early stop: the generator is closed, the hook removed, the mode restored
    assert net.training
    assert len(net.classifier._forward_pre_hooks) == 0

    with pytest.raises(ValueError, match="was not called"):
        next(collect(net, loader, nn.Linear(4, 3)))
    assert net.training


def test_collect_feeds_the_accumulator():
    net = TinyNet()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 6, generator=gen)
    y = torch.arange(60) % 3
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 60, 16)]
    acc = NCAccumulator(3, 4)
    for feats, _, labels in collect(net, loader, net.classifier):
        acc.update(feats, labels)
    for feats, logits, labels in collect(net, loader, net.classifier):
        acc.update_ncc(feats, labels, logits=logits)
    w, b = net.classifier.weight, net.classifier.bias
    got = acc.compute(w, b).as_dict()
    net.eval()
    with torch.no_grad():
        h = net.features(x).double().numpy()
    assert_metrics_close(
        got, ref_metrics(h, y.numpy(), 3, w.detach().double().numpy(), b.detach().double().numpy())
    )


# ------------------------------------------------------------------------------------------
# Distributed: all_reduce equals one process
# ------------------------------------------------------------------------------------------


def test_all_reduce_across_two_gloo_processes_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children reuse the parent's imports (spawn would re-import torch in each, ~5 s on
    # two busy cores). The parent has one torch thread (conftest) and no process group.
    ctx = mp.start_processes(
        _dist_worker, args=(2, str(tmp_path)), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("distributed workers did not finish within 120 s")
    h, y, w, _ = _dist_data()
    want = nc_metrics(h, y, w).as_dict()
    assert_metrics_close(want, ref_metrics(h, y, 5, w))
    for rank in range(2):
        for mode in MODES:
            got = json.loads((tmp_path / f"rank{rank}-{mode}.json").read_text())
            assert_metrics_close(got, want, rtol=1e-10)


def test_all_reduce_without_process_group_is_a_no_op():
    h, y = make_data(np.random.default_rng(16))
    acc = NCAccumulator(5, 8).update(h, y)
    before = acc.state_dict()
    assert acc.all_reduce() is acc
    after = acc.state_dict()
    assert all(np.array_equal(before[key], after[key]) for key in before)


# ------------------------------------------------------------------------------------------
# nclab metrics (CLI)
# ------------------------------------------------------------------------------------------


def test_cli_table_and_json(tmp_path, capsys):
    rng = np.random.default_rng(17)
    h, y = make_data(rng, dtype=np.float32)
    w, b = rng.standard_normal((5, 8)), rng.standard_normal(5)
    path = tmp_path / "feats.npz"
    np.savez(path, features=h, labels=y, weight=w, bias=b)
    want = nc_metrics(h, y, w, b).as_dict()

    assert cli_main(["metrics", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["num_samples"], out["num_classes"], out["dim"]) == (150, 5, 8)
    assert out["metrics"] == want

    assert cli_main(["metrics", str(path)]) == 0
    table = capsys.readouterr().out
    assert "N=150 samples, K=5 classes, d=8" in table
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:]}
    for key in KEYS:
        if want[key] is None:
            assert rows[key] == "n/a", key
        else:
            assert float(rows[key]) == pytest.approx(want[key], rel=1e-5), key


def test_cli_without_weight_shows_na(tmp_path, capsys):
    h, y = make_data(np.random.default_rng(18))
    path = tmp_path / "feats.npz"
    np.savez(path, features=h, labels=y)
    assert cli_main(["metrics", str(path)]) == 0
    table = capsys.readouterr().out
    assert " nc3 " in table and "n/a" in table
    assert f"{nc_metrics(h, y).nc1:.6g}" in table


def test_cli_errors(tmp_path, capsys):
    missing = tmp_path / "nope.npz"
    assert cli_main(["metrics", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "nope.npz not found" in err and "'features'" in err

    path = tmp_path / "bad.npz"
    np.savez(path, feats=np.zeros((3, 2)))
    assert cli_main(["metrics", str(path)]) == 2
    err = capsys.readouterr().err
    assert "lacks array(s) 'features', 'labels'" in err and "feats" in err


def test_cli_json_is_strict_and_non_finite_input_is_one_line(tmp_path, capsys) -> None:
    rng = np.random.default_rng(26)
    h, y = make_data(rng)
    h[y == 1] = h[y == 0][: (y == 1).sum()]  # class 1 duplicates class 0: cdnv is inf
    path = tmp_path / "dup.npz"
    np.savez(path, features=h, labels=y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli_main(["metrics", str(path), "--json"]) == 0
    text = capsys.readouterr().out
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["metrics"]["cdnv"] is None
    h[3, 2] = np.inf
    np.savez(path, features=h, labels=y)
    assert cli_main(["metrics", str(path)]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_per_class(tmp_path, capsys) -> None:
    h, y = make_data(np.random.default_rng(30), per_class=(10, 40, 25, 31, 17))
    path = tmp_path / "f.npz"
    np.savez(path, features=h, labels=y)
    want = NCAccumulator(5, 8).update(h, y).update_ncc(h, y).per_class()
    assert cli_main(["metrics", str(path), "--per-class", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["per_class"]
    assert got["count"] == [10, 40, 25, 31, 17]
    np.testing.assert_allclose(got["variability"], want.variability, rtol=1e-12)
    np.testing.assert_allclose(got["nc1"], want.nc1, rtol=1e-9)
    assert cli_main(["metrics", str(path), "--per-class"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[-6].split() == ["class", "count", "variability", "nc1"]
    assert table[-4].split()[:2] == ["1", "40"]
