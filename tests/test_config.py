"""The option schema of TrainConfig and the synthetic dataset spec.

The identity, per-run and like-for-like rules are read from the fields' metadata; these tests
check them through their users (resume's config comparison, compare's plan, the report's
warnings) and check the ``synthetic:k=..`` spec against the keyword arguments it replaces.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nclab.compare import CompareConfig, plan_runs
from nclab.config import (
    COMPARABLE_EXCEPT,
    PER_RUN_FIELDS,
    SETTING_FIELDS,
    TrainConfig,
    config_differences,
    config_from_dict,
    options,
)
from nclab.data import load_dataset, parse_synthetic, synthetic_name


def test_every_field_declares_its_option():
    for f in dataclasses.fields(TrainConfig):
        opt = f.metadata.get("option")
        assert opt is not None and opt.help and not opt.help.endswith("."), f.name
        if f.default is None:
            assert opt.unset, f"{f.name}: say what None means"


def test_resume_ignores_exactly_the_non_identity_options():
    base = TrainConfig(dataset="synthetic")
    saved = base.to_dict()
    loggers = {"tensorboard", "wandb", "wandb_project", "wandb_group", "wandb_name"}
    assert COMPARABLE_EXCEPT == {"epochs", "threads", "data_dir", *loggers}
    changed = dict(epochs=7, threads=3, data_dir="/elsewhere", tensorboard=True, wandb=True)
    changed.update(wandb_project="p", wandb_group="g", wandb_name="n")
    assert config_differences(saved, dataclasses.replace(base, **changed)) == []
    for name, value in dict(lr=0.5, device="cpu", checkpoint_every=2, seed=4).items():
        diffs = config_differences(saved, dataclasses.replace(base, **{name: value}))
        assert [d.split(":")[0] for d in diffs] == [name]


def test_an_option_added_later_counts_as_its_default_in_old_runs():
    saved = TrainConfig(dataset="synthetic").to_dict()
    del saved["nesterov"], saved["test_per_class"]  # as if saved before these options existed
    assert config_differences(saved, TrainConfig(dataset="synthetic")) == []
    assert config_differences(saved, TrainConfig(dataset="synthetic", nesterov=True)) == [
        "nesterov: False -> True"
    ]


def test_compare_sets_the_per_run_options_and_refuses_them(tmp_path):
    assert PER_RUN_FIELDS == {"loss", "smoothing", "seed", "threads", "wandb_name"}
    runs = plan_runs(CompareConfig(preset="smoke", out=tmp_path, threads=1))
    assert {(r.config.loss, r.config.smoothing) for r in runs} == {("ce", 0.0), ("ls", 0.1)}
    for name in PER_RUN_FIELDS:
        with pytest.raises(ValueError, match="cannot be set for a comparison"):
            plan_runs(CompareConfig(preset="smoke", train={name: 1}, out=tmp_path))


def test_report_compares_runs_on_the_setting_options_only():
    from nclab.report.summary import _config_warnings

    class Run:  # the part of RunData the check reads
        def __init__(self, **config):
            self.config = {**TrainConfig(dataset="synthetic").to_dict(), **config}

    knobs = Run(seed=1, loss="ls", smoothing=0.1, threads=4, device="cpu", channels_last=True)
    assert _config_warnings([Run(), knobs]) == []
    warnings = _config_warnings([Run(), Run(lr=0.5)])
    assert len(warnings) == 1 and "'lr'" in warnings[0]
    assert "lr" in SETTING_FIELDS and "device" not in SETTING_FIELDS


def test_option_roles_are_consistent():
    for name, (_, opt) in options().items():
        if not opt.identity:  # what may change on resume cannot define a comparison
            assert name not in SETTING_FIELDS or name == "epochs", name


# ------------------------------------------------------------------- synthetic dataset spec
def test_spec_gives_the_same_data_as_the_keyword_arguments():
    spec = load_dataset("synthetic:k=4,d=8,n=30,test=7", seed=3)
    kwargs = load_dataset(
        "synthetic",
        seed=3,
        num_classes=4,
        synthetic_dim=8,
        synthetic_train_per_class=30,
        synthetic_test_per_class=7,
    )
    assert spec.x_train.shape == (120, 8) and spec.x_test.shape == (28, 8)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(spec, field), getattr(kwargs, field))
    # keys left out of the spec take the defaults (k=10, d=32, n=100, test=100)
    partial = load_dataset("synthetic:k=3", seed=0)
    assert partial.num_classes == 3 and partial.x_train.shape == (300, 32)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("synthetic:k=1", "k (classes) must be an integer >= 2"),
        ("synthetic:k=4,d=0", "d (input dimension) must be an integer >= 1"),
        ("synthetic:n=1.5", "must be an integer"),
        ("synthetic:q=3", "bad part 'q=3'"),
        ("synthetic:k=2,k=3", "bad part 'k=3'"),
        ("synthetic:k", "bad part 'k'"),
    ],
)
def test_bad_spec_is_one_clear_error(name, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_synthetic(name)
    with pytest.raises(ValueError, match="synthetic:k=K,d=D,n=N,test=M|must be an integer"):
        TrainConfig(dataset=name)


def test_synthetic_spec_is_written_out_in_full_and_compares_by_it():
    full = "synthetic:k=5,d=48,n=60,test=20"
    assert synthetic_name(**parse_synthetic(full)) == full
    assert TrainConfig(dataset="synthetic").dataset == "synthetic:k=10,d=32,n=100,test=100"
    assert config_from_dict({"dataset": "synthetic:d=8"}).dataset == (
        "synthetic:k=10,d=8,n=100,test=100"
    )
    saved = {**TrainConfig(dataset=full).to_dict(), "dataset": "synthetic:test=20,n=60,d=48,k=5"}
    assert config_differences(saved, TrainConfig(dataset=full)) == []
    with pytest.raises(ValueError, match="unknown option.*synthetic-dim"):  # aliases are gone
        config_from_dict({"dataset": "synthetic", "synthetic-dim": 8})
