"""The files a session leaves in the reports folder: summary.md, junit.xml, metrics.json,
metrics.txt and (when runs have MLflow links) annotations.json.

Each file is written on its own, atomically: one that fails to render must not cost the others,
since later CI jobs publish from whatever is there.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import dumps_metrics, metrics_document
from nbgate.contract.files import write_text_atomic
from nbgate.contract.model import CaseResult, case_labels
from nbgate.contract.session import SessionResults
from nbgate.contract.text import fmt_number
from reporting.files.baseline import Baseline, Comparison, apply_baseline
from reporting.files.incomplete import MissingShard, incomplete_line
from reporting.files.junit import junit_xml
from reporting.files.markdown import is_web_url
from reporting.files.summary import render_summary

REPORT_FILES = ("summary.md", "junit.xml", "metrics.json", "metrics.txt")
ANNOTATIONS = "annotations.json"
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class Written:
    """What ``write_reports`` produced: the files, the lines for the ones that failed, and the
    comparison with the baseline (the terminal shows it too)."""

    files: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    comparison: Comparison = field(default_factory=dict)


def write_reports(
    session: SessionResults,
    *,
    baseline: Baseline | None = None,
    baseline_reason: str | None = None,
    pipeline: CIContext | None = None,
) -> Written:
    """Write every report file of ``session`` into its reports folder."""
    results = session.ordered()
    reports, root = session.reports, session.root
    pipeline = pipeline or CIContext.from_env()
    written = Written(comparison=apply_baseline(results, baseline))
    not_run = session.not_run()
    missing = [MissingShard.from_dict(m) for m in session.missing_shards]
    incomplete = incomplete_line(missing)
    # A missing shard's cases are errors in junit.xml: the test widget must not show a whole run.
    never_ran = {case: f"not run: {shard.name} missing (its job left no reports)"
                 for shard in missing for case in shard.cases}

    def link_for(path: str) -> str:
        return Path(os.path.relpath(root / path, reports)).as_posix()

    shard = {"index": session.shard[0], "total": session.shard[1]} if session.shard else None
    reports_dir = _inside(reports, root)
    renderers: dict[str, Callable[[], str]] = {
        "summary.md": lambda: render_summary(
            results, pipeline=pipeline, baseline=baseline, baseline_reason=baseline_reason,
            interrupted=session.interrupted, not_run=not_run, link_for=link_for, root=root,
            incomplete=incomplete),
        "junit.xml": lambda: junit_xml(results, not_run=never_ran),
        "metrics.json": lambda: dumps_metrics(metrics_document(
            results if reports_dir is not None else [_from_reports(r, reports) for r in results],
            pipeline=pipeline,
            baseline=_baseline_record(baseline, results),
            interrupted=session.interrupted, not_run=not_run, shard=shard,
            case_baselines=case_baselines(baseline, results),
            reports_dir=reports_dir, missing_shards=session.missing_shards)),
        "metrics.txt": lambda: metrics_txt(results, incomplete=incomplete, not_run=len(not_run)),
    }
    links = annotations(results)
    if links is not None:
        renderers[ANNOTATIONS] = lambda: json.dumps(links, indent=2) + "\n"
    else:
        (reports / ANNOTATIONS).unlink(missing_ok=True)  # a stale one would link older runs
    for name, render in renderers.items():
        try:
            write_text_atomic(reports / name, render())
        except Exception as exc:  # one broken file must not cost the others
            written.errors.append(f"{reports / name}: {type(exc).__name__}: {exc}")
        else:
            written.files.append(reports / name)
    return written


def _inside(reports: Path, root: Path) -> str | None:
    """metrics.json's ``reports_dir``: the reports folder from the repository root, or None
    when it lies outside (``--nbgate-reports /tmp/x``)."""
    try:
        return reports.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def _from_reports(result: CaseResult, reports: Path) -> CaseResult:
    """A result whose files lie in a reports folder outside the repository, with their paths
    relative to that folder: the form metrics.json's schema reads when ``reports_dir`` is null
    (an absolute path would name a folder of one machine only)."""

    def relative(path: str) -> str:
        try:
            return Path(path).resolve().relative_to(reports.resolve()).as_posix()
        except ValueError:
            return path

    return replace(
        result,
        executed_notebook=relative(result.executed_notebook) if result.executed_notebook
        else None,
        figures={name: relative(path) for name, path in result.figures.items()})


def _baseline_record(baseline: Baseline | None, results: Sequence[CaseResult]) \
        -> dict[str, Any] | None:
    """metrics.json's "baseline": where the compared metrics came from (the first used)."""
    if baseline is None:
        return None
    used = baseline.used_by(results) or baseline.infos
    return used[0].to_dict() if used else None


def case_baselines(baseline: Baseline | None, results: Sequence[CaseResult]) \
        -> dict[str, dict[str, Any]]:
    """Per case, the baseline it was compared with (where from, and its metrics): metrics.json
    keeps it, so ``publish mr`` shows the baseline this run used, not whatever is newest."""
    if baseline is None:
        return {}
    found = {}
    for result in results:
        match = baseline.match(result)
        if match is not None and result.outcome != "skipped":
            info, case = match
            found[result.case_id] = {**info.to_dict(), "metrics": dict(case.metrics)}
    return found


def annotations(results: Sequence[CaseResult]) -> dict[str, Any] | None:
    """GitLab's annotations report: an external link to each case's MLflow run, or None."""
    links = [
        {"external_link": {"label": f"MLflow run: {r.case_id}", "url": r.tracking.url}}
        for r in results
        if r.tracking is not None and is_web_url(r.tracking.url)
    ]
    return {"mlflow": links} if links else None


def metric_prefixes(results: Sequence[CaseResult]) -> dict[str, str]:
    """A unique, safe metric-name prefix per case id, from the case's unique label:
    ``training_example.train.cpu`` (``notebooks.a.train.train.cpu`` when names clash)."""
    prefixes = {}
    for case_id, label in case_labels(results).items():
        text = label.replace(".ipynb", "").replace(" · ", ".").replace("::", ".").replace("/", ".")
        text = text.replace("[", ".").replace("]", "")
        prefixes[case_id] = _UNSAFE_NAME.sub("_", text).strip("_.") or "case"
    return prefixes


def metrics_txt(results: Sequence[CaseResult], *, incomplete: str | None = None,
                not_run: int = 0) -> str:
    """GitLab's metrics report: one ``<case prefix>.<metric> <value>`` line per recorded metric,
    the value at 4 significant digits (GitLab compares the text with the target branch, so noise
    below that would show as a change).

    Incomplete merged reports say so first: a ``#`` comment line with the words (GitLab's parser,
    ee/lib/gitlab/ci/parsers/metrics/generic.rb, strips ``#.*$`` from each line and skips what
    is left blank) and ``nbgate.cases_not_run``, a metric the widget shows."""
    prefixes = metric_prefixes(results)
    lines = []
    if incomplete:
        lines += [f"# nbgate: {incomplete}", f"nbgate.cases_not_run {not_run}"]
    for result in results:
        for name, value in result.metrics.items():
            metric = _UNSAFE_NAME.sub("_", name)
            lines.append(f"{prefixes[result.case_id]}.{metric} {fmt_number(value)}")
    return "".join(line + "\n" for line in lines)
