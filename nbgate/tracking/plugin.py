"""MLflow tracking: one run per notebook case, created by the harness and handed to the kernel.

Before a notebook starts, the harness creates the case's run (tags: case, notebook, kind,
runner, commit and the GitLab CI context; params: the injected parameters) and hands it to the
kernel as ``MLFLOW_RUN_ID``, so ``mlflow.log_*`` calls inside the notebook land in that run.
Afterwards it logs the recorded metrics, the executed (redacted) notebook and the pipeline's
declared outputs, registers a ``train`` pipeline's model as a model version when the pipeline
declares a ``version``, and ends the run FINISHED or FAILED to match the case. A run whose case
never finished (Ctrl-C, a crash) is ended KILLED.

The MLflow calls happen in a helper process (nbgate/tracking/helper.py): mlflow's import and
the store's opening cost ~3 s of CPU, more than a session of small notebooks. The helper is
attached as pytest configures when the session will run notebooks, so a cold start overlaps
collection and the first kernels' start-up; under pytest-xdist the workers share the
controller's. Outside CI the helper stays warm for ``NBGATE_MLFLOW_HELPER_IDLE`` seconds (60)
after its last session, so the next session pays nothing for mlflow. There is at most one
per user and store, its socket in the user's 0700 folder (nbgate/tracking/files.py); a session of
another interpreter, package set or nbgate code makes it retire and starts its own. It stops by
itself; it makes each call in the asking session's environment; and it never serves a stale
store: a local store deleted, replaced or migrated since the helper opened it makes it retire,
and a new helper serves the session. In CI (``CI`` set) each session has its own helper. Runs
carry their owner (``nbgate.owner``: host, pid, start time); a helper that dies mid-session is
replaced and the case's request repeated, and a RUNNING run whose owner is gone is ended KILLED
by the next session on the local store.

A case costs two round trips: ``start`` (the run, its tags and params; requested as the case
before it finishes, so it is usually ready) and ``finish`` (metrics, tags, artifacts, model,
status in one batch). Everything sent passes through the case's Redactor first: values, and
names (params, metrics, artifacts, the run and the model), where a secret becomes ``MASKED``.

Only calls that GitLab's MLflow endpoint (``/api/v4/projects/:id/ml/mlflow``) supports are
made: experiments get/get-by-name/create, runs create/log-batch/update, ``log_artifact`` of
single files at the artifact root, registered models and model versions. No logged-model
(MLflow 3) calls, no search filters.

``MLFLOW_TRACKING_URI`` unset means a local store in the repository: ``sqlite:///mlflow.db``
with artifacts under ``mlruns/``, created atomically (see ``create_local_store``). A tracking
server that cannot be reached or rejects the token fails the case (URI and HTTP status, never
the token) unless ``[tool.nbgate.tracking] optional = true``, which turns that into a warning.

This module never imports mlflow: collection must stay light, and the pytest process does not
pay for it at all.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nbgate.contract.ci_context import CIContext
from nbgate.contract.model import CaseResult, Failure, Tracking
from nbgate.tracking.client import CLOSE_TIMEOUT, Helper, HelperError
from nbgate.tracking.errors import HINT, describe_failure, http_status, safe_uri
from nbgate.tracking.naming import (
    experiment_name,
    explain_experiment_conflict,
    local_store_uri,
    run_url,
)
from nbgate.tracking.runs import CaseTracking, NbgateTrackingWarning, RunRequests
from nbgate.tracking.service import HARNESS_HTTP_ENV
from nbgate.tracking.store import LOCAL_ARTIFACTS, LOCAL_STORE

if TYPE_CHECKING:
    from nbgate.running.case import CaseRun

__all__ = [
    "HARNESS_HTTP_ENV", "HINT", "LOCAL_ARTIFACTS", "LOCAL_STORE", "PLUGIN_NAME",
    "NbgateTrackingWarning", "Tracker", "describe_failure", "http_status", "run_url", "safe_uri",
]

PLUGIN_NAME = "nbgate-tracking"  # `pytest -p no:nbgate-tracking` turns tracking off
SCRATCH_KEY = "nbgate.tracking"
WORKER_KEY = "nbgate_mlflow_helper"  # pytest-xdist workerinput: the controller's helper socket


class Tracker(RunRequests):
    """The nbgate hooks that give every case an MLflow run; registered as ``nbgate-tracking``."""

    def __init__(self, root: Path, optional: bool = False, env: Mapping[str, str] | None = None):
        self.root = Path(root)
        self.optional = optional
        self.env = os.environ if env is None else env
        # Read by mlflow when it is imported (in kernels and the helper): no telemetry from CI.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self._uri: str | None = None
        self._helper: Helper | None = None
        self._helper_problem: str | None = None  # the helper could not be had: every case says so
        self._worker_socket: str | None = None  # under xdist: the controller's helper
        self._config: pytest.Config | None = None
        self._ahead: dict[str, int] = {}  # case id -> its start request, sent ahead
        self._running: dict[str, str] = {}  # run id -> case id: started, not finished
        self._next_item: pytest.Item | None = None
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

    # -- the helper --------------------------------------------------------------------------
    @property
    def helper_pid(self) -> int | None:
        """The helper process this session talks to (None before its first call)."""
        return self._helper.pid if self._helper is not None else None

    def helper(self) -> Helper:
        """The connection to the helper: the xdist controller's, else one this process starts."""
        if self._helper is None:
            if self._helper_problem is not None:
                raise HelperError(self._helper_problem)
            env = {**self.env, "MLFLOW_DISABLE_TELEMETRY": "true"}
            local = self.root.resolve() if self.is_local else None
            try:
                if self._worker_socket is not None:  # the controller's: its store, as opened
                    helper = Helper.connect(self._worker_socket)
                    helper.on_notice = self._notice
                    helper.hello(self.tracking_uri, local, None, env, Path.cwd())
                    self._helper = helper
                else:
                    self._helper = Helper.attach(self.tracking_uri, local, env, Path.cwd(),
                                                 self._notice)
            except HelperError as exc:
                self._helper_problem = str(exc)
                raise
        return self._helper

    def _notice(self, text: str) -> None:
        """Show a helper's notice (a lock wait) now, past pytest's output capture."""
        capman = self._config.pluginmanager.getplugin("capturemanager") if self._config else None
        quiet = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
        with quiet:
            sys.stderr.write(f"\nnbgate: MLflow: {text}\n")
            sys.stderr.flush()

    def call_surviving(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` to the helper; if the helper died (killed, out of memory), once more to
        a new one, so a case's run is finished instead of left RUNNING."""
        try:
            return self.helper().call(request)
        except HelperError as exc:
            if self._helper is None or not self._helper.dead:
                raise
            warnings.warn(NbgateTrackingWarning(f"{exc}; a new helper takes over"), stacklevel=2)
            self._replace_dead_helper()
            return self.helper().call(request)

    def _replace_dead_helper(self) -> None:
        dead, self._helper = self._helper, None
        self._worker_socket = None  # under xdist the controller's helper is the one that died
        self._ahead.clear()  # asked of the dead helper: those runs are reaped later (owner tag)
        if dead is not None:
            dead.close(timeout=2)

    def close(self) -> None:
        """End what this process left open (KILLED: its case never finished); stop the helper."""
        helper, self._helper = self._helper, None
        if helper is None:
            return
        interrupted = {"nbgate.outcome": "interrupted"}
        with contextlib.suppress(HelperError):
            for run_id in list(self._running):
                helper.call({"op": "end", "run_id": run_id, "status": "KILLED",
                             "tags": interrupted}, CLOSE_TIMEOUT)
        self._running.clear()
        self._ahead.clear()  # runs created for cases that never started: `bye` ends them
        helper.close()

    # -- pytest hooks ------------------------------------------------------------------------
    @pytest.hookimpl
    def pytest_configure(self, config: pytest.Config) -> None:
        """Start the helper now if this session will run notebooks, so it is warm in time."""
        self._config = config
        worker = getattr(config, "workerinput", None)
        if worker is not None:
            self._worker_socket = worker.get(WORKER_KEY)
            return  # a worker connects when its first case starts
        if not config.option.collectonly and _will_run_notebooks(config):
            with contextlib.suppress(HelperError):  # reported by the first case that needs it
                self.helper()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """pytest-xdist: every worker uses this controller's helper (one mlflow import)."""
        if self._helper is not None:
            node.workerinput[WORKER_KEY] = self._helper.socket_path

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        self._next_item = nextitem
        self._send_ahead(item)  # the first case: queued while the helper may still be starting

    @pytest.hookimpl
    def pytest_unconfigure(self) -> None:
        self.close()

    # -- the nbgate hooks (nbgate/pytest_plugin/hookspecs.py) ----------------------------
    def pytest_nbgate_case_start(self, run: CaseRun) -> None:
        spec = run.spec
        state = CaseTracking(started=time.time(), experiment_name=experiment_name(spec))
        run.scratch[SCRATCH_KEY] = state
        run.case_env.update(self.kernel_env())
        redactor = self._redactor(run.case_env)
        try:
            helper = self.helper()
            number = self._ahead.pop(spec.case_id, None)
            try:
                if number is None:
                    number = helper.send(self._start_request(spec, redactor))
                else:
                    state.params = self._params(spec, redactor)
                reply = helper.reply(number)
            except HelperError:
                if not helper.dead:
                    raise
                reply = self.call_surviving(self._start_request(spec, redactor))
        except HelperError as exc:
            reply = {"ok": False, "error": str(exc)}
        if reply.get("ok"):
            state.run_id = reply["run_id"]
            state.experiment_id = reply["experiment_id"]
            state.artifact_uri = reply["artifact_uri"]
            self._running[state.run_id] = spec.case_id
            run.case_env["MLFLOW_RUN_ID"] = state.run_id
            run.case_env["MLFLOW_EXPERIMENT_ID"] = str(state.experiment_id)
        else:
            state.problems.append(redactor.text(reply["error"]))
            # The notebook's own mlflow calls (if any) should fail as fast as the harness's.
            for name, value in HARNESS_HTTP_ENV.items():
                run.case_env.setdefault(name, self.env.get(name, value))
            if self.optional:
                self._warn(run, state.problems)

    def pytest_nbgate_case_finish(self, run: CaseRun, result: CaseResult) -> None:
        state: CaseTracking | None = run.scratch.get(SCRATCH_KEY)
        if state is None:
            return
        explain_experiment_conflict(result, run, state.experiment_name)
        warned = bool(state.problems) and self.optional
        if state.run_id is not None:
            redactor = self._redactor(run.case_env)
            try:
                reply = self.call_surviving(self._finish_request(run, result, state, redactor))
            except HelperError as exc:
                reply = {"ok": False, "error": str(exc)}
            self._running.pop(state.run_id, None)
            if reply.get("ok"):
                for text in reply.get("warnings", []):
                    warnings.warn(NbgateTrackingWarning(
                        f"{run.spec.case_id}: {redactor.text(text)}"), stacklevel=2)
            else:
                state.problems.append(redactor.text(reply["error"]))
            result.tracking = Tracking(
                run_id=state.run_id,
                url=run_url(self.tracking_uri, state.experiment_id, state.run_id,
                            CIContext.from_env(self.env)),
                experiment_id=state.experiment_id,
                tracking_uri=self.display_uri,
            )
        # The next case's run is created while pytest reports this one and sets the next up.
        self._send_ahead(self._next_item)
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


def _will_run_notebooks(config: pytest.Config) -> bool:
    """Does a path this session collects hold a declared notebook? (``pytest tests/`` does not.)

    Only then is the helper started as pytest configures; otherwise the first case that needs
    a run (a ``run_notebook`` test) starts it.
    """
    from nbgate.pytest_plugin.state import get_state

    notebooks = get_state(config).cases_by_path
    if not notebooks or config.getoption("nbmake", default=False):
        return False  # with --nbmake, nbmake runs the notebooks (nbgate collects none)
    here = config.invocation_params.dir
    for arg in config.args:
        path = os.path.abspath(os.path.join(here, arg.split("::", 1)[0]))
        prefix = path.rstrip(os.sep) + os.sep
        if any(nb == path or nb.startswith(prefix) for nb in notebooks):
            return True
    return False
