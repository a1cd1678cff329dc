"""What the pytest face keeps per session (``NbgateState``, in ``config.stash``) and the
stash keys its modules share; the plugin, sharding and tracking read it from here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nbgate.config import Case, NbgateConfig
from nbgate.contract.baselines import BaselineRun, baseline_metrics
from nbgate.contract.model import CaseResult
from nbgate.pytest_plugin.commit_select import CommitSelection
from nbgate.running.case import CaseRunner, CaseSpec
from nbgate.running.thresholds import NO_BASELINE


@dataclass
class NbgateState:
    config: NbgateConfig | None
    root: Path
    reports: Path
    runner: CaseRunner
    require_gpu: bool
    require_baseline: bool
    in_ci: bool
    cases_by_path: dict[str, list[Case]] = field(default_factory=dict)  # absolute notebook path
    selection: CommitSelection | None = None  # from --nbgate-commit
    baselines: list[BaselineRun] = field(default_factory=list)  # from --nbgate-baseline
    baseline_problem: str | None = None  # why --nbgate-baseline could not be read
    no_baseline: str | None = None  # what `nbgate fetch-baseline` left instead of releases
    session_id: str = ""  # one per pytest session; xdist workers share the controller's

    def spec_for(self, case: Case) -> CaseSpec:
        assert self.config is not None
        pipeline = case.pipeline
        return CaseSpec(
            case_id=case.id,
            notebook=pipeline.notebook,
            kind=pipeline.kind,
            runner=case.runner.name,
            slug=case.slug,
            parameters=pipeline.parameters,
            shared_parameters=self.config.parameter_sources(case, self.in_ci)[1:],
            thresholds=pipeline.thresholds,
            baseline=self.baseline_for(case),
            require_baseline=self.require_baseline,
            no_baseline=self.why_no_baseline(),
            timeout=pipeline.timeout,
            outputs=pipeline.outputs,
            inputs=pipeline.inputs,
            experiment=pipeline.experiment,
            version=pipeline.version,
        )

    def baseline_for(self, case: Case) -> Mapping[str, float] | None:
        if not any(t.rule.uses_baseline for t in case.pipeline.thresholds):
            return None
        probe = CaseResult(case.id, case.pipeline.notebook, case.pipeline.kind, case.runner.name,
                           "passed")
        return baseline_metrics(probe, self.baselines)

    def why_no_baseline(self) -> str:
        """What a not-checked baseline rule says when its case has no baseline."""
        if self.no_baseline:  # fetch-baseline's reason: "no release yet", "GitLab could not …"
            return self.no_baseline
        if self.baseline_problem:
            return "the baseline could not be read"
        if self.baselines:
            return "the baseline has no case of this notebook"
        return NO_BASELINE


state_key = pytest.StashKey[NbgateState]()
results_key = pytest.StashKey[list[CaseResult]]()
next_item_key = pytest.StashKey[list[pytest.Item]]()  # the items after this one, see _upcoming
positions_key = pytest.StashKey[dict[int, int]]()


def get_state(config: pytest.Config) -> NbgateState:
    return config.stash[state_key]
