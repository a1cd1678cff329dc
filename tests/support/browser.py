"""Measuring rendered pages in a real browser: Debian's headless Chromium (``.ci/install-tools.sh``
installs it, with a colour emoji font so that the reports' marks take an emoji's width).

A copy of the page gets a script that, once laid out, writes what it measured into the DOM;
``chromium --dump-dom`` prints that DOM. Nothing in the page under test is changed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_MEASURE = """<script>
window.addEventListener('load', () => {
  const note = document.querySelector('.note');
  const style = getComputedStyle(note);
  const column = note.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  // A GitLab note's table is display:block with its own scrollbar, so the block itself is never
  // wider than the column: the rows give the table's real width.
  const tables = Array.from(note.querySelectorAll('table')).map(table => ({
    width: Math.max(0, ...Array.from(table.rows).map(r => r.getBoundingClientRect().width)),
    scrolls: table.scrollWidth > table.clientWidth,
    header: Array.from(table.rows[0].cells).map(c => c.textContent.trim()),
  }));
  const out = document.createElement('pre');
  out.id = 'nbgate-measured';
  out.textContent = JSON.stringify({column, tables});
  document.body.appendChild(out);
});
</script>"""
_RESULT = re.compile(r'<pre id="nbgate-measured">(.*?)</pre>', re.S)


@dataclass(frozen=True)
class TableWidth:
    width: float  # px, the widest row
    scrolls: bool  # the table's block needs a horizontal scrollbar
    header: list[str]


@dataclass(frozen=True)
class Measured:
    column: float  # px: the note's content width
    tables: list[TableWidth]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def measure_tables(page: Path, *, window: tuple[int, int] = (1400, 1000)) -> Measured:
    """The width of every table in ``page`` (a ``comment-*.html`` preview) and of its note
    column, as Chromium lays them out in a ``window``-sized viewport."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("chromium is not installed: run .ci/install-tools.sh")
    html = page.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="nbgate-browser-") as scratch:
        copy = Path(page.parent, f".measure-{page.name}")
        copy.write_text(html.replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
        try:
            done = subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 f"--user-data-dir={scratch}", f"--window-size={window[0]},{window[1]}",
                 "--dump-dom", copy.resolve().as_uri()],
                capture_output=True, text=True, timeout=120)
        finally:
            copy.unlink(missing_ok=True)
    found = _RESULT.search(done.stdout)
    if found is None:
        raise RuntimeError(f"chromium measured nothing (exit {done.returncode}): "
                           f"{done.stderr[-2000:]}")
    data = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")
                      .replace("&lt;", "<").replace("&gt;", ">"))
    return Measured(data["column"], [TableWidth(**t) for t in data["tables"]])
