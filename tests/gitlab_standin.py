"""Loopback stand-in for the slice of GitLab's REST API v4 that nbgate talks to.

GitLab itself cannot run on the test machines, so tests point the real python-gitlab client (or
plain ``requests``) at this server over real HTTP. Its behaviour follows
``shared/notes/gitlab.md``: token rights (a project/personal token may do everything, a
``CI_JOB_TOKEN`` only what GitLab lets it), status codes, error bodies and pagination headers.
Fault knobs (``fail_next``, ``drop_next``, ``delay_next``) let client tests exercise retries.

Usage::

    with GitLabStandIn() as gl_server:
        gl_server.add_merge_request(1, source_branch="feature", sha="abc123")
        gl = gitlab.Gitlab(gl_server.url, private_token=gl_server.private_token, timeout=5)
"""

from __future__ import annotations

import io
import json
import math
import re
import secrets
import sys
import threading
import traceback
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

API_PREFIX = "/api/v4"
NOTE_MAX_CHARS = 1_000_000
WIKI_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
WIKI_FORMATS = ("markdown", "rdoc", "asciidoc", "org")
IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".svg",
    ".webp",
    ".bmp",
    ".tiff",
    ".ico",
)
MR_STATES = ("opened", "closed", "merged", "locked")

PACKAGE_NAME_RE = re.compile(r"[A-Za-z0-9._+-]+")
PACKAGE_VERSION_RE = re.compile(r"[\w+.-]+")
# GitLab only runs lines naming a known command; any lowercase `/word` line counts here so that
# reports which happen to start a line with a slash-word are caught in tests, not on a real MR.
QUICK_ACTION_RE = re.compile(r"/[a-z][a-z_]*(?:[ \t].*)?")

# Timestamps come from a counter rather than the wall clock so that ordering by created_at is
# deterministic even for objects created within the same millisecond.
_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)

TokenKind = Literal["private", "job"]
FaultKind = Literal["status", "drop", "delay"]


class ApiError(Exception):
    """Raised by route handlers; becomes a JSON error response."""

    def __init__(
        self,
        status: int,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ):
        super().__init__(f"{status} {payload}")
        self.status = status
        self.payload = payload
        self.headers = headers or {}


def _not_found(what: str | None = None) -> ApiError:
    return ApiError(
        404, {"message": f"404 {what} Not Found" if what else "404 Not found"}
    )


def _bad_param(message: str) -> ApiError:
    return ApiError(400, {"error": message})


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- state objects


@dataclass
class User:
    id: int
    username: str
    name: str

    def to_json(self, base: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "name": self.name,
            "state": "active",
            "avatar_url": None,
            "web_url": f"{base}/{self.username}",
        }


@dataclass
class Token:
    value: str
    kind: TokenKind
    user: User
    # A valid token whose user is not a project member: GitLab answers 404, not 403.
    project_access: bool = True


@dataclass
class MergeRequest:
    id: int
    iid: int
    source_branch: str
    sha: str
    state: str = "opened"
    target_branch: str = "main"
    title: str = ""
    commits: list[str] = field(default_factory=list)


@dataclass
class Note:
    id: int
    mr_iid: int
    body: str
    author: User
    system: bool
    created_at: str
    updated_at: str


@dataclass
class WikiPage:
    slug: str
    title: str
    content: str
    format: str = "markdown"


@dataclass
class PackageFile:
    id: int
    file_name: str
    data: bytes
    created_at: str


@dataclass
class Package:
    id: int
    name: str
    version: str
    created_at: str
    files: list[PackageFile] = field(default_factory=list)


@dataclass
class Upload:
    id: int
    secret: str
    filename: str
    data: bytes
    url: str
    markdown: str


@dataclass
class ArtifactSet:
    job_id: int
    ref: str
    job: str
    files: dict[str, bytes]
    status: str = "success"

    def to_zip(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path, data in self.files.items():
                archive.writestr(path, data)
        return buffer.getvalue()


@dataclass
class RequestRecord:
    """One request as the stand-in saw it: where a token came from, never its value."""

    method: str
    path: str  # raw (still percent-encoded) path including /api/v4, without the query
    query: dict[str, str]
    header_names: frozenset[str]  # lower-cased
    token_header: str | None  # "PRIVATE-TOKEN", "JOB-TOKEN" or None
    token_kind: (
        TokenKind | None
    )  # kind of the matched token; None when absent or unknown
    token_matched: bool
    username: str | None
    content_type: str | None
    body: bytes
    status: int | None = None  # None when the connection was dropped
    fault: FaultKind | None = None


@dataclass
class Fault:
    kind: FaultKind
    remaining: int
    path_contains: str | None = None
    method: str | None = None
    status: int = 500
    retry_after: int | None = None
    delay_s: float = 0.0
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path_contains is None or self.path_contains in target


# --------------------------------------------------------------------------- request/response


@dataclass
class Request:
    method: str
    path: str  # raw path relative to /api/v4, still percent-encoded
    query_pairs: list[tuple[str, str]]
    headers: Message
    body: bytes
    host: str
    params: dict[str, str] = field(default_factory=dict)
    token: Token | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}"

    @property
    def query(self) -> dict[str, str]:
        return dict(self.query_pairs)

    def fields(self) -> dict[str, Any]:
        """Query and body parameters merged, as Grape does."""
        merged: dict[str, Any] = dict(self.query_pairs)
        content_type = (
            (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        )
        if not self.body:
            return merged
        if content_type == "application/json":
            try:
                decoded = json.loads(self.body)
            except ValueError as exc:
                raise _bad_param(
                    "There was a problem with the JSON in your request"
                ) from exc
            if isinstance(decoded, dict):
                merged.update(decoded)
        return merged

    def text_field(
        self, fields: dict[str, Any], name: str, *, required: bool
    ) -> str | None:
        value = fields.get(name)
        if value is None:
            if required:
                raise _bad_param(f"{name} is missing")
            return None
        if not isinstance(value, str):
            raise _bad_param(f"{name} is invalid")
        return value


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(
    status: int, payload: Any, headers: dict[str, str] | None = None
) -> Response:
    return Response(status, json.dumps(payload).encode(), headers=headers or {})


Handler = Callable[["GitLabStandIn", Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    allow_job_token: bool = False
    pattern: re.Pattern[str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        # ":name" is one raw segment (so %2F inside it survives); "*name" spans segments.
        regex = re.sub(r":(\w+)", r"(?P<\1>[^/]+)", self.template)
        regex = re.sub(r"\*(\w+)", r"(?P<\1>.+?)", regex)
        object.__setattr__(self, "pattern", re.compile(regex))

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {name: unquote(value) for name, value in found.groupdict().items()}


# --------------------------------------------------------------------------- pagination


def _int_query(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise _bad_param(f"{name} is invalid") from exc


def paginate(req: Request, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
    """Slice ``items`` for the requested page and build GitLab's pagination headers."""
    query = req.query
    per_page = _int_query(query, "per_page", DEFAULT_PER_PAGE)
    per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, MAX_PER_PAGE)
    page = max(1, _int_query(query, "page", 1))
    total_pages = max(1, math.ceil(len(items) / per_page))
    chunk = items[(page - 1) * per_page : page * per_page]
    next_page = page + 1 if page < total_pages else None
    prev_page = page - 1 if page > 1 else None
    headers = {
        "X-Page": str(page),
        "X-Per-Page": str(per_page),
        "X-Total": str(len(items)),
        "X-Total-Pages": str(total_pages),
        "X-Next-Page": str(next_page or ""),
        "X-Prev-Page": str(prev_page or ""),
    }
    links = [
        ("prev", prev_page),
        ("next", next_page),
        ("first", 1),
        ("last", total_pages),
    ]
    headers["Link"] = ", ".join(
        f'<{_page_url(req, number, per_page)}>; rel="{rel}"'
        for rel, number in links
        if number
    )
    return chunk, headers


def _page_url(req: Request, page: int, per_page: int) -> str:
    # Absolute and built from the Host the client used: python-gitlab follows this URL verbatim.
    kept = [(k, v) for k, v in req.query_pairs if k not in ("page", "per_page")]
    query = urlencode([*kept, ("page", str(page)), ("per_page", str(per_page))])
    return f"{req.base}{API_PREFIX}{req.path}?{query}"


# --------------------------------------------------------------------------- helpers


def wiki_slug(title: str) -> str:
    return title.strip().replace(" ", "-")


def split_quick_actions(body: str) -> tuple[str, list[str]]:
    """Return the body without quick-action lines, and those lines."""
    kept: list[str] = []
    commands: list[str] = []
    for line in body.split("\n"):
        (commands if QUICK_ACTION_RE.fullmatch(line.rstrip("\r")) else kept).append(
            line
        )
    return "\n".join(kept).strip(), commands


def parse_multipart(
    content_type: str, body: bytes
) -> dict[str, tuple[str | None, bytes]]:
    """Minimal multipart/form-data parser: field name -> (filename, bytes).

    Written by hand because the email parser may rewrite line endings inside binary parts.
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise _bad_param("file is missing")
    delimiter = b"--" + match.group(1).encode()
    parts: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        disposition = next(
            (
                line
                for line in head.decode("utf-8", "replace").split("\r\n")
                if line.lower().startswith("content-disposition:")
            ),
            "",
        )
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if name is not None:
            parts[name.group(1)] = (filename.group(1) if filename else None, data)
    return parts


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# --------------------------------------------------------------------------- the stand-in


class GitLabStandIn:
    """In-memory GitLab serving one project over loopback HTTP."""

    def __init__(
        self,
        *,
        project_id: int = 42,
        project_path: str = "group/project",
        private_token: str = "glpat-standin-private-token",
        job_token: str = "glcbt-standin-job-token",
        username: str = "nbgate-bot",
        job_username: str = "pipeline-user",
        allow_duplicate_packages: bool = True,
    ) -> None:
        self.project_id = project_id
        self.project_path = project_path
        self.private_token = private_token
        self.job_token = job_token
        self.allow_duplicate_packages = allow_duplicate_packages

        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ticks = 0
        self._ids: dict[str, int] = {}

        self._users: dict[str, User] = {}
        self._tokens: dict[str, Token] = {}
        self._merge_requests: dict[int, MergeRequest] = {}
        self._commits: set[str] = set()
        self._notes: dict[int, Note] = {}
        self._wiki: dict[str, WikiPage] = {}
        self._packages: list[Package] = []
        self._uploads: list[Upload] = []
        self._artifacts: list[ArtifactSet] = []
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []
        self._quick_actions: list[tuple[int, list[str]]] = []
        self._internal_errors: list[str] = []

        self.user = self.add_user(username, user_id=1)
        self.job_user = self.add_user(job_username, user_id=2)
        self.add_token(private_token, username=username)
        self.add_token(job_token, username=job_username, kind="job")

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        if self._server is None:
            self._stopping.clear()
            self._server = _Server(self)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a delay fault
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

    # ----------------------------------------------------------------- seeding

    def _next_id(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    def _tick(self) -> str:
        self._ticks += 1
        return _iso(_EPOCH + timedelta(seconds=self._ticks))

    def add_user(self, username: str, *, user_id: int | None = None) -> User:
        with self._lock:
            if username in self._users:
                return self._users[username]
            uid = user_id if user_id is not None else 100 + len(self._users)
            user = User(uid, username, username.replace("-", " ").title())
            self._users[username] = user
            return user

    def add_token(
        self,
        value: str,
        *,
        username: str,
        kind: TokenKind = "private",
        project_access: bool = True,
    ) -> Token:
        with self._lock:
            token = Token(value, kind, self.add_user(username), project_access)
            self._tokens[value] = token
            return token

    def add_merge_request(
        self,
        iid: int,
        *,
        source_branch: str = "feature",
        sha: str = "0123456789abcdef0123456789abcdef01234567",
        state: str = "opened",
        target_branch: str = "main",
        title: str | None = None,
        commits: Iterable[str] = (),
    ) -> MergeRequest:
        with self._lock:
            mr = MergeRequest(
                id=1000 + iid,
                iid=iid,
                source_branch=source_branch,
                sha=sha,
                state=state,
                target_branch=target_branch,
                title=title or f"Merge {source_branch}",
                commits=[sha, *commits],
            )
            self._merge_requests[iid] = mr
            self._commits.update(mr.commits)
            return mr

    def add_commit(self, sha: str) -> None:
        """Make a commit known that belongs to no merge request."""
        with self._lock:
            self._commits.add(sha)

    def add_note(
        self, mr_iid: int, body: str, *, author: str | None = None, system: bool = False
    ) -> Note:
        with self._lock:
            if mr_iid not in self._merge_requests:
                raise KeyError(
                    f"no merge request !{mr_iid}; call add_merge_request first"
                )
            user = self.add_user(author) if author else self.user
            stamp = self._tick()
            note = Note(self._next_id("note"), mr_iid, body, user, system, stamp, stamp)
            self._notes[note.id] = note
            return replace(note)

    def seed_notes(
        self,
        mr_iid: int,
        count: int,
        *,
        author: str = "alice",
        system: bool = False,
        body: str = "note {n}",
    ) -> list[Note]:
        """Add ``count`` notes; ``body`` may use ``{n}`` (1-based)."""
        return [
            self.add_note(mr_iid, body.format(n=n), author=author, system=system)
            for n in range(1, count + 1)
        ]

    def add_wiki_page(
        self, title: str, content: str, *, format: str = "markdown"
    ) -> WikiPage:
        with self._lock:
            page = WikiPage(wiki_slug(title), title, content, format)
            self._wiki[page.slug] = page
            return replace(page)

    def add_package_file(
        self, name: str, version: str, file_name: str, data: bytes
    ) -> Package:
        with self._lock:
            return replace(self._store_package_file(name, version, file_name, data))

    def add_job_artifacts(
        self, ref: str, job: str, files: dict[str, bytes], *, status: str = "success"
    ) -> ArtifactSet:
        """Record a finished job's artifacts; downloads pick the newest successful one."""
        with self._lock:
            artifact = ArtifactSet(self._next_id("job"), ref, job, dict(files), status)
            self._artifacts.append(artifact)
            return artifact

    # ----------------------------------------------------------------- faults

    def fail_next(
        self,
        n: int,
        status: int,
        path_contains: str | None = None,
        retry_after: int | None = None,
        *,
        method: str | None = None,
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
        return self._add_fault(
            Fault(
                "status",
                n,
                path_contains,
                method,
                status=status,
                retry_after=retry_after,
            )
        )

    def drop_next(
        self, n: int, path_contains: str | None = None, *, method: str | None = None
    ) -> Fault:
        """Close the connection of the next ``n`` matching requests without answering."""
        return self._add_fault(Fault("drop", n, path_contains, method))

    def delay_next(
        self,
        n: int,
        seconds: float,
        path_contains: str | None = None,
        *,
        method: str | None = None,
    ) -> Fault:
        """Hold the next ``n`` matching requests for ``seconds`` before handling them normally."""
        return self._add_fault(
            Fault("delay", n, path_contains, method, delay_s=seconds)
        )

    def _add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def _take_fault(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, target):
                    fault.remaining -= 1
                    fault.hits += 1
                    return fault
        return None

    # ----------------------------------------------------------------- inspection

    def notes(self, mr_iid: int) -> list[Note]:
        """Notes of one merge request, oldest first."""
        with self._lock:
            return [
                replace(n)
                for n in sorted(self._notes.values(), key=lambda n: n.id)
                if n.mr_iid == mr_iid
            ]

    def wiki_pages(self) -> dict[str, WikiPage]:
        with self._lock:
            return {slug: replace(page) for slug, page in self._wiki.items()}

    def wiki_page(self, slug: str) -> WikiPage | None:
        with self._lock:
            page = self._wiki.get(slug)
            return replace(page) if page else None

    def packages(self) -> list[Package]:
        with self._lock:
            return [replace(p, files=list(p.files)) for p in self._packages]

    def package_file(self, name: str, version: str, file_name: str) -> bytes | None:
        """Bytes GitLab would serve for that file (the newest upload), or None."""
        with self._lock:
            found = self._find_package_file(name, version, file_name)
            return found.data if found else None

    def uploads(self) -> list[Upload]:
        with self._lock:
            return list(self._uploads)

    @property
    def quick_actions(self) -> list[tuple[int, list[str]]]:
        """(MR iid, command lines) for every note body GitLab would have run commands from."""
        with self._lock:
            return [(iid, list(lines)) for iid, lines in self._quick_actions]

    @property
    def request_log(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def requests_to(
        self, path_contains: str = "", method: str | None = None
    ) -> list[RequestRecord]:
        """Logged requests whose raw path contains ``path_contains`` (optionally one method)."""
        return [
            record
            for record in self.request_log
            if path_contains in record.path
            and (method is None or record.method == method.upper())
        ]

    @property
    def internal_errors(self) -> list[str]:
        """Tracebacks of stand-in bugs (answered as 500); tests can assert this stays empty."""
        with self._lock:
            return list(self._internal_errors)

    # ----------------------------------------------------------------- dispatch

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    def _authenticate(self, headers: Message) -> tuple[str | None, Token | None]:
        """Find the token the way GitLab does: each header only accepts its own kind of token."""
        private = headers.get("PRIVATE-TOKEN")
        if private is not None:
            return "PRIVATE-TOKEN", self._lookup_token(private, "private")
        job = headers.get("JOB-TOKEN")
        if job is not None:
            return "JOB-TOKEN", self._lookup_token(job, "job")
        return None, None

    def _lookup_token(self, value: str, kind: TokenKind) -> Token | None:
        with self._lock:
            token = self._tokens.get(value)
        return token if token is not None and token.kind == kind else None

    def _project_matches(self, raw_id: str) -> bool:
        return (
            raw_id == str(self.project_id)
            or raw_id.lower() == self.project_path.lower()
        )

    def dispatch(self, req: Request) -> Response:
        route, params = _find_route(req.method, req.path)
        if req.token is None:
            raise ApiError(401, {"message": "401 Unauthorized"})
        if "id" in params and not (
            self._project_matches(params["id"]) and req.token.project_access
        ):
            raise _not_found("Project")
        if req.token.kind == "job" and not route.allow_job_token:
            raise ApiError(403, {"message": "403 Forbidden"})
        req.params = params
        with self._lock:
            return route.handler(self, req)

    # ----------------------------------------------------------------- JSON shapes

    def _mr_json(self, mr: MergeRequest, base: str) -> dict[str, Any]:
        return {
            "id": mr.id,
            "iid": mr.iid,
            "project_id": self.project_id,
            "title": mr.title,
            "state": mr.state,
            "source_branch": mr.source_branch,
            "target_branch": mr.target_branch,
            "sha": mr.sha,
            "web_url": f"{base}/{self.project_path}/-/merge_requests/{mr.iid}",
        }

    def _note_json(self, note: Note, base: str) -> dict[str, Any]:
        return {
            "id": note.id,
            "type": None,
            "body": note.body,
            "attachment": None,
            "author": note.author.to_json(base),
            "created_at": note.created_at,
            "updated_at": note.updated_at,
            "system": note.system,
            "noteable_id": self._merge_requests[note.mr_iid].id,
            "noteable_type": "MergeRequest",
            "noteable_iid": note.mr_iid,
            "project_id": self.project_id,
            "resolvable": False,
            "confidential": False,
            "internal": False,
        }

    @staticmethod
    def _wiki_json(page: WikiPage) -> dict[str, Any]:
        return {
            "format": page.format,
            "slug": page.slug,
            "title": page.title,
            "encoding": "UTF-8",
            "content": page.content,
        }

    def _package_json(self, package: Package) -> dict[str, Any]:
        return {
            "id": package.id,
            "name": package.name,
            "version": package.version,
            "package_type": "generic",
            "status": "default",
            "created_at": package.created_at,
            "tags": [],
            "_links": {"web_path": f"/{self.project_path}/-/packages/{package.id}"},
        }

    # ----------------------------------------------------------------- route handlers

    def _get_user(self, req: Request) -> Response:
        assert req.token is not None
        return json_response(200, req.token.user.to_json(req.base))

    def _require_mr(self, req: Request) -> MergeRequest:
        try:
            mr = self._merge_requests.get(int(req.params["iid"]))
        except ValueError:
            mr = None
        if mr is None:
            raise _not_found("Merge Request")
        return mr

    def _commit_mrs(self, req: Request) -> Response:
        sha = req.params["sha"]
        if sha not in self._commits:
            raise _not_found("Commit")
        state = req.query.get("state")
        mrs = [
            mr
            for mr in sorted(
                self._merge_requests.values(), key=lambda mr: mr.iid, reverse=True
            )
            if sha in mr.commits and _state_matches(mr, state)
        ]
        page, headers = paginate(req, mrs)
        return json_response(200, [self._mr_json(mr, req.base) for mr in page], headers)

    def _list_notes(self, req: Request) -> Response:
        mr = self._require_mr(req)
        query = req.query
        sort = query.get("sort", "desc")
        order_by = query.get("order_by", "created_at")
        if sort not in ("asc", "desc"):
            raise _bad_param("sort does not have a valid value")
        if order_by not in ("created_at", "updated_at"):
            raise _bad_param("order_by does not have a valid value")
        notes = sorted(
            (n for n in self._notes.values() if n.mr_iid == mr.iid),
            key=lambda n: (getattr(n, order_by), n.id),
            reverse=sort == "desc",
        )
        page, headers = paginate(req, notes)
        return json_response(200, [self._note_json(n, req.base) for n in page], headers)

    def _require_note(self, req: Request) -> Note:
        mr = self._require_mr(req)
        try:
            note = self._notes.get(int(req.params["note_id"]))
        except ValueError:
            note = None
        if note is None or note.mr_iid != mr.iid:
            raise _not_found()
        return note

    def _note_body(self, req: Request) -> str:
        body = req.text_field(req.fields(), "body", required=True)
        assert body is not None
        if not body.strip():
            raise _bad_param("body is empty")
        if len(body) > NOTE_MAX_CHARS:
            raise ApiError(
                400,
                {
                    "message": {
                        "note": [
                            f"is too long (maximum is {NOTE_MAX_CHARS} characters)"
                        ]
                    }
                },
            )
        return body

    def _create_note(self, req: Request) -> Response:
        mr = self._require_mr(req)
        content, commands = split_quick_actions(self._note_body(req))
        if commands:
            self._quick_actions.append((mr.iid, commands))
        if not content:
            # Only commands: GitLab runs them and answers 202 without creating a note.
            return json_response(202, {"commands_changes": {}, "summary": []})
        assert req.token is not None
        stamp = self._tick()
        note = Note(
            self._next_id("note"), mr.iid, content, req.token.user, False, stamp, stamp
        )
        self._notes[note.id] = note
        return json_response(201, self._note_json(note, req.base))

    def _update_note(self, req: Request) -> Response:
        note = self._require_note(req)
        assert req.token is not None
        if note.system or note.author.id != req.token.user.id:
            raise ApiError(403, {"message": "403 Forbidden"})
        content, commands = split_quick_actions(self._note_body(req))
        if commands:
            self._quick_actions.append((note.mr_iid, commands))
        if not content:
            # GitLab deletes a note whose edited body is nothing but commands.
            del self._notes[note.id]
            return json_response(200, self._note_json(replace(note, body=""), req.base))
        note.body = content
        note.updated_at = self._tick()
        return json_response(200, self._note_json(note, req.base))

    def _delete_note(self, req: Request) -> Response:
        note = self._require_note(req)
        assert req.token is not None
        if note.system or note.author.id != req.token.user.id:
            raise ApiError(403, {"message": "403 Forbidden"})
        del self._notes[note.id]
        return Response(204)

    def _require_wiki(self, req: Request) -> WikiPage:
        page = self._wiki.get(req.params["slug"])
        if page is None:
            raise _not_found("Wiki Page")
        return page

    def _get_wiki(self, req: Request) -> Response:
        return json_response(200, self._wiki_json(self._require_wiki(req)))

    def _wiki_fields(
        self, req: Request, *, creating: bool
    ) -> tuple[str | None, str | None, str | None]:
        fields = req.fields()
        title = req.text_field(fields, "title", required=creating)
        content = req.text_field(fields, "content", required=creating)
        fmt = req.text_field(fields, "format", required=False)
        if not creating and title is None and content is None and fmt is None:
            raise _bad_param(
                "content, title, format are missing, at least one parameter must be provided"
            )
        if fmt is not None and fmt not in WIKI_FORMATS:
            raise _bad_param("format does not have a valid value")
        if title is not None and not title.strip():
            raise _bad_param("title is empty")
        if content is not None and len(content.encode()) > WIKI_MAX_BYTES:
            raise ApiError(
                400,
                {
                    "message": {
                        "content": ["is too long (5 MiB). The maximum size is 5 MiB."]
                    }
                },
            )
        return title, content, fmt

    @staticmethod
    def _duplicate_page() -> ApiError:
        return ApiError(
            400,
            {
                "message": {
                    "base": ["Duplicate page: A page with that title already exists"]
                }
            },
        )

    def _create_wiki(self, req: Request) -> Response:
        title, content, fmt = self._wiki_fields(req, creating=True)
        assert title is not None and content is not None
        slug = wiki_slug(title)
        if slug in self._wiki:
            raise self._duplicate_page()
        page = WikiPage(slug, title, content, fmt or "markdown")
        self._wiki[slug] = page
        return json_response(201, self._wiki_json(page))

    def _update_wiki(self, req: Request) -> Response:
        page = self._require_wiki(req)
        title, content, fmt = self._wiki_fields(req, creating=False)
        if title is not None and wiki_slug(title) != page.slug:
            new_slug = wiki_slug(title)
            if new_slug in self._wiki:
                raise self._duplicate_page()
            del self._wiki[page.slug]
            page.slug = new_slug
            self._wiki[new_slug] = page
        if title is not None:
            page.title = title
        if content is not None:
            page.content = content
        if fmt is not None:
            page.format = fmt
        return json_response(200, self._wiki_json(page))

    def _find_package(self, name: str, version: str) -> Package | None:
        return next(
            (p for p in self._packages if p.name == name and p.version == version), None
        )

    def _find_package_file(
        self, name: str, version: str, file_name: str
    ) -> PackageFile | None:
        package = self._find_package(name, version)
        if package is None:
            return None
        return next(
            (f for f in reversed(package.files) if f.file_name == file_name), None
        )

    def _store_package_file(
        self, name: str, version: str, file_name: str, data: bytes
    ) -> Package:
        package = self._find_package(name, version)
        if package is None:
            package = Package(self._next_id("package"), name, version, self._tick())
            self._packages.append(package)
        package.files.append(
            PackageFile(self._next_id("package_file"), file_name, data, self._tick())
        )
        return package

    @staticmethod
    def _validate_package_path(params: dict[str, str]) -> tuple[str, str, str]:
        name, version, file_name = (
            params["name"],
            params["version"],
            params["file_name"],
        )
        if not PACKAGE_NAME_RE.fullmatch(name) or name in (".", ".."):
            raise _bad_param("package_name is invalid")
        if not PACKAGE_VERSION_RE.fullmatch(version) or ".." in version:
            raise _bad_param("package_version is invalid")
        if not PACKAGE_NAME_RE.fullmatch(file_name) or file_name in (".", ".."):
            raise _bad_param("file_name is invalid")
        return name, version, file_name

    def _put_package_file(self, req: Request) -> Response:
        name, version, file_name = self._validate_package_path(req.params)
        existing = self._find_package_file(name, version, file_name)
        if existing is not None and not self.allow_duplicate_packages:
            raise ApiError(400, {"message": "Duplicate package is not allowed"})
        self._store_package_file(name, version, file_name, req.body)
        return json_response(201, {"message": "201 Created"})

    def _get_package_file(self, req: Request) -> Response:
        name, version, file_name = self._validate_package_path(req.params)
        if self._find_package(name, version) is None:
            raise _not_found("Package")
        found = self._find_package_file(name, version, file_name)
        if found is None:
            raise _not_found("Package file")
        return Response(200, found.data, "application/octet-stream")

    def _list_packages(self, req: Request) -> Response:
        query = req.query
        package_type = query.get("package_type")
        if package_type is not None and package_type not in _PACKAGE_TYPES:
            raise _bad_param("package_type does not have a valid value")
        order_by = query.get("order_by", "created_at")
        sort = query.get("sort", "asc")
        if order_by not in ("created_at", "name", "version", "type"):
            raise _bad_param("order_by does not have a valid value")
        if sort not in ("asc", "desc"):
            raise _bad_param("sort does not have a valid value")
        packages = [p for p in self._packages if package_type in (None, "generic")]
        if query.get("package_name"):
            # GitLab matches package_name fuzzily (substring, any case), not exactly.
            needle = query["package_name"].lower()
            packages = [p for p in packages if needle in p.name.lower()]
        sort_key = {
            "created_at": "created_at",
            "name": "name",
            "version": "version",
            "type": "id",
        }[order_by]
        packages.sort(
            key=lambda p: (getattr(p, sort_key), p.id), reverse=sort == "desc"
        )
        page, headers = paginate(req, packages)
        return json_response(200, [self._package_json(p) for p in page], headers)

    def _create_upload(self, req: Request) -> Response:
        content_type = req.headers.get("Content-Type") or ""
        if not content_type.lower().startswith("multipart/form-data"):
            raise _bad_param("file is missing")
        filename, data = parse_multipart(content_type, req.body).get(
            "file", (None, b"")
        )
        if not filename:
            raise _bad_param("file is invalid" if data else "file is missing")
        secret = secrets.token_hex(16)
        url = f"/uploads/{secret}/{filename}"
        alt = filename.rsplit(".", 1)[0]
        is_image = filename.lower().endswith(IMAGE_SUFFIXES)
        markdown = f"![{alt}]({url})" if is_image else f"[{filename}]({url})"
        upload = Upload(self._next_id("upload"), secret, filename, data, url, markdown)
        self._uploads.append(upload)
        return json_response(
            201,
            {
                "id": upload.id,
                "alt": alt,
                "url": url,
                "full_path": f"/-/project/{self.project_id}/uploads/{secret}/{filename}",
                "markdown": markdown,
            },
        )

    def _latest_artifacts(self, req: Request) -> ArtifactSet:
        job = req.query.get("job")
        if not job:
            raise _bad_param("job is missing")
        ref = req.params["ref"]
        for artifact in reversed(self._artifacts):
            if (
                artifact.ref == ref
                and artifact.job == job
                and artifact.status == "success"
            ):
                return artifact
        raise _not_found()

    def _download_artifacts(self, req: Request) -> Response:
        artifact = self._latest_artifacts(req)
        disposition = {"Content-Disposition": 'attachment; filename="artifacts.zip"'}
        return Response(200, artifact.to_zip(), "application/zip", disposition)

    def _raw_artifact(self, req: Request) -> Response:
        data = self._latest_artifacts(req).files.get(req.params["artifact_path"])
        if data is None:
            raise _not_found()
        return Response(200, data, "application/octet-stream")


_PACKAGE_TYPES = (
    "conan",
    "maven",
    "npm",
    "pypi",
    "composer",
    "nuget",
    "helm",
    "terraform_module",
    "golang",
    "generic",
    "debian",
    "rubygems",
    "ml_model",
)


def _state_matches(mr: MergeRequest, state: str | None) -> bool:
    if state in (None, "", "all"):
        return True
    if state not in MR_STATES:
        raise _bad_param("state does not have a valid value")
    return mr.state == state


_MR = "/projects/:id/merge_requests/:iid"
_PACKAGE = "/projects/:id/packages/generic/:name/:version/:file_name"
_ARTIFACTS = "/projects/:id/jobs/artifacts/*ref"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/user", GitLabStandIn._get_user),
    Route(
        "GET",
        "/projects/:id/repository/commits/:sha/merge_requests",
        GitLabStandIn._commit_mrs,
    ),
    Route("GET", f"{_MR}/notes", GitLabStandIn._list_notes, allow_job_token=True),
    Route("POST", f"{_MR}/notes", GitLabStandIn._create_note),
    Route("PUT", f"{_MR}/notes/:note_id", GitLabStandIn._update_note),
    Route("DELETE", f"{_MR}/notes/:note_id", GitLabStandIn._delete_note),
    Route("POST", "/projects/:id/wikis", GitLabStandIn._create_wiki),
    Route("GET", "/projects/:id/wikis/:slug", GitLabStandIn._get_wiki),
    Route("PUT", "/projects/:id/wikis/:slug", GitLabStandIn._update_wiki),
    Route("PUT", _PACKAGE, GitLabStandIn._put_package_file, allow_job_token=True),
    Route("GET", _PACKAGE, GitLabStandIn._get_package_file, allow_job_token=True),
    Route(
        "GET",
        "/projects/:id/packages",
        GitLabStandIn._list_packages,
        allow_job_token=True,
    ),
    Route("POST", "/projects/:id/uploads", GitLabStandIn._create_upload),
    Route(
        "GET",
        f"{_ARTIFACTS}/download",
        GitLabStandIn._download_artifacts,
        allow_job_token=True,
    ),
    Route(
        "GET",
        f"{_ARTIFACTS}/raw/*artifact_path",
        GitLabStandIn._raw_artifact,
        allow_job_token=True,
    ),
)


def _find_route(method: str, path: str) -> tuple[Route, dict[str, str]]:
    path_known = False
    for route in ROUTES:
        params = route.match(path)
        if params is None:
            continue
        if route.method == method:
            return route, params
        path_known = True
    if path_known:
        raise ApiError(405, {"error": "405 Not Allowed"})
    raise ApiError(404, {"error": "404 Not Found"})


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Handlers parked in a delay fault must not hold up stop().
    block_on_close = False

    def __init__(self, standin: GitLabStandIn) -> None:
        self.standin = standin
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or hang up mid-response are part of the fault tests, not errors;
        # anything else is a stand-in bug that tests should see.
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            with self.standin._lock:
                self.standin._internal_errors.append(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Keep-alive, as GitLab does; this is why every response sets Content-Length.
    protocol_version = "HTTP/1.1"
    timeout = 10  # a client that stalls mid-request must not pin a thread forever
    # Headers and body go out in separate writes; with Nagle on, each keep-alive round trip
    # waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet; the stand-in has its own request log

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            # Reaches internal_errors: python-gitlab always sends Content-Length.
            raise NotImplementedError("the stand-in does not read chunked request bodies")
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        standin = self.server.standin
        # Read the whole body first so a keep-alive connection stays in step whatever we answer.
        body = self._read_body()
        split = urlsplit(self.path)
        token_header, token = standin._authenticate(self.headers)
        record = RequestRecord(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            header_names=frozenset(name.lower() for name in self.headers),
            token_header=token_header,
            token_kind=token.kind if token else None,
            token_matched=token is not None,
            username=token.user.username if token else None,
            content_type=self.headers.get("Content-Type"),
            body=body,
        )
        response = self._apply_fault(standin, record)
        if record.fault == "drop":
            standin._record(record)
            self.close_connection = True
            return
        if response is None:
            response = self._route(standin, split.path, split.query, body, token)
        record.status = response.status
        standin._record(record)
        self._send(response)

    def _apply_fault(
        self, standin: GitLabStandIn, record: RequestRecord
    ) -> Response | None:
        fault = standin._take_fault(self.command, self.path)
        if fault is None:
            return None
        record.fault = fault.kind
        if fault.kind == "delay":
            standin._stopping.wait(fault.delay_s)
            return None
        if fault.kind == "drop":
            return None
        headers = (
            {"Retry-After": str(fault.retry_after)}
            if fault.retry_after is not None
            else {}
        )
        return json_response(
            fault.status,
            {"message": f"{fault.status} {_reason(fault.status)}"},
            headers,
        )

    def _route(
        self,
        standin: GitLabStandIn,
        path: str,
        query: str,
        body: bytes,
        token: Token | None,
    ) -> Response:
        if not path.startswith(API_PREFIX + "/"):
            return json_response(404, {"error": "404 Not Found"})
        req = Request(
            method=self.command,
            path=path[len(API_PREFIX) :],
            query_pairs=parse_qsl(query, keep_blank_values=True),
            headers=self.headers,
            body=body,
            host=self.headers.get("Host")
            or "{}:{}".format(*self.server.server_address[:2]),
            token=token,
        )
        try:
            return standin.dispatch(req)
        except ApiError as error:
            return json_response(error.status, error.payload, error.headers)
        except Exception:  # a stand-in bug must reach the test as a 500, not a hang
            with standin._lock:
                standin._internal_errors.append(traceback.format_exc())
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
