"""The MLflow helper process: the only place nbgate imports mlflow.

``import mlflow`` and opening the local sqlite store cost ~3 s of CPU, more than a session of
small notebooks. A pytest process that tracks starts this helper as it configures
(``python -m nbgate.mlflow_helper``), so that cost is paid while kernels boot and pytest
collects, not on the first case; under pytest-xdist the controller starts one helper and every
worker talks to it, so the import is paid once per session, not once per worker. (Importing
mlflow in a thread of the pytest process was rejected: imports in threads can deadlock.)

The pytest process builds every value it sends (already redacted); the helper only makes the
MLflow calls. Protocol: one JSON object per line over a Unix socket, one reply per request in
order. Requests: ``start`` (create a run with its tags and params), ``finish`` (metrics, tags,
artifacts, model version and the final status in one batch), ``end`` (terminate a run) and
``bye``. Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": one line, "reached": bool}``.

Lifetime: the helper reads nothing from its stdin, a pipe from the process that started it;
end of file there (that process exited, however it exited) ends every run a client left open
as KILLED and stops the helper. A client that disconnects has its open runs ended the same
way. The helper ignores SIGINT: Ctrl-C reaches the whole process group, and pytest, not the
helper, decides what an interrupted case's run becomes.

This module imports only the standard library at the top: nbgate.tracking imports its
helpers, and pytest must not pay for mlflow while it collects.
"""

from __future__ import annotations

import contextlib
import hashlib
import http
import json
import os
import re
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

LOCAL_STORE = "mlflow.db"  # in the repository root, git-ignored
LOCAL_ARTIFACTS = "mlruns"
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
_MODEL_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


# -- the service -----------------------------------------------------------------------------
@dataclass
class _Connection:
    sock: socket.socket
    buffer: bytes = b""
    open_runs: set[str] = field(default_factory=set)  # started here, not finished or ended


class Service:
    """The MLflow calls, behind the protocol. ``open()`` imports mlflow and opens the store."""

    def __init__(self, tracking_uri: str, local_root: Path | None) -> None:
        self.tracking_uri = tracking_uri
        self.local_root = local_root  # set for the local sqlite store in the repository
        self.display_uri = safe_uri(tracking_uri)
        self.client: Any = None
        self.broken: str | None = None  # the store could not be opened: every request says so
        self._unreachable: str | None = None  # a server that did not answer at all
        self._experiments: dict[str, str] = {}

    # -- opening -------------------------------------------------------------------------
    def open(self) -> None:
        try:
            with _quiet():
                from mlflow import MlflowClient

                if self.local_root is not None:
                    with store_lock(self.local_root):
                        create_local_store(self.local_root)
                        self.client = MlflowClient(tracking_uri=self.tracking_uri)
                else:
                    self.client = MlflowClient(tracking_uri=self.tracking_uri)
        except Exception as exc:
            self.broken, _ = self._describe(exc)
            if self.local_root is not None:
                self.broken += "; " + local_store_fix(self.local_root / LOCAL_STORE, exc)

    # -- requests ------------------------------------------------------------------------
    def handle(self, request: dict[str, Any], conn: _Connection) -> dict[str, Any]:
        op = request.get("op")
        if op == "bye":
            self.end_all(conn, "KILLED")
            return {"ok": True}
        if self.broken is not None:
            return {"ok": False, "error": self.broken, "reached": True}
        try:
            with _quiet():
                if op == "start":
                    return self._start(request, conn)
                if op == "finish":
                    return self._finish(request, conn)
                if op == "end":
                    self._end(request["run_id"], request.get("status", "KILLED"),
                              request.get("tags") or {})
                    conn.open_runs.discard(request["run_id"])
                    return {"ok": True}
        except Exception as exc:
            message, reached = self._describe(exc)
            if op == "finish":  # a run whose finish failed half-way still ends
                self._end(request["run_id"], "FAILED", {})
                conn.open_runs.discard(request["run_id"])
            if not reached:
                self._unreachable = message
            return {"ok": False, "error": message, "reached": reached}
        return {"ok": False, "error": f"nbgate's MLflow helper: unknown request {op!r}",
                "reached": True}

    def _start(self, request: dict[str, Any], conn: _Connection) -> dict[str, Any]:
        if self._unreachable is not None:  # no need to wait for the same timeout once per case
            return {"ok": False, "error": self._unreachable, "reached": False}
        from mlflow.entities import Param

        experiment_id = self._experiment_id(request["experiment"])
        created = self.client.create_run(
            experiment_id, run_name=request["run_name"], tags=request.get("tags") or {}
        )
        run_id = created.info.run_id
        conn.open_runs.add(run_id)
        params = request.get("params") or {}
        if params:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        return {"ok": True, "run_id": run_id, "experiment_id": str(experiment_id),
                "artifact_uri": created.info.artifact_uri}

    def _finish(self, request: dict[str, Any], conn: _Connection) -> dict[str, Any]:
        from mlflow.entities import Metric, RunTag

        run_id = request["run_id"]
        now = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now, 0) for name, value in request["metrics"]]
        tags = [RunTag(k, v) for k, v in (request.get("tags") or {}).items()]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        with tempfile.TemporaryDirectory(prefix="nbgate-artifacts-") as scratch:
            for path, name in request.get("artifacts") or []:
                self.client.log_artifact(run_id, _named(path, name, scratch))
            warned = []
            register = request.get("register")
            if register:
                warning = self._register_model(run_id, register, metrics, scratch)
                if warning:
                    warned.append(warning)
        self.client.set_terminated(run_id, request["status"])
        conn.open_runs.discard(run_id)
        return {"ok": True, "warnings": warned}

    def _register_model(
        self, run_id: str, register: dict[str, Any], metrics: list[Any], scratch: str
    ) -> str | None:
        """A model version (semver in tag ``gitlab.version``); a server without one only warns."""
        from mlflow.entities import RunTag

        client = self.client
        name = register["name"]
        try:
            try:
                client.create_registered_model(name)
            except Exception as exc:
                try:  # it exists (a later run), unless the registry itself is missing
                    client.get_registered_model(name)
                except Exception:
                    raise exc from None
            version = client.create_model_version(
                name, register["source"], run_id=run_id, tags=register["tags"],
                description=register["description"], await_creation_for=0,
            )
            if version.run_id and version.run_id != run_id:
                # GitLab: every model version is a run of its own that holds the model's files.
                job = register.get("job_id")
                client.log_batch(
                    version.run_id,
                    metrics=metrics,
                    tags=[RunTag("gitlab.CI_JOB_ID", job)] if job else [],
                )
                for path, artifact in register["artifacts"]:
                    client.log_artifact(version.run_id, _named(path, artifact, scratch))
            client.set_tag(run_id, "nbgate.model_version", f"{name}/{version.version}")
        except Exception as exc:
            reason, _ = self._describe(exc)
            return f"model {name} {register['version']} was not registered: {reason}"
        return None

    def _experiment_id(self, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        lock = store_lock(self.local_root) if self.local_root else contextlib.nullcontext()
        with lock:
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                location = None
                if self.local_root is not None:  # next to the store, whatever the cwd
                    folder = self.local_root / LOCAL_ARTIFACTS / _MODEL_NAME_UNSAFE.sub("-", name)
                    location = folder.as_uri()
                try:
                    experiment_id = self.client.create_experiment(name, artifact_location=location)
                except Exception:
                    # Another session on the same store may have created it just now.
                    experiment = self.client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
                    experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
        self._experiments[name] = str(experiment_id)
        return self._experiments[name]

    def _end(self, run_id: str, status: str, tags: dict[str, str]) -> None:
        with contextlib.suppress(Exception), _quiet():
            if tags:
                from mlflow.entities import RunTag

                self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(run_id, status)

    def end_all(self, conn: _Connection, status: str) -> None:
        if self.client is None:
            conn.open_runs.clear()
            return
        for run_id in sorted(conn.open_runs):
            self._end(run_id, status, {})
        conn.open_runs.clear()

    def _describe(self, exc: BaseException) -> tuple[str, bool]:
        return describe_failure(self.display_uri, exc, local=self.local_root is not None)


def _named(path: str, name: str, scratch: str) -> str:
    """``path``, or a copy of it called ``name``: the artifact's name is the file's name, and
    nbgate masks secrets in names before they reach the store."""
    if Path(path).name == name:
        return path
    folder = Path(tempfile.mkdtemp(dir=scratch))
    copy = folder / name
    shutil.copyfile(path, copy)
    return str(copy)


# -- the local store -------------------------------------------------------------------------
def create_local_store(root: Path) -> None:
    """Create ``mlflow.db`` whole or not at all (called under ``store_lock``).

    MLflow creates a new sqlite store by running its ~60 migrations in place; interrupted
    half-way (Ctrl-C on the first run) it leaves a file that no later run can open ("table
    _alembic_tmp_... already exists"). So the store is built under a temporary name and renamed
    into place: a rename is atomic, and an interrupted build leaves only a stray temporary file.
    """
    store = root / LOCAL_STORE
    if store.exists() and store.stat().st_size > 0:
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    building = root / f".{LOCAL_STORE}.{os.getpid()}.tmp"
    building.unlink(missing_ok=True)
    try:
        uri = "sqlite:///" + building.as_posix()
        built = SqlAlchemyStore(uri, (root / LOCAL_ARTIFACTS).as_uri())
        built.engine.dispose()
        os.replace(building, store)
    finally:
        building.unlink(missing_ok=True)
    for stray in root.glob(f".{LOCAL_STORE}.*.tmp"):  # left by an interrupted earlier build
        with contextlib.suppress(OSError, ValueError):
            pid = int(stray.name.split(".")[-2])
            if not _alive(pid):
                stray.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_store_fix(store: Path, exc: BaseException) -> str:
    """The one line that makes a local store usable again."""
    if "out-of-date database schema" in str(exc):
        return f"upgrade it with: mlflow db upgrade sqlite:///{store.as_posix()}"
    return (f"if it is damaged (an interrupted first run), move it aside and run again: "
            f"mv {store} {store}.broken")


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Serialise creating the local sqlite store (and its experiments) across sessions.

    Two processes migrating a new sqlite store at once leave it broken for good.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: sessions may race on the very first run
        yield
        return
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"nbgate-mlflow-{digest}.lock"
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # mlflow's own deprecation noise (its sqlalchemy store) is not the user's concern.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


# -- the process -----------------------------------------------------------------------------
def serve(listener: socket.socket, service: Service, lifeline: int) -> None:
    """Answer clients until ``lifeline`` (the starter's pipe) reaches end of file."""
    selector = selectors.DefaultSelector()
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(lifeline, selectors.EVENT_READ, "lifeline")
    connections: dict[int, _Connection] = {}
    while True:
        for key, _ in selector.select():
            if key.data == "lifeline":
                if not os.read(lifeline, 4096):
                    for conn in connections.values():
                        service.end_all(conn, "KILLED")
                    return
            elif key.data == "accept":
                with contextlib.suppress(BlockingIOError):
                    sock, _ = listener.accept()
                    sock.setblocking(True)
                    connections[sock.fileno()] = _Connection(sock)
                    selector.register(sock, selectors.EVENT_READ, "client")
            else:
                conn = connections[key.fd]
                data = conn.sock.recv(65536)
                if not data:  # the client went away: its unfinished runs were interrupted
                    service.end_all(conn, "KILLED")
                    selector.unregister(conn.sock)
                    conn.sock.close()
                    del connections[key.fd]
                    continue
                conn.buffer += data
                while b"\n" in conn.buffer:
                    line, conn.buffer = conn.buffer.split(b"\n", 1)
                    reply = service.handle(json.loads(line), conn)
                    with contextlib.suppress(OSError):
                        conn.sock.sendall(json.dumps(reply).encode() + b"\n")


def main(argv: list[str]) -> int:
    """``python -m nbgate.mlflow_helper LISTEN_FD TRACKING_URI [LOCAL_ROOT]``."""
    # Ctrl-C and a CI job's SIGTERM reach the whole process group: pytest decides what its
    # interrupted cases' runs become, then closes the lifeline, and only then may this end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    listener = socket.socket(fileno=int(argv[0]))
    for name, value in HARNESS_HTTP_ENV.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    service = Service(argv[1], Path(argv[2]) if len(argv) > 2 else None)
    service.open()
    serve(listener, service, sys.stdin.fileno())
    # Every run is ended and every store call committed. A normal interpreter exit would now
    # spend ~1 s tearing mlflow's modules down while pytest waits for this process to go.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- naming and errors (shared with nbgate.tracking) -----------------------------------------
def safe_uri(uri: str) -> str:
    """The URI without credentials (user:password@) or query string."""
    parts = urlsplit(uri)
    if not parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


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
        return f"{uri} answered HTTP {status}: {clip(reason, 200)}; {HINT}", True
    if local:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the local MLflow store {uri} failed: {clip(first, 200)}", True
    lowered = text.lower()
    for needle, reason in _CONNECTION_REASONS:
        if needle in lowered:
            return f"{uri} could not be reached ({reason}); {HINT}", False
    return f"{uri} failed: {clip(text or type(exc).__name__, 200)}; {HINT}", True


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


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
