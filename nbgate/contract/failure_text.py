"""The text a failed case shows in the terminal and in JUnit: what failed, where, and why."""

from __future__ import annotations

from nbgate.contract.model import CaseResult
from nbgate.contract.text import fmt_number

TRACEBACK_LINES = 40


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
            mark = "FAIL" if not check.passed else ("ok  " if check.checked else "--  ")
            why = f" ({check.reason})" if check.reason else ""
            value = fmt_number(check.value)
            lines.append(f"  {mark} {check.metric} {check.rule.text}: {value}{why}")
    if result.metrics:
        recorded = ", ".join(f"{k}={fmt_number(v)}" for k, v in sorted(result.metrics.items()))
        lines += ["", f"recorded metrics: {recorded}"]
    return "\n".join(lines)
