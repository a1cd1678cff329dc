"""A real ``mlflow server`` on loopback for tests, and a recording reverse proxy in front of it.

The proxy records every request (method, path, status) so a test can check which REST
endpoints a client called, and can play GitLab's token check: with ``token`` set, a request
without ``Authorization: Bearer <token>`` gets GitLab's 401 answer.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

READY_TIMEOUT = 180.0
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "content-length", "host",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """``mlflow server`` with proxied artifacts under ``workdir`` and its runs in
    ``backend_uri`` (a SQLAlchemy URL such as ``postgresql://...``; default: sqlite in
    ``workdir``).

    ``start()`` returns at once; ``wait_ready()`` blocks until ``GET /health`` answers 200, so
    a session can boot the server while other tests run.
    """

    def __init__(self, workdir: Path, backend_uri: str | None = None) -> None:
        self.workdir = workdir
        self.backend_uri = backend_uri or f"sqlite:///{workdir / 'db.sqlite'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "server.log"
        self._ready = False

    def start(self) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        mlflow = Path(sys.executable).with_name("mlflow")
        command = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    *command, "server",
                    "--host", "127.0.0.1",
                    "--port", str(self.port),
                    "--backend-store-uri", self.backend_uri,
                    "--artifacts-destination", str(self.workdir / "artifacts"),
                    "--workers", "1",
                ],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # SIGTERM reaches the server's worker processes too
            )
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> MlflowServer:
        if self._ready:
            return self
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        self._ready = True
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        log = self.log.read_text()[-3000:]
        raise RuntimeError(f"mlflow server not ready in {timeout} s:\n{log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    status: int
    authorization: str | None


class RecordingProxy:
    """A loopback reverse proxy that records requests; optionally enforces a bearer token."""

    def __init__(self, upstream: str, token: str | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.token = token
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                body = self._read_body()
                path = self.path.split("?", 1)[0]
                authorization = self.headers.get("Authorization")
                if proxy.token is not None and authorization != f"Bearer {proxy.token}":
                    # GitLab's answer to a missing or wrong token on its MLflow endpoint.
                    self._answer(401, {"Content-Type": "application/json"},
                                 json.dumps({"message": "401 Unauthorized"}).encode())
                else:
                    status, headers, payload = proxy.forward(
                        self.command, self.path, dict(self.headers), body
                    )
                    self._answer(status, headers, payload)
                with proxy._lock:
                    proxy.requests.append(Request(self.command, path, self._status, authorization))

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _answer(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                self._status = status
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(
            self.upstream.hostname, self.upstream.port, timeout=60
        )
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            sent["Host"] = self.upstream.netloc
            connection.request(method, path, body=body or None, headers=sent)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def endpoints(self) -> set[tuple[str, str]]:
        with self._lock:
            return {(r.method, r.path) for r in self.requests}

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
