"""Training conditions (nclab.conditions): label noise and class imbalance, and the NC metrics
under imbalance against a direct float64 computation."""

from pathlib import Path

import numpy as np
import pytest
import torch

from nclab.conditions import imbalanced_counts, imbalanced_indices, noisy_labels
from nclab.config import config_differences
from nclab.data import class_balanced_indices, load_dataset
from nclab.metrics import NCAccumulator, nc_metrics
from nclab.train import TrainConfig, config_from_dict, load_model, train

SYNTH = "synthetic:k=5,d=24,n=80,test=20"

# ---------------------------------------------------------------------------- label noise


@pytest.mark.parametrize("mode", ["symmetric", "pairflip"])
@pytest.mark.parametrize(("rate", "n"), [(0.2, 1000), (0.37, 999), (0.001, 10), (0.5, 3)])
def test_noise_flips_exactly_round_p_n_labels(mode: str, rate: float, n: int) -> None:
    y = np.random.default_rng(5).integers(0, 7, size=n)
    noisy = noisy_labels(y, rate, mode, num_classes=7, seed=11)
    flipped = noisy != y
    assert flipped.sum() == round(rate * n)  # every chosen label really changes class
    assert noisy.min() >= 0 and noisy.max() < 7
    if mode == "pairflip":
        assert np.array_equal(noisy[flipped], (y[flipped] + 1) % 7)
    # a fixed seed gives the same labels; another seed other ones
    assert np.array_equal(noisy, noisy_labels(y, rate, mode, num_classes=7, seed=11))
    if round(rate * n) >= 5:
        assert not np.array_equal(noisy, noisy_labels(y, rate, mode, num_classes=7, seed=12))
    assert np.array_equal(y, np.random.default_rng(5).integers(0, 7, size=n))  # input untouched


def test_symmetric_noise_is_uniform_over_the_other_classes() -> None:
    k, n = 4, 40_000
    y = np.zeros(n, dtype=np.int64)  # every clean label is class 0
    noisy = noisy_labels(y, 0.6, "symmetric", num_classes=k, seed=0)
    counts = np.bincount(noisy, minlength=k)
    assert counts[0] == n - round(0.6 * n)
    expected = round(0.6 * n) / 3
    # binomial standard deviation ~ 80; 5 sigma
    assert np.all(np.abs(counts[1:] - expected) < 5 * np.sqrt(expected * (2 / 3)))


def test_noise_rejects_bad_arguments() -> None:
    y = np.arange(10) % 2
    for rate in (-0.1, 1.0, float("nan"), True):
        with pytest.raises(ValueError, match="label_noise"):
            noisy_labels(y, rate, num_classes=2)
    with pytest.raises(ValueError, match="label_noise_mode"):
        noisy_labels(y, 0.1, "random", num_classes=2)


def test_load_dataset_keeps_clean_labels_and_clean_test_set() -> None:
    clean = load_dataset(SYNTH, seed=3)
    noisy = load_dataset(SYNTH, seed=3, label_noise=0.25, label_noise_mode="pairflip")
    assert clean.y_train_clean is None
    assert torch.equal(noisy.y_train_clean, clean.y_train)
    assert torch.equal(noisy.x_train, clean.x_train)
    assert torch.equal(noisy.y_test, clean.y_test) and torch.equal(noisy.x_test, clean.x_test)
    assert int((noisy.y_train != clean.y_train).sum()) == round(0.25 * clean.num_train)


def test_ce_and_ls_runs_of_one_seed_train_on_the_same_noisy_labels(tmp_path: Path) -> None:
    from nclab.runs import RunFiles
    from nclab.train.distributed import DistContext
    from nclab.train.loop import _build

    labels = []
    for loss, delta in (("ce", 0.0), ("ls", 0.2)):
        cfg = TrainConfig(
            dataset=SYNTH, model="mlp", width=16, depth=1, label_noise=0.3, loss=loss,
            smoothing=delta, seed=4, device="cpu",
        )  # fmt: skip
        run = _build(cfg, RunFiles(tmp_path / loss), DistContext(), torch.device("cpu"))
        labels.append((run.y_train.clone(), run.evaluator.y_train_clean.clone()))
    assert torch.equal(labels[0][0], labels[1][0]) and torch.equal(labels[0][1], labels[1][1])
    assert int((labels[0][0] != labels[0][1]).sum()) == round(0.3 * 5 * 80)


def test_noise_metrics_in_the_rows_match_the_saved_model(tmp_path: Path) -> None:
    cfg = TrainConfig(
        dataset=SYNTH, model="mlp", width=64, depth=2, epochs=6, lr=0.1, batch_size=50,
        label_noise=0.3, seed=1, device="cpu", threads=1,
    )  # fmt: skip
    result = train(cfg, tmp_path / "run", quiet=True)
    row = result.rows[-1]
    data = load_dataset(SYNTH, seed=1, label_noise=0.3)
    model = load_model(tmp_path / "run").eval()
    with torch.no_grad():
        pred = model(data.x_train).argmax(1)
    flipped = data.y_train != data.y_train_clean
    assert row["train_acc"] == pytest.approx(float((pred == data.y_train).double().mean()))
    assert row["train_acc_clean"] == pytest.approx(
        float((pred == data.y_train_clean).double().mean())
    )
    assert row["noisy_fit"] == pytest.approx(
        float((pred[flipped] == data.y_train[flipped]).double().mean())
    )
    assert row["noisy_clean_fit"] == pytest.approx(
        float((pred[flipped] == data.y_train_clean[flipped]).double().mean())
    )
    # the NC metrics use the clean labels: nc1 of the final features with them
    with torch.no_grad():
        feats = model.features(data.x_train)
    direct = nc_metrics(feats.double(), data.y_train_clean).nc1
    assert row["nc1"] == pytest.approx(direct, rel=1e-6)
    assert (
        "noisy_fit"
        not in train(
            TrainConfig(**{**cfg.to_dict(), "label_noise": 0.0, "epochs": 1}),
            tmp_path / "clean",
            quiet=True,
        ).rows[-1]
    )


# ---------------------------------------------------------------------------- imbalance


def test_imbalanced_counts_follow_the_profiles() -> None:
    exp = imbalanced_counts(500, 10, 100.0, "exp")
    direct = [round(500 * 100.0 ** (-k / 9)) for k in range(10)]
    assert exp.tolist() == direct and exp[0] == 500 and exp[-1] == 5
    assert np.all(np.diff(exp) <= 0)
    assert imbalanced_counts(500, 10, 10, "step").tolist() == [500] * 5 + [50] * 5
    assert imbalanced_counts(100, 5, 4, "step").tolist() == [100] * 3 + [25] * 2
    assert imbalanced_counts(7, 3, 1.0, "exp").tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="imbalance must be >= 1"):
        imbalanced_counts(10, 3, 0.5)
    with pytest.raises(ValueError, match="smallest class"):
        imbalanced_counts(10, 3, 50.0)
    with pytest.raises(ValueError, match="imbalance_profile"):
        imbalanced_counts(10, 3, 2.0, "linear")


@pytest.mark.parametrize("profile", ["exp", "step"])
def test_imbalanced_dataset_has_the_requested_counts(profile: str) -> None:
    data = load_dataset(SYNTH, seed=2, imbalance=8, imbalance_profile=profile)
    counts = np.bincount(data.y_train.numpy(), minlength=5)
    assert counts.tolist() == imbalanced_counts(80, 5, 8, profile).tolist()
    assert np.bincount(data.y_test.numpy()).tolist() == [20] * 5  # the test set stays balanced
    sub = load_dataset(SYNTH, seed=2, per_class=40, imbalance=8, imbalance_profile=profile)
    assert (
        np.bincount(sub.y_train.numpy()).tolist() == imbalanced_counts(40, 5, 8, profile).tolist()
    )


def test_imbalanced_subset_is_nested_in_the_balanced_subset_of_its_seed() -> None:
    y = np.random.default_rng(0).integers(0, 6, size=3000)
    balanced = set(class_balanced_indices(y, 100, seed=9, num_classes=6).tolist())
    tail = imbalanced_indices(y, 20, "exp", per_class=100, seed=9, num_classes=6)
    assert set(tail.tolist()) <= balanced and len(set(tail.tolist())) == len(tail)
    assert np.array_equal(np.bincount(y[tail], minlength=6), imbalanced_counts(100, 6, 20))
    with pytest.raises(ValueError, match="per_class"):
        imbalanced_indices(y, 2, per_class=10_000, num_classes=6)


def test_config_schema_declares_the_conditions() -> None:
    cfg = config_from_dict({"label-noise": 0.2, "imbalance": "10", "nc_layers": ["a", "b"]})
    assert cfg.label_noise == 0.2 and cfg.imbalance == 10.0 and cfg.nc_layers == "a,b"
    saved = TrainConfig().to_dict()
    for change in (
        {"label_noise": 0.1},
        {"label_noise_mode": "pairflip"},
        {"imbalance": 10.0},
        {"imbalance_profile": "step"},
        {"nc_layers": "all"},
    ):
        assert config_differences(saved, TrainConfig(**change)), change  # identity options
    old = {k: v for k, v in saved.items() if k not in ("label_noise", "imbalance", "nc_layers")}
    assert config_differences(old, TrainConfig()) == []  # runs from before these options resume
    for bad, match in (
        ({"label_noise": 1.0}, "label_noise"),
        ({"label_noise_mode": "x"}, "label_noise_mode"),
        ({"imbalance": 0.5}, "imbalance"),
        ({"imbalance_profile": "x"}, "imbalance_profile"),
        ({"nc_layers": "all,a"}, "all"),
        ({"nc_layers": "a,,b"}, "comma"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_cli_rejects_a_bad_condition_in_one_line(tmp_path: Path, capsys) -> None:
    from nclab.cli import main

    code = main(["train", "--dataset", SYNTH, "--imbalance", "1000", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "imbalance" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


# ------------------------------------------------------------------ metrics under imbalance


def _direct_nc(h: np.ndarray, y: np.ndarray, k: int) -> dict[str, float]:
    """NC1, NC2 (centred means) and CDNV the long way, float64, loops over classes."""
    h = h.astype(np.float64)
    n = len(y)
    means = np.stack([h[y == c].mean(0) for c in range(k)])
    sigma_w = sum((h[y == c] - means[c]).T @ (h[y == c] - means[c]) for c in range(k)) / n
    mbar = means - means.mean(0)  # Σ_B: every class weighs 1/K, centred at the mean of means
    sigma_b = mbar.T @ mbar / k
    u, s, _ = np.linalg.svd(sigma_b)
    pinv = (u[:, : k - 1] / s[: k - 1]) @ u[:, : k - 1].T  # rank K-1 pseudo-inverse
    gram = mbar @ mbar.T
    etf = (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1)
    sigma_w_classes = sum(np.cov(h[y == c].T, bias=True) for c in range(k)) / k
    return {
        "nc1": float(np.trace(sigma_w @ pinv)) / k,
        "nc1_class_balanced": float(np.trace(sigma_w_classes @ pinv)) / k,
        "nc2_h": float(np.linalg.norm(gram / np.linalg.norm(gram) - etf)),
    }


@pytest.mark.parametrize("profile", ["exp", "step"])
def test_nc_metrics_under_imbalance_equal_a_direct_float64_computation(profile: str) -> None:
    k, d = 6, 20
    counts = imbalanced_counts(300, k, 50.0, profile)
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(k, d)) * 3
    y = np.repeat(np.arange(k), counts)
    h = (centres[y] + rng.normal(size=(len(y), d)) * rng.uniform(0.5, 2, size=k)[y, None]).astype(
        np.float32
    )
    direct = _direct_nc(h, y, k)
    ht, yt = torch.from_numpy(h), torch.from_numpy(y)
    one_shot = nc_metrics(ht, yt)
    streaming = NCAccumulator(k, d, mode="streaming")
    for idx in np.array_split(rng.permutation(len(y)), 7):
        streaming.update(ht[idx], yt[idx])
    projected = NCAccumulator(k, d, mode="projected")
    projected.update(ht, yt)
    projected.update_ncc(ht, yt)
    for m in (one_shot, streaming.compute(), projected.compute()):
        assert m.nc1 == pytest.approx(direct["nc1"], rel=1e-9)
        assert m.nc2_h == pytest.approx(direct["nc2_h"], rel=1e-9, abs=1e-12)
    # per-class NC1 weighted by the class shares gives nc1 (sample-weighted Σ_W)
    per = projected.per_class()
    assert np.sum(per.nc1 * per.count / per.count.sum()) == pytest.approx(direct["nc1"], rel=1e-9)
    # and their plain mean is the class-balanced NC1 (Σ_W = average of per-class covariances)
    assert np.mean(per.nc1) == pytest.approx(direct["nc1_class_balanced"], rel=1e-9)
    assert abs(direct["nc1_class_balanced"] - direct["nc1"]) > 1e-3 * direct["nc1"]
