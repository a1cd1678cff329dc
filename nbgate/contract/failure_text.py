"""The text a failed case shows in the terminal and in JUnit: what failed, where, and why."""

from __future__ import annotations

from nbgate.contract.model import NOT_CHECKED, CaseResult, ThresholdCheck
from nbgate.contract.text import fmt_number

TRACEBACK_LINES = 40


# How a gate reads in plain text (terminal, JUnit, pytest's report): three states, and a
# not-checked gate never looks like a pass.
GATE_WORDS = {"passed": "ok  ", "failed": "FAIL", NOT_CHECKED: "n/c "}


def render_failure(result: CaseResult) -> str:
    """The failure text: the cause on the first line (pytest's short summary and JUnit's
    ``message`` show that line alone), then where, the cell, the exception and traceback, the
    gates and what was recorded. The case id is not repeated: every place that shows this text
    names the case already."""
    failure = result.failure
    lines = [failure.message if failure else "failed (no reason recorded)"]
    if failure and failure.cell:
        lines.append(f"where: {failure.cell}")
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
        lines += [f"  {check_line(check)}" for check in result.thresholds]
    if result.metrics:
        recorded = ", ".join(f"{k}={fmt_number(v)}" for k, v in sorted(result.metrics.items()))
        lines += ["", f"recorded metrics: {recorded}"]
    return "\n".join(lines)


def check_line(check: ThresholdCheck) -> str:
    """"FAIL auc >= 0.95: 0.9100 (0.9100 < 0.9500 (short by 0.0400))",
    "n/c  log_loss <= baseline * 1.1: 0.1000 (not checked: no baseline given)"."""
    why = f" ({check.reason})" if check.reason else ""
    return (f"{GATE_WORDS[check.state]} {check.metric} {check.rule.text}: "
            f"{fmt_number(check.value)}{why}")
