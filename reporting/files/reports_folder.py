"""The reports being published: one or more metrics.json files and the files they name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import ResultsFileError, load_metrics
from nbgate.contract.model import KINDS, CaseResult, preferred
from reporting.errors import PublishSkipped, PublishUsageError


@dataclass
class RunReports:
    """One metrics.json: the run's CI context (of the job that ran pytest), its cases."""

    folder: Path
    pipeline: CIContext
    results: list[CaseResult]
    generated_at: str | None = None  # "2026-11-27T06:00:00Z"
    interrupted: bool = False
    not_run: list[str] = field(default_factory=list)
    # case id -> the baseline the run compared it with, as metrics.json recorded it
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_reports(folders: Sequence[Path]) -> list[RunReports]:
    """Read ``<folder>/metrics.json`` for each folder; a folder without one but with job
    folders below it (``nbgate-jobs/<job>/metrics.json``, as the CI keeps them) reads those."""
    runs: list[RunReports] = []
    for folder in folders:
        if not folder.is_dir():
            raise PublishUsageError(
                f"reports folder {folder} does not exist: the train/score job (pytest) must run "
                "first and pass its reports on as artifacts")
        files = [folder / "metrics.json"]
        if not files[0].is_file():
            files = sorted(folder.glob("*/metrics.json"))
        if not files:
            raise PublishUsageError(
                f"{folder / 'metrics.json'} is missing: the train/score job (pytest) must run "
                "first and write its reports there")
        for path in files:
            runs.append(_read_run(path))
    return runs


def _read_run(path: Path) -> RunReports:
    try:
        read = load_metrics(path)
    except ResultsFileError as exc:
        raise PublishUsageError(str(exc)) from None
    return RunReports(path.parent, read.pipeline, read.cases, read.generated_at,
                      read.interrupted, read.not_run, read.case_baselines)


def results_of_kind(runs: Sequence[RunReports], kind: str) -> list[CaseResult]:
    """The cases of one kind across runs, once per case id (a later run wins, but a skipped
    result never hides a real one: the GPU job may skip what the CPU job ran)."""
    chosen: dict[str, CaseResult] = {}
    for run in runs:
        for result in run.results:
            if result.kind != kind:
                continue
            chosen[result.case_id] = preferred(chosen.get(result.case_id), result)
    return list(chosen.values())


def kinds_to_publish(
    runs: Sequence[RunReports], kind: str | None, folders: Sequence[Path], nothing: str
) -> list[str]:
    """The kinds a publish command works on, or PublishSkipped when the reports hold none."""
    kinds = [kind] if kind else kinds_in(runs)
    if not kinds or not any(results_of_kind(runs, k) for k in kinds):
        what = f"no {kind} cases" if kind else "no train or score cases"
        raise PublishSkipped(f"{what} in {', '.join(map(str, folders))}: {nothing}")
    return kinds


def kinds_in(runs: Sequence[RunReports]) -> list[str]:
    """train/score kinds present, in that order."""
    present = {r.kind for run in runs for r in run.results}
    return [k for k in KINDS if k in present]


def run_context(runs: Sequence[RunReports], env_ctx: CIContext) -> CIContext:
    """The CI context to link to: the first run's (its job holds the artifacts), with pipeline
    and commit filled from this job's environment when the run did not record them."""
    ctx = runs[0].pipeline if runs else CIContext()
    fill = {
        name: getattr(env_ctx, name)
        for name in ("pipeline_id", "pipeline_url", "commit_sha", "commit_short_sha",
                     "project_url", "default_branch", "project_path", "server_url")
        if getattr(ctx, name) is None and getattr(env_ctx, name) is not None
    }
    return CIContext.from_dict({**ctx.to_dict(), **fill})


def resolve_file(path: str, reports: Path) -> Path | None:
    """Find a file a result names (a figure, an executed notebook) inside the reports folder.

    Paths in metrics.json are relative to the repository root of the job that ran pytest, and
    the CI copies reports to other folders (nbgate-jobs/<job>/), so the part from "figures" or
    "notebooks" on is looked up under ``reports``. Nothing outside the reports folder is ever
    read, whatever a results file says (it may come from anywhere).
    """
    parts = Path(path).parts
    base = reports.resolve()
    for marker in ("figures", "notebooks"):
        if marker not in parts:
            continue
        candidate = reports.joinpath(*parts[parts.index(marker):]).resolve()
        if candidate.is_relative_to(base) and candidate.is_file():
            return candidate
    return None
