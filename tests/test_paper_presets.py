"""The paper's settings (Guo et al. (2024), "Cross Entropy versus Label Smoothing: A Neural
Collapse Perspective", arXiv 2402.03979): presets, the fixed simplex-ETF classifier, the feature
BatchNorm, the authors' ECE-on-test temperature, and every paper preset end to end on small fake
files in the standard formats."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from nclab.calibration import expected_calibration_error, fit_temperature_ece
from nclab.compare import PAPER_DELTA_SWEEP, PRESETS, CompareConfig, plan_runs
from nclab.models import build_model, simplex_etf_weight

PAPER_PRESETS = ("paper", "paper-cifar100", "paper-stl10", "paper-tiny-imagenet",
                 "paper-delta-sweep", "paper-ufm")  # fmt: skip


def test_presets_name_their_source_and_settings(tmp_path):
    for name in PAPER_PRESETS:
        p = PRESETS[name]
        assert "Guo et al. (2024)" in p.description or p.description.startswith("as paper-")
        assert p.seeds == (0, 1, 2)
    assert PRESETS["paper-cifar100"].train["model"] == "resnet50"
    assert {PRESETS[n].train["dataset"] for n in ("paper-stl10", "paper-tiny-imagenet")} == {
        "stl10",
        "tiny-imagenet",
    }
    assert PAPER_DELTA_SWEEP == (0.0, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9)
    ufm = plan_runs(CompareConfig(preset="paper-ufm", out=tmp_path))
    assert sorted({r.config.smoothing for r in ufm}) == list(PAPER_DELTA_SWEEP)
    cfg = ufm[0].config
    assert cfg.ufm_penalties and cfg.feature_bn
    assert (cfg.lambda_w, cfg.lambda_h, cfg.lambda_b) == (1e-3, 1e-6, 1e-2)
    assert cfg.backbone_weight_decay() == 0.0 and cfg.classifier_weight_decay() == 0.0
    sweep = plan_runs(CompareConfig(preset="paper-delta-sweep", out=tmp_path))
    assert len(sweep) == 7 * 3


def test_etf_classifier_is_a_fixed_simplex_etf():
    k, d = 5, 16
    model = build_model("mlp", k, (8,), width=d, depth=1, classifier="etf")
    w = model.classifier.weight.detach().double()
    gram = w @ w.T
    assert torch.allclose(torch.diag(gram), torch.ones(k, dtype=torch.float64), atol=1e-6)
    off = gram[~torch.eye(k, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / (k - 1)), atol=1e-6)
    assert not any(p.requires_grad for p in model.classifier.parameters())
    before = w.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(12, 8)), torch.arange(12) % k)
    loss.backward()
    opt.step()
    assert torch.equal(model.classifier.weight.detach().double(), before)
    assert torch.equal(simplex_etf_weight(k, d), simplex_etf_weight(k, d))  # fixed, any seed
    with pytest.raises(ValueError, match="feature dimension >= classes"):
        build_model("mlp", 10, (8,), width=4, depth=1, classifier="etf")
    with pytest.raises(ValueError, match="classifier must be one of"):
        build_model("mlp", 10, (8,), classifier="cosine")


def test_feature_batchnorm_normalises_the_features():
    model = build_model("mlp", 3, (6,), width=8, depth=1, feature_bn=True).train()
    h = model.features(torch.randn(64, 6) * 5 + 3)
    assert isinstance(model.body[-1], torch.nn.BatchNorm1d)
    assert torch.allclose(h.mean(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(h.var(0, unbiased=False), torch.ones(8), atol=1e-3)


def test_ece_on_test_temperature_is_the_grid_minimum():
    """The authors' protocol: the returned T has an ECE no worse than any T of a dense
    independent grid (up to the grid's resolution), and below the ECE at T = 1."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 600)
    z = rng.normal(0, 1, (600, 4))
    z[np.arange(600), y] += 1.5
    z *= 3.0  # over-confident
    t = fit_temperature_ece(z, y)
    best = min(expected_calibration_error(z / s, y) for s in np.geomspace(0.05, 20, 3000))
    assert expected_calibration_error(z / t, y) <= best + 1e-3
    assert expected_calibration_error(z / t, y) < expected_calibration_error(z, y)
    assert t > 1.0


# ------------------------------------------------------------------ end to end on fake files


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_fake_datasets(root: Path) -> Path:
    """CIFAR-10/100 (python pickles), STL-10 (binaries) and Tiny ImageNet (JPEG folders), a few
    images per class, in the layouts their official downloads have."""
    from PIL import Image

    rng = np.random.default_rng(0)
    c10 = root / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    for i in range(1, 6):
        _pickle(c10 / f"data_batch_{i}", {
            b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            b"labels": [(2 * i + j) % 10 for j in range(4)],
        })  # fmt: skip
    _pickle(c10 / "test_batch", {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                                 b"labels": list(range(10))})  # fmt: skip
    _pickle(c10 / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    c100 = root / "cifar-100-python"
    c100.mkdir()
    _pickle(c100 / "train", {b"data": rng.integers(0, 256, (200, 3072), dtype=np.uint8),
                             b"fine_labels": list(range(100)) * 2})  # fmt: skip
    _pickle(c100 / "test", {b"data": rng.integers(0, 256, (100, 3072), dtype=np.uint8),
                            b"fine_labels": list(range(100))})  # fmt: skip
    _pickle(c100 / "meta", {b"fine_label_names": [f"n{i}".encode() for i in range(100)]})
    stl = root / "stl10_binary"
    stl.mkdir()
    for name, n in (("train", 20), ("test", 10)):
        imgs = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        with open(stl / f"{name}_X.bin", "wb") as f:
            for img in imgs:
                for ch in img:
                    f.write(ch.tobytes(order="F"))
        np.array([1 + i % 10 for i in range(n)], dtype=np.uint8).tofile(stl / f"{name}_y.bin")
    tiny = root / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03"]
    (tiny / "val" / "images").mkdir(parents=True)
    (tiny / "wnids.txt").write_text("\n".join(wnids) + "\n")
    notes = []
    for c, w in enumerate(wnids):
        (tiny / "train" / w / "images").mkdir(parents=True)
        for j in range(4):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            pixels[..., c] = 250
            Image.fromarray(pixels).save(tiny / "train" / w / "images" / f"{w}_{j}.JPEG")
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                tiny / "val" / "images" / f"val_{c}_{j}.JPEG"
            )
            notes.append(f"val_{c}_{j}.JPEG\t{w}\t0\t0\t10\t10\n")
    (tiny / "val" / "val_annotations.txt").write_text("".join(notes))
    return root


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "width"), [(p, 4) for p in PAPER_PRESETS] + [("paper", 8)])
def test_paper_preset_end_to_end_on_fake_files(tmp_path, preset, width):
    """`nclab compare --preset P --data-dir DIR` trains every planned run on CPU (shrunk: 2
    epochs, width 4 or 8, batch 4, one seed) and writes the report with its verdicts and
    figures. (Channels-last CPU convolutions once corrupted the heap here at width 4.)"""
    from nclab.cli import main

    data = write_fake_datasets(tmp_path / "data")
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", preset, "--data-dir", str(data), "--out", str(out),
            "--epochs", "2", "--width", str(width), "--batch-size", "4", "--seeds", "0",
            "--milestones", "1", "--device", "cpu", "--jobs", "1", "--threads", "1",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    claims = {v["claim"]: v for v in summary["verdicts"]}
    assert set(claims) == set("abcdef")
    deltas = {g["smoothing"] for g in summary["groups"]} if "groups" in summary else set()
    expected = set(PRESETS[preset].smoothings) | {0.0}
    if deltas:
        assert deltas == expected
    figures = {p.stem for p in (out / "report").glob("*.png")}
    assert {"compare_loss_convergence", "compare_test_nc", "compare_ufm"} <= figures
    assert ("compare_delta_sweep" in figures) == (len(expected) >= 3)
    for stem in figures:
        assert (out / "report" / f"{stem}.pdf").is_file()
    cfg = json.loads(next((out / "runs").glob("ce_seed0/config.json")).read_text())
    for key, value in PRESETS[preset].train.items():
        if key not in ("epochs", "width", "batch_size", "milestones", "device"):
            # UFM-penalty mode stores "no weight decay" as unset (its default there is 0)
            got = 0.0 if key == "weight_decay" and cfg[key] is None else cfg[key]
            assert got == value, key
