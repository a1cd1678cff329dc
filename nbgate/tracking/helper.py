"""The MLflow helper process: the only process nbgate imports mlflow in (its service.py and
store.py import it, in the helper only).

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
import json
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from nbgate.tracking.service import Connection, Service

FIRST_CLIENT_TIMEOUT = 60.0
RETIRE_GRACE = 0.5  # a retiring helper's last look for a session that was connecting


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
    connections: dict[int, Connection] = {}
    # The starter connects at once; the first wait only guards against a starter that died.
    quiet_since, allowed = time.monotonic(), max(idle, FIRST_CLIENT_TIMEOUT)
    try:
        _serve(selector, listener, service, idle, connections, quiet_since, allowed)
    except Stopped:  # SIGTERM to a warm helper: what its clients left open was interrupted
        for conn in connections.values():
            service.end_all(conn, "KILLED")


def _serve(
    selector: selectors.BaseSelector, listener: socket.socket, service: Service, idle: float,
    connections: dict[int, Connection], quiet_since: float, allowed: float,
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
                    connections[sock.fileno()] = Connection(sock)
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
