"""Promise: every user-supplied string in summary.md and report.html is escaped (config values,
loss names, folder names, and the warnings that quote them): no tag, link or table cell of a
user's text is ever live."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from faultkit import TALLY

from nclab.report.render import md_escape, render_html, render_markdown
from nclab.report.runs import load_runs
from nclab.report.summary import summarize

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "a | b | c",
    "`rm -rf ~`",
    "line\nbreak <b>bold</b>",
    "&lt;already&gt;",
    "<!-- comment -->",
]

LIVE = ("<script", "<img", "](javascript:", "<b>", "<!--")


def _hostile_runs(run_copy: Path, text: str, where: str) -> Path:
    root = run_copy.parent
    cfg_path = run_copy / "config.json"
    config = json.loads(cfg_path.read_text())
    if where == "config":
        config["scheduler"] = text
        config["model"] = text
    elif where == "loss":
        config["loss"] = text
    cfg_path.write_text(json.dumps(config))
    if where == "folder":
        safe = text.replace("/", "_").replace("\n", "_")
        shutil.move(run_copy, root / safe)
    return root


def _assert_inert(doc: str, text: str, markdown: bool) -> None:
    for live in LIVE:
        if live not in text:
            continue
        if live == "](javascript:":
            if markdown:  # a link only where the bracket is not escaped
                assert not re.search(r"(?<!\\)\]\(javascript:", doc), doc[:2000]
            continue  # in HTML it is plain text: no tag can carry it
        assert live not in doc, (live, doc[:2000])


@pytest.mark.parametrize("where", ["config", "loss", "folder"])
@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_user_strings_are_inert_in_summary_md_and_report_html(where, text, run_copy):
    TALLY["inputs tried"] += 1
    root = _hostile_runs(run_copy, text, where)
    runs = load_runs([root])
    runs[0].warnings.append(f"{runs[0].path}: {text}")  # a warning quoting the user's text
    summary = summarize(runs, None)
    md = render_markdown(summary, None)
    html = render_html(summary, None, {}, {})
    _assert_inert(md, text, markdown=True)
    _assert_inert(html, text, markdown=False)
    for line in md.splitlines():  # a '|' of the user's never splits a table row
        if line.startswith("|") and "a \\| b" in line:
            assert " a | b " not in line
    TALLY["worked as promised"] += 1


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_md_escape(text):
    out = md_escape(text)
    assert "\n" not in out and "<" not in out and ">" not in out
    assert "|" not in out.replace("\\|", "") and "`" not in out.replace("\\`", "")
