"""The MLflow helper process: the only place nbgate imports mlflow.

``import mlflow`` and opening the local sqlite store cost ~3 s of CPU, more than a session of
small notebooks. pytest attaches to a helper (``python -m nbgate.tracking.helper``) as it
configures, so a cold start overlaps collection and kernel start-up, and outside CI the helper
stays warm between sessions for an idle time, so later sessions find mlflow imported. Under
pytest-xdist the workers share the controller's helper. (Importing mlflow in a thread of the
pytest process was rejected: imports in threads can deadlock.)

The pytest process builds every value it sends (already redacted); the helper only makes the
MLflow calls, each in the environment and directory of the session that asked (a warm helper
serves sessions one after another, or several at once). Protocol: one JSON object per line
over a Unix socket, one reply per request in order. Requests: ``hello`` (the store, the
environment, the directory), ``start`` (create a run with its tags and params), ``finish``
(metrics, tags, artifacts, model version and the final status in one batch), ``end``
(terminate a run) and ``bye``. Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": one
line, "reached": bool}``.

Lifetime: a client that disconnects, however (pytest finished, crashed or was killed), has
its open runs ended KILLED. The helper stops once no client has been connected for its idle
time (0: when its one session leaves). It ignores SIGINT and SIGTERM: they reach the whole
process group, and pytest, not the helper, decides what an interrupted case's run becomes.

This module imports only the standard library at the top: nbgate.tracking.plugin imports its
helpers, and pytest must not pay for mlflow while it collects.
"""

from __future__ import annotations

import contextlib
import gc
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

from nbgate.tracking.files import OWNER_TAG, HelperFilesError, owner_gone, store_lock

LOCAL_STORE = "mlflow.db"  # in the repository root, git-ignored
LOCAL_ARTIFACTS = "mlruns"
HINT = "check MLFLOW_TRACKING_URI / MLFLOW_TRACKING_TOKEN"
# A 401 on GitLab's MLflow endpoint in CI is usually a protected MLFLOW_TRACKING_TOKEN: GitLab
# protects new CI/CD variables by default, and a protected one never reaches an MR branch.
AUTH_HINT = ("check MLFLOW_TRACKING_TOKEN: it must reach this job (a protected CI/CD variable, "
             "GitLab's default, reaches protected branches only: unprotect it or protect the "
             "branch) and be valid here (on GitLab: a token with the api scope)")
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
FIRST_CLIENT_TIMEOUT = 60.0
RETIRE_GRACE = 0.5  # a retiring helper's last look for a session that was connecting
Notify = Any  # Callable[[str], None]: a line the waiting session shows its user


# -- the service -----------------------------------------------------------------------------
class Store:
    """A tracking store as a helper opened it, once.

    mlflow caches stores and database engines by URI for the life of the process, so a
    helper never opens a URI twice: a local store deleted, replaced or migrated since it was
    opened (``store_identity`` changed) is served by a new helper, and this one retires.
    """

    def __init__(self, uri: str, local_root: Path | None) -> None:
        self.uri = uri
        self.local_root = local_root  # set for the local sqlite store in a repository
        self.display_uri = safe_uri(uri)
        self.client: Any = None
        self.broken: str | None = None  # could not be opened: every request says so

    def open(self, notify: Notify = None) -> None:
        """Open (a local store: create) it; a failure is kept for this session only: the next
        session's hello opens it again (the cause may be gone by then)."""
        try:
            with _quiet():
                from mlflow import MlflowClient

                root = self.local_root
                if root is not None and not _has_store(root):
                    with store_lock(root, notify):
                        create_local_store(root)
                self.client = MlflowClient(tracking_uri=self.uri)
        except HelperFilesError as exc:
            self.client, self.broken = None, str(exc)
        except Exception as exc:
            self.client = None
            self.broken, _ = describe_failure(self.display_uri, exc, self.local_root is not None)
            if self.local_root is not None:
                self.broken += "; " + local_store_fix(self.local_root / LOCAL_STORE, exc)


def _has_store(root: Path) -> bool:
    with contextlib.suppress(OSError):
        return (root / LOCAL_STORE).stat().st_size > 0
    return False


def store_identity(local_root: Path | None) -> str:
    """What a local store is now: the sqlite file (device, inode) and its schema revision.

    Read with the standard library in the pytest process, before it picks a warm helper.
    """
    import sqlite3  # here: the pytest process needs it only when it attaches to a helper

    if local_root is None:
        return "server"
    path = (local_root / LOCAL_STORE).resolve()
    try:
        info = path.stat()
    except OSError:
        return "absent"
    try:
        # Read-only, by a percent-encoded URI: a path with "?" or "#" in it stays a path.
        with contextlib.closing(sqlite3.connect(path.as_uri() + "?mode=ro", uri=True)) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else "none"
    except sqlite3.Error:
        revision = "unreadable"
    return f"{info.st_dev}:{info.st_ino}:{info.st_size > 0}:{revision}"


@dataclass
class _Connection:
    """One client (a pytest process) and its session: which store, in which environment."""

    sock: socket.socket
    buffer: bytes = b""
    store: Store | None = None
    env: dict[str, str] = field(default_factory=dict)  # the client's environment
    cwd: str = "/"
    open_runs: set[str] = field(default_factory=set)  # started here, not finished or ended
    experiments: dict[str, str] = field(default_factory=dict)  # name -> id, this session only
    unreachable: str | None = None  # a server that did not answer at all, this session


class Service:
    """The MLflow calls behind the protocol, for any number of clients and stores."""

    def __init__(self, address: Path | None = None) -> None:
        self.stores: dict[str, Store] = {}  # by tracking URI
        self.identities: dict[str, str] = {}  # what each local store was when opened
        self.address = address  # a warm helper's socket file
        self.bound: int | None = None  # that file's inode: only this helper's is removed
        with contextlib.suppress(OSError):
            self.bound = address.stat().st_ino if address is not None else None
        self.retired = False  # no new sessions: it stops when its clients have gone
        self.install: str | None = None  # the first session's installation (see _hello)
        self.idle: float | None = None  # the latest session's idle setting

    def retire(self) -> None:
        """Take no new session (the next one starts a new helper); stop once idle."""
        self.retired = True
        if self.address is not None:
            with contextlib.suppress(OSError):
                if self.address.stat().st_ino == self.bound:  # not a successor's socket
                    self.address.unlink()

    @staticmethod
    def preload(local: bool) -> None:
        """Import what the first session needs before it asks (the ~3 s this helper hides)."""
        with _quiet():
            import mlflow

            if local:
                import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    # -- requests ------------------------------------------------------------------------
    def handle(self, request: dict[str, Any], conn: _Connection) -> dict[str, Any]:
        op = request.get("op")
        if op == "hello":
            return self._hello(request, conn)
        if op == "bye":
            self.end_all(conn, "KILLED")
            return {"ok": True}
        store = conn.store
        if store is None:
            # Refused at hello: the store changed while this session ran (see _hello).
            return {"ok": False, "reached": True, "error": "nbgate's MLflow helper could not "
                    "take this session: the MLflow store changed while it ran"}
        if store.broken is not None:
            return {"ok": False, "error": store.broken, "reached": True}
        try:
            with self._as_client(conn):
                if op == "start":
                    return self._start(request, conn)
                if op == "finish":
                    return self._finish(request, conn)
                if op == "end":
                    self._end(conn, request["run_id"], request.get("status", "KILLED"),
                              request.get("tags") or {})
                    return {"ok": True}
        except Exception as exc:
            local = store.local_root is not None
            message, reached = describe_failure(store.display_uri, exc, local)
            if isinstance(exc, HelperFilesError):
                message = str(exc)
            elif local and self._store_moved(store):
                message = moved_store_message(store)
            if op == "finish":  # a run whose finish failed half-way still ends
                with self._as_client(conn):
                    self._end(conn, request["run_id"], "FAILED", {})
            if not reached:
                conn.unreachable = message
            return {"ok": False, "error": message, "reached": reached}
        return {"ok": False, "error": f"nbgate's MLflow helper: unknown request {op!r}",
                "reached": True}

    def _hello(self, request: dict[str, Any], conn: _Connection) -> dict[str, Any]:
        uri, root, identity = request["uri"], request.get("local_root"), request.get("identity")
        known = self.identities.get(uri)
        install = request.get("install")
        if self.install is None:
            self.install = install
        # One warm helper per user and store: a session of another installation (venv, nbgate
        # code) or a store changed since it was opened (see Store) gets a new helper, and
        # this one stops once its own sessions have left.
        if self.retired or install != self.install or (
                identity is not None and known not in (None, identity)):
            self.retire()
            return {"ok": False, "retry": True}
        if request.get("idle") is not None:
            self.idle = float(request["idle"])  # the latest session's setting
        conn.env, conn.cwd = request["env"], request["cwd"]
        if uri not in self.stores or self.stores[uri].broken is not None:
            store = self.stores[uri] = Store(uri, Path(root) if root else None)
            with self._as_client(conn):
                store.open(self._notifier(conn))
            # What it is now that it is open (and created, on a first run).
            self.identities[uri] = store_identity(store.local_root)
        conn.store = self.stores[uri]
        if conn.store.client is not None and conn.store.local_root is not None:
            with self._as_client(conn), contextlib.suppress(Exception):
                reap_orphans(conn.store.client)
        return {"ok": True, "pid": os.getpid()}

    @staticmethod
    def _notifier(conn: _Connection) -> Notify:
        """Lines the waiting session shows its user before the reply (a lock wait)."""
        def notify(text: str) -> None:
            with contextlib.suppress(OSError):
                conn.sock.sendall(json.dumps({"notice": text}).encode() + b"\n")
        return notify

    def _store_moved(self, store: Store) -> bool:
        """Has the local store been moved, replaced or deleted since this helper opened it?
        Then the next session gets a new helper (see _hello)."""
        if store_identity(store.local_root) == self.identities.get(store.uri):
            return False
        self.retire()
        return True

    @contextlib.contextmanager
    def _as_client(self, conn: _Connection) -> Iterator[None]:
        """Run as the client would: its environment (token, HTTP settings) and directory.

        mlflow reads its settings from the environment when it makes a request, so a helper
        serving several sessions takes each one's environment for that session's calls.
        """
        saved, cwd = dict(os.environ), os.getcwd()
        os.environ.clear()
        os.environ.update(conn.env)
        for name, value in HARNESS_HTTP_ENV.items():
            os.environ.setdefault(name, value)
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        try:
            with contextlib.suppress(OSError):
                os.chdir(conn.cwd)
            with _quiet():
                yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
            with contextlib.suppress(OSError):
                os.chdir(cwd)

    def _start(self, request: dict[str, Any], conn: _Connection) -> dict[str, Any]:
        if conn.unreachable is not None:  # no need to wait for the same timeout once per case
            return {"ok": False, "error": conn.unreachable, "reached": False}
        from mlflow.entities import Param

        client = conn.store.client  # type: ignore[union-attr]
        experiment_id = self._experiment_id(conn, request["experiment"])
        created = client.create_run(
            experiment_id, run_name=request["run_name"], tags=request.get("tags") or {}
        )
        run_id = created.info.run_id
        conn.open_runs.add(run_id)
        params = request.get("params") or {}
        if params:
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        return {"ok": True, "run_id": run_id, "experiment_id": str(experiment_id),
                "artifact_uri": created.info.artifact_uri}

    def _finish(self, request: dict[str, Any], conn: _Connection) -> dict[str, Any]:
        from mlflow.entities import Metric, Param, RunTag

        client = conn.store.client  # type: ignore[union-attr]
        run_id = request["run_id"]
        now = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now, 0) for name, value in request["metrics"]]
        tags = [RunTag(k, v) for k, v in (request.get("tags") or {}).items()]
        # A run created ahead of its case gets its params (what was injected) here.
        params = [Param(k, v) for k, v in (request.get("params") or {}).items()]
        client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        with tempfile.TemporaryDirectory(prefix="nbgate-artifacts-") as scratch:
            for path, name in request.get("artifacts") or []:
                client.log_artifact(run_id, _named(path, name, scratch))
            warned = []
            register = request.get("register")
            if register:
                warning = self._register_model(conn, run_id, register, metrics, scratch)
                if warning:
                    warned.append(warning)
        client.set_terminated(run_id, request["status"])
        conn.open_runs.discard(run_id)
        return {"ok": True, "warnings": warned}

    def _register_model(
        self, conn: _Connection, run_id: str, register: dict[str, Any], metrics: list[Any],
        scratch: str,
    ) -> str | None:
        """A model version (semver in tag ``gitlab.version``); a server without one only warns."""
        from mlflow.entities import RunTag

        store = conn.store
        assert store is not None
        client = store.client
        name = register["name"]
        try:
            try:
                client.create_registered_model(name)
            except Exception as exc:
                try:  # it exists (a later run), unless the registry itself is missing
                    client.get_registered_model(name)
                except Exception:
                    raise exc from None
            # Only the local store is searched: GitLab's endpoint has no version search, and it
            # refuses a second version with the same semver by itself.
            local = store.local_root is not None
            existing = _version_with_tag(client, name, register["version"]) if local else None
            if existing is not None:
                # The semver tag is unchanged: the same version, not another one of that tag
                # (repeated local runs would pile them up). Bump `version` to register anew.
                client.set_tag(run_id, "nbgate.model_version", f"{name}/{existing.version}")
                return None
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
            reason, _ = describe_failure(store.display_uri, exc, store.local_root is not None)
            return f"model {name} {register['version']} was not registered: {reason}"
        return None

    def _experiment_id(self, conn: _Connection, name: str) -> str:
        if name in conn.experiments:
            return conn.experiments[name]
        store = conn.store
        assert store is not None
        client = store.client
        experiment = client.get_experiment_by_name(name)  # usually there: no lock needed
        lock = (store_lock(store.local_root, self._notifier(conn)) if store.local_root
                and experiment is None else contextlib.nullcontext())
        with lock:
            if experiment is None:
                experiment = client.get_experiment_by_name(name)
            if experiment is None:
                location = None
                if store.local_root is not None:  # next to the store, whatever the cwd
                    folder = store.local_root / LOCAL_ARTIFACTS / _MODEL_NAME_UNSAFE.sub("-", name)
                    location = folder.as_uri()
                try:
                    experiment_id = client.create_experiment(name, artifact_location=location)
                except Exception:
                    # Another session on the same store may have created it just now.
                    experiment = client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
                    experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
        conn.experiments[name] = str(experiment_id)
        return conn.experiments[name]

    @staticmethod
    def _end(conn: _Connection, run_id: str, status: str, tags: dict[str, str]) -> None:
        conn.open_runs.discard(run_id)
        client = conn.store.client if conn.store is not None else None
        if client is None:
            return
        with contextlib.suppress(Exception):
            if tags:
                from mlflow.entities import RunTag

                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            client.set_terminated(run_id, status)

    def end_all(self, conn: _Connection, status: str) -> None:
        """The runs a client left open: its cases never finished (Ctrl-C, a crash)."""
        if not conn.open_runs:
            return
        with self._as_client(conn):
            for run_id in sorted(conn.open_runs):
                self._end(conn, run_id, status, {})


def _version_with_tag(client: Any, name: str, semver: str) -> Any | None:
    """The model's version tagged ``gitlab.version = semver`` in a local store, if one exists."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception:
        return None
    return next((v for v in versions if (v.tags or {}).get("gitlab.version") == semver), None)


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


def moved_store_message(store: Store) -> str:
    path = store.local_root / LOCAL_STORE  # type: ignore[operator]
    return (f"the local MLflow store {path} was moved, replaced or deleted while this session "
            "ran: this case's run stays RUNNING in the file that was moved (end it there, or "
            "drop that file); the next session creates "
            f"a new store at {path}")


def reap_orphans(client: Any) -> int:
    """End KILLED the RUNNING runs whose owning process (tag ``nbgate.owner``) is gone: a
    session killed with its helper (``kill -9``, an out-of-memory kill) left them open."""
    from mlflow.entities import RunTag

    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return 0
    reaped = 0
    for run in client.search_runs(experiments, "attributes.status = 'RUNNING'",
                                  max_results=1000):
        tag = run.data.tags.get(OWNER_TAG)
        if not tag or not owner_gone(tag):
            continue
        client.log_batch(run.info.run_id, tags=[
            RunTag("nbgate.outcome", "interrupted"),
            RunTag("nbgate.failure", f"ended by a later session: its process ({tag}) was gone "
                   "and the run was still RUNNING"),
        ])
        client.set_terminated(run.info.run_id, "KILLED")
        reaped += 1
    return reaped


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # mlflow's own deprecation noise (its sqlalchemy store) is not the user's concern.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


# -- the process -----------------------------------------------------------------------------
def serve(listener: socket.socket, service: Service, idle: float) -> None:
    """Answer clients; stop once none has been connected for ``idle`` seconds.

    ``idle`` 0 is a helper for one session: it stops when its last client leaves. A retired
    helper stops as soon as its last client leaves. A warm helper retires before it stops
    (its socket file goes), then looks once more for a session that connected just then:
    that one is told to start a new helper rather than left unanswered.
    """
    selector = selectors.DefaultSelector()
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, "accept")
    connections: dict[int, _Connection] = {}
    # The starter connects at once; the first wait only guards against a starter that died.
    quiet_since, allowed = time.monotonic(), max(idle, FIRST_CLIENT_TIMEOUT)
    try:
        _serve(selector, listener, service, idle, connections, quiet_since, allowed)
    except Stopped:  # SIGTERM to a warm helper: what its clients left open was interrupted
        for conn in connections.values():
            service.end_all(conn, "KILLED")


def _serve(
    selector: selectors.BaseSelector, listener: socket.socket, service: Service, idle: float,
    connections: dict[int, _Connection], quiet_since: float, allowed: float,
) -> None:
    while True:
        timeout = None
        if not connections:
            timeout = quiet_since + allowed - time.monotonic()
            if timeout <= 0:
                if service.retired or service.address is None:
                    return
                service.retire()
                quiet_since, allowed = time.monotonic(), RETIRE_GRACE
                continue
        for key, _ in selector.select(timeout):
            if key.data == "accept":
                with contextlib.suppress(BlockingIOError):
                    sock, _ = listener.accept()
                    sock.setblocking(True)
                    connections[sock.fileno()] = _Connection(sock)
                    selector.register(sock, selectors.EVENT_READ, "client")
                continue
            conn = connections[key.fd]
            try:
                data = conn.sock.recv(65536)
            except OSError:
                data = b""
            if not data:  # the client went away: its unfinished runs were interrupted
                service.end_all(conn, "KILLED")
                selector.unregister(conn.sock)
                conn.sock.close()
                del connections[key.fd]
                if not connections and not service.retired:
                    release_memory()
                quiet_since = time.monotonic()
                allowed = RETIRE_GRACE if service.retired else idle_allowed(service, idle)
                continue
            conn.buffer += data
            while b"\n" in conn.buffer:
                line, conn.buffer = conn.buffer.split(b"\n", 1)
                reply = service.handle(json.loads(line), conn)
                with contextlib.suppress(OSError):
                    conn.sock.sendall(json.dumps(reply).encode() + b"\n")


def idle_allowed(service: Service, started_with: float) -> float:
    """How long to wait for the next session: the latest session's setting (one helper per
    store serves sessions of any idle setting)."""
    return started_with if service.idle is None else service.idle


def release_memory() -> None:
    """Hand back what the last session's calls left (free lists, malloc arenas) once idle."""
    gc.collect()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed memory otherwise


def resident_mb(pid: int | str = "self") -> float | None:
    """Resident memory (VmRSS) in MB, on Linux."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


class Stopped(Exception):
    """SIGTERM reached a warm helper (someone stopped it by hand)."""


def _stop(signum: int, frame: Any) -> None:
    raise Stopped


def main(argv: list[str]) -> int:
    """``python -m nbgate.tracking.helper LISTEN_FD IDLE_SECONDS [local] [warm]``."""
    # Ctrl-C and a CI job's SIGTERM reach the whole process group of a session's own helper:
    # pytest decides what its interrupted cases' runs become, and the helper ends what a
    # client left open when the client goes, however it went. A warm helper is in a session
    # of its own: SIGTERM reaches it only when sent to it, and stops it.
    warm = "warm" in argv[2:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop if warm else signal.SIG_IGN)
    listener = socket.socket(fileno=int(argv[0]))
    # A warm helper's socket is in the shared folder, found by name: it removes it when done.
    address = Path(listener.getsockname()) if warm else None
    service = Service(address)
    with contextlib.suppress(Exception):  # a failed import is reported by the store's opening
        service.preload(local="local" in argv[2:])
    serve(listener, service, float(argv[1]))
    if address is not None:  # its socket (unless retired already) and log go with it
        if not service.retired:
            service.retire()
        with contextlib.suppress(OSError):
            address.with_suffix(".log").unlink()
    # Every run is ended and every store call committed. A normal interpreter exit would now
    # spend ~1 s tearing mlflow's modules down.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- naming and errors (shared with nbgate.tracking.plugin) ------------------------------
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
        hint = AUTH_HINT if status in (401, 403) else HINT
        return f"{uri} answered HTTP {status}: {clip(reason, 200)}; {hint}", True
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
