"""Evaluating metric rules against what a notebook recorded (and the production baseline)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from nbgate.contract.model import NEGATED, NOT_CHECKED, Rule, Threshold, ThresholdCheck
from nbgate.contract.text import fmt_number

_GAP = {">=": "short", ">": "short", "<=": "over", "<": "over", "==": "off"}


def parse_threshold(metric: str, text: object) -> Threshold:
    """One declared rule; ValueError with a message fit for a usage error."""
    return Threshold(metric, Rule.parse(text))


NO_BASELINE = "no baseline given"
NOT_IN_BASELINE = "the baseline did not record it"


def check(
    threshold: Threshold,
    metrics: Mapping[str, float],
    baseline: Mapping[str, float] | None,
    require_baseline: bool = False,
    no_baseline: str = NO_BASELINE,
) -> ThresholdCheck:
    """One rule against the recorded ``metrics``: passed, failed, or (a baseline rule with no
    baseline) not checked, which ``require_baseline`` turns into a failure. ``no_baseline`` says
    why there is no baseline ("no release yet"): a not-checked gate carries it."""
    metric, rule = threshold.metric, threshold.rule
    if metric not in metrics:
        recorded = ", ".join(sorted(metrics)) or "nothing"
        return ThresholdCheck(metric, rule, None, False, f"not recorded (recorded: {recorded})")
    value = metrics[metric]
    if not math.isfinite(value):
        return ThresholdCheck(metric, rule, value, False, not_finite(value))
    base = baseline.get(metric) if baseline is not None and rule.uses_baseline else None
    bound = rule.bound(base)
    if bound is None:
        why = no_baseline if baseline is None else NOT_IN_BASELINE
        if require_baseline:
            return ThresholdCheck(metric, rule, value, False,
                                  f"{NOT_CHECKED}: {why} (--nbgate-require-baseline)")
        return ThresholdCheck(metric, rule, value, None, f"{NOT_CHECKED}: {why}")
    if rule.holds(value, bound):
        return ThresholdCheck(metric, rule, value, True, bound=bound, baseline=base)
    # "0.9914 < 0.9999 (short by 0.0085)": the value, the bound it missed and by how much.
    gap = f"{_GAP[rule.op]} by {fmt_number(abs(value - bound))}"
    if rule.uses_baseline:
        gap += f", rule {rule.text}, baseline {fmt_number(base)}"
    reason = f"{fmt_number(value)} {NEGATED[rule.op]} {fmt_number(bound)} ({gap})"
    return ThresholdCheck(metric, rule, value, False, reason, bound=bound, baseline=base)


def not_finite(value: float) -> str:
    """Why a recorded NaN or infinity fails: "is not finite (inf)"."""
    return f"is not finite ({value!r})"


def evaluate(
    thresholds: Iterable[Threshold],
    metrics: Mapping[str, float],
    baseline: Mapping[str, float] | None = None,
    require_baseline: bool = False,
    no_baseline: str = NO_BASELINE,
) -> list[ThresholdCheck]:
    """Check every rule; ``baseline`` holds the production model's metrics when known, else
    ``no_baseline`` says why not."""
    return [check(t, metrics, baseline, require_baseline, no_baseline) for t in thresholds]
