"""The store a helper serves: its identity, the local ``mlflow.db`` created whole, a moved
store's message, and RUNNING runs whose owner is gone reaped. Standard library only at the
top: mlflow is imported where a store is opened.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nbgate.tracking.errors import describe_failure, safe_uri
from nbgate.tracking.files import OWNER_TAG, HelperFilesError, owner_gone, store_lock

LOCAL_STORE = "mlflow.db"  # in the repository root, git-ignored
LOCAL_ARTIFACTS = "mlruns"
Notify = Any  # Callable[[str], None]: a line the waiting session shows its user


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
            with quiet():
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
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # mlflow's own deprecation noise (its sqlalchemy store) is not the user's concern.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield
