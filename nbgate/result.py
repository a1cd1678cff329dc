"""The case result: the single contract between the harness and the reporting plugin.

Everything here is plain data that survives a JSON round trip, because results cross process
boundaries (pytest-xdist workers) and files (``metrics.json``) before anyone renders them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["passed", "failed", "skipped"]

# Failure kinds, so that renderers can pick a headline without parsing messages.
FAILURE_KINDS = (
    "cell_error",  # a cell raised
    "kernel_died",  # the kernel process went away
    "timeout",  # the notebook ran past its timeout
    "not_a_notebook",  # invalid JSON or not an nbformat document
    "parameters",  # missing parameters cell or an undeclared parameter
    "thresholds",  # one or more metric rules were violated
    "gpu_missing",  # a GPU runner found no CUDA device under --nbgate-require-gpu
    "tracking",  # the tracking server could not record the run
    "harness",  # nbgate itself could not run the case (kernel failed to start, ...)
)


@dataclass
class ThresholdCheck:
    """One metric rule evaluated against what the notebook recorded."""

    metric: str
    rule: str  # normalised "OP NUMBER", e.g. ">= 0.95"
    value: float | None  # None when the metric was not recorded
    passed: bool
    reason: str = ""  # why it failed, in words ("not recorded", "is NaN", "0.91 < 0.95")


@dataclass
class Failure:
    """Why a case failed, already redacted and free of ANSI escape codes."""

    kind: str
    message: str  # one line, fit for a headline
    cell_index: int | None = None  # index in the executed notebook's cells, 0-based
    source: str | None = None  # an excerpt of the failing cell's source
    exception: str | None = None  # "ValueError: bad input"
    traceback: str | None = None


@dataclass
class Tracking:
    """Where the case's experiment-tracking run lives."""

    run_id: str
    url: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None  # never carries credentials

    def properties(self) -> list[tuple[str, str]]:
        """How the run appears in JUnit ``user_properties`` (pytest's and nbgate's junit.xml)."""
        pairs = [("mlflow.run_id", self.run_id)]
        if self.url:
            pairs.append(("mlflow.url", self.url))
        return pairs


@dataclass
class CaseResult:
    case_id: str  # "notebooks/training_example.ipynb::train[cpu]"
    notebook: str  # path relative to the repository root
    kind: str  # "train", "score", or "custom" for fixture runs
    runner: str
    outcome: Outcome
    duration_s: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    thresholds: list[ThresholdCheck] = field(default_factory=list)
    executed_notebook: str | None = None  # path relative to the repository root
    figures: dict[str, str] = field(default_factory=dict)  # name -> PNG path
    outputs: list[str] = field(default_factory=list)  # declared output files that exist
    failure: Failure | None = None
    skip_reason: str | None = None
    tracking: Tracking | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # JSON has no NaN or infinity; such a metric is reported as null (and fails its rule).
        data["metrics"] = {k: _finite_or_none(v) for k, v in self.metrics.items()}
        for check in data["thresholds"]:
            check["value"] = _finite_or_none(check["value"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        data = dict(data)
        data["metrics"] = {
            k: (math.nan if v is None else float(v)) for k, v in (data.get("metrics") or {}).items()
        }
        data["thresholds"] = [ThresholdCheck(**t) for t in data.get("thresholds") or []]
        if data.get("failure"):
            data["failure"] = Failure(**data["failure"])
        if data.get("tracking"):
            data["tracking"] = Tracking(**data["tracking"])
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value
