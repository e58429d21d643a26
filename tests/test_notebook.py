"""The example notebook (examples/compare_as_dataframe.ipynb) executes as a user would run it
(a fresh kernel; it makes a small comparison on synthetic data when it finds none), so it cannot
rot; its power-law fits are checked against a fit of this test's own on metrics.jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import nclab

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("pandas")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "compare_as_dataframe.ipynb"


@pytest.mark.slow
def test_example_notebook_executes_and_fits_every_run(tmp_path: Path, monkeypatch) -> None:
    runs = tmp_path / "cmp"
    monkeypatch.setenv("NCLAB_EXAMPLE_RUNS", str(runs))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows figures
    # the kernel (a new process, in another folder) imports the nclab under test
    here = str(Path(nclab.__file__).resolve().parents[1])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    )
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the figure was not drawn"
    (printed,) = [o.text for o in nb.cells[-1].outputs if o.output_type == "stream"]
    fits = json.loads(printed)

    run_dirs = sorted((runs / "runs").iterdir())
    assert len(run_dirs) == 4 and len(fits) == 4  # CE and LS δ=0.1, seeds 0 and 1
    for fit in fits:
        rows = [
            json.loads(line)
            for line in (runs / "runs" / fit["run"] / "metrics.jsonl").read_text().splitlines()
        ]
        late = [r for r in rows if r["epoch"] > rows[-1]["epoch"] / 2]
        x = np.log([r["epoch"] for r in late])
        y = np.log([r["nc1"] for r in late])
        # ordinary least squares in closed form
        slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        assert fit["b"] == pytest.approx(-slope, rel=1e-9, abs=1e-12), fit["run"]
        assert fit["a"] == pytest.approx(np.exp(y.mean() - slope * x.mean()), rel=1e-9)
