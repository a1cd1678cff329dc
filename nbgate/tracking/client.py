"""Talking to the helper process: start or attach one (one per user and store, warm between
sessions outside CI), number requests and read their answers in order, and notice a helper
that died.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nbgate.tracking.errors import clip, safe_uri
from nbgate.tracking.files import digest, private_folder
from nbgate.tracking.store import store_identity

if TYPE_CHECKING:
    pass

# How long the pytest process waits for one answer: a cold helper imports mlflow (seconds on a
# loaded machine) and a server gets retries (HARNESS_HTTP_ENV); past this the helper is stuck.
REPLY_TIMEOUT = 300.0
CLOSE_TIMEOUT = 30.0
IDLE_ENV = "NBGATE_MLFLOW_HELPER_IDLE"
# An idle helper holds ~230 MB (mlflow, sqlalchemy, alembic imported), over SPEC §11's 150 MB:
# so by default it waits one minute for the next session (bench/RESULTS.md measures it).
DEFAULT_IDLE = 60.0
HELPER_PROTOCOL = 2  # part of a warm helper's installation: bump when the protocol changes


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

    # The helper and client code is every module of this package (nbgate/tracking/).
    code = sorted(str(path) for path in Path(__file__).parent.glob("*.py"))
    parts = [os.path.realpath(sys.executable), str(HELPER_PROTOCOL)]
    for path in (sysconfig.get_paths()["purelib"], *code):
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
