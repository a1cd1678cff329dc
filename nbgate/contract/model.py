"""The case result: what one notebook case produced, as plain data.

This is the single contract between the harness (which fills it) and the reporting wing (which
renders it). It survives a JSON round trip (``nbgate.contract.codec``) because results cross
process boundaries (pytest-xdist workers), files (``metrics.json``) and MR comments before
anyone renders them.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

Outcome = Literal["passed", "failed", "skipped"]
KINDS = ("train", "score")  # declared pipeline kinds; fixture runs are "custom"
CUSTOM_KIND = "custom"

# Failure kinds, so that renderers can pick a headline without parsing messages.
FAILURE_KINDS = (
    "cell_error",  # a cell raised
    "kernel_died",  # the kernel process went away
    "timeout",  # the notebook ran past its timeout
    "not_a_notebook",  # invalid JSON or not an nbformat document
    "kernel",  # the notebook is for a kernel (language) that is not installed
    "parameters",  # missing parameters cell or an undeclared parameter
    "thresholds",  # one or more metric rules were violated
    "gpu_missing",  # a GPU runner found no CUDA device under --nbgate-require-gpu
    "tracking",  # the tracking server could not record the run
    "test",  # the user's own test failed after its notebook ran (an assert in the test)
    "harness",  # nbgate itself could not run the case (kernel failed to start, ...)
    "interrupted",  # the session was stopped (Ctrl-C, SIGTERM) while the case ran
)

# -- threshold rules -------------------------------------------------------------------------

COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
NEGATED = {">=": "<", ">": "<=", "<=": ">", "<": ">=", "==": "!="}
BASELINE = "baseline"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# Longest operators first so ">=" is not read as ">" followed by "=0.9".
_RULE = re.compile(
    rf"^\s*(?P<op>>=|<=|==|>|<)\s*(?:(?P<number>{_NUMBER})"
    rf"|{BASELINE}\s*(?:(?P<change>[-+*])\s*(?P<amount>{_NUMBER}))?)\s*$"
)
RULE_HELP = (
    "'OP NUMBER' or 'OP baseline [+|-|* NUMBER]' with OP one of >=, >, <=, <, == "
    "(for example '>= 0.95' or '>= baseline - 0.005')"
)


@dataclass(frozen=True)
class Rule:
    """A threshold as data: ``value OP bound``.

    An absolute rule compares with ``amount``; a baseline rule (``change`` set) compares with the
    production model's value of the same metric changed by ``amount``: ``baseline - 0.005``
    (change "-"), ``baseline * 1.02`` (change "*"). Rule text is parsed once, from the config.
    """

    op: str
    amount: float
    change: str | None = None  # None: absolute; "+", "-", "*": relative to the baseline

    @classmethod
    def parse(cls, text: object) -> Rule:
        """Read ``">= 0.95"`` or ``">= baseline - 0.005"``; ValueError with a usable message."""
        match = _RULE.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"{text!r} is not a threshold; expected {RULE_HELP}")
        if match["number"] is not None:
            amount = float(match["number"])
            change = None
        else:
            change = match["change"] or "+"
            amount = float(match["amount"]) if match["amount"] is not None else 0.0
            if change == "*" and match["amount"] is None:
                amount = 1.0
        if not math.isfinite(amount):
            raise ValueError(f"{text!r}: the number must be finite")
        return cls(match["op"], amount, change)

    @property
    def uses_baseline(self) -> bool:
        return self.change is not None

    @property
    def text(self) -> str:
        """The rule as written in the config, normalised: ``>= 0.95``, ``>= baseline - 0.005``."""
        if self.change is None:
            return f"{self.op} {self.amount:g}"
        if self.change == "+" and self.amount == 0:
            return f"{self.op} {BASELINE}"
        return f"{self.op} {BASELINE} {self.change} {self.amount:g}"

    @property
    def higher_is_better(self) -> bool | None:
        """``>=``/``>``: higher is better; ``<=``/``<``: lower is; ``==``: neither."""
        if self.op in (">=", ">"):
            return True
        if self.op in ("<=", "<"):
            return False
        return None

    def bound(self, baseline: float | None = None) -> float | None:
        """The number a value is compared with; None for a baseline rule without a baseline."""
        if self.change is None:
            return self.amount
        if baseline is None or not math.isfinite(baseline):
            return None
        if self.change == "*":
            return baseline * self.amount
        return baseline + self.amount if self.change == "+" else baseline - self.amount

    def holds(self, value: float, bound: float) -> bool:
        return COMPARE[self.op](value, bound)


@dataclass(frozen=True)
class Threshold:
    """A declared rule on one metric."""

    metric: str
    rule: Rule

    @property
    def text(self) -> str:
        return f"{self.metric} {self.rule.text}"


GateState = Literal["passed", "failed", "not checked"]
NOT_CHECKED = "not checked"


@dataclass
class ThresholdCheck:
    """One rule evaluated against what the notebook recorded.

    Three states: ``passed`` True (held), False (violated, or not checkable where that fails,
    e.g. under ``--nbgate-require-baseline``) and None: not checked, with ``reason`` saying why
    (a baseline rule with no baseline to compare with). Not checked is never a pass.
    """

    metric: str
    rule: Rule
    value: float | None  # None when the metric was not recorded
    passed: bool | None  # None: not checked
    reason: str = ""  # why it failed (or was not checked), in words: "0.91 < 0.95"
    bound: float | None = None  # the number compared with; None when not checked
    baseline: float | None = None  # the production value a baseline rule used

    @property
    def state(self) -> GateState:
        if self.passed is None:
            return NOT_CHECKED
        return "passed" if self.passed else "failed"

    @property
    def failed(self) -> bool:
        return self.passed is False

    @property
    def checked(self) -> bool:
        return self.passed is not None


def gate_counts(checks: Iterable[ThresholdCheck]) -> dict[GateState, int]:
    """How many checks ended in each state: {"failed": n, "passed": n, "not checked": n}."""
    tally: dict[GateState, int] = {"failed": 0, "passed": 0, NOT_CHECKED: 0}
    for check in checks:
        tally[check.state] += 1
    return tally


def not_checked_reason(reason: str) -> str:
    """"no baseline given" from a check's reason "not checked: no baseline given"."""
    return reason.removeprefix(f"{NOT_CHECKED}: ")


# -- the case result -------------------------------------------------------------------------


@dataclass
class Failure:
    """Why a case failed, already redacted and free of ANSI escape codes."""

    kind: str
    message: str  # the cause in one line, fit for a headline: "ValueError in cell 6: bad input"
    cell_index: int | None = None  # index in the executed notebook's cells, 0-based
    cell: str | None = None  # how to find the cell: "cell 6 (counting from 1, injected ...)"
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


# What a fingerprint's compared digest covers; "python" is recorded beside them, not compared
# (a patch release of the interpreter must not block shipping a reviewed model).
FINGERPRINT_COMPARED = ("code", "parameters", "lock", "inputs")
FINGERPRINT_PARTS = (*FINGERPRINT_COMPARED, "python")


@dataclass(frozen=True)
class Fingerprint:
    """What determines a case's model, hashed (``nbgate.running.fingerprint`` computes it).

    ``sha256`` is the digest promote compares: it covers the parts in ``FINGERPRINT_COMPARED``
    (each a sha256; ``lock`` is None when there is no ``requirements.txt``). ``parts`` also
    keeps ``python``, the interpreter's version, so a reader sees what changed between two runs.
    """

    sha256: str
    parts: dict[str, str | None]

    @staticmethod
    def digest(parts: dict[str, str | None]) -> str:
        import hashlib

        text = "".join(f"{name}:{parts.get(name) or 'absent'}\n" for name in FINGERPRINT_COMPARED)
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    @classmethod
    def of(cls, parts: dict[str, str | None]) -> Fingerprint:
        return cls(cls.digest(parts), dict(parts))

    def changed(self, other: Fingerprint) -> list[str]:
        """The compared parts that differ from ``other``'s, in order."""
        return [p for p in FINGERPRINT_COMPARED if self.parts.get(p) != other.parts.get(p)]

    def to_dict(self) -> dict[str, object]:
        return {"sha256": self.sha256, "parts": dict(self.parts)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Fingerprint:
        parts = data.get("parts")
        if not isinstance(parts, dict):
            raise ValueError("fingerprint.parts: expected an object")
        return cls(str(data["sha256"]), {str(k): None if v is None else str(v)
                                         for k, v in parts.items()})


@dataclass
class CaseResult:
    case_id: str  # "notebooks/training_example.ipynb::train[cpu]"
    notebook: str  # path relative to the repository root
    kind: str  # "train", "score", or "custom" for fixture runs
    runner: str
    outcome: Outcome
    duration_s: float = 0.0
    parameters: dict[str, object] = field(default_factory=dict)  # what was injected
    metrics: dict[str, float] = field(default_factory=dict)
    thresholds: list[ThresholdCheck] = field(default_factory=list)
    executed_notebook: str | None = None  # path relative to the repository root
    figures: dict[str, str] = field(default_factory=dict)  # name -> PNG path
    outputs: list[str] = field(default_factory=list)  # declared output files that exist
    failure: Failure | None = None
    skip_reason: str | None = None
    tracking: Tracking | None = None
    fingerprint: Fingerprint | None = None  # None: the notebook could not be read

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    @property
    def declared(self) -> bool:
        """A pipeline declared in ``[tool.nbgate]`` (not a fixture run from a test)."""
        return self.kind in KINDS

    def checks_by_metric(self) -> dict[str, list[ThresholdCheck]]:
        grouped: dict[str, list[ThresholdCheck]] = {}
        for check in self.thresholds:
            grouped.setdefault(check.metric, []).append(check)
        return grouped


def case_id(notebook: str, kind: str, runner: str) -> str:
    """The pytest id of a declared case: ``notebooks/x.ipynb::train[cpu]``."""
    return f"{notebook}::{kind}[{runner}]"


def case_labels(results: Iterable[CaseResult]) -> dict[str, str]:
    """A short, unique label per case id: ``training_example · train[cpu]``.

    Declared cases use the notebook's file name; when two notebooks share a name in different
    folders, the path tells them apart. Fixture runs use their test id.
    """
    results = list(results)

    def short(r: CaseResult) -> str:
        if r.declared and r.notebook:
            return f"{PurePosixPath(r.notebook).stem} · {r.kind}[{r.runner}]"
        return r.case_id

    def long(r: CaseResult) -> str:
        return f"{r.notebook} · {r.kind}[{r.runner}]"

    labels = {r.case_id: short(r) for r in results}
    taken: dict[str, int] = {}
    for label in labels.values():
        taken[label] = taken.get(label, 0) + 1
    for r in results:
        if taken[labels[r.case_id]] > 1 and r.declared:
            labels[r.case_id] = long(r)
    return labels


def counterpart(result: CaseResult, cases: Iterable[CaseResult]) -> CaseResult | None:
    """The case in ``cases`` (a baseline's) that ``result`` compares with: the same case id, else
    a passed case of the same notebook and kind (production may have trained on another
    runner)."""
    cases = list(cases)
    same = next((c for c in cases if c.case_id == result.case_id), None)
    if same is not None:
        return same
    return next((c for c in cases if c.notebook == result.notebook and c.kind == result.kind
                 and c.outcome == "passed"), None)


def preferred(old: CaseResult | None, new: CaseResult) -> CaseResult:
    """Which of two results of one case to show: the later one, except that a skip never hides
    a result that ran (the GPU job skips what the CPU job ran, a shard skips nothing twice)."""
    if old is None or new.outcome != "skipped" or old.outcome == "skipped":
        return new
    return old

