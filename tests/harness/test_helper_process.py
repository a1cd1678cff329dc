"""The MLflow helper cannot be jammed or poisoned, and never orphans a run (issue 20, 4-6).

Real processes throughout: inner pytest sessions on the local sqlite store, a second process
holding the store's lock, a directory squatting the lock's path, the helper killed with
SIGKILL in the middle of a case (alone, and together with its session). Runs are read back
from the sqlite file itself.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nbgate.tracking.files import (
    HelperFilesError,
    digest,
    private_folder,
    store_lock,
    store_lock_path,
)
from tests.harness.test_tracking import INNER_CONFTEST, clean_environment, results_of
from tests.support.nbproject import run_pytest, write_notebook, write_pyproject

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes in /proc")

CASE = "notebooks/pauses.ipynb::train[cpu]"
# Records a metric, says it runs, then gives the test a few seconds to strike.
PAUSES = ["from nbgate import record\nrecord('auc', 0.9)",
          "from pathlib import Path\nPath('started.flag').touch()",
          "import time\ntime.sleep(6)"]
HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def make_project(root: Path) -> Path:
    write_notebook(root / "notebooks" / "pauses.ipynb", PAUSES, parameters="x = 1")
    write_pyproject(root, 'timeout = 120\n\n[[tool.nbgate.pipelines]]\n'
                          'notebook = "notebooks/pauses.ipynb"\nkind = "train"\n')
    (root / "conftest.py").write_text(textwrap.dedent(INNER_CONFTEST))
    return root


def statuses(root: Path) -> dict[str, str]:
    with sqlite3.connect(root / "mlflow.db") as db:
        return dict(db.execute("select run_uuid, status from runs").fetchall())


def hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


def session(root: Path, env: dict[str, str] | None = None) -> tuple[str, dict]:
    completed = run_pytest(root, "-rA", env=env)
    output = completed.stdout + completed.stderr
    assert completed.returncode in (0, 1), output
    return output, results_of(root)


class Session:
    """A pytest session in its own process group, struck while its case runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        (root / "started.flag").unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA"], cwd=root,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for_case(self) -> None:
        deadline = time.monotonic() + 120
        while not (self.root / "started.flag").exists():
            assert self.process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)

    def output(self) -> str:
        return self.process.communicate(timeout=120)[0].decode()


# -- the lock ---------------------------------------------------------------------------------
def test_the_lock_lives_in_a_private_folder_of_the_users(tmp_path: Path) -> None:
    folder = private_folder()
    lock = store_lock_path(tmp_path)
    assert folder is not None and lock is not None and lock.parent == folder
    info = folder.stat()
    assert info.st_uid == os.getuid() and info.st_mode & 0o777 == 0o700


def test_a_lock_held_by_another_process_is_said_and_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path)
    clean_environment(monkeypatch)
    lock = store_lock_path(root)
    assert lock is not None
    holder = hold_lock(lock, 120)  # the store cannot be created until it lets go
    waiting = f"waiting for the local MLflow store's lock {lock}, held by pid {holder.pid}"
    struck = Session(root)
    seen = []
    try:
        assert struck.process.stdout is not None
        for line in struck.process.stdout:  # said while the session waits, not at its end
            seen.append(line.decode())
            if waiting in seen[-1]:
                break
    finally:
        holder.kill()
        holder.wait()
    output = "".join(seen) + struck.output()
    assert waiting in output, output
    result = results_of(root)[CASE]
    assert result["outcome"] == "passed", output
    assert statuses(root) == {result["tracking"]["run_id"]: "FINISHED"}


def test_a_lock_held_too_long_is_given_up_with_who_holds_it(tmp_path: Path) -> None:
    lock = store_lock_path(tmp_path)
    assert lock is not None
    holder = hold_lock(lock, 60)
    said: list[str] = []
    started = time.monotonic()
    try:
        with pytest.raises(HelperFilesError) as raised, store_lock(tmp_path, said.append, 3.5):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert 3.5 <= time.monotonic() - started < 20
    assert said and f"held by pid {holder.pid}" in said[0]
    message = str(raised.value)
    assert f"stayed locked for 3.5 s by pid {holder.pid}" in message and str(lock) in message
    with store_lock(tmp_path):  # let go when its holder went
        pass


def test_a_squatted_lock_path_fails_clearly_and_the_same_helper_works_once_it_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path)
    clean_environment(monkeypatch)
    lock = store_lock_path(root)
    assert lock is not None
    lock.mkdir()  # squatted: the store cannot be created
    try:
        output, results = session(root)
    finally:
        lock.rmdir()
    failure = results[CASE]["failure"]
    assert results[CASE]["outcome"] == "failed" and failure["kind"] == "tracking", output
    assert f"the lock of the local MLflow store {root.resolve() / 'mlflow.db'} is a directory: "\
        f"{lock}" in failure["message"]
    assert "mv " not in failure["message"]  # not the fix for a damaged store: there is none
    helper = int((root / "helper.pid").read_text())

    output, results = session(root)  # the cause is gone: the store is opened again
    assert results[CASE]["outcome"] == "passed", output
    assert int((root / "helper.pid").read_text()) == helper  # the failure was not remembered


# -- no orphaned runs -------------------------------------------------------------------------
def test_a_helper_killed_mid_case_is_replaced_and_no_run_stays_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path)
    clean_environment(monkeypatch)
    session(root)  # the store and a warm helper exist

    # The helper dies under a running case: a new one finishes the case's run.
    struck = Session(root)
    struck.wait_for_case()
    os.kill(int((root / "helper.pid").read_text()), signal.SIGKILL)  # the warm helper
    output = struck.output()
    result = results_of(root)[CASE]
    assert result["outcome"] == "passed", output
    assert "a new helper takes over" in output
    assert statuses(root)[result["tracking"]["run_id"]] == "FINISHED"

    # The session and its helper die together: the run stays RUNNING until the next session.
    struck = Session(root)
    struck.wait_for_case()
    # The helper first: killed second, it would see its client go and end the run itself.
    os.kill(int((root / "helper.pid").read_text()), signal.SIGKILL)
    os.killpg(struck.process.pid, signal.SIGKILL)
    struck.output()
    assert "RUNNING" in statuses(root).values()

    output, results = session(root)
    assert results[CASE]["outcome"] == "passed", output
    assert "RUNNING" not in statuses(root).values(), statuses(root)
    with sqlite3.connect(root / "mlflow.db") as db:
        reaped = db.execute("select value from tags where key = 'nbgate.failure' and value "
                            "like 'ended by a later session%'").fetchall()
    assert len(reaped) == 1, json.dumps(statuses(root))


def test_a_store_moved_mid_case_is_said_and_the_next_session_starts_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path)
    clean_environment(monkeypatch)
    session(root)
    struck = Session(root)
    struck.wait_for_case()
    (root / "mlflow.db").rename(root / "moved.db")
    output = struck.output()
    result = results_of(root)[CASE]
    store = root.resolve() / "mlflow.db"
    assert result["outcome"] == "failed", output
    assert result["failure"]["message"] == (
        f"MLflow tracking failed: the local MLflow store {store} was moved, replaced or deleted "
        "while this session ran: this case's run stays RUNNING in the file that was moved (end "
        f"it there, or drop that file); the next session creates a new store at {store}")
    assert "autoflush" not in output

    output, results = session(root)
    assert results[CASE]["outcome"] == "passed", output
    assert statuses(root) == {results[CASE]["tracking"]["run_id"]: "FINISHED"}


# -- bounded ----------------------------------------------------------------------------------
def test_one_warm_helper_per_store_whatever_the_idle_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, other = make_project(tmp_path / "first"), make_project(tmp_path / "other")
    clean_environment(monkeypatch, idle="20")
    session(first)
    helper = int((first / "helper.pid").read_text())
    monkeypatch.setenv("NBGATE_MLFLOW_HELPER_IDLE", "30")
    output, results = session(first)
    assert results[CASE]["outcome"] == "passed", output
    assert int((first / "helper.pid").read_text()) == helper  # not a second one for "30"
    # Another store has a helper of its own: its sessions never wait behind this store's.
    session(other)
    assert int((other / "helper.pid").read_text()) not in (helper, 0)
    folder = private_folder()
    assert folder is not None
    sockets = {p.name for p in folder.glob("helper-*.sock")}
    assert len(sockets & {f"helper-{digest(str(p.resolve()))}.sock" for p in (first, other)}) == 2
