"""The loopback HTTP server: start/stop, the request log, and the fault knobs that make it answer
an error, hang up or stall before routing.
"""

from __future__ import annotations

import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

from .routes import API_PREFIX, ApiError, Request, Response, authenticate, dispatch, json_response
from .state import Fault, GitLabState, RequestRecord, Token


class GitLabStandIn(GitLabState):
    """``GitLabState`` served over loopback HTTP; use as a context manager."""

    def __init__(self, **identity: Any) -> None:
        super().__init__(**identity)
        self._stopping = threading.Event()  # set on stop: wakes handlers parked in a delay
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []
        self._internal_errors: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is None:
            self._stopping.clear()
            self._server = _Server(self)
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05}, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("GitLabStandIn is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    # -- faults ---------------------------------------------------------------------------

    def fail_next(
        self, n: int, status: int, path_contains: str | None = None,
        retry_after: int | None = None, *, method: str | None = None,
    ) -> Fault:
        """Answer the next ``n`` matching requests with ``status`` before any other processing.

        Faults match when ``path_contains`` is a substring of the raw request target (path and
        query, still percent-encoded) and, if given, ``method`` is the HTTP method.

        A 429 always carries an integer Retry-After (0 unless given): python-gitlab sleeps for
        it and crashes on anything that is not an integer.
        """
        if not 400 <= status <= 599:
            raise ValueError("fail_next needs a 4xx or 5xx status")
        if status == 429 and retry_after is None:
            retry_after = 0
        return self._add_fault(Fault("status", n, path_contains, method, status=status,
                                     retry_after=retry_after))

    def drop_next(self, n: int, path_contains: str | None = None, *,
                  method: str | None = None) -> Fault:
        """Close the connection of the next ``n`` matching requests without answering."""
        return self._add_fault(Fault("drop", n, path_contains, method))

    def delay_next(self, n: int, seconds: float, path_contains: str | None = None, *,
                   method: str | None = None) -> Fault:
        """Hold the next ``n`` matching requests for ``seconds`` before handling them normally."""
        return self._add_fault(Fault("delay", n, path_contains, method, delay_s=seconds))

    def _add_fault(self, fault: Fault) -> Fault:
        with self.lock:
            self._faults.append(fault)
        return fault

    def _take_fault(self, method: str, target: str) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(method, target):
                    fault.remaining -= 1
                    fault.hits += 1
                    return fault
        return None

    # -- what the server saw --------------------------------------------------------------

    @property
    def request_log(self) -> list[RequestRecord]:
        with self.lock:
            return list(self._log)

    def requests_to(self, path_contains: str = "", method: str | None = None
                    ) -> list[RequestRecord]:
        """Logged requests whose raw path contains ``path_contains`` (optionally one method)."""
        return [r for r in self.request_log
                if path_contains in r.path and (method is None or r.method == method.upper())]

    @property
    def internal_errors(self) -> list[str]:
        """Tracebacks of stand-in bugs (answered as 500); tests can assert this stays empty."""
        with self.lock:
            return list(self._internal_errors)

    def _record(self, record: RequestRecord) -> None:
        with self.lock:
            self._log.append(record)

    def _internal_error(self) -> None:
        with self.lock:
            self._internal_errors.append(traceback.format_exc())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # handlers parked in a delay fault must not hold up stop()

    def __init__(self, standin: GitLabStandIn) -> None:
        self.standin = standin
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or hang up mid-response are part of the fault tests, not errors;
        # anything else is a stand-in bug that tests should see.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            self.standin._internal_error()


def _fault_response(fault: Fault) -> Response:
    try:
        phrase = HTTPStatus(fault.status).phrase
    except ValueError:  # fail_next takes any 4xx/5xx, not only named ones
        phrase = "Error"
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    return json_response(fault.status, {"message": f"{fault.status} {phrase}"}, headers)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Keep-alive, as GitLab does; this is why every response sets Content-Length.
    protocol_version = "HTTP/1.1"
    timeout = 10  # a client that stalls mid-request must not pin a thread forever
    # Headers and body go out in separate writes; with Nagle on, each keep-alive round trip
    # waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the stand-in keeps its own request log, test output stays readable."""

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            # Reaches internal_errors: python-gitlab always sends Content-Length.
            raise ValueError("the stand-in does not read chunked request bodies")
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        standin = self.server.standin
        # Read the whole body first so a keep-alive connection stays in step whatever we answer.
        body = self._read_body()
        split = urlsplit(self.path)
        token_header, token = authenticate(standin, self.headers)
        record = RequestRecord(
            method=self.command, path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            header_names=frozenset(name.lower() for name in self.headers),
            token_header=token_header, token_kind=token.kind if token else None,
            token_matched=token is not None, username=token.user.username if token else None,
            content_type=self.headers.get("Content-Type"), body=body,
        )
        fault = standin._take_fault(self.command, self.path)
        record.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "drop":
            standin._record(record)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "delay":
            standin._stopping.wait(fault.delay_s)
        if fault is not None and fault.kind == "status":
            response = _fault_response(fault)
        else:
            response = self._route(split.path, split.query, body, token,
                                   via_basic=token_header == "Authorization")
        record.status = response.status
        standin._record(record)
        self._send(response)

    def _route(self, path: str, query: str, body: bytes, token: Token | None, *,
               via_basic: bool) -> Response:
        standin = self.server.standin
        if not path.startswith(API_PREFIX + "/"):
            return json_response(404, {"error": "404 Not Found"})
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        req = Request(self.command, path[len(API_PREFIX):],
                      parse_qsl(query, keep_blank_values=True), self.headers, body, host, token,
                      basic_auth=via_basic)
        try:
            return dispatch(standin, req)
        except ApiError as error:
            return json_response(error.status, error.payload)
        except Exception:  # a stand-in bug must reach the test as a 500, not a hang
            standin._internal_error()
            return json_response(500, {"message": "500 Internal Server Error"})

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        if response.status != 204:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.body:
            self.wfile.write(response.body)
