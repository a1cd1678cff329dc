"""The text a failed case shows in the terminal and in JUnit: what failed, where, and why."""

from __future__ import annotations

import math

from nbgate.result import CaseResult

TRACEBACK_LINES = 40


def format_value(value: float | None) -> str:
    if value is None:
        return "–"
    if math.isnan(value):
        return "NaN"
    return f"{value:.4g}"


def render_failure(result: CaseResult) -> str:
    failure = result.failure
    lines = [f"{result.case_id} failed: {failure.message if failure else 'no reason recorded'}"]
    if result.executed_notebook:
        lines.append(f"executed notebook: {result.executed_notebook}")
    if failure and failure.source:
        # The message names the cell as the user counts it; cell_index counts the executed
        # notebook's cells (injected one included), so it is not shown here.
        lines += ["", "failing cell:", failure.source]
    if failure and failure.exception:
        lines += ["", failure.exception]
    if failure and failure.traceback:
        tb = failure.traceback.splitlines()
        if len(tb) > TRACEBACK_LINES:
            tb = [f"... ({len(tb) - TRACEBACK_LINES} lines cut)", *tb[-TRACEBACK_LINES:]]
        lines += ["", "Traceback:", *tb]
    if result.thresholds:
        lines += ["", "thresholds:"]
        for check in result.thresholds:
            mark = "ok  " if check.passed else "FAIL"
            why = f" ({check.reason})" if check.reason else ""
            lines.append(f"  {mark} {check.metric} {check.rule}: {format_value(check.value)}{why}")
    if result.metrics:
        recorded = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(result.metrics.items()))
        lines += ["", f"recorded metrics: {recorded}"]
    return "\n".join(lines)
