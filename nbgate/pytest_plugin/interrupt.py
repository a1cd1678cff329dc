"""SIGTERM handled like Ctrl-C, so a cancelled or timed-out CI job still leaves its reports.

GitLab stops a job that is cancelled or runs past its timeout with SIGTERM, and SIGKILL a
little later. With Python's default action the process dies on the spot: no junit.xml, no
summary.md, MLflow runs left RUNNING, kernels orphaned. Here SIGTERM raises a
KeyboardInterrupt, so pytest takes the same path as for Ctrl-C: the session ends as
interrupted, the reports are written for the cases that finished and list the others, the
tracking plugin ends the open MLflow runs, and the kernel pool kills its kernels.

How long there is (GitLab Runner's Docker executor, the one the CI file's image runs on): it
first sends SIGTERM to every process of the job's container and waits up to 10 seconds, then
runs ``docker stop``, whose default grace period is another 10 seconds before SIGKILL. The
Kubernetes executor gives the pod its termination grace period
(``pod_termination_grace_period_seconds``, Kubernetes' default 30 seconds); the shell
executor does not reliably send SIGTERM at all (gitlab-runner issue 27443). Plan for 10
seconds: writing the reports comes first and takes well under one; ending the MLflow runs and
killing the kernels follow.

The handler is installed in every pytest process, the pytest-xdist controller and each worker:
a signal to the whole process group reaches them all, and a worker that is signalled alone
reports the interruption to the controller as Ctrl-C would. Once the first SIGTERM is taken,
and while the session is finishing, further ones are ignored: the Docker executor signals every
process and then ``docker stop`` signals again, and a second interrupt would cut the writing of
the reports short. A handler someone else installed (a wrapper script, the user's conftest) is
left alone.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

import pytest

PLUGIN_NAME = "nbgate-sigterm"


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM; pytest treats it as Ctrl-C."""


class SigtermHandler:
    """A pytest plugin: installs the handler when registered, restores the old one at the end."""

    def __init__(self) -> None:
        self.previous: Any = None
        self.installed = False
        self.received = False
        self.finishing = False

    def install(self) -> bool:
        """Take over SIGTERM unless this is not the main thread or someone else handles it."""
        if threading.current_thread() is not threading.main_thread():
            return False  # signal.signal only works there (pytest run from a thread)
        current = signal.getsignal(signal.SIGTERM)
        if current is not signal.SIG_DFL:
            return False
        self.previous = current
        signal.signal(signal.SIGTERM, self._handle)
        self.installed = True
        return True

    def restore(self) -> None:
        if self.installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.previous)
            self.installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received or self.finishing:
            return
        self.received = True
        raise Terminated(
            f"SIGTERM received by pid {os.getpid()} (a cancelled or timed-out CI job): "
            "stopping as for Ctrl-C; reports list the cases that finished and those that did not"
        )

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self.finishing = True

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self) -> None:
        self.restore()


def install(config: pytest.Config) -> None:
    """Register the handler for this pytest process (called from nbgate's pytest_configure)."""
    if config.pluginmanager.has_plugin(PLUGIN_NAME):
        return
    handler = SigtermHandler()
    if handler.install():
        config.pluginmanager.register(handler, PLUGIN_NAME)
