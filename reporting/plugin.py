"""The reporting pytest plugin: at session end, the reports folder gets junit.xml, summary.md,
metrics.json, metrics.txt (and annotations.json when runs have MLflow links), and the terminal a
short "nbgate" section.

Results travel on call-phase reports (``nbgate.plugin.results_from_report``), so this plugin sees
every case once, also under pytest-xdist, where only the controller collects and writes. Files
are written in ``pytest_sessionfinish``, which also runs after failures, ``-x`` and Ctrl-C; they
are written only when the session ran (or was about to run) notebook cases, so ``pytest tests/``
in a project does not overwrite the last training run's reports with empty ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nbgate.ci_context import CIContext
from nbgate.plugin import NotebookCase, results_from_report, state_key
from nbgate.result import CaseResult
from reporting.baseline import (
    ENV_VAR,
    Baseline,
    Comparison,
    apply_baseline,
    load_baseline,
)
from reporting.format import clean_text
from reporting.junit import write_junit
from reporting.metrics_file import (
    MetricsFileError,
    build_metrics,
    metrics_txt,
    write_metrics_json,
    write_text_atomic,
)
from reporting.summary import render_summary
from reporting.terminal import case_lines, files_line

REPORT_FILES = ("summary.md", "junit.xml", "metrics.json", "metrics.txt")
ANNOTATIONS = "annotations.json"


@dataclass
class Collected:
    """What the controller gathered during the session, and what it wrote at the end."""

    results: dict[str, CaseResult] = field(default_factory=dict)  # by case id, arrival order
    expected: dict[str, None] = field(default_factory=dict)  # collected notebook case ids
    written: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    baseline: Baseline | None = None
    baseline_reason: str | None = None  # why a requested baseline could not be read
    comparison: Comparison = field(default_factory=dict)
    interrupted: bool = False

    def ordered(self) -> list[CaseResult]:
        """Collection order for collected cases, then fixture runs by id: the same under xdist."""
        position = {case_id: i for i, case_id in enumerate(self.expected)}
        return sorted(
            self.results.values(),
            key=lambda r: (0, position[r.case_id], "") if r.case_id in position
            else (1, 0, r.case_id),
        )

    def not_run(self) -> list[str]:
        return [case_id for case_id in self.expected if case_id not in self.results]


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nbgate", "notebook pipelines (nbgate)")
    group.addoption(
        "--nbgate-baseline",
        default=os.environ.get(ENV_VAR) or None,
        metavar="PATH",
        help="a metrics.json to compare metrics with; summary.md shows each metric's change "
        f"(also {ENV_VAR})",
    )


def pytest_configure(config: pytest.Config) -> None:
    if _is_worker(config):
        return  # workers only run cases; their reports reach the controller's plugin
    config.pluginmanager.register(SessionReporter(config, Collected()), "nbgate-reporting-session")


class SessionReporter:
    """The per-session hooks; registered on the controller (or the only process) only."""

    def __init__(self, config: pytest.Config, collected: Collected) -> None:
        self.config = config
        self.collected = collected

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            if isinstance(item, NotebookCase):
                self.collected.expected[item.case.id] = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # Under xdist the controller collects nothing; every worker reports the same node ids.
        for nodeid in ids:
            if ".ipynb::" in nodeid:
                self.collected.expected.setdefault(nodeid, None)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            for result in results_from_report(report):
                self.collected.results[result.case_id] = result

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.config.option.collectonly:
            return
        collected = self.collected
        state = self.config.stash.get(state_key, None)
        if state is None or not (collected.results or collected.expected):
            return
        collected.interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        _load_baseline(self.config, collected)
        collected.errors += write_reports(collected, state.reports, state.root)
        if collected.errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        collected = self.collected
        if collected.results or collected.errors:
            write_terminal_section(terminalreporter, collected,
                                   Path(self.config.invocation_params.dir))


def _load_baseline(config: pytest.Config, collected: Collected) -> None:
    path = config.getoption("nbgate_baseline")
    if not path:
        return
    try:
        collected.baseline = load_baseline(Path(config.invocation_params.dir, path), path)
    except MetricsFileError as exc:
        collected.baseline_reason = clean_text(str(exc))


def write_reports(collected: Collected, reports: Path, root: Path) -> list[str]:
    """Write every report file into ``reports``; returns one line per file that failed."""
    results = collected.ordered()
    collected.comparison = apply_baseline(results, collected.baseline)
    pipeline = CIContext.from_env()

    def link_for(path: str) -> str:
        return Path(os.path.relpath(root / path, reports)).as_posix()

    writers: dict[str, Callable[[Path], object]] = {
        "summary.md": lambda p: write_text_atomic(p, render_summary(
            results, pipeline=pipeline, baseline=collected.baseline,
            baseline_reason=collected.baseline_reason, interrupted=collected.interrupted,
            not_run=collected.not_run(), link_for=link_for, root=root)),
        "junit.xml": lambda p: write_junit(p, results),
        "metrics.json": lambda p: write_metrics_json(p, build_metrics(
            results, pipeline.to_dict(),
            collected.baseline.info.to_dict() if collected.baseline else None,
            interrupted=collected.interrupted)),
        "metrics.txt": lambda p: write_text_atomic(p, metrics_txt(results)),
    }
    links = annotations(results)
    if links is not None:
        writers[ANNOTATIONS] = lambda p: write_text_atomic(p, json.dumps(links, indent=2) + "\n")
    else:
        (reports / ANNOTATIONS).unlink(missing_ok=True)  # a stale one would link older runs
    errors = []
    for name, write in writers.items():
        try:
            write(reports / name)
        except Exception as exc:  # one broken file must not cost the others
            errors.append(f"{reports / name}: {type(exc).__name__}: {exc}")
        else:
            collected.written.append(reports / name)
    return errors


def annotations(results: list[CaseResult]) -> dict[str, Any] | None:
    """GitLab's annotations report: an external link to each case's MLflow run, or None."""
    links = [
        {"external_link": {"label": f"MLflow run: {r.case_id}", "url": r.tracking.url}}
        for r in results
        if r.tracking is not None and (r.tracking.url or "").startswith(("http://", "https://"))
    ]
    return {"mlflow": links} if links else None


def write_terminal_section(tr: Any, collected: Collected, cwd: Path) -> None:
    """The "nbgate" section: one line per case, cases that did not run, baseline, files."""
    results = collected.ordered()
    tr.write_sep("─", "nbgate")
    colour = {"passed": {"green": True}, "failed": {"red": True}, "skipped": {"yellow": True}}
    for result, line in zip(results, case_lines(results, collected.comparison), strict=True):
        tr.write_line(line, **colour.get(result.outcome, {}))
    not_run = collected.not_run()
    if not_run:
        why = "the session was interrupted" if collected.interrupted else "no result"
        tr.write_line(f"{len(not_run)} not run ({why}): {', '.join(not_run)}", yellow=True)
    if collected.baseline is not None:
        tr.write_line(f"baseline: {collected.baseline.info.source}")
    elif collected.baseline_reason:
        tr.write_line(f"No baseline: {collected.baseline_reason}", yellow=True)
    for error in collected.errors:
        tr.write_line(f"nbgate: could not write {error}", red=True)
    shown = sorted((p for p in collected.written if p.name in REPORT_FILES),
                   key=lambda p: REPORT_FILES.index(p.name))
    if shown:
        tr.write_line(files_line(shown, cwd, results))
