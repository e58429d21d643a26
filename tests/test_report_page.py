"""The report page as a reader sees it: contents list, per-run table, aligned tables, escaping,
and (where Debian's chromium is installed) the page rendered by a real browser.

The pure-Python tests parse ``report.html`` with the standard library's HTML parser and check
each promise against the run folders and metrics files; the browser tests render the same page
headless and check the DOM the browser built (anchors resolve, no number cell wraps) and that a
screenshot is produced and not blank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from test_report import make_runs

from nclab.report import build_report
from nclab.report.render import html_table, inline_html, numeric_columns


class Page(HTMLParser):
    """Every element id, every href, the table cells (with class) and the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.tables: list[list[list[tuple[str, str, str]]]] = []  # (tag, class, text)
        self.text: list[str] = []
        self.tags: list[str] = []
        self._cell: list | None = None
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = [tag, a.get("class") or "", ""]
        elif tag == "style":
            self._in_style = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(tuple(self._cell))
            self._cell = None
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell[2] += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _table_with(page: Page, first_header: str) -> list[list[tuple[str, str, str]]]:
    return next(t for t in page.tables if t and t[0] and t[0][0][2] == first_header)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A report over CE and LS runs, one run folder with a hostile name."""
    root = tmp_path_factory.mktemp("page")
    dirs = make_runs(
        root / "runs",
        lambda seed: dict(loss="ce", smoothing=0.0, zero_at=10),
        lambda seed: dict(loss="ls", smoothing=0.1, zero_at=8, rate=0.4),
    )
    # a folder name with markup, a quote, a space, '#' and '?': shown as text, linked intact
    hostile = dirs[3].with_name("ls0.1 <i>x 'q' #1?_seed1")
    dirs[3].rename(hostile)
    dirs[3] = hostile
    result = build_report([root], root / "report", theory=False)
    return root, dirs, result


def test_contents_list_links_every_section_and_figure(page):
    _, _, result = page
    doc = parse(result.html)
    local = [h[1:] for h in doc.hrefs if h.startswith("#")]
    assert {"summary", "runs", "claims", "figures"} <= set(local)
    assert all(anchor in doc.ids for anchor in local), set(local) - doc.ids
    # one contents entry per figure embedded in the page
    assert sum(a.startswith("fig-") for a in local) == len(result.figures) > 0
    html_text = result.html.read_text(encoding="utf-8")
    assert html_text.index("id='contents'") < html_text.index("id='summary'")


def test_run_table_holds_each_runs_final_metrics_and_folder_link(page):
    root, dirs, result = page
    doc = parse(result.html)
    table = _table_with(doc, "run")
    header = [c[2] for c in table[0]]
    assert header[:3] == ["run", "seed", "setting"]
    assert {"train acc (%)", "test acc (%)", "final nc1", "ECE", "wall time (s)", "folder"} <= set(
        header
    )
    rows = {r[0][2]: dict(zip(header, (c[2] for c in r), strict=True)) for r in table[1:]}
    assert set(rows) == {d.name for d in dirs}
    for d in dirs:
        metrics = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        config = json.loads((d / "config.json").read_text())
        config = config.get("config", config)
        row = rows[d.name]
        assert int(row["seed"]) == config["seed"]
        assert row["setting"] == ("CE" if config["loss"] == "ce" else "LS δ=0.1")
        last = metrics[-1]
        assert float(row["test acc (%)"]) == pytest.approx(100 * last["test_acc"], rel=1e-3)
        assert float(row["final nc1"]) == pytest.approx(last["nc1"], rel=1e-3)
        assert float(row["ECE"]) == pytest.approx(last["ece"], rel=1e-3)
        assert float(row["wall time (s)"]) == pytest.approx(
            sum(m["seconds"] for m in metrics), abs=0.06
        )
    # folder links: relative to the report, percent-encoded, and they lead to the run folder
    links = [h for h in doc.hrefs if not h.startswith("#")]
    for d in dirs:
        target = [h for h in links if (result.out_dir / unquote(h)).resolve() == d.resolve()]
        assert target, f"no link to {d.name}"
        assert all(not h.startswith("/") and "://" not in h for h in target)


def test_tables_align_text_left_numbers_right_and_never_wrap_numbers(page):
    _, _, result = page
    doc = parse(result.html)
    summary = _table_with(doc, "setting")
    classes = {c[2]: c[1] for c in summary[0]}
    assert classes["setting"] == "nw"  # short labels: left-aligned, on one line
    assert classes["final nc1"] == "num"
    plus_minus = [c for r in summary[1:] for c in r if "±" in c[2]]
    assert plus_minus and all(c[1] == "num" for c in plus_minus)
    css = re.search(r"<style>(.*?)</style>", result.html.read_text(encoding="utf-8"), re.S)[1]
    assert re.search(r"td\.num[^{]*\{[^}]*white-space: nowrap", css)
    assert re.search(r"th\.num, td\.num \{[^}]*text-align: right", css)
    assert re.search(r"th, td \{[^}]*text-align: left", css)
    verdicts = _table_with(doc, "claim")
    vclass = {c[2]: c[1] for c in verdicts[0]}
    assert vclass["measure"] == ""  # long text: left-aligned, may wrap
    assert vclass["95% CI"] == "num"


def test_no_markup_leaks_and_user_strings_stay_text(page):
    _, dirs, result = page
    text = result.html.read_text(encoding="utf-8")
    doc = parse(result.html)
    visible = "".join(doc.text)
    assert "`" not in visible  # notes' code spans became <code>
    assert "**" not in visible
    assert "<code>never</code>" in text
    # the hostile folder name is text, never a tag
    assert "<i>x" not in text
    assert "&lt;i&gt;x" in text
    assert doc.tags.count("i") == 0
    md = result.markdown.read_text(encoding="utf-8")
    assert "## Runs" in md and "<i>" not in md


def test_inline_html_and_table_helpers():
    assert inline_html("run `nclab report` **now** <i>") == (
        "run <code>nclab report</code> <strong>now</strong> &lt;i&gt;"
    )
    # a user string cannot open a tag through the code-span rule
    assert "<script" not in inline_html("`<script>alert(1)</script>`")
    rows = [["CE", "0.1 ± 0.02", "never", "–", "[1, 2]", "a long text"], ["LS", "3", "12", "4"]]
    rows[1] += ["[0, 1]", "x"]
    assert numeric_columns(rows) == [False, True, True, True, True, False]
    out = html_table(["s", "v", "e", "d", "ci", "t"], rows)
    assert out.count("class='num'") == 4 * 3  # header + two rows
    assert "<td class='nw'>CE</td>" in out


# ------------------------------------------------------------------ in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def _chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ]
        env = {**os.environ, "HOME": profile}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@needs_browser
def test_browser_renders_a_non_blank_page_with_resolving_anchors(page, tmp_path):
    _, _, result = page
    shot = tmp_path / "page.png"
    _chromium("--window-size=1280,3000", f"--screenshot={shot}", result.html.as_uri())
    assert shot.is_file(), "chromium wrote no screenshot"
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (3000, 1280)
    assert pixels.std() > 10  # text, tables and figures, not a blank page
    assert (pixels < 128).mean() > 0.005
    dom = _chromium("--dump-dom", result.html.as_uri()).stdout
    built = Page()
    built.feed(dom)
    local = [h[1:] for h in built.hrefs if h.startswith("#")]
    assert len(local) >= 5 and all(a in built.ids for a in local)


@needs_browser
def test_browser_keeps_every_mean_sd_cell_on_one_line(page, tmp_path):
    """The browser's own layout: every cell holding ± is one line high (script in a copy of
    the page writes the measurement into the DOM, read back with --dump-dom)."""
    _, _, result = page
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => {"
        "const bad = [];"
        "for (const td of document.querySelectorAll('td')) {"
        "  if (!td.textContent.includes('±')) continue;"
        "  const lh = parseFloat(getComputedStyle(td).lineHeight) || 16;"
        "  const r = document.createRange(); r.selectNodeContents(td);"
        "  if (r.getClientRects().length > 1 || r.getBoundingClientRect().height > 1.6 * lh)"
        "    bad.push(td.textContent);"
        "}"
        "const out = document.createElement('pre'); out.id = 'probe';"
        "out.textContent = JSON.stringify({checked: document.querySelectorAll('td').length,"
        " wrapped: bad}); document.body.appendChild(out);});</script>"
    )
    probe.write_text(
        result.html.read_text(encoding="utf-8").replace("</body>", script + "</body>"),
        encoding="utf-8",
    )
    dom = _chromium(
        "--window-size=1280,2000", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()
    ).stdout
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", dom, re.S)
    assert found, "the probe did not run"
    report = json.loads(found[1].replace("&quot;", '"'))
    assert report["checked"] > 10
    assert report["wrapped"] == []


@pytest.mark.parametrize("span", [(0.031, 0.058), (0.02, 0.9), (1e-4, 3.0), (0.4, 0.5)])
def test_log_ticks_are_plain_numbers_that_never_collide(span):
    """The matched-NC1 axes at any NC1 range: at least two labels, none overlapping."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nclab.report.figures import log_ticks

    fig = Figure(figsize=(5.5, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_xscale("log")
    ax.plot(span, [0, 1])
    ax.set_xlim(span[1], span[0])  # inverted, as in the figure
    log_ticks(ax.xaxis)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lo, hi = span
    labels = [
        t
        for t in ax.xaxis.get_ticklabels(which="both")
        if t.get_visible() and t.get_text() and lo <= t.get_position()[0] <= hi
    ]
    assert len(labels) >= 2, [t.get_text() for t in labels]
    for t in labels:
        float(t.get_text())  # a plain number, not mathtext such as 5×10^-2
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:], strict=False))
