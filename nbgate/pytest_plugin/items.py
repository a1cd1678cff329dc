"""The collected notebook cases: a notebook file, its cases as pytest items, and what a case
leaves on its item for the reports."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nbgate.config import Case
from nbgate.contract.model import CaseResult, Failure
from nbgate.pytest_plugin.gpu import missing_gpu_failure, missing_gpu_reason, visible_cuda_devices
from nbgate.pytest_plugin.state import NbgateState, get_state, next_item_key, results_key
from nbgate.running.case import CaseFailed


class NotebookFile(pytest.File):
    def collect(self) -> Iterator[NotebookCase]:
        for case in get_state(self.config).cases_by_path[str(self.path)]:
            yield NotebookCase.from_parent(self, name=case.name, case=case)


class NotebookCase(pytest.Item):
    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.add_marker(case.pipeline.kind)
        self.add_marker(case.runner.name)

    def runtest(self) -> None:
        state = get_state(self.config)
        spec = state.spec_for(self.case)
        if self.case.runner.gpu and not visible_cuda_devices():
            result = CaseResult(spec.case_id, spec.notebook, spec.kind, spec.runner, "skipped")
            reason = missing_gpu_reason()
            if state.require_gpu:
                result.outcome = "failed"
                result.failure = Failure("gpu_missing", missing_gpu_failure())
                remember(self, result)
                raise CaseFailed(result)
            result.skip_reason = reason
            remember(self, result)
            pytest.skip(reason)
        result = state.runner.run(spec, prestart_next=self._prestart_next(state))
        remember(self, result)
        if not result.passed:
            raise CaseFailed(result)

    def _prestart_next(self, state: NbgateState) -> Callable[[], None] | None:
        ahead = sum(map(needs_kernel, self.stash.get(next_item_key, ())))
        if not ahead:
            return None
        return functools.partial(state.runner.prestart, ahead)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # The domain heads the failure section, so it is the full case id. pytest rewrites dots
        # as "::" in verbose lines whose node id ends with the domain; the trailing space keeps
        # it from matching, so those lines show the node id untouched.
        return self.path, None, f"{self.case.id} "


def remember(item: pytest.Item, result: CaseResult) -> None:
    item.stash.setdefault(results_key, []).append(result)
    for name, value in result.metrics.items():
        item.user_properties.append((name, value))
    if result.tracking is not None:
        item.user_properties.extend(result.tracking.properties())


def needs_kernel(item: pytest.Item | None) -> bool:
    """Will ``item`` run a notebook here? A GPU case without a GPU is skipped before it would."""
    if not isinstance(item, NotebookCase):
        return False
    return not (item.case.runner.gpu and not visible_cuda_devices())
