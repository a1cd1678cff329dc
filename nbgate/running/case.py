"""Running one case end to end: execute, redact, keep the executed notebook, check thresholds."""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nbgate.config import ParameterSource
from nbgate.contract.model import CaseResult, Failure, Fingerprint, Threshold, ThresholdCheck
from nbgate.contract.redact import Redactor
from nbgate.running.case_files import ReportFiles
from nbgate.running.execute import RunRequest, execute, prepare
from nbgate.running.fingerprint import case_fingerprint
from nbgate.running.kernels import KernelPool, kernel_environment
from nbgate.running.thresholds import NO_BASELINE, evaluate, not_finite


@dataclass(frozen=True)
class CaseSpec:
    """Everything needed to run a notebook once, whether declared in pyproject or by a test."""

    case_id: str
    notebook: str  # repository-relative POSIX path
    kind: str
    runner: str
    slug: str  # file-name-safe, unique per case
    # The parameters the notebook must define (the pipeline's, or run_notebook's). Hooks see
    # the spec of the running case (CaseRun.spec), where this is exactly what was injected.
    parameters: Mapping[str, Any] = field(default_factory=dict)
    parameters_from: str = "pipeline"  # where ``parameters`` come from, for messages
    # Runner and CI parameters, injected only where the notebook defines them.
    shared_parameters: tuple[ParameterSource, ...] = ()
    thresholds: tuple[Threshold, ...] = ()
    baseline: Mapping[str, float] | None = None  # production's metrics for baseline rules
    require_baseline: bool = False  # an unchecked baseline rule fails
    no_baseline: str = NO_BASELINE  # why ``baseline`` is None: a not-checked gate says it
    timeout: float = 900.0
    outputs: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # declared inputs, hashed into the fingerprint
    experiment: str | None = None
    version: str | None = None

    def parameter_sources(self) -> tuple[ParameterSource, ...]:
        """Every source in precedence order (later ones win)."""
        required = ParameterSource(self.parameters_from, self.parameters, required=True)
        return (required, *self.shared_parameters)


@dataclass
class CaseRun:
    """A case while it runs: what hooks see and may add to."""

    spec: CaseSpec
    root: Path
    reports: Path
    case_env: dict[str, str] = field(default_factory=dict)
    executed_notebook: Path | None = None  # set once the executed notebook is written
    scratch: dict[str, Any] = field(default_factory=dict)  # per-plugin state between hooks


class CaseFailed(Exception):
    """Raised to pytest when a case fails; rendering is done from ``result``."""

    def __init__(self, result: CaseResult) -> None:
        super().__init__(result.failure.message if result.failure else result.case_id)
        self.result = result


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def slugify(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.") or "case"


class CaseRunner:
    """Runs cases on a shared kernel pool; one per pytest process."""

    def __init__(
        self,
        root: Path,
        reports: Path,
        hook: Any | None = None,
        session_id: str | None = None,
    ) -> None:
        """``session_id``: the same in every process of one pytest session (xdist workers
        get the controller's), so only the session's first file clears older reports."""
        self.root = root
        self.reports = reports
        self.hook = hook
        self.files = ReportFiles(reports, session_id or uuid.uuid4().hex)
        self._pool: KernelPool | None = None

    @property
    def pool(self) -> KernelPool:
        if self._pool is None:
            self._pool = KernelPool()
        return self._pool

    @staticmethod
    def parallel_workers() -> int:
        """How many pytest processes share the cores (pytest-xdist workers, else 1)."""
        return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)

    def kernel_env(self) -> dict[str, str]:
        return kernel_environment(os.environ, self.parallel_workers(), os.cpu_count() or 1)

    def prestart(self, ahead: int = 1) -> None:
        """Have ``ahead`` kernels booting for the cases that come next."""
        self.pool.prestart(self.root, self.kernel_env(), ahead)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def run(self, spec: CaseSpec, prestart_next: Callable[[], None] | None = None) -> CaseResult:
        kernel_env = self.kernel_env()
        request = RunRequest(
            notebook=self.root / spec.notebook,
            label=spec.notebook,
            parameter_sources=spec.parameter_sources(),
            cwd=self.root,
            timeout=spec.timeout,
            kernel_env=kernel_env,
        )
        # Read first, so hooks (MLflow params) see what is injected, not what could have been.
        prepared = prepare(request)
        run = CaseRun(
            replace(spec, parameters=prepared.parameters, shared_parameters=()),
            self.root,
            self.reports,
            case_env=dict(request.case_env),
        )
        request.case_env = run.case_env  # what hooks add reaches the kernel
        if self.hook is not None:
            self.hook.pytest_nbgate_case_start(run=run)
        redactor = Redactor({**kernel_env, **run.case_env})
        execution = execute(request, self.pool, prestart_next, prepared)
        recorded = execution.recorded
        # A secret can be a metric or figure name too; names are masked before anything
        # (reports, file names, MLflow) uses them.
        metrics = {redactor.name(name): value for name, value in recorded.metrics.items()}
        result = CaseResult(
            case_id=spec.case_id,
            notebook=spec.notebook,
            kind=spec.kind,
            runner=spec.runner,
            outcome="failed",
            duration_s=round(execution.duration_s, 3),
            parameters=redactor.deep(dict(prepared.parameters)),
            metrics=metrics,
        )
        if execution.nb is not None:
            run.executed_notebook = self._write_notebook(spec, redactor.notebook(execution.nb))
            result.executed_notebook = self._relative(run.executed_notebook)
        figures = {redactor.name(name): png for name, png in recorded.figures.items()}
        result.figures = self._write_figures(spec, figures)
        result.thresholds = evaluate(spec.thresholds, result.metrics, spec.baseline,
                                     spec.require_baseline, spec.no_baseline)
        result.failure = execution.failure or _threshold_failure(result.thresholds, metrics)
        if result.failure is not None:
            result.failure = Failure(**redactor.deep(vars(result.failure)))
        result.outcome = "failed" if result.failure else "passed"
        result.outputs = [o for o in spec.outputs if (self.root / o).is_file()]
        if prepared.nb is not None:
            result.fingerprint = self._fingerprint(spec, prepared.nb.cells, prepared.parameters)
        if self.hook is not None:
            self.hook.pytest_nbgate_case_finish(run=run, result=result)
        return result

    def _fingerprint(self, spec: CaseSpec, cells: Any, parameters: Mapping[str, Any]) \
            -> Fingerprint | None:
        try:
            return case_fingerprint(cells, parameters, self.root, spec.inputs)
        except OSError:  # an input removed since the config was read: no claim is better
            return None

    def _relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def _write_notebook(self, spec: CaseSpec, nb: Any) -> Path:
        import nbformat

        text = nbformat.writes(nb, version=nbformat.NO_CONVERT)
        return self.files.write(f"notebooks/{spec.slug}.ipynb", text.encode("utf-8"))

    def _write_figures(self, spec: CaseSpec, figures: Mapping[str, bytes]) -> dict[str, str]:
        written = {}
        for name, png in figures.items():
            path = self.files.write(f"figures/{spec.slug}-{slugify(name)}.png", png)
            written[name] = self._relative(path)
        return written


def _threshold_failure(
    checks: list[ThresholdCheck], metrics: Mapping[str, float]
) -> Failure | None:
    """Violated rules, and recorded metrics that are NaN or infinite even without a rule:
    such a value is no measurement, and reports can only show it as null."""
    violated = [c for c in checks if c.failed]
    ruled = {c.metric for c in checks}
    not_finite_metrics = [
        f"{name} {not_finite(value)}"
        for name, value in metrics.items()
        if name not in ruled and not math.isfinite(value)
    ]
    if not violated and not not_finite_metrics:
        return None
    # The rule and the gap in the headline itself: a reviewer sees how it failed without a click.
    parts = [f"{c.metric} {c.reason}" for c in violated]
    if not_finite_metrics:
        noun = "metric" if len(not_finite_metrics) == 1 else "metrics"
        parts.append(
            f"{len(not_finite_metrics)} {noun} not finite: " + "; ".join(not_finite_metrics)
        )
    return Failure(kind="thresholds", message="; ".join(parts))
