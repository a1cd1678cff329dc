"""Running one case end to end: execute, redact, keep the executed notebook, check thresholds."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbgate.contract.model import CaseResult, Failure, Threshold, ThresholdCheck
from nbgate.contract.redact import Redactor
from nbgate.execute import RunRequest, execute
from nbgate.kernels import KernelPool, kernel_environment
from nbgate.thresholds import evaluate


@dataclass(frozen=True)
class CaseSpec:
    """Everything needed to run a notebook once, whether declared in pyproject or by a test."""

    case_id: str
    notebook: str  # repository-relative POSIX path
    kind: str
    runner: str
    slug: str  # file-name-safe, unique per case
    parameters: Mapping[str, Any] = field(default_factory=dict)
    thresholds: tuple[Threshold, ...] = ()
    baseline: Mapping[str, float] | None = None  # production's metrics for baseline rules
    require_baseline: bool = False  # an unchecked baseline rule fails
    timeout: float = 900.0
    outputs: tuple[str, ...] = ()
    experiment: str | None = None
    version: str | None = None


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

    def __init__(self, root: Path, reports: Path, hook: Any | None = None) -> None:
        self.root = root
        self.reports = reports
        self.hook = hook
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
        run = CaseRun(spec, self.root, self.reports)
        if self.hook is not None:
            self.hook.pytest_nbgate_case_start(run=run)
        kernel_env = self.kernel_env()
        redactor = Redactor({**kernel_env, **run.case_env})
        execution = execute(
            RunRequest(
                notebook=self.root / spec.notebook,
                label=spec.notebook,
                parameters=dict(spec.parameters),
                cwd=self.root,
                timeout=spec.timeout,
                kernel_env=kernel_env,
                case_env=run.case_env,
            ),
            self.pool,
            prestart_next,
        )
        result = CaseResult(
            case_id=spec.case_id,
            notebook=spec.notebook,
            kind=spec.kind,
            runner=spec.runner,
            outcome="failed",
            duration_s=round(execution.duration_s, 3),
            parameters=redactor.deep(dict(spec.parameters)),
            metrics=execution.recorded.metrics,
        )
        if execution.nb is not None:
            run.executed_notebook = self._write_notebook(spec, redactor.deep(execution.nb))
            result.executed_notebook = self._relative(run.executed_notebook)
        result.figures = self._write_figures(spec, execution.recorded.figures)
        result.thresholds = evaluate(spec.thresholds, result.metrics, spec.baseline,
                                     spec.require_baseline)
        result.failure = execution.failure or _threshold_failure(result.thresholds)
        if result.failure is not None:
            result.failure = Failure(**redactor.deep(vars(result.failure)))
        result.outcome = "failed" if result.failure else "passed"
        result.outputs = [o for o in spec.outputs if (self.root / o).is_file()]
        if self.hook is not None:
            self.hook.pytest_nbgate_case_finish(run=run, result=result)
        return result

    def _relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def _write_notebook(self, spec: CaseSpec, nb: Any) -> Path:
        import nbformat

        path = self.reports / "notebooks" / f"{spec.slug}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(path))
        return path

    def _write_figures(self, spec: CaseSpec, figures: Mapping[str, bytes]) -> dict[str, str]:
        written = {}
        for name, png in figures.items():
            path = self.reports / "figures" / f"{spec.slug}-{slugify(name)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
            written[name] = self._relative(path)
        return written


def _threshold_failure(checks: list[ThresholdCheck]) -> Failure | None:
    violated = [c for c in checks if not c.passed]
    if not violated:
        return None
    # The rule and the gap in the headline itself: a reviewer sees how it failed without a click.
    return Failure(kind="thresholds", message="; ".join(f"{c.metric} {c.reason}" for c in violated))
