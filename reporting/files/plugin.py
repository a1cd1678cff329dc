"""The reporting pytest plugin: at session end, the reports folder gets its files
(``reporting.files.report_files``) and the terminal a short "nbgate" section.

It reads the session's results through the harness's one accessor
(``nbgate.contract.session.session_results``), on the process that writes reports (the only
one, or the pytest-xdist controller). Files are written in ``pytest_sessionfinish``, which also
runs after failures, ``-x``, Ctrl-C and SIGTERM; only when the session ran (or was about to run)
notebook cases, so ``pytest tests/`` in a project does not overwrite the last training run's
reports with empty ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nbgate.contract.session import SessionResults, session_results
from reporting.files.baseline import Baseline
from reporting.files.report_files import REPORT_FILES, Written, write_reports
from reporting.files.terminal import case_lines, files_line


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # workers only run cases; their results reach the controller
    config.pluginmanager.register(SessionReporter(config), "nbgate-reporting-session")


class SessionReporter:
    """The per-session hooks; registered on the controller (or the only process) only."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.baseline: Baseline | None = None
        self.written: Written | None = None

    # First: under pytest-xdist, SIGTERM's grace period (about 10 s) must not be spent waiting
    # for the workers' teardown before the reports exist.
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        gathered = session_results(self.config)
        if self.config.option.collectonly or gathered is None or not gathered.has_cases:
            return
        self.baseline = Baseline.from_runs(gathered.baselines)
        self.written = write_reports(gathered, baseline=self.baseline,
                                     baseline_reason=gathered.baseline_problem)
        if self.written.errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        gathered = session_results(self.config)
        if gathered is not None and self.written is not None:
            write_terminal_section(terminalreporter, gathered, self,
                                   Path(self.config.invocation_params.dir))


def write_terminal_section(
    tr: Any, gathered: SessionResults, reporter: SessionReporter, cwd: Path
) -> None:
    """The "nbgate" section: one line per case, cases that did not run, baseline, files."""
    written = reporter.written
    assert written is not None
    results = gathered.ordered()
    if not results and not written.errors:
        return
    tr.write_sep("─", "nbgate")
    colour = {"passed": {"green": True}, "failed": {"red": True}, "skipped": {"yellow": True}}
    for result, line in zip(results, case_lines(results, written.comparison), strict=True):
        tr.write_line(line, **colour.get(result.outcome, {}))
    not_run = gathered.not_run()
    if not_run:
        why = "the session was interrupted" if gathered.interrupted else "no result"
        tr.write_line(f"{len(not_run)} not run ({why}): {', '.join(not_run)}", yellow=True)
    if reporter.baseline is not None:
        tr.write_line("baseline: " + ", ".join(i.source for i in reporter.baseline.infos))
    elif gathered.baseline_problem:
        tr.write_line(f"No baseline: {gathered.baseline_problem}", yellow=True)
    for error in written.errors:
        tr.write_line(f"nbgate: could not write {error}", red=True)
    shown = sorted((p for p in written.files if p.name in REPORT_FILES),
                   key=lambda p: REPORT_FILES.index(p.name))
    if shown:
        tr.write_line(files_line(shown, cwd, results))
