"""Comparing a run's metrics with a baseline run (another metrics.json), case by case.

Locally the baseline is a path (``--nbgate-baseline`` / ``NBGATE_BASELINE``); in CI the publishing
code fetches the default branch's metrics.json from the job-artifacts API and hands its bytes to
``baseline_from_metrics``. Either way::

    baseline = load_baseline("main-metrics.json")        # or baseline_from_metrics(data, source)
    comparison = apply_baseline(results, baseline)        # {case id: {metric: MetricDelta}}
    table = reporting.format.case_table(results, comparison=comparison)
    line = baseline_line(baseline)                        # "Baseline: main @ `89abcdef`, ..."

Deltas are keyed by case id: a case the baseline does not have gets no deltas, a metric the
baseline's case did not record shows "new".
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import load_metrics, read_metrics
from nbgate.contract.model import CaseResult
from reporting.markdown import fmt_delta, link, md_cell

ENV_VAR = "NBGATE_BASELINE"


@dataclass(frozen=True)
class BaselineInfo:
    """Where a baseline came from; stored as metrics.json's "baseline"."""

    source: str  # a path, or e.g. "job artifacts of train-cpu on main"
    commit: str | None = None
    pipeline_id: str | None = None
    ref: str | None = None
    pipeline_url: str | None = None

    @classmethod
    def from_pipeline(cls, source: str, pipeline: CIContext) -> BaselineInfo:
        """Info from the CI context of the baseline's own metrics.json."""
        return cls(source, pipeline.commit_sha, pipeline.pipeline_id, pipeline.ref,
                   pipeline.pipeline_url)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaselineInfo:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known and k != "source"},
                   source=str(data.get("source") or "unknown"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """'main @ `89abcdef`, pipeline #990' (markdown), or the source when nothing else is
        known."""
        parts = []
        where = md_cell(self.ref) if self.ref else ""
        if self.commit:
            where = f"{where} @ `{md_cell(self.commit[:8])}`".strip()
        if where:
            parts.append(where)
        if self.pipeline_id:
            parts.append(link(f"#{self.pipeline_id}", self.pipeline_url, "pipeline "))
        return ", ".join(parts) or md_cell(self.source)


@dataclass(frozen=True)
class Baseline:
    """A baseline run: where it came from and its cases by case id."""

    info: BaselineInfo
    cases: Mapping[str, CaseResult] = field(default_factory=dict)


def baseline_from_metrics(
    data: Mapping[str, Any] | str | bytes, source: str
) -> Baseline:
    """A Baseline from a metrics.json document (parsed, text or bytes, e.g. an artifact download).
    Raises ``nbgate.contract.codec.ResultsFileError`` when it is not one."""
    document = read_metrics(data, source)
    return Baseline(BaselineInfo.from_pipeline(source, document.pipeline),
                    {c.case_id: c for c in document.cases})


def load_baseline(path: str | os.PathLike[str], source: str | None = None) -> Baseline:
    """A Baseline from a metrics.json file; ``source`` defaults to the path.
    Raises ``nbgate.contract.codec.ResultsFileError`` when it is missing or unreadable."""
    document = load_metrics(path)
    info = BaselineInfo.from_pipeline(source or os.fspath(path), document.pipeline)
    return Baseline(info, {c.case_id: c for c in document.cases})


@dataclass(frozen=True)
class MetricDelta:
    """One metric of one case against the baseline."""

    value: float | None  # this run (None or NaN: not recorded / not a number)
    base: float | None  # the baseline's (None or NaN when it recorded none or NaN)
    in_baseline: bool = True  # False: the baseline's case did not record this metric

    @property
    def delta(self) -> float | None:
        """``value - base`` when both are finite numbers, else None."""
        if self.value is None or self.base is None:
            return None
        if not (math.isfinite(self.value) and math.isfinite(self.base)):
            return None
        return self.value - self.base

    @property
    def text(self) -> str:
        """"+0.0042", "−0.0010", "±0"; "new" for a metric the baseline lacks; "n/a" when a side is
        not a number; "" when this run has no value (nothing to compare)."""
        if self.value is None or math.isnan(self.value):
            return ""
        if not self.in_baseline:
            return "new"
        return fmt_delta(self.value, self.base)


Comparison = dict[str, dict[str, MetricDelta]]  # case id -> metric -> delta


def apply_baseline(
    results: Iterable[CaseResult],
    baseline_cases: Baseline | Mapping[str, CaseResult] | Iterable[CaseResult] | None,
) -> Comparison:
    """Compare every recorded metric of ``results`` with the baseline's case of the same id.

    ``baseline_cases`` may be a Baseline, a {case id: CaseResult} mapping, or the case list that
    ``load_metrics`` returns. Cases the baseline does not have (and skipped cases) are left out.
    """
    if baseline_cases is None:
        return {}
    if isinstance(baseline_cases, Baseline):
        by_id: Mapping[str, CaseResult] = baseline_cases.cases
    elif isinstance(baseline_cases, Mapping):
        by_id = baseline_cases
    else:
        by_id = {c.case_id: c for c in baseline_cases}
    comparison: Comparison = {}
    for result in results:
        base = by_id.get(result.case_id)
        if base is None or result.outcome == "skipped":
            continue
        comparison[result.case_id] = {
            name: MetricDelta(value, base.metrics.get(name), name in base.metrics)
            for name, value in result.metrics.items()
        }
    return comparison


def baseline_line(
    baseline: Baseline | None, results: Sequence[CaseResult] = (), reason: str | None = None
) -> str:
    """The one markdown line that says what metrics are compared against.

    "Baseline: main @ `89abcdef`, pipeline #990 (1 case not in the baseline: ...)" or
    "No baseline: <reason>; changes are not shown."
    """
    if baseline is None:
        why = reason or f"none given (--nbgate-baseline PATH or {ENV_VAR})"
        return f"No baseline: {md_cell(why)}; changes are not shown."
    line = f"Baseline: {baseline.info.describe()}"
    missing = [
        r.case_id for r in results if r.outcome != "skipped" and r.case_id not in baseline.cases
    ]
    if missing:
        noun = "case" if len(missing) == 1 else "cases"
        line += f" ({len(missing)} {noun} not in the baseline: {md_cell(', '.join(missing))})"
    return line + "."
