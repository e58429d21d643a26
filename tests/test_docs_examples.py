"""Every example in the README and docs/*.md runs as written, on small data.

The ```bash/```sh and ```python blocks of README.md and docs/*.md are extracted in order and
run in one temporary folder per file (so `nclab report runs/compare` finds the comparison an
earlier line of the same file made):

- Every `nclab ...` command (also after `.venv/bin/`, `&&`, and inside `torchrun -m nclab.cli`)
  must parse with nclab's own parser. It is then run through `nclab.cli.main` and must exit 0,
  with small data appended (later options win): `nclab train` on a tiny synthetic dataset for
  2 epochs (into its own folder when the line names none), `nclab compare` with the `smoke`
  preset on it, one seed, 3 epochs, no report, `nclab report` without the UFM panel, `nclab
  ufm solve/convergence` for 100 iterations, `nclab ufm condition` with n=20. `nclab
  metrics` gets small `features.npz`/`ood.npz` files, `--config` a small YAML file;
  `VAR=value` prefixes are set by the test (W&B always offline). Other commands (`bash
  scripts/setup.sh`, `pytest`, `torchrun`, `python benchmarks/...`) are not run here (CI runs
  the setup and the tests themselves).
- Python blocks run in one namespace per file that defines the names the examples take as
  the reader's own: `model` (a small MLP with `.classifier` and `.fc`), `train_loader`,
  `train_eval_loader`, `test_loader`, `epochs`, `lr`, `avg_loss`.

A block that needs real data, a GPU, a cluster or a long time is marked on the line before its
fence with ``<!-- docs-test: skip: REASON -->``; :data:`MAX_SKIPPED` keeps that list short.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from nclab import DOCS_URL, cli

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(.+?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
MAX_SKIPPED = 8

SYNTH = "synthetic:k=3,d=8,n=12,test=6"
SMALL_TRAIN = [
    "--dataset", SYNTH, "--model", "mlp", "--per-class", "all", "--test-per-class", "all",
    "--epochs", "2", "--width", "8", "--depth", "1", "--batch-size", "12", "--threads", "1",
    "--device", "cpu", "--quiet",
]  # fmt: skip
SMALL_COMPARE = [
    "--preset", "smoke", "--dataset", SYNTH, "--epochs", "3", "--seeds", "0", "--jobs", "1",
    "--quiet", "--no-report",
]  # fmt: skip


@dataclass
class Block:
    file: Path
    line: int
    lang: str
    text: str
    skip: str | None


def blocks(path: Path) -> list[Block]:
    out, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(1).lower()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = SKIP.search(lines[start - 1]) if start else None
        text = "\n".join(lines[start + 1 : end])
        if lang in ("bash", "sh", "python"):
            out.append(Block(path, start + 1, lang, text, marker.group(1) if marker else None))
        i = end + 1
    return out


def shell_commands(text: str) -> list[list[str]]:
    """The nclab argv of each command of a shell block (continuations joined, comments and
    redirections dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        for part in _split_on(words, "&&"):
            while part and re.fullmatch(r"[A-Z_]+=\S*", part[0]):  # VAR=value: set by the test
                part = part[1:]
            if ">" in part:
                part = part[: part.index(">")]
            if part and part[0].endswith("bin/nclab") or part[:1] == ["nclab"]:
                commands.append(part[1:])
            elif part[:1] == ["torchrun"] and "nclab.cli" in part:
                commands.append(["--parse-only", *part[part.index("nclab.cli") + 1 :]])
    return commands


def _split_on(words: list[str], sep: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for w in words:
        if w == sep:
            parts.append([])
        else:
            parts[-1].append(w)
    return parts


def _prepare(folder: Path) -> None:
    """The reader's own files the examples name."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    means = 3 * rng.normal(size=(4, 6))
    feats = means[labels] + rng.normal(size=(40, 6))
    np.savez(folder / "features.npz", features=feats, labels=labels, weight=means, bias=np.zeros(4))
    np.savez(folder / "ood.npz", features=rng.normal(size=(20, 6)))
    (folder / "my.yaml").write_text("lr: 0.05\nmomentum: 0.9\n")
    import yaml

    from nclab.study import load_grid

    smoke = load_grid("smoke").as_dict()  # a grid file of the reader's: the smoke grid's cells
    (folder / "my-grid.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    (folder / "docs" / "figures").mkdir(parents=True)


def _small(argv: list[str], n: int) -> list[str]:
    if argv[:1] == ["train"]:
        out = [] if "--out" in argv else ["--out", f"runs/docs-example-{n}"]
        return [*argv, *SMALL_TRAIN, *out]
    if argv[:1] == ["compare"]:
        return [*argv, *SMALL_COMPARE]
    if argv[:1] == ["study"]:  # the smoke grid (seconds) unless the line names a grid file
        return argv if "--grid" in argv else [*argv, "--grid", "smoke"]
    if argv[:1] == ["report"]:
        return [*argv, "--no-theory"]
    if argv[:2] in (["ufm", "solve"], ["ufm", "convergence"]):
        return [*argv, "--max-iters", "100"]
    if argv[:2] == ["ufm", "condition"]:
        return [*argv, "-n", "20"]
    return argv


def _namespace() -> dict:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from nclab.models import build_model

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen)
    y = torch.arange(40) % 10
    model = build_model("mlp", 10, (6,), width=8, depth=1)
    model.fc = model.classifier  # the name a torchvision ResNet uses
    loader = DataLoader(TensorDataset(x, y), batch_size=20)
    return dict(
        model=model,
        train_loader=loader,
        train_eval_loader=loader,
        test_loader=loader,
        epochs=2,
        lr=0.1,
        avg_loss=1.0,
    )


ALL = [b for f in DOC_FILES for b in blocks(f)]


def test_the_skip_list_stays_short() -> None:
    skipped = [f"{b.file.name}:{b.line} ({b.skip})" for b in ALL if b.skip]
    assert len(skipped) <= MAX_SKIPPED, skipped
    assert len([b for b in ALL if not b.skip]) >= 10


def test_every_nclab_command_in_the_docs_parses() -> None:
    parser = cli.build_parser()
    for block in ALL:
        if block.lang == "python":
            continue
        for argv in shell_commands(block.text):
            argv = [a for a in argv if a != "--parse-only"]
            try:
                parser.parse_args(argv)
            except SystemExit as err:
                raise AssertionError(
                    f"{block.file.name}:{block.line}: nclab {shlex.join(argv)}"
                ) from err


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_docs_examples_run(doc: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name, value in (("MODE", "offline"), ("SILENT", "true")):  # W&B: never the network
        monkeypatch.setenv(f"WANDB_{name}", value)
    for name in ("CONFIG", "CACHE", "DATA"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / f"wandb-{name.lower()}"))
    _prepare(tmp_path)
    namespace = _namespace()
    ran = 0
    for block in blocks(doc):
        if block.skip:
            continue
        where = f"{doc.name}:{block.line}"
        if block.lang == "python":
            exec(compile(block.text, where, "exec"), namespace)  # noqa: S102 - the docs' own code
            ran += 1
            continue
        for argv in shell_commands(block.text):
            if argv[:1] == ["--parse-only"]:
                continue
            code = cli.main(_small(argv, ran))
            err = capsys.readouterr().err
            assert code == 0, f"{where}: nclab {shlex.join(argv)} exited {code}: {err}"
            ran += 1
    if not any(not b.skip for b in blocks(doc)):
        pytest.skip(f"{doc.name} has no runnable example")


def test_docs_link_and_project_urls_agree() -> None:
    import tomllib

    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Documentation"] == DOCS_URL
    assert DOCS_URL in cli.build_parser().format_help().replace("\n", "")
