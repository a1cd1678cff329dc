"""The MLflow calls the helper makes for its clients: one ``Service`` answers ``hello``,
``start``, ``finish``, ``end`` and ``bye``, each in the environment and directory of the
session that asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbgate.tracking.errors import describe_failure
from nbgate.tracking.files import HelperFilesError, store_lock
from nbgate.tracking.store import (
    LOCAL_ARTIFACTS,
    Notify,
    Store,
    moved_store_message,
    quiet,
    reap_orphans,
    store_identity,
)

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


@dataclass
class Connection:
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
        with quiet():
            import mlflow

            if local:
                import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    # -- requests ------------------------------------------------------------------------
    def handle(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
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

    def _hello(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
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
    def _notifier(conn: Connection) -> Notify:
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
    def _as_client(self, conn: Connection) -> Iterator[None]:
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
            with quiet():
                yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
            with contextlib.suppress(OSError):
                os.chdir(cwd)

    def _start(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
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

    def _finish(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
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
        self, conn: Connection, run_id: str, register: dict[str, Any], metrics: list[Any],
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

    def _experiment_id(self, conn: Connection, name: str) -> str:
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
    def _end(conn: Connection, run_id: str, status: str, tags: dict[str, str]) -> None:
        conn.open_runs.discard(run_id)
        client = conn.store.client if conn.store is not None else None
        if client is None:
            return
        with contextlib.suppress(Exception):
            if tags:
                from mlflow.entities import RunTag

                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            client.set_terminated(run_id, status)

    def end_all(self, conn: Connection, status: str) -> None:
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
