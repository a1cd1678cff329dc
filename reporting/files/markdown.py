"""Markdown and text pieces for every human-facing report: summary.md, terminal, MR comment, wiki.

Everything here is a pure function of CaseResult data; nothing reads files or the environment.
The publishing code (``nbgate publish mr/wiki``) builds its bodies from these pieces, so the
reports agree with one another on how a number, a delta or an outcome looks.

Public API (all documented below):

    fmt_number(value)                  4 significant digits ("0.9931", "114", "NaN", "–")
    fmt_delta(value, base)             change against a baseline ("+0.0042", "−0.0010", "±0")
    fmt_duration(seconds)              "41.2 s", "3 min 05 s"
    fmt_rule(rule)                     ">= 0.95" -> "≥ 0.95"
    threshold_mark(check)              "✅" passed / "❌" failed / "➖" not checked
    outcome_label(result)              "✅ passed", "❌ failed: ValueError in cell 7: bad input",
                                       "⏭ skipped: no CUDA GPU visible"
    short_reason(text)                 a failure's cause on one line, clipped for a table cell
    first_clause(text)                 the first clause of a skip reason ("no CUDA GPU visible")
    not_checked_notes(results)         one line per rule that was not checked, with its reason
    md_cell(text)                      text made safe for a markdown table cell
    md_safe(body)                      a whole markdown body made safe to post (no quick actions)
    metric_names(results)              the metric columns, in first-recorded order
    metric_cell(value, check, delta)   "**0.91** ≥ 0.95 ❌ (−0.0042)"; "0.99 ≥ baseline ➖"
    case_table(results, ...)           the case table as GitHub/GitLab markdown (tabulate)
    failure_details(result)            a collapsed <details> block with the failure text
    figures_markdown(results, ...)     image links for recorded figures
    verdict(results)                   "❌ 1 failed · ✅ 2 passed · ⏭ 1 skipped"
    gates_summary(results)             "2 gates passed, 1 not checked (no release yet)"
    overall_mark(results)              one headline mark: ❌ any failed, ✅ some passed, else ⏭
    counts(results)                    {"failed": n, "passed": n, "skipped": n}
    rule_checks_text(result, ...)      plain-text metrics vs rules (the terminal line)
    run_link_markdown(result)          "[run](url)" to the case's MLflow run
    mlflow_hint(results, cwd)          "mlflow ui --backend-store-uri sqlite:///mlflow.db" / a URL
    link(text, url)                    "[text](url)" for an http(s) URL, else the text
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tabulate import tabulate

from nbgate.contract.failure_text import render_failure
from nbgate.contract.files import display_path
from nbgate.contract.model import (
    NOT_CHECKED,
    CaseResult,
    Rule,
    ThresholdCheck,
    gate_counts,
    not_checked_reason,
)
from nbgate.contract.text import MISSING, clean_text, fmt_number

if TYPE_CHECKING:
    from reporting.files.baseline import Comparison, MetricDelta

PASS_MARK = "✅"
FAIL_MARK = "❌"
SKIP_MARK = "⏭"
NOT_CHECKED_MARK = "➖"  # a gate that was not checked: neutral, never a pass mark
GATE_MARKS = {"passed": PASS_MARK, "failed": FAIL_MARK, NOT_CHECKED: NOT_CHECKED_MARK}
BETTER = "▲"  # a change in the rule's good direction (>=: up)
WORSE = "▼"
MINUS = "−"  # U+2212, for deltas as in the design; values keep the ASCII "-" (copy-paste)

OUTCOME_MARKS = {"passed": PASS_MARK, "failed": FAIL_MARK, "skipped": SKIP_MARK}
_RULE_OPS = {">=": "≥", "<=": "≤", "==": "="}
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")


# -- numbers ---------------------------------------------------------------------------------


def fmt_delta(value: float | None, base: float | None) -> str:
    """``value - base`` at the precision the values are shown with: "+0.0042", "−0.0010", "±0".

    Four decimals, as ``fmt_number`` shows values; none when both are whole numbers (114 vs 110
    -> "+4") or large (>= 1000); a change too small to show at that precision is "±0". Returns
    "n/a" when either side is missing or not finite.
    """
    if value is None or base is None or not (math.isfinite(value) and math.isfinite(base)):
        return "n/a"
    diff = value - base
    whole = float(value).is_integer() and float(base).is_integer()
    decimals = 0 if whole or max(abs(value), abs(base)) >= 1e3 else 4
    text = f"{abs(diff):.{decimals}f}"
    if diff == 0 or float(text) == 0:
        return "±0"
    return ("+" if diff > 0 else MINUS) + text


def fmt_duration(seconds: float | None) -> str:
    """A case's wall time: "0.8 s", "41.2 s", "3 min 05 s", "1 h 02 min"; None is "–"."""
    if seconds is None or not math.isfinite(seconds):
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def fmt_rule(rule: Rule) -> str:
    """A rule for reading: "≥ 0.95", "= 1", "≥ baseline − 0.005"."""
    op, _, rest = rule.text.partition(" ")
    rest = rest.replace(" - ", f" {MINUS} ").replace(" * ", " × ")
    return f"{_RULE_OPS.get(op, op)} {rest}".strip()


def threshold_mark(check: ThresholdCheck) -> str:
    """The mark shown next to a rule: "✅" passed, "❌" failed, "➖" not checked."""
    return GATE_MARKS[check.state]


# -- text ------------------------------------------------------------------------------------


def short_reason(text: str | None, limit: int = 60) -> str:
    """A failure's cause on one line, at most ``limit`` characters: its first line, spaces
    collapsed, clipped with "…". Messages put the cause first ("ValueError in cell 6: bad
    input", "auc 0.91 < 0.95 (short by 0.04)"), so a clipped one still names it.
    """
    if not text:
        return ""
    first = next((line for line in clean_text(text).splitlines() if line.strip()), "")
    line = " ".join(first.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def first_clause(text: str | None, limit: int = 60) -> str:
    """The first clause of a skip reason, which says why and then what to do:
    "no CUDA GPU visible: run it on ..." -> "no CUDA GPU visible"."""
    line = short_reason(text, 10_000)
    for sep in (": ", "; "):
        cut = line.find(sep)
        if cut >= 8:
            line = line[:cut]
    return short_reason(line, limit)


def md_cell(text: object) -> str:
    """Text made safe for one markdown table cell (GitLab/GitHub flavour).

    ANSI and control characters are removed, newlines flattened to spaces, backslashes and ``|``
    escaped (a raw pipe would split the cell), ``<`` written as ``&lt;`` (no HTML, and no fake
    ``<!-- nbgate:... -->`` markers), and a leading ``/`` escaped so the text never starts a
    GitLab quick action when reused outside a table.
    """
    value = " ".join(clean_text(str(text)).split())
    value = value.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    if value.startswith("/"):
        value = "\\" + value
    return value


def md_safe(body: str) -> str:
    """A markdown body made safe to post as a GitLab note or wiki page.

    No line may start with ``/`` (GitLab would run it as a quick action such as ``/close``):
    outside fenced code such a line gets a backslash (it still renders as "/"), inside fenced
    code a leading space. ANSI and control characters are removed.
    """
    out, fenced = [], False
    for line in clean_text(body).split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
        elif line.startswith("/"):
            line = (" " if fenced else "\\") + line
        out.append(line)
    return "\n".join(out)


def is_web_url(url: object) -> bool:
    """Only http(s) links are ever rendered: a results file may carry anything."""
    return isinstance(url, str) and url.startswith(("http://", "https://"))


def link_target(url: str) -> str:
    """A URL or relative path as a markdown link target: a space or ")" would end it."""
    return url.replace(" ", "%20").replace(")", "%29")


def link(text: str, url: str | None, prefix: str = "") -> str:
    """``[text](url)`` for an http(s) URL (escaped for markdown), else the escaped text."""
    if is_web_url(url):
        assert url is not None
        return f"{prefix}[{md_cell(text)}]({link_target(url)})"
    return f"{prefix}{md_cell(text)}"


def _html(text: str) -> str:
    flat = " ".join(clean_text(text).split())
    return flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- outcomes and metrics --------------------------------------------------------------------


def outcome_label(result: CaseResult, *, reason_limit: int = 60) -> str:
    """Mark, outcome and (for failed and skipped cases) the short reason, as plain text.

    "✅ passed", "❌ failed: ValueError in cell 7: bad input", "⏭ skipped: no CUDA GPU visible".
    ``reason_limit`` 0 leaves the reason out ("❌ failed"). Pass it through ``md_cell`` before
    putting it in markdown.
    """
    label = f"{OUTCOME_MARKS.get(result.outcome, '?')} {result.outcome}"
    reason = ""
    if reason_limit <= 0:
        pass
    elif result.outcome == "skipped" and result.skip_reason:
        reason = first_clause(result.skip_reason, reason_limit)
    elif result.outcome == "failed" and result.failure:
        reason = short_reason(result.failure.message, reason_limit)
    return f"{label}: {reason}" if reason else label


def not_checked_notes(results: Iterable[CaseResult]) -> list[str]:
    """One line per rule that some ran case could not check, with why and how many cases:
    "roc_auc ≥ baseline + 0.05: not checked in 2 cases (no baseline given)". Plain text."""
    seen: dict[tuple[str, str, str], int] = {}
    for result in results:
        if result.outcome == "skipped":
            continue
        for check in result.thresholds:
            if not check.checked:
                key = (check.metric, fmt_rule(check.rule), not_checked_reason(check.reason))
                seen[key] = seen.get(key, 0) + 1
    lines = []
    for (metric, rule, why), n in seen.items():
        where = "" if n == 1 else f" in {n} cases"
        lines.append(f"{metric} {rule}: not checked{where} ({why or 'no reason given'})")
    return lines


def metric_names(results: Iterable[CaseResult]) -> list[str]:
    """Every metric recorded or checked by ``results``, in first-seen order (recording order),
    metrics that only appear as an unrecorded threshold last."""
    names: dict[str, None] = {}
    results = list(results)
    for result in results:
        names.update(dict.fromkeys(result.metrics))
    for result in results:
        names.update(dict.fromkeys(c.metric for c in result.thresholds))
    return list(names)


def metric_cell(
    value: float | None,
    check: ThresholdCheck | None = None,
    delta: MetricDelta | None = None,
    *,
    markdown: bool = True,
    rule: bool = True,
) -> str:
    """One metric as shown in a table: value, rule + mark when a rule exists, delta when known.

    "0.9931 ≥ 0.95 ✅ (+0.0042)", "**0.91** ≥ 0.95 ❌", "0.9914 ≥ baseline + 0.05 ➖",
    "0.9580 (−0.0010)", "– ≥ 0.95 ❌". A failing value is bold in markdown. With
    ``markdown=False`` no emphasis is added; with ``rule=False`` the rule is left out (the
    column's header shows it).
    """
    text = fmt_number(value)
    if check is not None:
        if check.failed and markdown and value is not None:
            text = f"**{text}**"
        if rule:
            text += f" {fmt_rule(check.rule)}"
        text += f" {threshold_mark(check)}"
    if delta is not None and delta.text:
        text += f" ({delta.text})"
    return text


def _checks(result: CaseResult) -> dict[str, ThresholdCheck]:
    return {c.metric: c for c in result.thresholds}


MAX_GATED_COLUMNS = 5  # case, outcome, time, these, MLflow: a table GitLab shows unscrolled
NBSP = "\u00a0"  # keeps "0.9931 ≥ 0.95 ✅" and "41.2 s" on one line in a narrow column


def gated_names(results: Iterable[CaseResult]) -> list[str]:
    """Metrics some result has a rule on, in rule order."""
    names: dict[str, None] = {}
    for result in results:
        names.update(dict.fromkeys(c.metric for c in result.thresholds))
    return list(names)


def _unbroken(text: str) -> str:
    return text.replace(" ", NBSP)


def shared_rules(results: Sequence[CaseResult], names: Sequence[str]) -> dict[str, str]:
    """Metric -> its rule ("≥ 0.95") when every case of the table gates it with the same rule:
    the rule then goes in the column's header, once, and the cells stay narrow."""
    rules: dict[str, set[str]] = {}
    for result in results:
        for check in result.thresholds:
            rules.setdefault(check.metric, set()).add(fmt_rule(check.rule))
    return {n: next(iter(rules[n])) for n in names if len(rules.get(n, ())) == 1}


def case_table(
    results: Sequence[CaseResult],
    *,
    comparison: Comparison | None = None,
    metrics: Sequence[str] | None = None,
    case_label: Callable[[CaseResult], str] | None = None,
    run_link: bool = True,
    reason_limit: int = 60,
) -> str:
    """The main case table as markdown (tabulate, "github" format; GitLab renders it the same).

    Columns: case, outcome, time, one per gated metric (``metrics``, default ``gated_names``)
    and "MLflow" when ``run_link`` and some result has a tracking run. A metric's rule is in its
    header when all cases share it ("roc_auc ≥ 0.95"), else in each cell; a cell shows the
    value, the gate's mark (✅ passed, ❌ failed, ➖ not checked) and the change against the
    baseline (▲ better, ▼ worse) when ``comparison`` knows the case; an absent metric is "–".
    With more gated metrics than ``MAX_GATED_COLUMNS`` they share one "gates" column, so the
    table stays narrow. Values never wrap inside themselves. ``case_label`` picks what the
    case column shows (default: the case id, which names the runner); ``reason_limit`` 0 keeps
    the outcome column to its mark and word (the causes are then shown elsewhere). Returns ""
    for no results.
    """
    if not results:
        return ""
    names = list(metrics) if metrics is not None else gated_names(results)
    folded = metrics is None and len(names) > MAX_GATED_COLUMNS
    in_header = {} if folded else shared_rules(results, names)
    label = case_label or (lambda r: r.case_id)
    links = run_link and any(r.tracking for r in results)
    columns = [f"{n} {in_header[n]}" if n in in_header else n for n in names]
    headers = ["case", "outcome", "time", *(["gates"] if folded else columns)]
    headers += ["MLflow"] if links else []
    rows = []
    for result in results:
        checks = _checks(result)
        deltas = (comparison or {}).get(result.case_id, {})
        skipped = result.outcome == "skipped"
        time = MISSING if skipped and not result.duration_s else fmt_duration(result.duration_s)
        row = [md_cell(label(result)), md_cell(outcome_label(result, reason_limit=reason_limit)),
               _unbroken(time)]
        cells = []
        for name in names:
            if skipped or (name not in result.metrics and name not in checks):
                cells.append(MISSING)
                continue
            cell = metric_cell(result.metrics.get(name), checks.get(name), deltas.get(name),
                               rule=name not in in_header)
            cells.append(_unbroken(md_cell(f"{name} {cell}" if folded else cell)))
        row += ["<br>".join(c for c in cells if c != MISSING) or MISSING] if folded else cells
        if links:
            row.append(run_link_markdown(result))
        rows.append(row)
    return tabulate(rows, headers=[md_cell(h) for h in headers], tablefmt="github",
                    disable_numparse=True)


def details_table(
    results: Sequence[CaseResult],
    names: Sequence[str],
    *,
    comparison: Comparison | None = None,
    case_label: Callable[[CaseResult], str] | None = None,
) -> str:
    """The other recorded metrics, one row per metric and one column per case (metrics are
    many, cases few: turned this way the table stays readable however many a notebook records).
    """
    ran = [r for r in results if r.outcome != "skipped"]
    if not ran or not names:
        return ""
    label = case_label or (lambda r: r.case_id)
    rows = []
    for name in names:
        row = [md_cell(name)]
        for result in ran:
            if name not in result.metrics:
                row.append(MISSING)
                continue
            delta = (comparison or {}).get(result.case_id, {}).get(name)
            cell = fmt_number(result.metrics[name])
            if delta is not None and delta.text:
                cell += f" ({delta.text})"
            row.append(_unbroken(md_cell(cell)))
        rows.append(row)
    headers = ["metric", *(md_cell(label(r)) for r in ran)]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def pipeline_groups(results: Sequence[CaseResult]) -> list[list[CaseResult]]:
    """The results in one group, or one group per pipeline when pipelines gate different
    metrics (a single table would be mostly "–")."""
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for result in results:
        groups.setdefault((result.notebook, result.kind), []).append(result)
    gates = {tuple(gated_names(g)) for g in groups.values()}
    return [list(results)] if len(gates) <= 1 else list(groups.values())


def results_tables(
    results: Sequence[CaseResult],
    *,
    comparison: Comparison | None = None,
    case_label: Callable[[CaseResult], str] | None = None,
    run_link: bool = True,
    reason_limit: int = 60,
) -> str:
    """Per pipeline group: the main table (gated metrics), the gates that were not checked and
    why, then every other recorded metric in a collapsed table. A heading names the pipeline
    when there are several groups. ``reason_limit`` 0: the outcome column holds no causes, and
    each failed case's cause follows its table instead (a narrow table, for the MR comment)."""
    parts = []
    groups = pipeline_groups(results)
    label = case_label or (lambda r: r.case_id)
    for group in groups:
        if len(groups) > 1:
            parts.append(f"**{md_cell(group[0].notebook or group[0].case_id)}**")
        parts.append(case_table(group, comparison=comparison, case_label=case_label,
                                run_link=run_link, reason_limit=reason_limit))
        notes = []
        if reason_limit <= 0:
            notes += [f"- {FAIL_MARK} {md_cell(label(r))}: "
                      f"{md_cell(short_reason(r.failure.message if r.failure else 'failed', 200))}"
                      for r in group if r.outcome == "failed"]
            notes += _skip_notes(group, label)
        notes += [f"- {NOT_CHECKED_MARK} {md_cell(line)}" for line in not_checked_notes(group)]
        if notes:
            parts.append("\n".join(notes))
        gated = set(gated_names(group))
        others = [n for n in metric_names(group) if n not in gated]
        detail = details_table(group, others, comparison=comparison, case_label=case_label)
        if detail:
            noun = "metric" if len(others) == 1 else "metrics"
            parts.append(f"<details><summary>All recorded metrics ({len(others)} more "
                         f"{noun})</summary>\n\n{detail}\n\n</details>")
    return "\n\n".join(parts)


def _skip_notes(results: Sequence[CaseResult], label: Callable[[CaseResult], str]) -> list[str]:
    """Why cases were skipped, one line per reason: "⏭ a · train[gpu]: no CUDA GPU visible",
    or "⏭ 12 cases: no CUDA GPU visible" when many share it."""
    by_reason: dict[str, list[str]] = {}
    for result in results:
        if result.outcome == "skipped":
            why = first_clause(result.skip_reason) or "skipped"
            by_reason.setdefault(why, []).append(label(result))
    lines = []
    for why, labels in by_reason.items():
        who = ", ".join(labels) if len(labels) <= 3 else f"{len(labels)} cases"
        lines.append(f"- {SKIP_MARK} {md_cell(who)}: {md_cell(why)}")
    return lines


def run_link_markdown(result: CaseResult) -> str:
    """"[run](url)" for the case's MLflow run, its short id when there is no URL, else "–"."""
    tracking = result.tracking
    if tracking is None:
        return MISSING
    if is_web_url(tracking.url):
        return link("run", tracking.url)
    return f"`{md_cell(tracking.run_id[:8])}`"


def failure_details(result: CaseResult, *, max_chars: int = 6000) -> str:
    """A collapsed block with the failure text (``render_failure``) for a failed case, "" otherwise.
    The text is an indented code block, so nothing in a traceback renders as markdown or
    starts a quick action; it is cut at ``max_chars`` (the executed notebook has all).
    """
    if result.outcome != "failed":
        return ""
    message = result.failure.message if result.failure else "failed"
    text = clean_text(render_failure(result))
    if len(text) > max_chars:
        text = text[:max_chars].rstrip() + "\n… (cut; see the executed notebook)"
    body = "\n".join("    " + line if line.strip() else "" for line in text.splitlines())
    summary = f"{FAIL_MARK} {_html(result.case_id)} — {_html(short_reason(message, 160))}"
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def figures_markdown(
    results: Iterable[CaseResult],
    url_for: Callable[[str], str] | None = None,
    case_label: Callable[[CaseResult], str] | None = None,
) -> str:
    """Every recorded figure, per case: the case's label on its own line, then its figures side
    by side (GitLab's ``{width=…}`` image attribute), "" when there are none.

    ``url_for`` maps a figure path (as in ``CaseResult.figures``, repository-relative) to the
    link to use: a path relative to the markdown file, or an uploaded file's URL.
    """
    label = case_label or (lambda r: r.case_id)
    blocks = []
    for result in results:
        if not result.figures:
            continue
        width = f"{max(30, 96 // len(result.figures))}%" if len(result.figures) > 1 else "60%"
        images = " ".join(
            f"![{md_cell(name)}]({link_target((url_for or str)(path))}){{width={width}}}"
            for name, path in result.figures.items()
        )
        blocks.append(f"**{md_cell(label(result))}**\n\n{images}")
    return "\n\n".join(blocks)


def counts(results: Iterable[CaseResult]) -> dict[str, int]:
    """How many results ended in each outcome: {"failed": n, "passed": n, "skipped": n}."""
    tally = {"failed": 0, "passed": 0, "skipped": 0}
    for result in results:
        tally[result.outcome] = tally.get(result.outcome, 0) + 1
    return tally


def verdict(results: Iterable[CaseResult]) -> str:
    """The outcome counts, worst first: "❌ 1 failed · ✅ 2 passed · ⏭ 1 skipped" ("no cases")."""
    parts = [f"{OUTCOME_MARKS.get(k, '?')} {n} {k}" for k, n in counts(results).items() if n]
    return " · ".join(parts) or "no cases"


def gates_summary(results: Iterable[CaseResult]) -> str:
    """Every gate of ``results`` by state: "2 gates passed, 1 not checked (no release yet)",
    "1 gate failed, 3 passed"; "" when they have none. Not checked is counted on its own,
    with why, never among the passed."""
    checks = [c for r in results for c in r.thresholds]
    if not checks:
        return ""
    tally = gate_counts(checks)
    parts = []
    for state in ("failed", "passed", NOT_CHECKED):
        n = tally[state]  # type: ignore[index]
        if not n:
            continue
        noun = "" if parts else (" gate" if n == 1 else " gates")
        text = f"{n}{noun} {state}"
        if state == NOT_CHECKED:
            reasons = list(dict.fromkeys(not_checked_reason(c.reason) for c in checks
                                         if not c.checked))
            text += f" ({md_cell(reasons[0] + ('; …' if len(reasons) > 1 else ''))})"
        parts.append(text)
    return ", ".join(parts)


def overall_mark(results: Iterable[CaseResult]) -> str:
    """❌ when any case failed, ✅ when at least one passed and none failed, else ⏭."""
    tally = counts(results)
    if tally["failed"]:
        return FAIL_MARK
    return PASS_MARK if tally["passed"] else SKIP_MARK


def rule_checks_text(
    result: CaseResult, comparison: Comparison | None = None, *, max_metrics: int = 6
) -> str:
    """Plain-text metrics vs rules for one case (the terminal line):
    "roc_auc 0.9931 ≥ 0.95  log_loss 0.3 ≤ 0.25 ✗ (+0.0100)  f1 0.91 ≥ baseline – not checked
    (no baseline given)".

    Only metrics with a rule are listed; a case without rules lists its first ``max_metrics``
    recorded metrics. Deltas are added when ``comparison`` knows them. A rule that held has no
    mark, a failed one "✗", one not checked says so and why: it never reads as held.
    """
    checks = _checks(result)
    deltas = (comparison or {}).get(result.case_id, {})
    names = list(checks) or list(result.metrics)[:max_metrics]
    parts = []
    for name in names:
        text = f"{name} {fmt_number(result.metrics.get(name))}"
        check = checks.get(name)
        if check is not None:
            text += f" {fmt_rule(check.rule)}"
            if check.failed:
                text += " ✗"
            elif not check.checked:
                text += f" – not checked ({not_checked_reason(check.reason)})"
        delta = deltas.get(name)
        if delta is not None and delta.text:
            text += f" ({delta.text})"
        parts.append(text)
    return "  ".join(parts)


_SQLITE = "sqlite:///"


def _here(cwd: Path, command: str) -> str:
    """``command`` as it runs from ``cwd`` in a fresh shell: the environment's own copy
    (``.venv/bin/mlflow``), since a shell without the environment activated finds none."""
    bin_dir = Path(sys.executable).parent
    if (bin_dir / command).exists():
        shown = display_path(bin_dir / command, cwd)
        return shown if "/" in shown else f"./{shown}"
    return command


def mlflow_hint(results: Sequence[CaseResult], cwd: Path) -> str | None:
    """How to look at the cases' MLflow runs: the ``mlflow ui`` command for a local store,
    the first run's URL for a server; None when no result was tracked."""
    tracked = [r.tracking for r in results if r.tracking is not None]
    if not tracked:
        return None
    for tracking in tracked:
        uri = tracking.tracking_uri or ""
        if uri.startswith(_SQLITE):
            db = Path(uri[len(_SQLITE):])
            shown = display_path(db, cwd) if db.is_absolute() else db.as_posix()
            return f"{_here(cwd, 'mlflow')} ui --backend-store-uri {_SQLITE}{shown}"
    for tracking in tracked:
        if tracking.url:
            return tracking.url
    uri = tracked[0].tracking_uri
    return f"tracking URI {uri}" if uri else f"run {tracked[0].run_id}"
