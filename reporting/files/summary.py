"""``summary.md``: the run for a human reader, verdict first, then the case table and details."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from nbgate.contract.ci_context import CIContext
from nbgate.contract.model import CaseResult, case_labels
from reporting.files.baseline import Baseline, apply_baseline, baseline_line
from reporting.files.markdown import (
    failure_details,
    figures_markdown,
    gates_summary,
    link,
    link_target,
    md_cell,
    md_safe,
    mlflow_hint,
    results_tables,
    verdict,
)


def render_summary(
    results: Sequence[CaseResult],
    *,
    pipeline: CIContext | None = None,
    baseline: Baseline | None = None,
    baseline_reason: str | None = None,
    interrupted: bool = False,
    not_run: Sequence[str] = (),
    link_for: Callable[[str], str] = str,
    root: Path | None = None,
    incomplete: str | None = None,
) -> str:
    """The markdown of summary.md.

    ``baseline_reason`` says why there is no baseline (when ``baseline`` is None); ``not_run``
    lists collected cases that never reported (an interrupted session); ``link_for`` turns a
    repository-relative path (figure, executed notebook) into a link relative to summary.md;
    ``root`` (the repository root) lets a local MLflow store's ``mlflow ui`` command be shown;
    ``incomplete`` says that merged shard reports miss shards ("incomplete: shard 2/3 missing,
    10 cases not run"), whose cases are then ``not_run``.
    """
    comparison = apply_baseline(results, baseline)
    noun = "case" if len(results) == 1 else "cases"
    gates = gates_summary(r for r in results if r.outcome != "skipped")
    parts = [f"# nbgate summary\n\n**{verdict(results)}** — {len(results)} {noun}"
             + (f"; gates: {gates}" if gates else "")]
    if incomplete:
        line = f"⚠️ **{md_cell(incomplete)}**: the job of each missing shard failed or was " \
            "cancelled before keeping its reports"
        if not_run:
            line += f"; not run: {md_cell(', '.join(not_run))}"
        parts.append(line + ".")
    if interrupted:
        line = "⚠️ **The session was interrupted**: these reports hold the cases that finished"
        if not_run:
            line += f"; {len(not_run)} did not run: {md_cell(', '.join(not_run))}"
        parts.append(line + ".")
    labels = case_labels(results)
    if results:
        parts.append(results_tables(results, comparison=comparison, reason_limit=100,
                                    case_label=lambda r: labels[r.case_id]))
        parts.append(baseline_line(baseline, results, baseline_reason))
    else:
        parts.append("No notebook case reported a result.")
    failures = [failure_details(r) for r in results if r.outcome == "failed"]
    if failures:
        parts.append("## Failures\n\n" + "\n\n".join(failures))
    figures = figures_markdown(results, link_for, lambda r: labels[r.case_id])
    if figures:
        parts.append("## Figures\n\n" + figures)
    parts.append(_links(results, pipeline, link_for, root))
    return md_safe("\n\n".join(p for p in parts if p).rstrip() + "\n")


def _links(
    results: Sequence[CaseResult],
    pipeline: CIContext | None,
    link_for: Callable[[str], str],
    root: Path | None,
) -> str:
    lines = []
    if pipeline is not None and pipeline.ci:
        bits = []
        if pipeline.pipeline_id:
            bits.append(link(f"#{pipeline.pipeline_id}", pipeline.pipeline_url, "Pipeline "))
        if pipeline.job_name:
            bits.append(link(pipeline.job_name, pipeline.job_url, "job "))
        if pipeline.commit_short_sha:
            bits.append(f"commit `{md_cell(pipeline.commit_short_sha)}`")
        if bits:
            lines.append("- " + ", ".join(bits))
    runs = [r for r in results if r.tracking is not None]
    for result in runs:
        tracking = result.tracking
        assert tracking is not None
        target = link(f"run {tracking.run_id}", tracking.url, "")
        lines.append(f"- MLflow {md_cell(result.case_id)}: {target}")
    hint = mlflow_hint(results, root) if root is not None else None
    if hint and hint.startswith("mlflow ui"):
        lines.append(f"- MLflow UI (local store, from the repository root): `{hint}`")
    notebooks = [r for r in results if r.executed_notebook]
    if notebooks:
        links = ", ".join(
            f"[{md_cell(r.case_id)}]({link_target(link_for(r.executed_notebook or ''))})"
            for r in notebooks
        )
        lines.append(f"- Executed notebooks: {links}")
    return "## Links\n\n" + "\n".join(lines) if lines else ""
