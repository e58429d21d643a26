"""Promise: a run knows what it is (config, data fingerprint, code version); resume refuses a
checkpoint, a dataset or a metrics log that does not belong to it, naming what differs; the
report counts a copied run folder once."""

from __future__ import annotations

import json
import shutil

import pytest
from faultkit import TALLY, TINY, expect_clear_error, expect_works, train_argv, write_npz

from nclab import cli
from nclab.report.runs import load_runs
from nclab.runs import RunFiles, read_rows


def _npz_argv(out, data, *extra, epochs=2):  # noqa: ANN001, ANN002, ANN202
    return ["train", "--dataset", f"npz:{data}", "--width", "16", "--depth", "1",
            "--batch-size", "10", "--threads", "1", "--quiet", "--epochs", str(epochs),
            "--checkpoint-every", "1", "--out", str(out), *extra]  # fmt: skip


def test_config_records_identity(run_copy):
    ident = json.loads((run_copy / "config.json").read_text())["identity"]
    assert len(ident["run_id"]) == 32
    assert set(ident["data"]) == {"x_train", "y_train", "x_test", "y_test"}
    assert ident["code"]["nclab"] and ident["code"]["torch"]


@pytest.mark.parametrize("other", ["ls", "seed", "same-config-other-run"])
def test_a_checkpoint_from_another_run_is_refused(other, tmp_path, capsys):
    mine, theirs = tmp_path / "ce", tmp_path / "other"
    assert cli.main(train_argv(mine, "--checkpoint-every", "1", epochs=3)) == 0
    extra = {"ls": ["--loss", "ls", "--smoothing", "0.1"], "seed": ["--seed", "7"]}.get(other, [])
    assert cli.main(train_argv(theirs, *extra, "--checkpoint-every", "1", epochs=2)) == 0
    (mine / "DONE").unlink()  # stopped: resumable
    shutil.copy(theirs / "checkpoints" / "last.pt", mine / "checkpoints" / "last.pt")
    expect_clear_error(train_argv(mine, "--checkpoint-every", "1", "--resume", epochs=3), capsys,
                       watch=(mine,), says=("another run", "last.pt"))  # fmt: skip


@pytest.mark.parametrize("change", ["values", "shape"])
def test_a_changed_dataset_is_refused_on_resume(change, tmp_path, capsys):
    data, out = tmp_path / "d.npz", tmp_path / "run"
    write_npz(data)
    assert cli.main(_npz_argv(out, data, epochs=2)) == 0
    (out / "DONE").unlink()
    if change == "values":
        write_npz(data, shift=0.5)
    else:
        import numpy as np

        arrays = dict(np.load(data))
        arrays["x_test"] = arrays["x_test"][:6]
        arrays["y_test"] = arrays["y_test"][:6]
        np.savez(data, **arrays)
    err = expect_clear_error(_npz_argv(out, data, "--resume", epochs=3), capsys, watch=(out,),
                             says="dataset differs")  # fmt: skip
    assert ("x_train values" in err) if change == "values" else ("test" in err)


@pytest.mark.parametrize("damage", ["emptied", "first-row-removed", "other-runs-log"])
def test_a_metrics_log_that_does_not_belong_is_refused(damage, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(train_argv(out, "--checkpoint-every", "1", epochs=3)) == 0
    (out / "DONE").unlink()
    log = out / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    if damage == "emptied":
        log.write_text("")
    elif damage == "first-row-removed":
        log.write_text("".join(lines[1:]))
    else:
        log.write_text("".join(lines[:1]))  # a 1-epoch run's log
    expect_clear_error(train_argv(out, "--checkpoint-every", "1", "--resume", epochs=4), capsys,
                       watch=(out,), says="metrics.jsonl lacks")  # fmt: skip


def test_resume_of_its_own_files_still_works(tmp_path, capsys):
    out, ref = tmp_path / "run", tmp_path / "ref"
    assert cli.main(train_argv(ref, "--checkpoint-every", "1", epochs=3)) == 0
    assert cli.main(train_argv(out, "--checkpoint-every", "1", epochs=2)) == 0
    expect_works(train_argv(out, "--checkpoint-every", "1", "--resume", epochs=3), capsys)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_rows(RunFiles(out).metrics)) == strip(read_rows(RunFiles(ref).metrics))


@pytest.mark.parametrize("copy_name", ["run.bak", "run copy", "zz_backup"])
def test_the_report_counts_a_copied_run_once(copy_name, run_copy):
    shutil.copytree(run_copy, run_copy.parent / copy_name)
    TALLY["inputs tried"] += 1
    runs = load_runs([run_copy.parent])
    assert len(runs) == 1 and runs[0].seed == 0
    assert any("is a copy of" in w for w in runs[0].warnings)
    TALLY["clear errors"] += 1  # named as a duplicate


def test_two_seeds_stay_two_runs(tmp_path):
    for seed in (0, 1):
        assert cli.main(["train", *TINY, "--epochs", "1", "--seed", str(seed),
                         "--out", str(tmp_path / f"s{seed}")]) == 0  # fmt: skip
    assert sorted(r.seed for r in load_runs([tmp_path])) == [0, 1]
