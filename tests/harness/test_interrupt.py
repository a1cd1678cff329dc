"""SIGTERM (a cancelled or timed-out GitLab job) ends a session like Ctrl-C, also under xdist.

A real pytest run of a small project is stopped while two notebooks hang: the reports must be
written and list the cases that finished and those that did not, no kernel may outlive the
run, and no MLflow run may stay RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from nbgate.pytest_plugin.interrupt import SigtermHandler, Terminated
from tests.support.nbproject import kernels_with, write_notebook, write_pyproject

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds kernels in /proc")

FAST = "from nbgate import record\nrecord('done', 1)"
SLOW = (
    "import os, pathlib, time\n"
    "pathlib.Path(os.environ['NBGATE_TEST_MARKERS'], '{name}').write_text(str(os.getpid()))\n"
    "time.sleep(600)"
)
NOTEBOOKS = {"fast1": FAST, "fast2": FAST, "slow1": SLOW, "slow2": SLOW}
FINISHED = ("fast1", "fast2")
UNFINISHED = ("slow1", "slow2")
REPORTS_AHEAD_OF_EXIT_S = 2.0  # -n 2, controller signalled: 5.7-10.6 s measured, 0.15 s if last


def case_id(name: str) -> str:
    return f"notebooks/{name}.ipynb::train[cpu]"


def make_project(root: Path) -> None:
    table = "[tool.nbgate.runners.cpu]\n"
    for name, source in NOTEBOOKS.items():
        write_notebook(root / "notebooks" / f"{name}.ipynb", [source.format(name=name)])
        table += f'[[tool.nbgate.pipelines]]\nnotebook = "notebooks/{name}.ipynb"\nkind = "train"\n'
    write_pyproject(root, table)
    (root / "markers").mkdir()


class Run:
    """pytest in its own process group, its output collected as it comes."""

    def __init__(self, root: Path, *args: str) -> None:
        self.marker = f"NBGATE_TEST_RUN={uuid.uuid4().hex}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env.update({
            "NBGATE_TEST_MARKERS": str(root / "markers"),
            "NBGATE_TEST_RUN": self.marker.split("=", 1)[1],
            "PYTHONUNBUFFERED": "1",  # progress lines arrive as they are written
        })
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", *args],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, as a CI job's shell has
        )
        self._chunks: list[bytes] = []
        self.exited_at: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # Chunks, not lines: xdist ends a "PASSED" line only when the next event is printed.
        assert self.process.stdout is not None
        while chunk := os.read(self.process.stdout.fileno(), 65536):
            self._chunks.append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"never saw {what}; output:\n{self.output}")
            time.sleep(0.2)

    def finish(self, timeout: float = 120) -> int:
        try:
            code = self.process.wait(timeout)
            self.exited_at = time.time()  # wall clock, as file modification times are
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            pytest.fail(f"pytest did not stop after SIGTERM; output:\n{self.output}")
        self._reader.join(10)
        return code


def passed(run: Run, name: str) -> bool:
    # "notebooks/x.ipynb::train[cpu] PASSED" serially, "[gw0] ... PASSED notebooks/x..." in xdist
    return any(case_id(name) in line and "PASSED" in line for line in run.output.splitlines())


def interrupt(root: Path, args: tuple[str, ...], whole_group: bool) -> tuple[Run, int]:
    make_project(root)
    run = Run(root, *args)
    run.wait_for(
        lambda: all(passed(run, n) for n in FINISHED)
        and any((root / "markers" / n).exists() for n in UNFINISHED),
        "the fast cases pass and a slow one start",
    )
    if whole_group:  # Docker's executor signals every process of the job
        os.killpg(run.process.pid, signal.SIGTERM)
    else:
        os.kill(run.process.pid, signal.SIGTERM)
    return run, run.finish()


@pytest.mark.parametrize(
    ("args", "whole_group"),
    [((), False), (("-n", "2"), False), (("-n", "2"), True)],
    ids=["serial", "xdist-controller", "xdist-process-group"],
)
def test_sigterm_writes_reports_kills_kernels_and_ends_runs(
    tmp_path: Path, args: tuple[str, ...], whole_group: bool
) -> None:
    run, code = interrupt(tmp_path, args, whole_group)
    output = run.output
    assert code == pytest.ExitCode.INTERRUPTED, output
    assert "SIGTERM received" in output
    reports = tmp_path / "reports"

    # Reports exist and say what finished and what did not.
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["interrupted"] is True
    outcomes = {c["id"]: c["outcome"] for c in metrics["cases"]}
    assert outcomes == {case_id(name): "passed" for name in FINISHED}
    junit = (reports / "junit.xml").read_text()
    for name in FINISHED:
        assert f"{name}.ipynb" in junit
    summary = (reports / "summary.md").read_text()
    assert "The session was interrupted" in summary
    not_run = next(
        line for line in output.splitlines() if "not run (the session was interrupted):" in line
    )
    for name in UNFINISHED:
        assert case_id(name) in summary
        assert case_id(name) in not_run

    if args and not whole_group:
        # SIGTERM to the controller alone: pytest-xdist then stops its workers, which takes
        # seconds (5.5 s here). The reports must come first (the reporting hook is tryfirst),
        # well inside Docker's 10 s grace period; written after the teardown, they came only
        # 0.15 s before the exit.
        assert run.exited_at is not None
        margin = run.exited_at - (reports / "metrics.json").stat().st_mtime
        assert margin >= REPORTS_AHEAD_OF_EXIT_S, f"reports written {margin:.2f} s before exit"

    # No kernel outlives the run: the hanging ones included.
    deadline = time.monotonic() + 10
    while kernels_with(run.marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kernels_with(run.marker) == []

    # Every MLflow run was ended: finished cases FINISHED, the interrupted ones KILLED.
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        statuses = dict(db.execute("select name, status from runs").fetchall())
    for name in FINISHED:
        assert statuses[case_id(name)] == "FINISHED", statuses
    unfinished = {status for name, status in statuses.items()
                  if name not in {case_id(n) for n in FINISHED}}
    assert unfinished <= {"KILLED"}, statuses


def test_further_sigterms_are_ignored_while_the_session_ends() -> None:
    handler = SigtermHandler()
    with pytest.raises(Terminated, match="SIGTERM received"):
        handler._handle(signal.SIGTERM, None)
    handler._handle(signal.SIGTERM, None)  # a second one (docker stop after the first) waits
    finishing = SigtermHandler()
    finishing.pytest_sessionfinish()
    finishing._handle(signal.SIGTERM, None)  # the reports are being written: let them finish


def test_a_handler_installed_by_someone_else_is_kept() -> None:
    def own(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, own)
    try:
        assert SigtermHandler().install() is False
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_default_handler_comes_back_after_the_session() -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        handler = SigtermHandler()
        assert handler.install() is True
        assert signal.getsignal(signal.SIGTERM) == handler._handle
        handler.pytest_unconfigure()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
