"""Building case results and metrics.json files in tests, through the product's own codec."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import dumps_metrics, metrics_document
from nbgate.contract.files import write_text_atomic
from nbgate.contract.model import CaseResult, Rule, ThresholdCheck


def check(metric: str, rule: str, value: float | None, passed: bool | None, reason: str = "",
          **extra: Any) -> ThresholdCheck:
    """A threshold check as the harness makes it, from the rule's text."""
    parsed = Rule.parse(rule)
    extra.setdefault("bound", parsed.bound())
    return ThresholdCheck(metric, parsed, value, passed, reason, **extra)


def build_metrics(
    results: Iterable[CaseResult],
    pipeline: Mapping[str, Any] | CIContext | None = None,
    baseline: Mapping[str, Any] | None = None,
    *,
    interrupted: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    ctx = pipeline if isinstance(pipeline, CIContext) else CIContext.from_dict(pipeline)
    return metrics_document(list(results), pipeline=ctx, baseline=baseline,
                            interrupted=interrupted, now=now)


def write_metrics_json(path: Path, document: Mapping[str, Any]) -> Path:
    return write_text_atomic(path, dumps_metrics(document))
