"""MLflow tracking: one run per notebook case, created by the harness and handed to the kernel.

Before a notebook starts, the harness creates the case's run (tags: case, notebook, kind,
runner, commit and the GitLab CI context; params: the injected parameters) and hands it to the
kernel as ``MLFLOW_RUN_ID``, so ``mlflow.log_*`` calls inside the notebook land in that run.
Afterwards it logs the recorded metrics, the executed (redacted) notebook and the pipeline's
declared outputs, registers a ``train`` pipeline's model as a model version when the pipeline
declares a ``version``, and ends the run FINISHED or FAILED to match the case.

Only calls that GitLab's MLflow endpoint (``/api/v4/projects/:id/ml/mlflow``) supports are
made: experiments get/get-by-name/create, runs create/log-batch/update, ``log_artifact`` of
single files at the artifact root, registered models and model versions. No logged-model
(MLflow 3) calls, no search filters.

``MLFLOW_TRACKING_URI`` unset means a local store in the repository: ``sqlite:///mlflow.db``
with artifacts under ``mlruns/``. A tracking server that cannot be reached or rejects the
token fails the case (URI and HTTP status, never the token) unless ``[tool.nbgate.tracking]
optional = true``, which turns that into a warning.

This module is imported while pytest configures; mlflow itself is imported at the first case.
"""

from __future__ import annotations

import contextlib
import hashlib
import http
import json
import math
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest

from nbgate.contract.ci_context import CIContext
from nbgate.contract.model import CaseResult, Failure, Tracking
from nbgate.contract.redact import Redactor

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from nbgate.case import CaseRun

PLUGIN_NAME = "nbgate-tracking"  # `pytest -p no:nbgate-tracking` turns tracking off
LOCAL_STORE = "mlflow.db"  # in the repository root, git-ignored
LOCAL_ARTIFACTS = "mlruns"
SCRATCH_KEY = "nbgate.tracking"
HINT = "check MLFLOW_TRACKING_URI / MLFLOW_TRACKING_TOKEN"

# mlflow's defaults retry an unreachable server for minutes (7 retries, backoff factor 2);
# the harness makes a handful of calls per case and would rather report the problem quickly.
# Values the user set win.
HARNESS_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
PARAM_VALUE_LIMIT = 500
TAG_VALUE_LIMIT = 1000
_GITLAB_ENDPOINT = re.compile(r"^(?P<prefix>.*?)/api/v4/projects/(?P<project>[^/]+)/ml/mlflow/?$")
_MODEL_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class NbgateTrackingWarning(UserWarning):
    """Tracking is optional for this project and a case's run could not be recorded."""


@dataclass
class _CaseTracking:
    """Per-case state kept in ``CaseRun.scratch`` between the two hooks."""

    started: float
    experiment_name: str
    run_id: str | None = None
    experiment_id: str | None = None
    artifact_uri: str | None = None
    problems: list[str] = field(default_factory=list)


class Tracker:
    """The nbgate hooks that give every case an MLflow run; registered as ``nbgate-tracking``."""

    def __init__(self, root: Path, optional: bool = False, env: Mapping[str, str] | None = None):
        self.root = Path(root)
        self.optional = optional
        self.env = os.environ if env is None else env
        # Read by mlflow when it is imported (here and in kernels): no telemetry from CI jobs.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self._uri: str | None = None
        self._client: MlflowClient | None = None
        self._experiments: dict[str, str] = {}
        self._open_runs: set[str] = set()
        self._unreachable: str | None = None  # set once a server did not answer at all
        self._commit: str | bool | None = False  # False: not looked up yet

    # -- where runs go -----------------------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        if self._uri is None:
            configured = self.env.get("MLFLOW_TRACKING_URI", "").strip()
            self._uri = configured or local_store_uri(self.root)
        return self._uri

    @property
    def is_local(self) -> bool:
        return not self.env.get("MLFLOW_TRACKING_URI", "").strip()

    @property
    def display_uri(self) -> str:
        return safe_uri(self.tracking_uri)

    def kernel_env(self) -> dict[str, str]:
        """What every kernel gets: the store to log to (a token stays in its environment)."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true"}

    # -- the hooks (nbgate/hookspecs.py) -----------------------------------------------------
    def pytest_nbgate_case_start(self, run: CaseRun) -> None:
        spec = run.spec
        state = _CaseTracking(started=time.time(), experiment_name=experiment_name(spec))
        run.scratch[SCRATCH_KEY] = state
        run.case_env.update(self.kernel_env())
        if self._unreachable is not None:  # no need to wait for the same timeout once per case
            state.problems.append(self._unreachable)
        else:
            redactor = self._redactor(run.case_env)
            try:
                with self._harness_env():
                    client = self._get_client()
                    state.experiment_id = self._experiment_id(client, state.experiment_name)
                    created = client.create_run(
                        state.experiment_id,
                        run_name=spec.case_id,
                        tags=redactor.deep(self.start_tags(run)),
                    )
                    state.run_id = created.info.run_id
                    state.artifact_uri = created.info.artifact_uri
                    self._open_runs.add(state.run_id)
                    params = mlflow_params(redactor.deep(dict(spec.parameters)))
                    if params:
                        from mlflow.entities import Param

                        client.log_batch(
                            state.run_id, params=[Param(k, v) for k, v in params.items()]
                        )
            except Exception as exc:  # any failure of the store: report it, run the notebook
                message, reached = describe_failure(self.display_uri, exc, self.is_local)
                if not reached:
                    self._unreachable = message
                state.problems.append(redactor.text(message))
        if state.run_id is not None and not state.problems:
            run.case_env["MLFLOW_RUN_ID"] = state.run_id
            run.case_env["MLFLOW_EXPERIMENT_ID"] = str(state.experiment_id)
        else:
            # The notebook's own mlflow calls (if any) should fail as fast as the harness's.
            for name, value in HARNESS_HTTP_ENV.items():
                run.case_env.setdefault(name, self.env.get(name, value))
            if self.optional:
                self._warn(run, state.problems)

    def pytest_nbgate_case_finish(self, run: CaseRun, result: CaseResult) -> None:
        state: _CaseTracking | None = run.scratch.get(SCRATCH_KEY)
        if state is None:
            return
        warned = bool(state.problems) and self.optional
        if state.run_id is not None:
            redactor = self._redactor(run.case_env)
            try:
                with self._harness_env():
                    self._finish_run(run, result, state, redactor)
            except Exception as exc:
                message, _ = describe_failure(self.display_uri, exc, self.is_local)
                state.problems.append(redactor.text(message))
                self._terminate_quietly(state.run_id)
            self._open_runs.discard(state.run_id)
            result.tracking = Tracking(
                run_id=state.run_id,
                url=run_url(self.tracking_uri, state.experiment_id, state.run_id,
                            CIContext.from_env(self.env)),
                experiment_id=state.experiment_id,
                tracking_uri=self.display_uri,
            )
        if not state.problems:
            return
        if self.optional:
            if not warned:
                self._warn(run, state.problems)
            return
        message = "MLflow tracking failed: " + "; ".join(dict.fromkeys(state.problems))
        if result.failure is None:
            result.failure = Failure("tracking", message)
        else:  # keep the notebook's own failure as the headline, add the tracking problem
            result.failure.message = f"{result.failure.message}; {message}"
        result.outcome = "failed"

    def _finish_run(
        self, run: CaseRun, result: CaseResult, state: _CaseTracking, redactor: Redactor
    ) -> None:
        from mlflow.entities import Metric, RunTag

        client = self._get_client()
        run_id = state.run_id
        assert run_id is not None
        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), now, 0)
            for name, value in result.metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(value)
        ]
        tags = {k: v for k, v in self.finish_tags(result).items() if v}
        client.log_batch(
            run_id,
            metrics=metrics,
            tags=[RunTag(k, _clip(redactor.text(v), TAG_VALUE_LIMIT)) for k, v in tags.items()],
        )
        if run.executed_notebook is not None and run.executed_notebook.is_file():
            client.log_artifact(run_id, str(run.executed_notebook))  # already redacted
        outputs = self._fresh_outputs(result, state)
        names: set[str] = set()
        for path in outputs:
            if path.name in names:  # GitLab keeps artifacts flat: the first of a name wins
                continue
            names.add(path.name)
            client.log_artifact(run_id, str(path))
        status = "FINISHED" if result.outcome == "passed" else "FAILED"
        if status == "FINISHED" and run.spec.kind == "train" and run.spec.version and outputs:
            self._register_model(client, run, state, outputs, metrics)
        client.set_terminated(run_id, status)

    def _register_model(
        self,
        client: MlflowClient,
        run: CaseRun,
        state: _CaseTracking,
        outputs: list[Path],
        metrics: list[Any],
    ) -> None:
        """A model version (semver in tag ``gitlab.version``); a server without one only warns."""
        from mlflow.entities import RunTag

        spec = run.spec
        name = model_name(spec.notebook, state.experiment_name)
        version_tags = {"gitlab.version": str(spec.version), "nbgate.case_id": spec.case_id}
        try:
            try:
                client.create_registered_model(name)
            except Exception as exc:
                try:  # it exists (a later run), unless the registry itself is missing
                    client.get_registered_model(name)
                except Exception:
                    raise exc from None
            source = f"{(state.artifact_uri or '').rstrip('/')}/{outputs[0].name}"
            version = client.create_model_version(
                name, source, run_id=state.run_id, tags=version_tags,
                description=f"{spec.case_id}, version {spec.version}", await_creation_for=0,
            )
            if version.run_id and version.run_id != state.run_id:
                # GitLab: every model version is a run of its own that holds the model's files.
                job = CIContext.from_env(self.env).job_id
                client.log_batch(
                    version.run_id,
                    metrics=metrics,
                    tags=[RunTag("gitlab.CI_JOB_ID", job)] if job else [],
                )
                for path in outputs:
                    client.log_artifact(version.run_id, str(path))
            client.set_tag(state.run_id, "nbgate.model_version", f"{name}/{version.version}")
        except Exception as exc:
            message, _ = describe_failure(self.display_uri, exc, self.is_local)
            message = self._redactor({}).text(message)
            warnings.warn(
                NbgateTrackingWarning(
                    f"{spec.case_id}: model {name} {spec.version} was not registered: {message}"
                ),
                stacklevel=2,
            )

    def _fresh_outputs(self, result: CaseResult, state: _CaseTracking) -> list[Path]:
        """Declared outputs this run wrote: a file left from an earlier run is not this model."""
        fresh = []
        for rel in result.outputs:
            path = self.root / rel
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime >= state.started - 2:
                    fresh.append(path)
        return fresh

    # -- tags --------------------------------------------------------------------------------
    def start_tags(self, run: CaseRun) -> dict[str, str]:
        spec = run.spec
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
        return {k: _clip(v, TAG_VALUE_LIMIT) for k, v in tags.items() if v}

    @staticmethod
    def finish_tags(result: CaseResult) -> dict[str, str]:
        failure = result.failure
        return {
            "nbgate.outcome": result.outcome,
            "nbgate.duration_s": f"{result.duration_s:g}",
            "nbgate.failure_kind": failure.kind if failure else "",
            "nbgate.failure": failure.message if failure else "",
        }

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

    # -- mlflow plumbing ---------------------------------------------------------------------
    def _get_client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            # A sqlite store is created and migrated right here: never by two workers at once.
            with self._store_lock():
                self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _experiment_id(self, client: MlflowClient, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        with self._store_lock():
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                location = None
                if self.is_local:  # next to the store, whatever the working directory
                    folder = self.root / LOCAL_ARTIFACTS / _MODEL_NAME_UNSAFE.sub("-", name)
                    location = folder.as_uri()
                try:
                    experiment_id = client.create_experiment(name, artifact_location=location)
                except Exception:
                    # Another pytest-xdist worker may have created it just now.
                    experiment = client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
                    experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
        self._experiments[name] = str(experiment_id)
        return self._experiments[name]

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Serialise creating the local sqlite store across pytest-xdist workers.

        Two processes migrating a new sqlite store at once leave it broken for good.
        """
        if not self.is_local:
            yield
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: workers may race on the very first run
            yield
            return
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:16]
        lock_path = Path(tempfile.gettempdir()) / f"nbgate-mlflow-{digest}.lock"
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _harness_env(self) -> Iterator[None]:
        """Fast-failing HTTP settings while the harness talks to the server (not for kernels)."""
        added = [k for k in HARNESS_HTTP_ENV if k not in os.environ]
        for name in added:
            os.environ[name] = HARNESS_HTTP_ENV[name]
        try:
            with warnings.catch_warnings():
                # mlflow's own deprecation noise (its sqlalchemy store) is not the user's concern.
                warnings.filterwarnings(
                    "ignore", category=DeprecationWarning, module=r"(mlflow|sqlalchemy|alembic)\b"
                )
                yield
        finally:
            for name in added:
                os.environ.pop(name, None)

    def _terminate_quietly(self, run_id: str) -> None:
        with contextlib.suppress(Exception), self._harness_env():
            self._get_client().set_terminated(run_id, "FAILED")

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

    # -- pytest hooks ------------------------------------------------------------------------
    @pytest.hookimpl
    def pytest_unconfigure(self) -> None:
        # A run whose case never reached its finish hook (Ctrl-C, a harness crash) still ends.
        for run_id in list(self._open_runs):
            self._terminate_quietly(run_id)
        self._open_runs.clear()


# -- naming ----------------------------------------------------------------------------------
def local_store_uri(root: Path) -> str:
    return "sqlite:///" + (Path(root).resolve() / LOCAL_STORE).as_posix()


def experiment_name(spec: Any) -> str:
    """The pipeline's declared ``experiment``, else one per pipeline: ``<notebook>::<kind>``."""
    return spec.experiment or f"{spec.notebook}::{spec.kind}"


def model_name(notebook: str, experiment: str) -> str:
    """The registered model of a training pipeline: its notebook's name.

    GitLab refuses a model named like an existing experiment, hence the suffix in that case.
    """
    name = _MODEL_NAME_UNSAFE.sub("-", PurePosixPath(notebook).stem).strip("-.") or "model"
    return f"{name}-model" if name == experiment else name


def mlflow_params(parameters: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in parameters.items():
        text = value if isinstance(value, str) else (
            json.dumps(value, default=str) if isinstance(value, (dict, list, tuple)) else str(value)
        )
        out[str(key)] = _clip(text, PARAM_VALUE_LIMIT)
    return out


def safe_uri(uri: str) -> str:
    """The URI without credentials (user:password@) or query string."""
    parts = urlsplit(uri)
    if not parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def run_url(uri: str, experiment_id: str | None, run_id: str, ci: CIContext) -> str | None:
    """A browser link for the run: MLflow's UI, or GitLab's experiment page; None for files."""
    parts = urlsplit(safe_uri(uri))
    if parts.scheme not in ("http", "https") or experiment_id is None:
        return None
    gitlab = _GITLAB_ENDPOINT.match(parts.path)
    if gitlab is None:
        base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
    # GitLab's pages use its own ids: a run (candidate) page needs an iid the MLflow API does
    # not return, but the experiment id it returns is the experiment page's iid.
    project = unquote(gitlab["project"])
    if ci.project_url and project in (ci.project_id, ci.project_path):
        project_url = ci.project_url.rstrip("/")
    elif not project.isdigit():
        path = f"{gitlab['prefix']}/{project}"
        project_url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    else:
        return None
    return f"{project_url}/-/ml/experiments/{experiment_id}"


# -- errors ----------------------------------------------------------------------------------
_CONNECTION_REASONS = (
    ("connection refused", "connection refused"),
    ("name or service not known", "unknown host"),
    ("nodename nor servname", "unknown host"),
    ("temporary failure in name resolution", "unknown host"),
    ("timed out", "timed out"),
    ("timeout", "timed out"),
    ("connection reset", "connection reset"),
    ("remote end closed connection", "connection closed by the server"),
    ("certificate verify failed", "TLS certificate not trusted"),
    ("max retries exceeded", "no answer"),
)


def describe_failure(uri: str, exc: BaseException, local: bool = False) -> tuple[str, bool]:
    """One line naming the store, the HTTP status and why; and whether the server answered."""
    text = " ".join(str(exc).split())
    status = http_status(exc, text)
    if status is not None:
        reason = _rest_message(exc) or _phrase(status)
        return f"{uri} answered HTTP {status}: {_clip(reason, 200)}; {HINT}", True
    if local:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the local MLflow store {uri} failed: {_clip(first, 200)}", True
    lowered = text.lower()
    for needle, reason in _CONNECTION_REASONS:
        if needle in lowered:
            return f"{uri} could not be reached ({reason}); {HINT}", False
    return f"{uri} failed: {_clip(text or type(exc).__name__, 200)}; {HINT}", True


def http_status(exc: BaseException, text: str | None = None) -> int | None:
    text = " ".join(str(exc).split()) if text is None else text
    for pattern in (r"failed with error code (\d{3})\b", r"too many (\d{3}) error responses"):
        match = re.search(pattern, text)
        if match:
            return int(match.group(1))
    body = getattr(exc, "json", None)
    if isinstance(body, dict):
        # GitLab answers {"message": "401 Unauthorized"} without an MLflow error_code.
        match = re.match(r"\s*([1-5]\d\d)\b", str(body.get("message", "")))
        if match:
            return int(match.group(1))
        if body.get("error_code") and hasattr(exc, "get_http_status_code"):
            return int(exc.get_http_status_code())
    return None


def _rest_message(exc: BaseException) -> str | None:
    body = getattr(exc, "json", None)
    if isinstance(body, dict) and body.get("message"):
        message = str(body["message"])
        return re.sub(r"^\s*[1-5]\d\d\s+", "", message) or message
    return None


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
