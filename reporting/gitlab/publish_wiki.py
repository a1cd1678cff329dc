"""``nbgate publish wiki``: a history page per kind, one row per case per pipeline, newest first.

The page is read (``GET /wikis/:slug``), its history table merged with this run's rows, and
written back whole (``PUT``; ``POST`` when GitLab answers 404). Merging rules:

- A row's identity is (pipeline id, case): publishing the same pipeline again replaces its rows
  instead of adding more, and the CPU and GPU jobs of one pipeline each add their own rows.
- Rows nbgate did not write are kept as they are (padded to the current columns); text above
  and below the table is kept.
- A page that exists but holds no nbgate history table (someone wrote it by hand) is not
  destroyed: its content stays and the history table is added below it, with a warning.
- Rows are sorted by date, newest first, and cut to ``[tool.nbgate.wiki] max_rows``.

Writing is idempotent (PUT replaces the content), so a retried request cannot add a row twice.
Two pipelines writing at the same moment can still lose one's rows: GitLab's wiki API has no
compare-and-set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from gitlab.exceptions import GitlabError
from tabulate import tabulate

from nbgate.contract.ci_context import CIContext
from nbgate.contract.model import CaseResult, case_labels
from nbgate.contract.text import MISSING, fmt_number
from reporting.files.markdown import link, md_cell, md_safe, outcome_label
from reporting.files.reports_folder import (
    RunReports,
    kinds_to_publish,
    load_reports,
    results_of_kind,
)
from reporting.gitlab.client import REQUEST_ERRORS, GitLabSession, connect_unless_dry_run

Echo = Callable[[str], None]
FIXED_COLUMNS = ("date (UTC)", "pipeline", "commit", "case", "outcome")
KIND_WORDS = {"train": "Training", "score": "Scoring"}
_FIXED_LOWER = [c.lower() for c in FIXED_COLUMNS]
_SEPARATOR_CELL = re.compile(r"^:?-{3,}:?$")
_PIPELINE_ID = re.compile(r"#(\d+)")
_DATE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d")


@dataclass(frozen=True)
class WikiSettings:
    """``[tool.nbgate.wiki]``: the history pages' titles and how many rows they keep."""

    train_title: str = "nbgate/train-history"
    score_title: str = "nbgate/score-history"
    max_rows: int = 200


def slug_for(title: str) -> str:
    """GitLab's slug for a page title: spaces become dashes; '/' stays and makes folders
    (python-gitlab sends it %2F-encoded)."""
    return title.strip().replace(" ", "-")


# -- the table -------------------------------------------------------------------------------


@dataclass
class HistoryTable:
    """The page split around its history table; cells are kept as raw markdown."""

    before: list[str]
    metrics: list[str]  # metric columns after the fixed ones
    rows: list[dict[str, str]]
    after: list[str]
    found: bool = True  # False: the page had no history table; it all went to ``before``

    def columns(self) -> list[str]:
        return [*FIXED_COLUMNS, *self.metrics]


def split_row(line: str) -> list[str]:
    """The cells of one markdown table row; ``\\|`` stays inside its cell."""
    text = line.strip()
    if text.startswith("|"):
        text = text[1:]
    if text.endswith("|") and not text.endswith("\\|"):
        text = text[:-1]
    cells, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == "|":
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    cells.append("".join(current).strip())
    return cells


def parse_page(content: str) -> HistoryTable:
    """Find the history table (header starting with the fixed columns, then a separator row)."""
    lines = content.split("\n")
    for i in range(len(lines) - 1):
        if not lines[i].lstrip().startswith("|"):
            continue
        header = split_row(lines[i])
        if [h.lower() for h in header[: len(FIXED_COLUMNS)]] != _FIXED_LOWER:
            continue
        if not all(_SEPARATOR_CELL.match(c.replace(" ", "")) for c in split_row(lines[i + 1])):
            continue
        end = i + 2
        while end < len(lines) and lines[end].lstrip().startswith("|"):
            end += 1
        metrics = header[len(FIXED_COLUMNS):]
        columns = [*FIXED_COLUMNS, *metrics]
        rows = [_row_dict(split_row(line), columns) for line in lines[i + 2:end]]
        return HistoryTable(lines[:i], metrics, rows, lines[end:])
    return HistoryTable(lines if content.strip() else [], [], [], [], found=False)


def _row_dict(cells: list[str], columns: list[str]) -> dict[str, str]:
    if len(cells) > len(columns):  # a stray pipe: keep the text in the last cell
        cells = [*cells[: len(columns) - 1], " \\| ".join(cells[len(columns) - 1:])]
    return {col: (cells[i] if i < len(cells) else MISSING) for i, col in enumerate(columns)}


def render_page(table: HistoryTable, intro: str) -> str:
    columns = table.columns()
    rows = [[row.get(col, MISSING) or MISSING for col in columns] for row in table.rows]
    grid = tabulate(rows, headers=columns, tablefmt="github", disable_numparse=True)
    before = "\n".join(table.before).rstrip()
    if not table.found or not before:
        before = "\n\n".join(p for p in (before, intro) if p)
    after = "\n".join(table.after).strip()
    return md_safe("\n\n".join(p for p in (before, grid, after) if p)) + "\n"


# -- new rows --------------------------------------------------------------------------------


def _date(stamp: str | None) -> str:
    moment = None
    if stamp:
        try:
            moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            moment = None
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M")


def new_rows(
    run: RunReports, results: Sequence[CaseResult], ctx: CIContext
) -> list[dict[str, str]]:
    labels = case_labels(results)
    pipeline = MISSING
    if ctx.pipeline_id:
        pipeline = link(f"#{ctx.pipeline_id}", ctx.pipeline_url)
    commit = ctx.commit_short_sha or (ctx.commit_sha or "")[:8]
    rows = []
    for result in results:
        row = {
            "date (UTC)": _date(run.generated_at),
            "pipeline": pipeline,
            "commit": f"`{md_cell(commit)}`" if commit else MISSING,
            "case": md_cell(labels[result.case_id]),
            "outcome": md_cell(outcome_label(result, reason_limit=40)),
        }
        for name, value in result.metrics.items():
            row[md_cell(name)] = fmt_number(value) if result.outcome != "skipped" else MISSING
        rows.append(row)
    return rows


def _identity(row: Mapping[str, str]) -> tuple[str, str] | None:
    found = _PIPELINE_ID.search(row.get("pipeline", ""))
    return (found.group(1), row.get("case", "").strip()) if found else None


def merge_rows(table: HistoryTable, rows: Sequence[dict[str, str]], max_rows: int) -> HistoryTable:
    """This run's rows in, the same (pipeline, case) rows out, newest first, cut to max_rows."""
    replaced = {key for key in map(_identity, rows) if key is not None}
    kept = [r for r in table.rows if _identity(r) not in replaced]
    metrics = list(table.metrics)
    for row in rows:
        metrics += [c for c in row if c not in FIXED_COLUMNS and c not in metrics]
    merged = [*rows, *kept]
    # Newest first by date; rows without a readable date keep their place at the end. Python's
    # sort is stable, so rows of one pipeline keep their case order.
    merged.sort(key=_date_key, reverse=True)
    return HistoryTable(table.before, metrics, merged[:max_rows], table.after, table.found)


def _date_key(row: Mapping[str, str]) -> str:
    date = row.get("date (UTC)", "")
    return date if _DATE.match(date) else ""


# -- publishing ------------------------------------------------------------------------------


@dataclass
class PageWrite:
    title: str
    content: str
    exists: bool
    rows: int
    warnings: list[str] = field(default_factory=list)


def publish_wiki(
    folders: Sequence[Path],
    env: Mapping[str, str],
    *,
    settings: WikiSettings | None = None,
    kind: str | None = None,
    dry_run: bool = False,
    echo: Echo = print,
    scrub: Callable[[str], str] = lambda text: text,
) -> None:
    """Add this run's rows to the history page of each kind in the reports."""
    settings = settings or WikiSettings()
    env_ctx = CIContext.from_env(env)
    runs = load_reports(folders)  # a missing folder is exit 2, in CI or not, dry run or not
    session = connect_unless_dry_run(
        env, "the wiki history", write=True, dry_run=dry_run, echo=echo
    )
    kinds = kinds_to_publish(runs, kind, folders, "nothing to add to the wiki")
    for k in kinds:
        title = settings.train_title if k == "train" else settings.score_title
        chosen = {id(r) for r in results_of_kind(runs, k)}  # one result per case
        rows = []
        for run in runs:
            results = [r for r in run.results if id(r) in chosen]
            rows += new_rows(run, results, _row_context(run, env_ctx))
        if not rows:
            echo(f"no {k} cases in the reports: {title} left as it is")
            continue
        page = _read_page(session, title) if session else None
        write = _scrubbed(plan_write(title, page, rows, k, settings.max_rows), scrub)
        for warning in write.warnings:
            echo(warning)
        if dry_run or session is None:
            action = "update" if write.exists else "create"
            echo(f"--- dry run: would {action} wiki page {title} ({write.rows} rows); content: ---")
            echo(write.content.rstrip("\n"))
            echo("--- end of page ---")
            continue
        if page is not None and getattr(page, "content", None) == write.content:
            echo(f"wiki page {title} already has this pipeline's rows: nothing to change")
            continue
        replan = partial(_replan, title=title, rows=rows, kind=k, max_rows=settings.max_rows,
                         scrub=scrub)
        _write_page(session, write, page, replan)
        verb = "updated" if write.exists else "created"
        echo(f"{verb} wiki page {title}: {len(rows)} row(s) for this pipeline, {write.rows} in all")


def _replan(current: Any, *, title: str, rows: Sequence[dict[str, str]], kind: str,
            max_rows: int, scrub: Callable[[str], str]) -> PageWrite:
    """The write again, over a page that appeared after we looked (see ``_write_page``)."""
    return _scrubbed(plan_write(title, current, rows, kind, max_rows), scrub)


def _scrubbed(write: PageWrite, scrub: Callable[[str], str]) -> PageWrite:
    write.content = scrub(write.content)
    return write


def _row_context(run: RunReports, env_ctx: CIContext) -> CIContext:
    """The run's pipeline and commit; this job's when the run recorded none."""
    ctx = run.pipeline
    if ctx.pipeline_id:
        return ctx
    names = ("pipeline_id", "pipeline_url", "commit_sha", "commit_short_sha")
    return CIContext.from_dict({**ctx.to_dict(), **{k: getattr(env_ctx, k) for k in names}})


def plan_write(
    title: str, page: Any, rows: Sequence[dict[str, str]], kind: str, max_rows: int
) -> PageWrite:
    """The page content to send, from the current page (None: there is none)."""
    content = getattr(page, "content", None) or ""
    table = parse_page(content)
    warnings = []
    if content.strip() and not table.found:
        warnings.append(f"wiki page {title} has no nbgate history table; its text is kept and "
                        "the table is added below it")
    merged = merge_rows(table, rows, max_rows)
    word = KIND_WORDS.get(kind, kind)
    intro = (f"{word} history written by `nbgate publish wiki`: one row per case and pipeline, "
             f"newest first, the last {max_rows} rows kept.")
    content = render_page(merged, intro)
    return PageWrite(title, content, page is not None, len(merged.rows), warnings)


def _read_page(session: GitLabSession, title: str) -> Any:
    """The page object, or None when GitLab answers 404 (not created yet)."""
    slug = slug_for(title)
    endpoint = session.endpoint("GET", f"/wikis/{slug}")
    try:
        return session.project.wikis.get(slug)
    except GitlabError as exc:
        if exc.response_code == 404 and "wiki" in str(exc.error_message).lower():
            return None
        raise session.error(exc, endpoint, _hints()) from None
    except REQUEST_ERRORS as exc:
        raise session.unreachable(exc, endpoint) from None


def _hints() -> dict[int, str]:
    return {
        403: "the token may not write the wiki; it needs the api scope and the Developer role, "
             "and the project's wiki must be enabled (a CI_JOB_TOKEN never can)",
        404: "the project or its wiki was not found; check CI_PROJECT_ID, that the wiki is "
             "enabled, and that the token's user is a member of the project",
    }


def _write_page(
    session: GitLabSession, write: PageWrite, page: Any, replan: Callable[[Any], PageWrite]
) -> None:
    """PUT the content over ``page``, or POST a new page; a POST answered "Duplicate page"
    (created meanwhile, or by a retried POST whose first answer was lost) re-reads the page and
    merges this run's rows into it instead."""
    slug = slug_for(write.title)
    if page is not None:
        page.content = write.content  # only content: sending the title would rename the page
        session.call(session.endpoint("PUT", f"/wikis/{slug}"), page.save, _hints())
        return
    data = {"title": write.title, "content": write.content, "format": "markdown"}
    endpoint = session.endpoint("POST", "/wikis")
    try:
        session.project.wikis.create(data)
    except GitlabError as exc:
        if exc.response_code != 400 or "duplicate" not in str(exc.error_message).lower():
            raise session.error(exc, endpoint, _hints()) from None
        current = _read_page(session, write.title)
        if current is None:
            raise session.error(exc, endpoint, _hints()) from None
        _write_page(session, replan(current), current, replan)
    except REQUEST_ERRORS as exc:
        raise session.unreachable(exc, endpoint) from None
