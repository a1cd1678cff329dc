"""Metric rules ("OP NUMBER") and their evaluation."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from nbgate.result import ThresholdCheck

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
# Longest operators first so ">=" is not read as ">" followed by "=0.9".
_RULE = re.compile(r"^\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_NEGATION = {">=": "<", ">": "<=", "<=": ">", "<": ">=", "==": "!="}

RULE_HELP = "'OP NUMBER' with OP one of >=, >, <=, <, == (for example '>= 0.95')"


@dataclass(frozen=True)
class Threshold:
    metric: str
    op: str
    bound: float

    @property
    def rule(self) -> str:
        return f"{self.op} {self.bound:g}"

    def check(self, metrics: Mapping[str, float]) -> ThresholdCheck:
        if self.metric not in metrics:
            recorded = ", ".join(sorted(metrics)) or "nothing"
            return ThresholdCheck(
                self.metric, self.rule, None, False, f"not recorded (recorded: {recorded})"
            )
        value = metrics[self.metric]
        if not math.isfinite(value):
            # inf passes ">= 0" and NaN compares false either way; neither is a measurement.
            return ThresholdCheck(self.metric, self.rule, value, False, not_finite(value))
        if OPERATORS[self.op](value, self.bound):
            return ThresholdCheck(self.metric, self.rule, value, True)
        reason = f"{value:.6g} {_NEGATION[self.op]} {self.bound:g}"
        return ThresholdCheck(self.metric, self.rule, value, False, reason)


def not_finite(value: float) -> str:
    """Why a recorded NaN or infinity fails: "is not finite (inf)"."""
    return f"is not finite ({value!r})"


def parse_rule(metric: str, text: object) -> Threshold:
    """Parse a rule; raises ValueError with a message fit for a usage error."""
    match = _RULE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a threshold; expected {RULE_HELP}")
    return Threshold(metric, match.group(1), float(match.group(2)))


def evaluate(thresholds: list[Threshold], metrics: Mapping[str, float]) -> list[ThresholdCheck]:
    return [threshold.check(metrics) for threshold in thresholds]
