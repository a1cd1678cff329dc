"""The session's results, as the harness gathered them: the one accessor the reporting wing
reads at the end of a pytest session.

The harness fills it on the process that writes reports (the only one, or the pytest-xdist
controller): the notebook cases pytest collected, every result as pytest judged it, and whether
the session was interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nbgate.contract.baselines import BaselineRun
from nbgate.contract.model import CaseResult, preferred


@dataclass
class SessionResults:
    root: Path  # the repository root (the folder holding pyproject.toml)
    reports: Path  # where this session's reports go
    expected: dict[str, None] = field(default_factory=dict)  # collected case ids, in order
    results: dict[str, CaseResult] = field(default_factory=dict)  # by case id, arrival order
    interrupted: bool = False
    shard: tuple[int, int] | None = None  # (index, total) when this session ran one shard
    baselines: list[BaselineRun] = field(default_factory=list)
    baseline_problem: str | None = None  # why a requested baseline could not be read
    # merged reports only: {"job", "index", "total", "cases"} of each shard that left no reports
    missing_shards: list[dict[str, Any]] = field(default_factory=list)

    def add(self, result: CaseResult) -> None:
        self.results[result.case_id] = preferred(self.results.get(result.case_id), result)

    def ordered(self) -> list[CaseResult]:
        """Collection order for collected cases, then fixture runs by id: the same under xdist."""
        position = {case_id: i for i, case_id in enumerate(self.expected)}
        return sorted(
            self.results.values(),
            key=lambda r: (0, position[r.case_id], "") if r.case_id in position
            else (1, 0, r.case_id),
        )

    def not_run(self) -> list[str]:
        return [case_id for case_id in self.expected if case_id not in self.results]

    @property
    def has_cases(self) -> bool:
        """Whether this session ran (or was about to run) notebooks: only then are reports
        written, so ``pytest tests/`` does not replace a training run's reports with empty ones."""
        return bool(self.results or self.expected)


session_key = pytest.StashKey[SessionResults]()


def session_results(config: pytest.Config) -> SessionResults | None:
    """This session's results; None when nbgate is not active in this process."""
    return config.stash.get(session_key, None)
