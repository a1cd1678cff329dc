"""Hooks other plugins implement to take part in every notebook case (tracking, reporting)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from nbgate.contract.model import CaseResult
    from nbgate.running.case import CaseRun

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_nbgate_case_start(run: CaseRun) -> None:
    """Before the notebook starts. Add variables the kernel should see to ``run.case_env``
    (for example ``MLFLOW_RUN_ID``); they are set inside the kernel before the first cell."""


@hookspec
def pytest_nbgate_case_finish(run: CaseRun, result: CaseResult) -> None:
    """After the run and the threshold checks, before pytest hears the outcome.

    Implementations may enrich ``result`` (``result.tracking``) or fail it
    (``result.outcome = "failed"`` with ``result.failure``) when their own part went wrong.
    """
