"""The short "nbgate" section at the end of a pytest run: one line per case, then where to look."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nbgate.contract.files import display_path
from nbgate.contract.model import CaseResult
from nbgate.contract.text import clean_text
from reporting.files.baseline import Comparison
from reporting.files.markdown import (
    fmt_duration,
    mlflow_hint,
    rule_checks_text,
    short_reason,
)


def case_lines(results: Sequence[CaseResult], comparison: Comparison | None = None) -> list[str]:
    """One aligned plain-text line per case: id, outcome, time, metrics vs rules (or why)."""
    width = max((len(r.case_id) for r in results), default=0)
    lines = []
    for result in results:
        head = f"{result.case_id:<{width}}  {result.outcome:<7}"
        if result.outcome == "skipped":
            reason = " ".join(clean_text(result.skip_reason or "").split())
            lines.append(f"{head}  {reason}".rstrip())
            continue
        text = f"{head}  {fmt_duration(result.duration_s):>7}"
        rules = rule_checks_text(result, comparison)
        if rules:
            text += f"  {rules}"
        failure = result.failure
        if result.outcome == "failed":
            # The cause, a violated rule's gap included: the marks above only say which.
            text += f"  — {short_reason(failure.message if failure else 'failed', 160)}"
        lines.append(text)
    return lines


def files_line(files: Sequence[Path], cwd: Path, results: Sequence[CaseResult]) -> str:
    """'reports: reports/summary.md · ... · MLflow: mlflow ui --backend-store-uri sqlite:///mlflow.db'."""
    line = "reports: " + " · ".join(display_path(p, cwd) for p in files)
    hint = mlflow_hint(results, cwd)
    return f"{line} · MLflow: {hint}" if hint else line
