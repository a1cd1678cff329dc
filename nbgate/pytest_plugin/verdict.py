"""Gathering the session's case results on the process that writes reports, with pytest's
verdict as the last word.

A result is what the notebook did; pytest's report is what the user sees. They can differ: a
test asserts on a ``run_notebook`` result and fails, a fixture fails in teardown, a test skips
itself. The report is authoritative, so the result is brought in line with it before any
report file is written.
"""

from __future__ import annotations

from typing import Any

import pytest

from nbgate.contract.codec import case_from_json
from nbgate.contract.model import CaseResult, Failure
from nbgate.contract.session import SessionResults
from nbgate.contract.text import clean_text

RESULTS_ATTRIBUTE = "nbgate_results"  # on call-phase reports; survives xdist serialisation


def results_of(report: pytest.TestReport) -> list[CaseResult]:
    """The case results a (possibly xdist-transported) report carries."""
    return [case_from_json(d) for d in getattr(report, RESULTS_ATTRIBUTE, None) or []]


class ResultGatherer:
    """Fills ``SessionResults``; registered on the controller (or the only process)."""

    def __init__(self, session: SessionResults) -> None:
        self.session = session
        self.declared: set[str] = set()  # ids of declared cases, to recognise them by node id
        self._by_node: dict[str, list[str]] = {}  # node id -> case ids its call reported

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            if item.nodeid in self.declared:
                self.session.expected[item.nodeid] = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # Under xdist the controller collects nothing; every worker reports the same node ids.
        for nodeid in ids:
            if nodeid in self.declared:
                self.session.expected.setdefault(nodeid, None)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            results = results_of(report)
            self._by_node[report.nodeid] = [r.case_id for r in results]
            for result in results:
                self.session.add(agree_with(result, report))
        elif report.failed and report.when == "teardown":
            for case_id in self._by_node.get(report.nodeid, ()):
                result = self.session.results.get(case_id)
                if result is not None and result.outcome != "failed":
                    _fail(result, report, "error in teardown")

    def pytest_keyboard_interrupt(self) -> None:
        self.session.interrupted = True

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, exitstatus: int) -> None:
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            self.session.interrupted = True


def agree_with(result: CaseResult, report: pytest.TestReport) -> CaseResult:
    """``result`` with the outcome pytest gave the test that produced it."""
    if report.failed and result.outcome != "failed":
        _fail(result, report, "the test failed after its notebook ran")
    elif report.passed and result.outcome == "failed":
        # The test accepted the failure (run_notebook(..., check=False) and an assert on it):
        # pytest passed it, so do the reports; the failure stays on record.
        result.outcome = "passed"
    elif report.skipped and result.outcome != "skipped":
        reason = getattr(report, "wasxfail", None)
        result.outcome = "skipped"
        result.failure = None
        result.skip_reason = f"xfail: {reason}" if reason is not None else _skip_reason(report)
    return result


def _fail(result: CaseResult, report: pytest.TestReport, why: str) -> None:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None) or why
    result.outcome = "failed"
    result.failure = Failure(
        kind="test",
        message=f"{why}: {clean_text(message).splitlines()[0] if message.strip() else why}",
        traceback=clean_text(report.longreprtext) or None,
    )


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return "skipped"
