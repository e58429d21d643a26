"""Collapse across layers (nclab.layers, --nc-layers), the one hook helper (nclab.hooks) and
the layer x epoch figure."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nclab.hooks import capture, eval_mode
from nclab.layers import LayerNC, pool_features, resolve_taps
from nclab.metrics import nc_metrics
from nclab.models import build_model
from nclab.runs import read_rows
from nclab.train import TrainConfig, train

SYNTH = "synthetic:k=4,d=3,n=40,test=10"


def strip_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# ---------------------------------------------------------------------------- hooks


def test_capture_records_outputs_and_inputs_and_removes_its_hooks() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    with capture({"a": net[0]}) as out, capture({"b": net[2]}, inputs=True) as inp:
        y = net(x)
    assert torch.equal(out["a"], net[0](x)) and torch.equal(inp["b"], torch.relu(net[0](x)))
    assert torch.equal(net[2](inp["b"]), y)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    with pytest.raises(RuntimeError), capture({"a": net[0]}):
        raise RuntimeError
    assert all(not m._forward_hooks for m in net.modules())


def test_eval_mode_restores_every_module_mode() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout())
    net.train()
    net[1].eval()  # a user froze this BatchNorm on purpose
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and not net[1].training and net[2].training


def test_pool_features() -> None:
    x = torch.randn(2, 3, 4, 5)
    assert torch.allclose(pool_features(x), x.mean((2, 3)))
    flat = torch.randn(2, 6)
    pooled = pool_features(flat)
    flat.zero_()  # a later in-place operation of the model does not change what was recorded
    assert pooled.abs().sum() > 0


# ---------------------------------------------------------------------------- taps


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("mlp", (12,), ["layer1", "layer2", "features"]),
        ("cnn", (1, 8, 8), ["block1", "block2", "block3", "block4", "features"]),
        ("resnet18", (3, 8, 8), ["stem", "stage1.block1", "stage1.block2", "stage2.block1",
                                 "stage2.block2", "stage3.block1", "stage3.block2",
                                 "stage4.block1", "features"]),
    ],
)  # fmt: skip
def test_built_in_models_declare_their_blocks(name: str, shape: tuple, expected: list) -> None:
    model = build_model(
        name, 3, shape, width=4 if name != "mlp" else 8, depth=3 if name == "mlp" else None
    )
    taps = model.feature_taps()
    assert list(taps) == expected
    x = torch.randn(6, *shape)
    model.eval()
    with torch.no_grad(), capture(taps, transform=pool_features) as got:
        model(x)
        features = model.features(x)
    assert torch.equal(got["features"], features)  # the last tap is the penultimate features
    assert all(got[n].shape[0] == 6 and got[n].dim() == 2 for n in expected)


def test_resolve_taps_names_and_errors() -> None:
    model = build_model("mlp", 3, (12,), width=8, depth=3)
    assert list(resolve_taps(model, "layer2,features")) == ["layer2", "features"]
    assert resolve_taps(model, "body.net.0")["body.net.0"] is model.body.net[0]
    with pytest.raises(ValueError, match="unknown layer 'nope'.*layer1"):
        resolve_taps(model, "nope")
    with pytest.raises(ValueError, match="named_modules"):
        resolve_taps(nn.Sequential(nn.Linear(2, 2)), "all")


def test_layer_nc_equals_a_direct_computation_in_both_modes() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 3, (1, 8, 8), width=4).eval()
    x, y = torch.randn(90, 1, 8, 8), torch.arange(90) % 3
    taps = model.feature_taps()
    rows = {}
    for keep in (2**30, 0):  # kept features (projected engine) and the streaming fallback
        layer_nc = LayerNC(taps, 3, keep_limit_bytes=keep)
        with torch.no_grad(), layer_nc.recording(90, x.device):
            for idx in torch.arange(90).split(32):
                model(x[idx])
                layer_nc.update(y[idx])
        rows[keep] = layer_nc.compute()
    with torch.no_grad():
        block1 = model.body[0](x).mean((2, 3))
        direct = nc_metrics(block1.double(), y)
        feats = nc_metrics(model.features(x).double(), y)
    for row in rows.values():
        assert row["layer_nc1/block1"] == pytest.approx(direct.nc1, rel=1e-6)
        assert row["layer_nc2/block1"] == pytest.approx(direct.nc2_h, rel=1e-6)
        assert row["layer_nc1/features"] == pytest.approx(feats.nc1, rel=1e-6)
    assert list(rows[0]) == [f"layer_nc{i}/{n}" for n in taps for i in (1, 2)]


def test_layer_nc_refuses_wide_layers_and_modules_that_do_not_run() -> None:
    model = build_model("mlp", 3, (12,), width=8, depth=2).eval()
    layer_nc = LayerNC(model.feature_taps(), 3, max_dim=4)
    with pytest.raises(ValueError, match="8 features"), layer_nc.recording(6, torch.device("cpu")):
        model(torch.randn(6, 12))
        layer_nc.update(torch.arange(6) % 3)
    unused = LayerNC({"classifier": nn.Linear(8, 3)}, 3)
    with pytest.raises(ValueError, match="did not run"), unused.recording(6, torch.device("cpu")):
        model(torch.randn(6, 12))
        unused.update(torch.arange(6) % 3)


# ---------------------------------------------------------------------------- runs


def tiny(**overrides: object) -> TrainConfig:
    base = dict(
        dataset="synthetic:k=4,d=8,n=40,test=10", model="mlp", width=16, depth=3, epochs=4,
        lr=0.05, batch_size=40, scheduler="constant",
        nc_layers="all", device="cpu", threads=1, seed=3,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def test_last_layer_nc1_equals_the_run_nc1(tmp_path: Path) -> None:
    result = train(tiny(depth=2, epochs=2), tmp_path / "run", quiet=True)
    for row in result.rows:
        assert row["layer_nc1/features"] == pytest.approx(row["nc1"], rel=1e-12)
        assert row["layer_nc2/features"] == pytest.approx(row["nc2_h"], rel=1e-12)
        assert [k for k in row if k.startswith("layer_nc1/")] == [
            "layer_nc1/layer1", "layer_nc1/features"
        ]  # fmt: skip
    csv_header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "layer_nc1/layer1" in csv_header


def test_resume_with_nc_layers_reproduces_the_rows(tmp_path: Path) -> None:
    full = train(tiny(), tmp_path / "full", quiet=True)
    part = tmp_path / "part"
    train(tiny(epochs=2), part, quiet=True)
    # a row logged after the last checkpoint by a killed run is cut back on resume
    with (part / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({**full.rows[2], "layer_nc1/layer1": 123.0}) + "\n")
    (part / "DONE").unlink()
    resumed = train(tiny(), part, resume=True, quiet=True)
    assert resumed.start_epoch == 2 and len(resumed.rows) == 4
    assert strip_seconds(read_rows(part / "metrics.jsonl")) == strip_seconds(full.rows)
    assert [k for k in full.rows[0] if k.startswith("layer_nc1/")] == [
        "layer_nc1/layer1", "layer_nc1/layer2", "layer_nc1/features"
    ]  # fmt: skip
    # and a different --nc-layers is a different run: resume refuses it
    with pytest.raises(ValueError, match="nc_layers"):
        train(tiny(epochs=5, nc_layers="layer1"), part, resume=True, quiet=True)


def test_cli_unknown_layer_is_one_line(tmp_path: Path, capsys) -> None:
    from nclab.cli import main

    code = main(["train", "--dataset", SYNTH, "--model", "mlp", "--nc-layers", "layer9",
                 "--epochs", "1", "--out", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "layer9" in err and "Traceback" not in err


def test_tracker_records_named_modules(tmp_path: Path) -> None:
    from nclab.track import NCTracker

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(60, 6), torch.arange(60) % 3
    batches = [(x[i : i + 20], y[i : i + 20]) for i in range(0, 60, 20)]
    tracker = NCTracker(tmp_path / "t", model=net, layer=net[4], train=batches, test=batches,
                        num_classes=3, layers=["1", "3"])  # fmt: skip
    row = tracker.log_epoch(1)
    tracker.finish()
    with torch.no_grad():
        direct = nc_metrics(torch.relu(net[0](x)).double(), y).nc1
        feats = nc_metrics(net[:4](x).double(), y).nc1
    assert row["layer_nc1/1"] == pytest.approx(direct, rel=1e-6)
    assert row["layer_nc1/3"] == pytest.approx(row["nc1"], rel=1e-9)
    assert row["nc1"] == pytest.approx(feats, rel=1e-6)
    with pytest.raises(ValueError, match="unknown layer"):
        NCTracker(tmp_path / "u", model=net, layer=net[4], train=batches, test=batches,
                  num_classes=3, layers=["9"])  # fmt: skip


@pytest.fixture(scope="module")
def layer_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layer_runs")
    for loss, delta, seed in (("ce", 0.0, 0), ("ce", 0.0, 1), ("ls", 0.1, 0)):
        cfg = tiny(depth=2, epochs=2, loss=loss, smoothing=delta, seed=seed)
        train(cfg, root / f"runs/{loss}{seed}", quiet=True)
    train(tiny(epochs=1, nc_layers=None), root / "plain/r", quiet=True)
    return root


def test_layer_heatmap_averages_log10_nc1_over_seeds(layer_runs: Path) -> None:
    from nclab.report.figures_layers import _grid, layer_names, layers_figure
    from nclab.report.runs import load_runs
    from nclab.report.summary import summarize

    runs = load_runs([layer_runs / "runs"])
    ce = [r for r in runs if r.config["loss"] == "ce"]
    names = layer_names(ce)
    assert names == ["layer1", "features"]
    epochs, grid = _grid(ce, names)
    want = np.mean([np.log10(r.series("layer_nc1/layer1")) for r in ce], axis=0)
    assert epochs.tolist() == [1.0, 2.0] and np.allclose(grid[0], want)
    fig = layers_figure(summarize(runs))
    assert fig is not None and len(fig.axes) == 3  # CE, LS and the colour bar
    assert layers_figure(summarize(load_runs([layer_runs / "plain"]))) is None


@pytest.mark.slow
def test_report_includes_the_layer_heatmap(layer_runs: Path, tmp_path: Path) -> None:
    from nclab.report import build_report

    result = build_report([layer_runs / "runs"], tmp_path / "report", theory=False)
    assert result.figures["compare_layers"][0].stat().st_size > 0
    assert "Collapse across layers" in (tmp_path / "report/report.html").read_text()
    plain = build_report([layer_runs / "plain"], tmp_path / "r2", theory=False)
    assert "compare_layers" not in plain.figures
