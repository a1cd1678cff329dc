"""Comparing a run's metrics with a baseline, case by case.

The baseline is production: the metrics published with the newest release of each notebook
(``reporting.gitlab.production`` fetches them from GitLab; in pytest they come from
``--nbgate-baseline``, which ``nbgate fetch-baseline`` fills in CI). Locally it can be any
metrics.json. Either way::

    baseline = Baseline.from_runs(session.baselines)     # or production_baseline(...)
    comparison = apply_baseline(results, baseline)         # {case id: {metric: MetricDelta}}
    line = baseline_line(baseline, results)                # "Baseline: release `1.0.0+…` ..."

A delta knows its direction from the case's rule on that metric (``>=``: higher is better), so
it reads "+0.0042 ▲" (better) or "−0.0100 ▼" (worse); a metric without a rule shows its change
with no mark.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nbgate.contract.baselines import BaselineRun
from nbgate.contract.codec import MetricsDocument
from nbgate.contract.model import CaseResult, counterpart
from reporting.files.markdown import BETTER, WORSE, fmt_delta, link, md_cell

HOW_TO_GIVE = "--nbgate-baseline PATH or NBGATE_BASELINE"


@dataclass(frozen=True)
class BaselineInfo:
    """Where a baseline came from; stored as metrics.json's "baseline"."""

    source: str  # "release 1.0.0+89abcdef.990", or a path
    commit: str | None = None
    pipeline_id: str | None = None
    ref: str | None = None
    pipeline_url: str | None = None
    version: str | None = None  # the release's package version

    @classmethod
    def of(cls, source: str, document: MetricsDocument, version: str | None = None) \
            -> BaselineInfo:
        ctx = document.pipeline
        return cls(source, ctx.commit_sha, ctx.pipeline_id, ctx.ref, ctx.pipeline_url, version)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaselineInfo:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known and k != "source"},
                   source=str(data.get("source") or "unknown"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """'release `1.0.0+89abcdef.990` (main @ `89abcdef`, pipeline #990)' (markdown)."""
        parts = []
        where = md_cell(self.ref) if self.ref else ""
        if self.commit:
            where = f"{where} @ `{md_cell(self.commit[:8])}`".strip()
        if where:
            parts.append(where)
        if self.pipeline_id:
            parts.append(link(f"#{self.pipeline_id}", self.pipeline_url, "pipeline "))
        head = f"release `{md_cell(self.version)}`" if self.version else md_cell(self.source)
        return f"{head} ({', '.join(parts)})" if parts else head


@dataclass(frozen=True)
class Baseline:
    """One or more baseline runs (a release per notebook), each with where it came from."""

    parts: tuple[tuple[BaselineInfo, tuple[CaseResult, ...]], ...] = ()

    @classmethod
    def from_runs(cls, runs: Iterable[BaselineRun]) -> Baseline | None:
        parts = tuple((BaselineInfo.of(r.source, r.document, r.version), tuple(r.document.cases))
                      for r in runs)
        return cls(parts) if parts else None

    @classmethod
    def recorded(cls, compared: Iterable[tuple[CaseResult, Mapping[str, Any]]]) \
            -> Baseline | None:
        """The baseline a run recorded in its metrics.json: each case with what it was compared
        with (where from, and the baseline's ``metrics`` for that case)."""
        parts: dict[BaselineInfo, list[CaseResult]] = {}
        for result, record in compared:
            metrics = record.get("metrics")
            if not isinstance(metrics, Mapping):
                continue
            base = CaseResult(result.case_id, result.notebook, result.kind, result.runner,
                              "passed", metrics={str(k): math.nan if v is None else float(v)
                                                 for k, v in metrics.items()})
            parts.setdefault(BaselineInfo.from_dict(record), []).append(base)
        return cls(tuple((info, tuple(cases)) for info, cases in parts.items())) if parts \
            else None

    def match(self, result: CaseResult) -> tuple[BaselineInfo, CaseResult] | None:
        for info, cases in self.parts:
            case = counterpart(result, cases)
            if case is not None:
                return info, case
        return None

    @property
    def infos(self) -> list[BaselineInfo]:
        return [info for info, _ in self.parts]

    def used_by(self, results: Iterable[CaseResult]) -> list[BaselineInfo]:
        """The baselines some result is compared with, in order."""
        used: list[BaselineInfo] = []
        for result in results:
            found = self.match(result)
            if found is not None and found[0] not in used:
                used.append(found[0])
        return used


@dataclass(frozen=True)
class MetricDelta:
    """One metric of one case against the baseline."""

    value: float | None  # this run (None or NaN: not recorded / not a number)
    base: float | None  # the baseline's (None or NaN when it recorded none or NaN)
    in_baseline: bool = True  # False: the baseline's case did not record this metric
    higher_is_better: bool | None = None  # from the case's rule on the metric; None: no rule

    @property
    def delta(self) -> float | None:
        """``value - base`` when both are finite numbers, else None."""
        if self.value is None or self.base is None:
            return None
        if not (math.isfinite(self.value) and math.isfinite(self.base)):
            return None
        return self.value - self.base

    @property
    def better(self) -> bool | None:
        """True better, False worse, None unknown (no rule, no change, no numbers)."""
        delta = self.delta
        if delta is None or self.higher_is_better is None or self.sign_text == "±0":
            return None
        return (delta > 0) == self.higher_is_better

    @property
    def sign_text(self) -> str:
        return fmt_delta(self.value, self.base)

    @property
    def text(self) -> str:
        """"+0.0042 ▲", "−0.0010 ▼", "±0", "+3" (no rule); "new" for a metric the baseline lacks;
        "n/a" when a side is not a number; "" when this run has no value (nothing to compare)."""
        if self.value is None or math.isnan(self.value):
            return ""
        if not self.in_baseline:
            return "new"
        better = self.better
        mark = "" if better is None else f" {BETTER if better else WORSE}"
        return self.sign_text + mark


Comparison = dict[str, dict[str, MetricDelta]]  # case id -> metric -> delta


def apply_baseline(results: Iterable[CaseResult], baseline: Baseline | None) -> Comparison:
    """Compare every recorded metric of ``results`` with its baseline case. Cases the baseline
    does not have (and skipped cases) are left out."""
    if baseline is None:
        return {}
    comparison: Comparison = {}
    for result in results:
        found = baseline.match(result)
        if found is None or result.outcome == "skipped":
            continue
        base = found[1]
        direction = {c.metric: c.rule.higher_is_better for c in result.thresholds}
        comparison[result.case_id] = {
            name: MetricDelta(value, base.metrics.get(name), name in base.metrics,
                              direction.get(name))
            for name, value in result.metrics.items()
        }
    return comparison


def baseline_line(
    baseline: Baseline | None, results: Sequence[CaseResult] = (), reason: str | None = None
) -> str:
    """The markdown line(s) that say what metrics are compared against.

    "Compared with production: release `1.0.0+89abcdef.990` (main @ `89abcdef`, pipeline #990)."
    or "No baseline: <reason>; changes are not shown."
    """
    if baseline is None:
        why = reason or f"none given ({HOW_TO_GIVE})"
        return f"No baseline: {md_cell(why)}; changes are not shown."
    used = baseline.used_by(results) or baseline.infos
    lines = [("Compared with production: " if info.version else "Baseline: ")
             + info.describe() + "." for info in used]
    missing = [r.case_id for r in results if r.outcome != "skipped" and baseline.match(r) is None]
    if missing:
        noun = "case" if len(missing) == 1 else "cases"
        lines.append(f"{len(missing)} {noun} not in the baseline: {md_cell(', '.join(missing))}.")
    return "  \n".join(lines)


@dataclass
class BaselineLookup:
    """A baseline, or why there is none (one sentence, said once in the comment)."""

    baseline: Baseline | None
    reason: str | None = None
