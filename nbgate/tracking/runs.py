"""The requests the pytest side builds for a case's run (start, finish) and the run's tags;
every value redacted and clipped before it leaves the process."""

from __future__ import annotations

import contextlib
import math
import re
import subprocess
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nbgate.contract.ci_context import CIContext
from nbgate.contract.model import CaseResult
from nbgate.contract.redact import Redactor
from nbgate.tracking.errors import clip
from nbgate.tracking.files import OWNER_TAG, owner

if TYPE_CHECKING:
    from nbgate.running.case import CaseRun, CaseSpec
from nbgate.tracking.client import HelperError
from nbgate.tracking.naming import (
    PARAM_VALUE_LIMIT,
    TAG_VALUE_LIMIT,
    experiment_name,
    mlflow_name,
    mlflow_params,
    model_name,
)


class NbgateTrackingWarning(UserWarning):
    """Tracking is optional for this project and a case's run could not be recorded."""


@dataclass
class CaseTracking:
    """Per-case state kept in ``CaseRun.scratch`` between the two hooks."""

    started: float
    experiment_name: str
    run_id: str | None = None
    experiment_id: str | None = None
    artifact_uri: str | None = None
    problems: list[str] = field(default_factory=list)
    # What was injected, when the run was created ahead of the case (before the notebook was
    # read, so before anyone knew): logged when the case finishes.
    params: dict[str, str] = field(default_factory=dict)


class RunRequests:
    """What the Tracker sends for a case: the run's start and finish requests and their tags."""

    # -- what is sent ------------------------------------------------------------------------
    def _send_ahead(self, item: pytest.Item | None) -> None:
        """Ask for a declared case's run before the case starts (the way kernels prestart)."""
        spec = self._spec_of(item)
        if spec is None or spec.case_id in self._ahead or self._helper_problem is not None:
            return
        with contextlib.suppress(HelperError):
            helper = self.helper()
            self._ahead[spec.case_id] = helper.send(
                self._start_request(spec, self._redactor({}), ahead=True))

    def _spec_of(self, item: pytest.Item | None) -> CaseSpec | None:
        if item is None or self._config is None:
            return None
        from nbgate.pytest_plugin.gpu import visible_cuda_devices
        from nbgate.pytest_plugin.items import NotebookCase
        from nbgate.pytest_plugin.state import get_state

        if not isinstance(item, NotebookCase):
            return None
        if item.case.runner.gpu and not visible_cuda_devices():
            return None  # skipped before it would run
        return get_state(self._config).spec_for(item.case)

    def _start_request(
        self, spec: CaseSpec, redactor: Redactor, *, ahead: bool = False
    ) -> dict[str, Any]:
        """The run's creation. Params are what the case injected (``spec.parameters`` once the
        notebook was read: pipeline, runner and CI parameters it defines); a run created ahead
        of its case has none yet, the finish logs them."""
        return {
            "op": "start",
            "experiment": mlflow_name(redactor, experiment_name(spec)),
            "run_name": redactor.text(spec.case_id),
            "tags": {k: clip(redactor.text(v), TAG_VALUE_LIMIT)
                     for k, v in self.start_tags(spec).items()}
            # Who may end it: a later session reaps a RUNNING run whose owner is gone.
            | {OWNER_TAG: owner()},
            "params": {} if ahead else self._params(spec, redactor),
        }

    @staticmethod
    def _params(spec: CaseSpec, redactor: Redactor) -> dict[str, str]:
        params = mlflow_params(dict(spec.parameters))
        return {mlflow_name(redactor, k): clip(redactor.text(v), PARAM_VALUE_LIMIT)
                for k, v in params.items()}

    def _finish_request(
        self, run: CaseRun, result: CaseResult, state: CaseTracking, redactor: Redactor
    ) -> dict[str, Any]:
        metrics: dict[str, float] = {}
        for name, value in result.metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics.setdefault(mlflow_name(redactor, name), float(value))
        tags = {k: clip(redactor.text(v), TAG_VALUE_LIMIT)
                for k, v in self.finish_tags(result).items() if v}
        artifacts: list[tuple[str, str]] = []
        if run.executed_notebook is not None and run.executed_notebook.is_file():
            artifacts.append((str(run.executed_notebook),  # its content is already redacted
                              mlflow_name(redactor, run.executed_notebook.name)))
        # Recorded figures too: the MLflow run is where the README sends people to look.
        for figure in result.figures.values():
            path = run.root / figure
            if path.is_file():
                artifacts.append((str(path), mlflow_name(redactor, path.name)))
        outputs: dict[str, str] = {}
        for path in self._fresh_outputs(result, state):
            # GitLab keeps artifacts flat: the first of a name wins.
            outputs.setdefault(mlflow_name(redactor, path.name), str(path))
        artifacts += [(path, name) for name, path in outputs.items()]
        status = "FINISHED" if result.outcome == "passed" else "FAILED"
        register = None
        spec = run.spec
        if status == "FINISHED" and spec.kind == "train" and spec.version and outputs:
            name = mlflow_name(redactor, model_name(spec.notebook, state.experiment_name))
            first = next(iter(outputs))
            register = {
                "name": name,
                "version": str(spec.version),
                "source": f"{(state.artifact_uri or '').rstrip('/')}/{first}",
                "tags": {"gitlab.version": str(spec.version),
                         "nbgate.case_id": redactor.text(spec.case_id)},
                "description": redactor.text(f"{spec.case_id}, version {spec.version}"),
                "job_id": CIContext.from_env(self.env).job_id,
                "artifacts": [(path, name) for name, path in outputs.items()],
            }
        return {"op": "finish", "run_id": state.run_id, "metrics": list(metrics.items()),
                "params": state.params, "tags": tags, "artifacts": artifacts, "status": status,
                "register": register}

    def _fresh_outputs(self, result: CaseResult, state: CaseTracking) -> list[Path]:
        """Declared outputs this run wrote: a file left from an earlier run is not this model."""
        fresh = []
        for rel in result.outputs:
            path = self.root / rel
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime >= state.started - 2:
                    fresh.append(path)
        return fresh

    # -- tags --------------------------------------------------------------------------------
    def start_tags(self, spec: CaseSpec) -> dict[str, str]:
        ci = CIContext.from_env(self.env)
        tags = {
            "mlflow.source.name": spec.notebook,
            "mlflow.source.type": "NOTEBOOK",
            "nbgate.case_id": spec.case_id,
            "nbgate.notebook": spec.notebook,
            "nbgate.kind": spec.kind,
            "nbgate.runner": spec.runner,
            "nbgate.version": spec.version or "",
            "mlflow.source.git.commit": self.commit(ci) or "",
            "mlflow.source.git.branch": ci.ref or "",
        }
        if ci.ci:
            tags.update({
                "ci.pipeline_id": ci.pipeline_id or "",
                "ci.pipeline_url": ci.pipeline_url or "",
                "ci.job_id": ci.job_id or "",
                "ci.job_url": ci.job_url or "",
                "ci.job_name": ci.job_name or "",
                "ci.merge_request_iid": ci.merge_request_iid or "",
                "ci.project_url": ci.project_url or "",
                # GitLab links a run to its CI job through this tag (its documented name).
                "gitlab.CI_JOB_ID": ci.job_id or "",
            })
        return {k: clip(v, TAG_VALUE_LIMIT) for k, v in tags.items() if v}

    @staticmethod
    def finish_tags(result: CaseResult) -> dict[str, str]:
        failure = result.failure
        tags = {
            "nbgate.outcome": result.outcome,
            "nbgate.duration_s": f"{result.duration_s:g}",
            "nbgate.failure_kind": failure.kind if failure else "",
            "nbgate.failure": failure.message if failure else "",
        }
        if result.fingerprint is not None:
            # The compared digest and its parts, so two runs show what changed between them.
            tags["nbgate.fingerprint"] = result.fingerprint.sha256
            tags.update({f"nbgate.fingerprint.{name}": value or "absent"
                         for name, value in result.fingerprint.parts.items()})
        return tags

    def commit(self, ci: CIContext) -> str | None:
        if ci.commit_sha:
            return ci.commit_sha
        if self._commit is False:
            self._commit = None
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
                    cwd=self.root, capture_output=True, text=True, timeout=5,
                )
                sha = out.stdout.strip()
                if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", sha):
                    self._commit = sha
        return self._commit or None

    def _redactor(self, case_env: Mapping[str, str]) -> Redactor:
        # The tracking token is masked whatever its length: it is known to be a secret.
        env = {**self.env, **case_env}
        return Redactor(env, always=[env.get("MLFLOW_TRACKING_TOKEN", "")])

    def _warn(self, run: CaseRun, problems: list[str]) -> None:
        reason = "; ".join(dict.fromkeys(problems))
        warnings.warn(
            NbgateTrackingWarning(
                f"{run.spec.case_id}: not recorded in MLflow (tracking is optional): {reason}"
            ),
            stacklevel=2,
        )
