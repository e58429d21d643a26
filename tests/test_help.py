"""Golden test of every ``--help`` text, and the rules the texts must keep.

Each command's help is compared with ``tests/golden/help/<command>.txt`` (rewrite them with
``pytest tests/test_help.py --update-golden`` after a deliberate change, and read the diff).
Independently of the golden files: no option shows its default twice or shows ``None``, no
sentence of the help appears twice, the training options read the same in ``nclab train`` and
``nclab compare``, their choices are the registries' names, and ``--help`` imports no torch.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nclab import names
from nclab.cli import build_parser

GOLDEN = Path(__file__).parent / "golden" / "help"


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict:
    """Every (sub)command's parser, keyed by its argv, found by walking the parser tree."""
    found = {prefix: parser} if prefix else {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_commands(sub, (*prefix, name)))
    return found


COMMANDS = _commands(build_parser())


def _help(argv: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal width
    return _commands(build_parser())[argv].format_help()


def _entries(text: str) -> dict[str, str]:
    """Option flag -> its help entry (flag line plus continuation lines), whitespace folded."""
    entries: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        match = re.match(r"^  (-{1,2}[\w-]+)", line)
        if match:
            flag = match.group(1)
            entries[flag] = line
        elif flag and line.startswith("   "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def _sentences(text: str) -> list[str]:
    body = " ".join(text.split())
    return [s.strip() for s in re.split(r"(?<=[.;])\s+", body) if len(s.strip()) >= 40]


def test_every_command_is_covered():
    assert {"train", "compare", "ufm", "report", "metrics"} <= {a[0] for a in COMMANDS}
    assert ("ufm", "convergence") in COMMANDS


#: argparse lays help out differently across Python versions: the golden files record theirs.
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.mark.parametrize("argv", list(COMMANDS), ids=" ".join)
def test_help_matches_golden_file(argv, monkeypatch, update_golden):
    text = _help(argv, monkeypatch)
    path = GOLDEN / ("_".join(argv) + ".txt")
    if update_golden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        (GOLDEN / "python-version").write_text(PYTHON + "\n")
    recorded = (GOLDEN / "python-version").read_text().strip()
    if recorded != PYTHON:
        pytest.skip(f"golden help texts are from Python {recorded}'s argparse, this is {PYTHON}")
    assert path.is_file(), f"no golden file {path}: run pytest {__file__} --update-golden"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs: see the diff above"


@pytest.mark.parametrize("argv", list(COMMANDS), ids=" ".join)
def test_help_shows_each_default_once_and_no_paragraph_twice(argv, monkeypatch):
    text = _help(argv, monkeypatch)
    for flag, entry in _entries(text).items():
        assert entry.count("(default") <= 1, f"{flag}: {entry}"
        assert "(default: None)" not in entry and "(default: False)" not in entry, entry
    repeated = [s for s, n in Counter(_sentences(text)).items() if n > 1]
    assert not repeated, repeated


def test_training_options_read_the_same_in_train_and_compare(monkeypatch):
    from nclab.config import PER_RUN_FIELDS, options

    train = _entries(_help(("train",), monkeypatch))
    compare = _entries(_help(("compare",), monkeypatch))
    compare_dests = {a.dest for a in COMMANDS[("compare",)]._actions}
    for name in options():
        flag = "--" + name.replace("_", "-")
        assert flag in train, flag
        if name in PER_RUN_FIELDS:  # compare sets it per run (--smoothing there is compare's)
            assert "train_" + name not in compare_dests, name
            continue
        # the compare entry is the train entry without the default (compare's is the preset's)
        expected = re.sub(r" \(default: [^()]*(\([^()]*\)[^()]*)*\)$", "", train[flag])
        assert compare[flag] == expected, flag


def test_choices_are_the_registries_names(monkeypatch):
    from nclab.config import options
    from nclab.data import DATASETS
    from nclab.losses import LOSSES
    from nclab.models import MODELS

    assert names.DATASETS == DATASETS
    assert names.MODELS == tuple(MODELS) and names.LOSSES == tuple(LOSSES)
    schema = options()
    assert schema["model"][1].choices == names.MODELS
    assert schema["loss"][1].choices == names.LOSSES
    assert schema["scheduler"][1].choices == names.SCHEDULERS
    assert schema["device"][1].choices == names.DEVICES
    train = _entries(_help(("train",), monkeypatch))
    assert ", ".join(names.MODELS) in train["--model"]
    assert ", ".join(DATASETS) in train["--dataset"]


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from nclab.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['compare', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--per-class" in done.stdout


def _sections(text: str) -> dict[str, str]:
    """Option flag -> the title of the ``--help`` section that lists it."""
    found, title = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
        match = re.match(r"^  (--[\w-]+)", line)
        if match and title:
            found[match.group(1)] = title
    return found


@pytest.mark.parametrize("command", [("train",), ("compare",)])
def test_training_options_are_listed_in_the_section_their_schema_names(command, monkeypatch):
    from nclab.config import OPTION_GROUPS, options

    sections = _sections(_help(command, monkeypatch))
    checked = 0
    for name, (_, opt) in options().items():
        flag = "--" + name.replace("_", "-")
        if command == ("compare",) and opt.per_run:
            continue  # compare sets it per run (--smoothing, --seeds and --threads are its own)
        assert sections[flag] == OPTION_GROUPS[opt.group], flag
        checked += 1
    assert checked >= 35
    # the sections appear in the schema's order, each once
    order = [t for t in dict.fromkeys(sections.values()) if t in OPTION_GROUPS.values()]
    assert order == [t for t in OPTION_GROUPS.values() if t in order]
    assert sections["--out"] == "output"


def test_an_option_group_must_be_a_known_section():
    from nclab.config import Option

    with pytest.raises(ValueError, match="group must be one of"):
        Option("help", group="misc")
