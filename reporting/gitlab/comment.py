"""The sticky merge request comment: verdict and deltas first, then the table, then details.

Pure rendering: ``render_comment(CommentData)`` returns the note body. The pieces (numbers,
deltas, the case table, failure blocks, image links) come from ``reporting.files.markdown`` so the
comment agrees with summary.md. The body starts with a hidden marker (``<!-- nbgate:train -->``)
that ``publish_mr`` finds the note by, and ends with a hidden state line holding the cases it
shows, so that the jobs of one pipeline (CPU, GPU), published one after the other, add up in one
comment instead of overwriting each other.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import case_from_json, case_to_json
from nbgate.contract.json_file import parse_json
from nbgate.contract.model import CaseResult, case_labels, preferred
from nbgate.contract.text import fmt_number
from reporting.files.baseline import BaselineInfo, Comparison, MetricDelta
from reporting.files.markdown import (
    FAIL_MARK,
    counts,
    failure_details,
    figures_markdown,
    first_clause,
    fmt_rule,
    gates_summary,
    is_web_url,
    link,
    md_cell,
    md_safe,
    overall_mark,
    results_tables,
    short_reason,
)

KIND_WORDS = {"train": "Training", "score": "Scoring"}
# GitLab refuses a note longer than 1,000,000 characters (MAX_TEXT_SIZE_LIMIT in
# lib/gitlab/database.rb, checked by Note's `validates :note, length: {maximum: ...}`). Every
# part of the body below is capped so that the whole stays well below it at any number of cases:
# the rest is in summary.md, linked from the comment.
NOTE_LIMIT = 1_000_000
MAX_TABLE_ROWS = 100  # cases in the table (failed first); their links and causes likewise
MAX_FAILURE_BLOCKS = 10
MAX_FIGURES = 100  # images in the comment (failed cases' first), and so uploads per comment
MAX_STATE_CHARS = 200_000  # above this the state is left out (jobs then overwrite each other)
_STATE_PREFIX = "<!-- nbgate:state "
_STATE_SUFFIX = " -->"


def marker(kind: str) -> str:
    """The hidden first line that identifies nbgate's comment for ``kind``."""
    return f"<!-- nbgate:{kind} -->"


def is_comment_for(body: str, kind: str) -> bool:
    """Whether a note is nbgate's comment for ``kind``: the marker is its first line (a reply
    quoting our comment has it after "> " and is not ours)."""
    return body.lstrip().split("\n", 1)[0].strip() == marker(kind)


@dataclass
class CommentCase:
    """One case as the comment shows it, and as the hidden state remembers it."""

    result: CaseResult
    base: dict[str, float | None] | None = None  # the baseline's metrics for this case
    figures: dict[str, str] = field(default_factory=dict)  # figure path -> link
    job_name: str | None = None  # the job that ran it (its artifacts hold the notebook)
    job_url: str | None = None


@dataclass
class CommentData:
    kind: str
    pipeline: CIContext  # pipeline and commit to link to
    cases: list[CommentCase]
    baselines: list[BaselineInfo] = field(default_factory=list)  # distinct, in case order
    no_baseline: str | None = None  # why cases have no baseline, said once
    # merged shards: "incomplete: shard 2/3 missing, 10 cases not run", and those cases
    incomplete: str | None = None
    not_run: list[str] = field(default_factory=list)


# -- the hidden state ------------------------------------------------------------------------


def encode_state(data: CommentData) -> str:
    """The state line, or "" when it would be too big to carry."""
    document = {
        "v": 2,  # 2: cases in the codec's schema-2 shape
        "kind": data.kind,
        "pipeline_id": data.pipeline.pipeline_id,
        "baselines": [b.to_dict() for b in data.baselines],
        "no_baseline": data.no_baseline,
        "cases": [_case_state(c) for c in data.cases],
    }
    packed = zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 9)
    text = base64.b64encode(packed).decode()  # no "--" and no leading "/" can appear in it
    return "" if len(text) > MAX_STATE_CHARS else f"{_STATE_PREFIX}{text}{_STATE_SUFFIX}"


def _case_state(case: CommentCase) -> dict[str, Any]:
    data = case_to_json(case.result)
    data.pop("parameters", None)  # not shown; keeps the state small
    failure = data.get("failure")
    if failure:
        for key, limit in (("traceback", 4000), ("source", 2000), ("message", 1000)):
            if isinstance(failure.get(key), str) and len(failure[key]) > limit:
                failure[key] = failure[key][-limit:] if key == "traceback" else failure[key][:limit]
    base = None
    if case.base is not None:
        base = {k: (v if _finite(v) else None) for k, v in case.base.items()}
    return {"result": data, "base": base, "figures": case.figures,
            "job_name": case.job_name, "job_url": case.job_url}


def decode_state(body: str) -> dict[str, Any] | None:
    """The state a previous comment carried; None when absent or unreadable (then the new
    comment simply starts over)."""
    for line in reversed(body.split("\n")):
        line = line.strip()
        if line.startswith(_STATE_PREFIX) and line.endswith(_STATE_SUFFIX):
            try:
                raw = base64.b64decode(line[len(_STATE_PREFIX):-len(_STATE_SUFFIX)], validate=True)
                document = parse_json(zlib.decompress(raw), "the comment's state")
            except (ValueError, zlib.error):  # JSONFileError is a ValueError
                return None
            return document if isinstance(document, dict) and document.get("v") == 2 else None
    return None


def merge_previous(data: CommentData, previous: Mapping[str, Any] | None) -> CommentData:
    """Add the cases a previous comment showed for the same pipeline and kind (another job's),
    so the comment shows the whole pipeline. A different pipeline starts over."""
    if (
        not previous
        or previous.get("kind") != data.kind
        or not data.pipeline.pipeline_id
        or str(previous.get("pipeline_id")) != str(data.pipeline.pipeline_id)
    ):
        return data
    current = {c.result.case_id: c for c in data.cases}
    old_cases = [raw for raw in previous.get("cases") or []
                 if isinstance(raw, dict) and isinstance(raw.get("result"), dict)]
    for raw in old_cases:
        # A re-run of the same job: its figures are already uploaded.
        case = current.get(str(raw["result"].get("id")))
        if case is not None and not case.figures and isinstance(raw.get("figures"), dict):
            case.figures = {p: u for p, u in raw["figures"].items()
                            if p in case.result.figures.values() and isinstance(u, str)}
    merged: list[CommentCase] = []
    for raw in old_cases:
        try:
            old = CommentCase(case_from_json(raw["result"]), raw.get("base"),
                              dict(raw.get("figures") or {}), raw.get("job_name"),
                              raw.get("job_url"))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        new = current.pop(old.result.case_id, None)
        merged.append(old if new is None else
                      new if preferred(old.result, new.result) is new.result else old)
    merged += current.values()
    baselines = list(data.baselines)
    for raw in previous.get("baselines") or []:
        try:
            info = BaselineInfo.from_dict(raw)
        except (TypeError, ValueError):
            continue
        if info not in baselines:
            baselines.append(info)
    no_baseline = data.no_baseline or previous.get("no_baseline")
    return CommentData(data.kind, data.pipeline, merged, baselines, no_baseline)


# -- rendering -------------------------------------------------------------------------------


def comparison_of(cases: Sequence[CommentCase]) -> Comparison:
    """Deltas per case from the baseline metrics each case carries."""
    comparison: Comparison = {}
    for case in cases:
        result = case.result
        if case.base is None or result.outcome == "skipped":
            continue
        direction = {c.metric: c.rule.higher_is_better for c in result.thresholds}
        comparison[result.case_id] = {
            name: MetricDelta(value, _number(case.base.get(name)), name in case.base,
                              direction.get(name))
            for name, value in result.metrics.items()
        }
    return comparison


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def render_comment(data: CommentData) -> str:
    """The whole note body, safe to post (no line starts with "/", cells escaped), under
    GitLab's note limit however many cases there are."""
    body = _render(data, with_state=True)
    if len(body) > NOTE_LIMIT:
        body = _render(data, with_state=False)  # the jobs of a pipeline then overwrite
    if len(body) > NOTE_LIMIT:  # not reached by the caps above; a last guard, never a 400
        body = body[: NOTE_LIMIT - 200].rsplit("\n", 1)[0] + "\n\n… (cut: see summary.md)\n"
    return body


def _render(data: CommentData, *, with_state: bool) -> str:
    results = [c.result for c in data.cases]
    comparison = comparison_of(data.cases)
    parts = [marker(data.kind) + "\n" + headline(data.kind, results, comparison, data.baselines,
                                                 data.incomplete)]
    if data.incomplete:
        line = ("⚠️ The job of each missing shard failed or was cancelled before keeping its "
                "reports, so its cases are not in this comment")
        if data.not_run:
            line += f"; not run: {md_cell(', '.join(data.not_run))}"
        parts.append(line + ".")
    shown = _table_rows(results)
    labels = case_labels(results)
    if results:
        # No causes or links inside the table, so that it fits GitLab's 1000 px note column;
        # the causes follow it, the links are in "Links and context".
        parts.append(results_tables(shown, comparison=comparison, run_link=False,
                                    case_label=lambda r: labels[r.case_id], reason_limit=0))
        if len(shown) < len(results):
            parts.append(f"… and {len(results) - len(shown)} more cases (of {len(results)}): "
                         f"see {_summary_links(data.cases)}.")
    parts.append(_study_text(results))
    parts.append(_baseline_text(data))
    # How a case failed comes before the figures, which are large and push it out of view.
    failed = [r for r in results if r.outcome == "failed"]
    parts += [failure_details(r, max_chars=3000) for r in failed[:MAX_FAILURE_BLOCKS]]
    if len(failed) > MAX_FAILURE_BLOCKS:
        parts.append(f"… {len(failed) - MAX_FAILURE_BLOCKS} more failed cases: see "
                     f"{_summary_links(data.cases)}.")
    parts.append(_figures(data, labels))
    parts.append(_links(data, {r.case_id for r in shown}))
    parts.append(_footer(data.pipeline))
    state = encode_state(data) if with_state else ""
    if state:
        parts.append(state)
    return md_safe("\n\n".join(p for p in parts if p)) + "\n"


def shown_figures(cases: Sequence[CommentCase]) -> list[tuple[CommentCase, str, str]]:
    """The figures the comment shows, (case, name, path): failed cases' first, at most
    ``MAX_FIGURES``. Only these are uploaded."""
    ordered = sorted(cases, key=lambda c: c.result.outcome != "failed")  # stable: failed first
    chosen = [(case, name, path) for case in ordered
              for name, path in case.result.figures.items()]
    return chosen[:MAX_FIGURES]


def _figures(data: CommentData, labels: Mapping[str, str]) -> str:
    chosen = shown_figures(data.cases)
    paths: dict[str, dict[str, str]] = {}
    for case, name, path in chosen:
        if path in case.figures:
            paths.setdefault(case.result.case_id, {})[name] = path
    links = {path: url for c in data.cases for path, url in c.figures.items()}
    cases = {c.result.case_id: c.result for c, _, _ in chosen}
    shown = [replace(cases[case_id], figures=figures) for case_id, figures in paths.items()]
    text = figures_markdown(shown, lambda p: links.get(p, p), lambda r: labels[r.case_id])
    total = sum(len(c.result.figures) for c in data.cases)
    if text and total > len(chosen):
        text += (f"\n\n… {total - len(chosen)} more figures (at most {MAX_FIGURES} are shown, "
                 f"failed cases' first): see {_summary_links(data.cases)}.")
    return text


def _summary_links(cases: Sequence[CommentCase]) -> str:
    """Links to each job's full summary.md artifact, "summary.md in the job artifacts" when the
    jobs are not known. The reports folder is where the case's executed notebook lives
    (``<reports>/notebooks/…``), as the job that ran it kept it."""
    links: dict[str, str] = {}
    for case in cases:
        path = case.result.executed_notebook or ""
        folder, found, _ = path.rpartition("notebooks/")
        if not (found and is_web_url(case.job_url) and case.job_name):
            continue
        links.setdefault(case.job_name, f"{(case.job_url or '').rstrip('/')}/artifacts/file/"
                                        f"{folder}summary.md")
    if not links:
        return "summary.md in the job artifacts"
    shown = [link(f"summary.md of {name}", url) for name, url in list(links.items())[:20]]
    more = f" and {len(links) - 20} more jobs" if len(links) > 20 else ""
    return ", ".join(shown) + more


def _table_rows(results: Sequence[CaseResult]) -> list[CaseResult]:
    """All cases, or (when there are too many) every failed one first, then the others."""
    if len(results) <= MAX_TABLE_ROWS:
        return list(results)
    failed = [r for r in results if r.outcome == "failed"]
    others = [r for r in results if r.outcome != "failed"]
    return (failed + others)[:MAX_TABLE_ROWS]


def headline(
    kind: str,
    results: Sequence[CaseResult],
    comparison: Comparison,
    baselines: Sequence[BaselineInfo] = (),
    incomplete: str | None = None,
) -> str:
    """"### ✅ Training passed — 1 case, 2 gates passed, 1 not checked (no release yet);
    roc_auc 0.9931 (≥ 0.95), +0.0042 ▲ vs release 1.0.0"; for a failed run the failing case's
    cause: "### ❌ Training failed — 1 of 1 case failed: ValueError in cell 6: bad input"; with
    shards missing "### ⚠️ Training incomplete: shard 2/3 missing, 10 cases not run — …"."""
    word = KIND_WORDS.get(kind, kind.title())
    tally = counts(results)
    total = len(results)
    noun = "case" if total == 1 else "cases"
    if not results:
        return f"### {overall_mark(results)} {word}: no cases reported"
    if tally["failed"]:
        failed = [r for r in results if r.outcome == "failed"]
        summary = f"{tally['failed']} of {total} {noun} failed"
        cause = _failed_cause(failed[0], comparison, baselines)
        if total == 1:
            return f"### {FAIL_MARK} {word} failed — {summary}: {cause}"
        label = case_labels(results)[failed[0].case_id]
        return f"### {FAIL_MARK} {word} failed — {summary}, first {md_cell(label)}: {cause}"
    if tally["passed"]:
        status = "passed"
        summary = f"{total} {noun}"
        if tally["skipped"]:
            summary = f"{tally['passed']} passed, {tally['skipped']} skipped"
        gates = gates_summary([r for r in results if r.outcome == "passed"])
        if gates:
            summary += f", {gates}"
    else:
        status = "skipped"
        summary = f"{total} {noun} skipped"
        reason = next((r.skip_reason for r in results if r.skip_reason), None)
        if reason:
            summary += f": {md_cell(first_clause(reason))}"
    text = f"### {overall_mark(results)} {word} {status} — {summary}"
    if incomplete:
        mark = overall_mark(results) if tally["failed"] else "⚠️"
        text = f"### {mark} {word} {md_cell(incomplete)} — {summary}"
    key = _key_metric(results, comparison, baselines)
    return f"{text}; {key}" if key else text


def _key_metric(
    results: Sequence[CaseResult], comparison: Comparison, baselines: Sequence[BaselineInfo]
) -> str:
    """The one number a reviewer wants for a run that passed: the first gated metric whose gate
    was checked (a rule that was not checked is no evidence), else the first recorded metric, of
    the best case, with its change against the baseline."""
    ran = [r for r in results if r.outcome == "passed"]
    gated = [c for r in ran for c in r.thresholds if c.checked]
    recorded = [m for r in ran for m in r.metrics]
    rule = gated[0].rule if gated else None
    name = gated[0].metric if gated else (recorded[0] if recorded else None)
    having = [r for r in ran if name is not None and _finite(r.metrics.get(name))]
    if name is None or not having:
        return ""
    lower_is_better = rule is not None and rule.higher_is_better is False
    best = (min if lower_is_better else max)(having, key=lambda r: r.metrics[name])
    text = f"{md_cell(name)} {fmt_number(best.metrics[name])}"
    if rule:
        text += f" ({fmt_rule(rule)})"
    return text + _delta(best, name, comparison, baselines)


def _failed_cause(
    first: CaseResult, comparison: Comparison, baselines: Sequence[BaselineInfo]
) -> str:
    """The cause of a failed case: its failure message ("ValueError in cell 6: bad input"),
    or for violated rules the first one with its gap and change. A side effect of an error (a
    metric the failing cell never recorded) never stands in for it."""
    failure = first.failure
    check = next((c for c in first.thresholds if c.failed), None)
    if check is None or (failure is not None and failure.kind != "thresholds"):
        return md_cell(short_reason(failure.message if failure else "failed", 160))
    # "roc_auc 0.9914 < 0.9999 (short by 0.0085)": the rule it broke and by how much.
    return md_cell(f"{check.metric} {check.reason}") + _delta(first, check.metric, comparison,
                                                               baselines)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _delta(
    result: CaseResult, name: str, comparison: Comparison, baselines: Sequence[BaselineInfo]
) -> str:
    delta = comparison.get(result.case_id, {}).get(name)
    if delta is None or delta.text in ("", "new", "n/a"):
        return ""
    if len(baselines) == 1 and baselines[0].version:
        where = f"release {baselines[0].version}"
    else:
        where = baselines[0].ref if len(baselines) == 1 and baselines[0].ref else "baseline"
    return f", {delta.text} vs {md_cell(where)}"


STUDY_TRIALS = "study_n_trials"  # the example's shared Optuna study (README: one study, N jobs)
OWN_TRIALS = "n_trials_completed"


def _study_text(results: Sequence[CaseResult]) -> str:
    """"Optuna study: 48 trials in all; this pipeline's jobs ran 12 + 12." when cases record
    the shared study's size: N jobs tuning one study each report only their own trials."""
    counted = [r for r in results if _finite(r.metrics.get(STUDY_TRIALS))]
    if not counted:
        return ""
    total = max(r.metrics[STUDY_TRIALS] for r in counted)
    own = [fmt_number(r.metrics[OWN_TRIALS]) for r in counted if _finite(r.metrics.get(OWN_TRIALS))]
    text = f"Optuna study: **{fmt_number(total)}** trials in all"
    return text + (f"; these jobs ran {' + '.join(own)}." if own else ".")


def _baseline_text(data: CommentData) -> str:
    lines = [("Compared with production: " if info.version else "Baseline: ")
             + f"{info.describe()}." for info in data.baselines]
    if data.no_baseline and not data.baselines:
        lines.append(f"No baseline: {md_cell(data.no_baseline)}; changes are not shown.")
    elif data.no_baseline:
        lines.append(f"Some cases have no baseline: {md_cell(data.no_baseline)}.")
    return "  \n".join(lines)


def _links(data: CommentData, shown: set[str]) -> str:
    """Pipeline, jobs and commit; the MLflow run and executed notebook of each case ``shown`` in
    the table (the others' are in summary.md)."""
    ctx = data.pipeline
    labels = case_labels(c.result for c in data.cases)
    cases = [c for c in data.cases if c.result.case_id in shown]
    lines = []
    bits = []
    if ctx.pipeline_id:
        bits.append("Pipeline " + link(f"#{ctx.pipeline_id}", ctx.pipeline_url))
    jobs = {c.job_name: c.job_url for c in data.cases if c.job_name}
    if jobs:
        label = "job" if len(jobs) == 1 else "jobs"
        named = list(jobs.items())[:MAX_TABLE_ROWS]
        more = f" and {len(jobs) - len(named)} more" if len(jobs) > len(named) else ""
        bits.append(f"{label} " + ", ".join(link(n, u) for n, u in named) + more)
    if ctx.commit_sha or ctx.commit_short_sha:
        bits.append(f"commit `{md_cell((ctx.commit_short_sha or ctx.commit_sha or '')[:8])}`")
    if bits:
        lines.append("- " + ", ".join(bits))
    for case in cases:
        tracking = case.result.tracking
        if tracking is not None and tracking.url:
            lines.append(f"- MLflow run: {link(labels[case.result.case_id], tracking.url)}")
    notebooks = []
    for case in cases:
        path = case.result.executed_notebook
        if not path:
            continue
        if is_web_url(case.job_url):
            url = f"{case.job_url.rstrip('/')}/artifacts/file/{path}"
            notebooks.append(link(labels[case.result.case_id], url))
        else:
            notebooks.append(f"`{md_cell(path)}`")
    if notebooks:
        lines.append("- Executed notebooks (job artifacts): " + ", ".join(notebooks))
    if not lines:
        return ""
    return ("<details><summary>Links and context</summary>\n\n" + "\n".join(lines)
            + "\n\n</details>")


def _footer(ctx: CIContext) -> str:
    where = f"pipeline {link('#' + ctx.pipeline_id, ctx.pipeline_url)}" if ctx.pipeline_id \
        else "a local run (no pipeline)"
    return f"_Updated by nbgate on every pipeline of this MR; last update: {where}._"
