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
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest

from nbgate.contract.ci_context import CIContext
from nbgate.contract.model import CaseResult, Failure, Tracking
from nbgate.contract.redact import MASK, Redactor
from nbgate.tracking import helper as mlflow_helper
from nbgate.tracking.files import OWNER_TAG, digest, owner, private_folder
from nbgate.tracking.helper import (
    HARNESS_HTTP_ENV,
    HINT,
    LOCAL_ARTIFACTS,
    LOCAL_STORE,
    clip,
    describe_failure,
    http_status,
    safe_uri,
    store_identity,
)

if TYPE_CHECKING:
    from nbgate.running.case import CaseRun, CaseSpec

__all__ = [
    "HARNESS_HTTP_ENV", "HINT", "LOCAL_ARTIFACTS", "LOCAL_STORE", "PLUGIN_NAME",
    "NbgateTrackingWarning", "Tracker", "describe_failure", "http_status", "run_url", "safe_uri",
]

PLUGIN_NAME = "nbgate-tracking"  # `pytest -p no:nbgate-tracking` turns tracking off
SCRATCH_KEY = "nbgate.tracking"
WORKER_KEY = "nbgate_mlflow_helper"  # pytest-xdist workerinput: the controller's helper socket
PARAM_VALUE_LIMIT = 500
TAG_VALUE_LIMIT = 1000
NAME_MASK = "MASKED"  # a secret in a name: "[MASKED]" is not a valid MLflow key
# How long the pytest process waits for one answer: a cold helper imports mlflow (seconds on a
# loaded machine) and a server gets retries (HARNESS_HTTP_ENV); past this the helper is stuck.
REPLY_TIMEOUT = 300.0
CLOSE_TIMEOUT = 30.0
IDLE_ENV = "NBGATE_MLFLOW_HELPER_IDLE"
# An idle helper holds ~230 MB (mlflow, sqlalchemy, alembic imported), over SPEC §11's 150 MB:
# so by default it waits one minute for the next session (bench/RESULTS.md measures it).
DEFAULT_IDLE = 60.0
HELPER_PROTOCOL = 2  # part of a warm helper's installation: bump when the protocol changes
_GITLAB_ENDPOINT = re.compile(r"^(?P<prefix>.*?)/api/v4/projects/(?P<project>[^/]+)/ml/mlflow/?$")
_MODEL_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_EXPERIMENT_CONFLICT = "because active experiment ID does not match environment run ID"
_SET_EXPERIMENT = re.compile(r"set_experiment\(\s*(?:experiment_name\s*=\s*)?(['\"])(.+?)\1")


class NbgateTrackingWarning(UserWarning):
    """Tracking is optional for this project and a case's run could not be recorded."""


class HelperError(Exception):
    """The helper process could not be started or stopped answering; the message says why."""


class Helper:
    """One connection to an MLflow helper process (nbgate/tracking/helper.py).

    Requests are numbered in the order sent and answered in that order, so a request can be
    sent now and its answer read later (a run created ahead of its case) without a thread.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.process: subprocess.Popen[bytes] | None = None  # a helper for this session only
        self.folder: Path | None = None  # that helper's private folder
        self.log: Path | None = None
        self._hello: int | None = None  # the hello request, answered with the helper's pid
        self._pid: int | None = None
        self._sent = 0
        self._read = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._buffer = b""
        self.on_notice: Any = None  # called with each notice line (a lock wait) as it comes
        self.dead = False  # the connection broke: the helper died or closed it

    @classmethod
    def attach(cls, uri: str, local_root: Path | None, env: Mapping[str, str],
               cwd: Path, on_notice: Any = None) -> Helper:
        """A helper for this session's store: the installation's warm one, else a new one.

        A warm helper stays ``helper_idle(env)`` seconds after its last session, so the next
        session finds mlflow imported; in CI (nothing runs twice) each session has its own.
        """
        idle = helper_idle(env)
        # Warm only for what it can tell apart between sessions: the repository's own store
        # (checked by identity) and servers. A user's sqlite, file or database URI may be
        # relative to the directory, or point at a store replaced since, under the same name.
        shareable = local_root is not None or urlsplit(uri).scheme in ("http", "https")
        folder = private_folder() if idle > 0 and shareable else None
        if folder is None:
            helper = cls._private(local_root is not None, env)
            helper.on_notice = on_notice
            helper.hello(uri, local_root, None, env, cwd)
            return helper
        return cls._warm(folder, idle, uri, local_root, env, cwd, on_notice)

    @classmethod
    def _warm(cls, folder: Path, idle: float, uri: str, local_root: Path | None,
              env: Mapping[str, str], cwd: Path, on_notice: Any = None) -> Helper:
        # One per user and store, whatever the venv, nbgate version or idle setting: a helper
        # of another installation retires when asked (see Service._hello) and a new one starts.
        key = "helper-" + digest(str(local_root) if local_root is not None else safe_uri(uri))
        path = folder / f"{key}.sock"
        identity = store_identity(local_root)

        def existing() -> Helper | None:
            with contextlib.suppress(HelperError):
                helper = cls.connect(str(path))
                helper.on_notice = on_notice
                if helper.hello(uri, local_root, identity, env, cwd, wait=True, idle=idle):
                    return helper
                helper.close()  # it retired: another installation, or the store changed
            return None

        helper = existing()
        if helper is not None:
            return helper
        with open(folder / f"{key}.lock", "a") as lock:
            _flock(lock)  # two sessions starting at once start one helper
            helper = existing()
            if helper is not None:
                return helper
            path.unlink(missing_ok=True)  # left by a helper that was killed, or retired
            cls._start(path, idle, local_root is not None, env, folder / f"{key}.log",
                       detach=True)
            helper = cls.connect(str(path))
        helper.on_notice = on_notice
        helper.log = folder / f"{key}.log"
        helper.hello(uri, local_root, identity, env, cwd, idle=idle)  # a new one cannot refuse
        return helper

    @classmethod
    def _private(cls, local: bool, env: Mapping[str, str]) -> Helper:
        folder = Path(tempfile.mkdtemp(prefix="nbgate-mlflow-"))  # mode 0700: this user only
        try:
            process = cls._start(folder / "helper.sock", 0, local, env, folder / "helper.log",
                                 detach=False)
            helper = cls.connect(str(folder / "helper.sock"))
        except HelperError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        helper.process, helper.folder, helper.log = process, folder, folder / "helper.log"
        return helper

    @staticmethod
    def _start(path: Path, idle: float, local: bool, env: Mapping[str, str], log: Path,
               detach: bool) -> subprocess.Popen[bytes]:
        """Start a helper on a socket that listens before it runs: requests queue meanwhile."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            listener.listen(64)
            argv = [sys.executable, "-m", "nbgate.tracking.helper", str(listener.fileno()),
                    f"{idle:g}", *(["local"] if local else []), *(["warm"] if detach else [])]
            with open(log, "wb") as out:
                return subprocess.Popen(
                    argv, env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"},
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    pass_fds=(listener.fileno(),), cwd="/",
                    # A warm helper is no part of the session that started it: Ctrl-C and the
                    # session's end leave it alone; it stops by itself once idle.
                    start_new_session=detach,
                )
        except OSError as exc:
            raise HelperError(f"nbgate's MLflow helper process could not start: {exc}") from exc
        finally:
            listener.close()

    @classmethod
    def connect(cls, path: str) -> Helper:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise HelperError(f"nbgate's MLflow helper at {path} did not answer: {exc}") from exc
        return cls(sock)

    def hello(self, uri: str, local_root: Path | None, identity: str | None,
              env: Mapping[str, str], cwd: Path, wait: bool = False,
              idle: float | None = None) -> bool:
        """Say which store this session uses, as it is now (``identity``; None: as the helper
        has it), and in which environment (token, HTTP settings). False: the helper retired.

        Not waited for unless asked: a new helper answers once mlflow is imported, and pytest
        goes on collecting and starting kernels meanwhile; the first run's request waits.
        """
        self._hello = self.send({"op": "hello", "uri": uri, "cwd": str(cwd), "env": dict(env),
                                 "local_root": str(local_root) if local_root else None,
                                 "identity": identity, "install": installation(),
                                 "idle": idle})
        if not wait:
            return True
        reply = self.reply(self._hello)
        self._pid = reply.get("pid")
        return bool(reply.get("ok"))

    @property
    def pid(self) -> int | None:
        """The helper's process id (waits for its answer to hello)."""
        if self._pid is None and self._hello is not None:
            with contextlib.suppress(HelperError):
                self._pid = self.reply(self._hello).get("pid")
        return self._pid

    @property
    def socket_path(self) -> str:
        return str(self.sock.getpeername())

    def send(self, request: dict[str, Any]) -> int:
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise HelperError(self._gone(str(exc))) from exc
        self._sent += 1
        return self._sent

    def reply(self, number: int, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while number not in self._replies:
            if b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                message = json.loads(line)
                if "notice" in message:  # said while the answer is awaited: not the answer
                    if self.on_notice is not None:
                        self.on_notice(str(message["notice"]))
                    continue
                self._read += 1
                self._replies[self._read] = message
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise HelperError(f"nbgate's MLflow helper did not answer in {timeout:g} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise HelperError(self._gone(str(exc))) from exc
            if not data:
                raise HelperError(self._gone("it closed the connection"))
            self._buffer += data
        return self._replies.pop(number)

    def call(self, request: dict[str, Any], timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        return self.reply(self.send(request), timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Say goodbye: the helper ends this session's open runs KILLED (after the ones the
        session ended itself); a session's own helper then stops, a warm one waits."""
        with contextlib.suppress(HelperError, OSError):
            self.call({"op": "bye"}, timeout)
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _gone(self, why: str) -> str:
        self.dead = True
        tail = ""
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(2)
        if self.log is not None:
            with contextlib.suppress(OSError):
                lines = self.log.read_text(errors="replace").strip()
                tail = lines.splitlines()[-1] if lines else ""
        return "nbgate's MLflow helper process stopped answering (" + why + ")" + (
            f": {clip(tail, 300)}" if tail else ""
        )


def helper_idle(env: Mapping[str, str]) -> float:
    """Seconds a warm helper waits for the next session: ``NBGATE_MLFLOW_HELPER_IDLE``, else
    0 in CI (every job starts afresh, so nothing would use it) and 60 elsewhere."""
    configured = env.get(IDLE_ENV, "").strip()
    if configured:
        with contextlib.suppress(ValueError):
            value = float(configured)
            if math.isfinite(value):
                return max(0.0, value)
    return 0.0 if env.get("CI") else DEFAULT_IDLE


def installation() -> str:
    """The installation a warm helper runs: this interpreter, its installed packages (an
    install or upgrade changes site-packages' entries, so its mtime), nbgate's helper and
    client code and the protocol. A session of another one retires the store's helper."""
    import hashlib
    import sysconfig

    from nbgate.tracking import files as helper_files

    parts = [os.path.realpath(sys.executable), str(HELPER_PROTOCOL)]
    for path in (sysconfig.get_paths()["purelib"], __file__, mlflow_helper.__file__,
                 helper_files.__file__):
        with contextlib.suppress(OSError):
            info = os.stat(path)
            parts.append(f"{path}:{info.st_mtime_ns}:{info.st_size}")
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:16]


def _flock(handle: Any) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: two sessions may each start a helper; one serves both
        return
    fcntl.flock(handle, fcntl.LOCK_EX)


@dataclass
class _CaseTracking:
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


class Tracker:
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
        state = _CaseTracking(started=time.time(), experiment_name=experiment_name(spec))
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
        state: _CaseTracking | None = run.scratch.get(SCRATCH_KEY)
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
        from nbgate.pytest_plugin.plugin import NotebookCase, get_state

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
        self, run: CaseRun, result: CaseResult, state: _CaseTracking, redactor: Redactor
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


def _will_run_notebooks(config: pytest.Config) -> bool:
    """Does a path this session collects hold a declared notebook? (``pytest tests/`` does not.)

    Only then is the helper started as pytest configures; otherwise the first case that needs
    a run (a ``run_notebook`` test) starts it.
    """
    from nbgate.pytest_plugin.plugin import get_state

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


def explain_experiment_conflict(result: CaseResult, run: CaseRun, experiment: str) -> None:
    """A notebook's own ``mlflow.set_experiment`` cannot move nbgate's run: say what to do.

    MLflow refuses to log to ``MLFLOW_RUN_ID`` once the notebook made another experiment the
    active one, with a message about command-line arguments that do not exist here. The fix is
    the pipeline's ``experiment`` key, which makes nbgate create the run in that experiment.
    """
    failure = result.failure
    if failure is None or _EXPERIMENT_CONFLICT not in (failure.exception or failure.message):
        return
    wanted = None
    with contextlib.suppress(Exception):  # a suggestion only: the notebook's own literal name
        import nbformat

        nb = nbformat.read(str(run.root / run.spec.notebook), as_version=4)
        for cell in nb.cells:
            match = _SET_EXPERIMENT.search(cell.source)
            if match:
                wanted = match.group(2)
                break
    key = f'experiment = "{wanted}"' if wanted else 'experiment = "<name>"'
    failure.message = (
        f"{failure.message.split(':', 1)[0]}: the notebook calls mlflow.set_experiment(), but "
        f"nbgate logs this case to its run in experiment {experiment!r}. Name the experiment in "
        f"the pipeline instead: {key} in its [[tool.nbgate.pipelines]] entry "
        f"(notebook = \"{run.spec.notebook}\") in pyproject.toml, and drop the set_experiment "
        "call (or keep it with the same name)"
    )


def mlflow_name(redactor: Redactor, name: str) -> str:
    """A name nbgate sends to MLflow (param, metric, artifact, experiment, model), redacted."""
    return redactor.text(name).replace(MASK, NAME_MASK)


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
        out[str(key)] = clip(text, PARAM_VALUE_LIMIT)
    return out


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
