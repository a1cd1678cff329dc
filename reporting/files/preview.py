"""A local preview of the MR comment, rendered the way GitLab renders a note, so a data scientist
sees what reviewers will get without pushing (``nbgate publish mr --dry-run`` writes it).

GitLab renders notes as CommonMark with GFM tables, raw HTML (``<details>``) and its image size
attribute (``![a](b){width=48%}``), in a note column about 1000 px wide; the page copies that.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

from nbgate.contract.files import write_text_atomic

_IMAGE_SIZE = re.compile(r'(<img [^>]*?)\s*/?>\{width=(\d+(?:\.\d+)?(?:%|px)?)\}')
_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Noto Sans", Ubuntu, sans-serif;
       font-size: 14px; line-height: 1.5; color: #333238; background: #fbfafd; margin: 0; }
.note { max-width: 1000px; margin: 24px auto; background: #fff; border: 1px solid #dcdcde;
        border-radius: 4px; padding: 12px 16px; overflow-x: auto; }
table { border-collapse: collapse; margin: 0 0 16px; display: block; overflow-x: auto; }
th, td { border: 1px solid #dcdcde; padding: 8px 16px; text-align: left; }
th { background: #f0f0f0; font-weight: 600; }
code { background: #ececef; border-radius: 4px; padding: 2px 4px; font-size: 90%; }
pre { background: #fbfafd; border: 1px solid #dcdcde; border-radius: 4px; padding: 8px 12px;
      overflow-x: auto; }
img { max-width: 100%; }
details { margin: 0 0 16px; }
.banner { max-width: 1000px; margin: 12px auto 0; color: #626168; }
"""


def render_note(body: str) -> str:
    """The note's HTML, as GitLab would show it."""
    parser = MarkdownIt("commonmark", {"html": True}).enable("table")
    rendered = parser.render(body)
    return _IMAGE_SIZE.sub(lambda m: f'{m.group(1)} style="width:{m.group(2)}">', rendered)


def write_preview(path: Path, body: str, title: str) -> Path:
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>"
            f"<p class=\"banner\">{html.escape(title)}: a preview of the merge request comment, "
            "rendered like a GitLab note. Nothing was posted.</p>"
            f"<div class=\"note\">{render_note(body)}</div></body></html>\n")
    return write_text_atomic(path, page)
