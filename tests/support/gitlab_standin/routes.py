"""Requests to handlers: the REST routes nbgate calls, with GitLab's status codes, error bodies,
token rules and pagination (facts from the project's GitLab notes).

A handler is a plain function ``(state, request) -> Response`` that raises ``ApiError`` for
GitLab's error answers; ``dispatch`` finds the route, checks the token and the project, and runs
the handler under the state's lock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.message import Message
from typing import Any
from urllib.parse import unquote, urlencode

from .state import (
    DISPLAYABLE_STATUSES,
    INSTALLABLE_STATUSES,
    GitLabState,
    MergeRequest,
    Note,
    Package,
    PackageFile,
    Token,
    TokenKind,
    Upload,
    User,
    WikiPage,
    wiki_slug,
)

API_PREFIX = "/api/v4"
NOTE_MAX_CHARS = 1_000_000
WIKI_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
WIKI_FORMATS = ("markdown", "rdoc", "asciidoc", "org")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".bmp", ".tiff", ".ico")
MR_STATES = ("opened", "closed", "merged", "locked")
PACKAGE_TYPES = ("conan", "maven", "npm", "pypi", "composer", "nuget", "helm",
                 "terraform_module", "golang", "generic", "debian", "rubygems", "ml_model")
PACKAGE_ORDER = {"created_at": "created_at", "name": "name", "version": "version", "type": "id"}
PACKAGE_NAME_RE = re.compile(r"[A-Za-z0-9._+-]+")
PACKAGE_VERSION_RE = re.compile(r"[\w+.-]+")
# GitLab only runs lines naming a known command; any lowercase `/word` line counts here so that
# reports which happen to start a line with a slash-word are caught in tests, not on a real MR.
QUICK_ACTION_RE = re.compile(r"/[a-z][a-z_]*(?:[ \t].*)?")


# -- requests, answers and errors ---------------------------------------------------------------


class ApiError(Exception):
    """Raised by handlers; becomes a JSON error response."""

    def __init__(self, status: int, payload: dict[str, Any]):
        super().__init__(f"{status} {payload}")
        self.status = status
        self.payload = payload


def not_found(what: str | None = None) -> ApiError:
    return ApiError(404, {"message": f"404 {what} Not Found" if what else "404 Not found"})


def bad_param(message: str) -> ApiError:
    return ApiError(400, {"error": message})


def forbidden() -> ApiError:
    return ApiError(403, {"message": "403 Forbidden"})


@dataclass
class Request:
    method: str
    path: str  # raw path relative to /api/v4, still percent-encoded
    query_pairs: list[tuple[str, str]]
    headers: Message
    body: bytes
    host: str
    token: Token | None = None
    params: dict[str, str] = field(default_factory=dict)  # path parameters, unquoted
    basic_auth: bool = False  # the token came as HTTP Basic credentials

    @property
    def base(self) -> str:
        return f"http://{self.host}"

    @property
    def query(self) -> dict[str, str]:
        return dict(self.query_pairs)

    @property
    def user(self) -> User:
        assert self.token is not None  # dispatch answered 401 otherwise
        return self.token.user

    def fields(self) -> dict[str, Any]:
        """Query and JSON body parameters merged, as Grape does (python-gitlab sends JSON)."""
        merged: dict[str, Any] = dict(self.query_pairs)
        if self.body and (self.headers.get("Content-Type") or "").startswith("application/json"):
            merged.update(json.loads(self.body))
        return merged

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        """A query parameter that must be one of ``allowed`` (GitLab's ``values:``)."""
        value = self.query.get(name, default)
        if value != default and value not in allowed:
            raise bad_param(f"{name} does not have a valid value")
        return value


def text_field(fields: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = fields.get(name)
    if value is None:
        if required:
            raise bad_param(f"{name} is missing")
        return None
    if not isinstance(value, str):
        raise bad_param(f"{name} is invalid")
    return value


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(payload).encode(), headers=headers or {})


def file_response(data: bytes, content_type: str = "application/octet-stream") -> Response:
    return Response(200, data, content_type)


# -- pagination ---------------------------------------------------------------------------------


def _int_query(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise bad_param(f"{name} is invalid") from exc


def paginate(req: Request, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
    """Slice ``items`` for the requested page and build GitLab's pagination headers."""
    per_page = _int_query(req.query, "per_page", DEFAULT_PER_PAGE)
    per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, MAX_PER_PAGE)
    page = max(1, _int_query(req.query, "page", 1))
    total_pages = max(1, math.ceil(len(items) / per_page))
    next_page = page + 1 if page < total_pages else None
    prev_page = page - 1 if page > 1 else None
    links = [("prev", prev_page), ("next", next_page), ("first", 1), ("last", total_pages)]
    headers = {
        "X-Page": str(page),
        "X-Per-Page": str(per_page),
        "X-Total": str(len(items)),
        "X-Total-Pages": str(total_pages),
        "X-Next-Page": str(next_page or ""),
        "X-Prev-Page": str(prev_page or ""),
        "Link": ", ".join(f'<{_page_url(req, number, per_page)}>; rel="{rel}"'
                          for rel, number in links if number),
    }
    return items[(page - 1) * per_page : page * per_page], headers


def _page_url(req: Request, page: int, per_page: int) -> str:
    # Absolute and built from the Host the client used: python-gitlab follows this URL verbatim.
    kept = [(k, v) for k, v in req.query_pairs if k not in ("page", "per_page")]
    query = urlencode([*kept, ("page", str(page)), ("per_page", str(per_page))])
    return f"{req.base}{API_PREFIX}{req.path}?{query}"


def paged_json(req: Request, items: list[Any], shape: Callable[[Any], Any]) -> Response:
    page, headers = paginate(req, items)
    return json_response(200, [shape(item) for item in page], headers)


# -- JSON shapes --------------------------------------------------------------------------------


def user_json(user: User, base: str) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "name": user.name, "state": "active",
            "avatar_url": None, "web_url": f"{base}/{user.username}"}


def mr_json(state: GitLabState, mr: MergeRequest, base: str) -> dict[str, Any]:
    return {
        "id": mr.id, "iid": mr.iid, "project_id": state.project_id, "title": mr.title,
        "state": mr.state, "source_branch": mr.source_branch, "target_branch": mr.target_branch,
        "sha": mr.sha, "merge_commit_sha": mr.merge_commit_sha,
        "squash_commit_sha": mr.squash_commit_sha, "merged_at": mr.merged_at,
        "web_url": f"{base}/{state.project_path}/-/merge_requests/{mr.iid}",
    }


def note_json(state: GitLabState, note: Note, base: str) -> dict[str, Any]:
    return {
        "id": note.id, "type": None, "body": note.body, "attachment": None,
        "author": user_json(note.author, base), "created_at": note.created_at,
        "updated_at": note.updated_at, "system": note.system,
        "noteable_id": state.db.merge_requests[note.mr_iid].id, "noteable_type": "MergeRequest",
        "noteable_iid": note.mr_iid, "project_id": state.project_id, "resolvable": False,
        "confidential": False, "internal": False,
    }


def wiki_json(page: WikiPage) -> dict[str, Any]:
    return {"format": page.format, "slug": page.slug, "title": page.title, "encoding": "UTF-8",
            "content": page.content}


def package_json(state: GitLabState, package: Package) -> dict[str, Any]:
    return {
        "id": package.id, "name": package.name, "version": package.version,
        "package_type": package.package_type, "status": package.status,
        "created_at": package.created_at,
        "tags": [], "_links": {"web_path": f"/{state.project_path}/-/packages/{package.id}"},
    }


def package_file_json(package: Package, file: PackageFile) -> dict[str, Any]:
    digests = {f"file_{algo}": hashlib.new(algo, file.data).hexdigest()
               for algo in ("md5", "sha1", "sha256")}
    return {"id": file.id, "package_id": package.id, "created_at": file.created_at,
            "file_name": file.file_name, "size": len(file.data), **digests, "pipelines": []}


# -- user, version, token, project ----------------------------------------------------------------


def get_user(state: GitLabState, req: Request) -> Response:
    return json_response(200, user_json(req.user, req.base))


def get_version(state: GitLabState, req: Request) -> Response:
    """``GET /version`` (doc/api/version.md, lib/api/version.rb: ``authenticate!``)."""
    return json_response(200, {"version": state.version, "revision": "0a1b2c3d"})


def get_own_token(state: GitLabState, req: Request) -> Response:
    """``GET /personal_access_tokens/self`` (doc/api/personal_access_tokens.md, "Self-inform",
    GitLab 15.5): the token that authenticated the request. Project access tokens are personal
    access tokens of the project's bot user, so they answer too."""
    token = req.token
    assert token is not None
    return json_response(200, {
        "id": token.id, "name": token.name, "revoked": False,
        "created_at": "2025-01-01T00:00:00.000Z", "description": "",
        "scopes": list(token.scopes), "user_id": token.user.id,
        "last_used_at": None, "active": True, "expires_at": token.expires_at,
    })


def get_project(state: GitLabState, req: Request) -> Response:
    """``GET /projects/:id`` (doc/api/projects.md, "Get a single project"), the fields nbgate
    reads: ``packages_enabled``, ``wiki_enabled``/``wiki_access_level`` and ``permissions``
    (the token user's role: ``project_access`` for a direct member, else null)."""
    token = req.token
    assert token is not None
    level = {"access_level": token.access_level, "notification_level": 3}
    namespace, _, path = state.project_path.rpartition("/")
    return json_response(200, {
        "id": state.project_id, "name": path, "path": path,
        "path_with_namespace": state.project_path, "default_branch": "main",
        "web_url": f"{req.base}/{state.project_path}", "visibility": "private",
        "namespace": {"full_path": namespace},
        "packages_enabled": state.packages_enabled,
        "wiki_enabled": state.wiki_access_level != "disabled",
        "wiki_access_level": state.wiki_access_level,
        "permissions": {"project_access": level, "group_access": None},
    })


# -- merge requests of a commit -----------------------------------------------------------------


def commit_merge_requests(state: GitLabState, req: Request) -> Response:
    if req.token is not None and req.token.kind == "job" and \
            not state.job_token_lists_commit_merge_requests:
        raise not_found("Project")
    sha = req.params["sha"]
    if sha not in state.db.commits:
        raise not_found("Commit")
    wanted = req.choice("state", (*MR_STATES, "all"), "all")
    mrs = sorted(state.db.merge_requests.values(), key=lambda mr: mr.iid, reverse=True)
    mrs = [mr for mr in mrs if mr.related_to(sha) and wanted in ("all", mr.state)]
    return paged_json(req, mrs, lambda mr: mr_json(state, mr, req.base))


def merge_request_commits(state: GitLabState, req: Request) -> Response:
    """``GET /projects/:id/merge_requests/:iid/commits``: the MR's commits, newest first,
    paginated (``lib/api/merge_requests.rb``)."""
    mr = _merge_request(state, req)
    return paged_json(req, list(mr.commits), lambda sha: {
        "id": sha, "short_id": sha[:8], "title": f"commit {sha[:8]}",
        "message": f"commit {sha[:8]}", "parent_ids": [], "web_url":
        f"{req.base}/{state.project_path}/-/commit/{sha}"})


# -- merge request notes ------------------------------------------------------------------------


def _merge_request(state: GitLabState, req: Request) -> MergeRequest:
    iid = req.params["iid"]
    mr = state.db.merge_requests.get(int(iid)) if iid.isdigit() else None
    if mr is None:
        raise not_found("Merge Request")
    return mr


def _own_note(state: GitLabState, req: Request) -> Note:
    """The addressed note; 404 if it is not on this MR, 403 if it is not the token user's."""
    mr = _merge_request(state, req)
    note_id = req.params["note_id"]
    note = state.db.notes.get(int(note_id)) if note_id.isdigit() else None
    if note is None or note.mr_iid != mr.iid:
        raise not_found()
    if note.system or note.author.id != req.user.id:
        raise forbidden()
    return note


def _note_body(req: Request) -> str:
    body = text_field(req.fields(), "body", required=True)
    assert body is not None
    if not body.strip():
        raise bad_param("body is empty")
    if len(body) > NOTE_MAX_CHARS:
        raise ApiError(400, {"message": {
            "note": [f"is too long (maximum is {NOTE_MAX_CHARS} characters)"]}})
    return body


def split_quick_actions(body: str) -> tuple[str, list[str]]:
    """Return the body without quick-action lines, and those lines."""
    kept: list[str] = []
    commands: list[str] = []
    for line in body.split("\n"):
        (commands if QUICK_ACTION_RE.fullmatch(line.rstrip("\r")) else kept).append(line)
    return "\n".join(kept).strip(), commands


def _run_quick_actions(state: GitLabState, mr_iid: int, req: Request) -> str:
    """The note's body once GitLab has taken its ``/command`` lines out (and run them)."""
    content, commands = split_quick_actions(_note_body(req))
    if commands:
        state.db.quick_actions.append((mr_iid, commands))
    return content


def list_notes(state: GitLabState, req: Request) -> Response:
    mr = _merge_request(state, req)
    sort = req.choice("sort", ("asc", "desc"), "desc")
    order_by = req.choice("order_by", ("created_at", "updated_at"), "created_at")
    notes = sorted((n for n in state.db.notes.values() if n.mr_iid == mr.iid),
                   key=lambda n: (getattr(n, order_by), n.id), reverse=sort == "desc")
    return paged_json(req, notes, lambda n: note_json(state, n, req.base))


def create_note(state: GitLabState, req: Request) -> Response:
    mr = _merge_request(state, req)
    content = _run_quick_actions(state, mr.iid, req)
    if not content:
        # Only commands: GitLab runs them and answers 202 without creating a note.
        return json_response(202, {"commands_changes": {}, "summary": []})
    note = state.db.new_note(mr.iid, content, req.user)
    return json_response(201, note_json(state, note, req.base))


def update_note(state: GitLabState, req: Request) -> Response:
    note = _own_note(state, req)
    content = _run_quick_actions(state, note.mr_iid, req)
    if not content:
        # GitLab deletes a note whose edited body is nothing but commands.
        del state.db.notes[note.id]
        return json_response(200, note_json(state, replace(note, body=""), req.base))
    note.body = content
    note.updated_at = state.db.tick()
    return json_response(200, note_json(state, note, req.base))


def delete_note(state: GitLabState, req: Request) -> Response:
    del state.db.notes[_own_note(state, req).id]
    return Response(204)


# -- wiki ---------------------------------------------------------------------------------------


def _wiki_page(state: GitLabState, req: Request) -> WikiPage:
    page = state.db.wiki.get(req.params["slug"])
    if page is None:
        raise not_found("Wiki Page")
    return page


def _wiki_fields(req: Request, *, creating: bool) -> tuple[str | None, str | None, str | None]:
    fields = req.fields()
    title = text_field(fields, "title", required=creating)
    content = text_field(fields, "content", required=creating)
    fmt = text_field(fields, "format", required=False)
    if fmt is not None and fmt not in WIKI_FORMATS:
        raise bad_param("format does not have a valid value")
    if content is not None and len(content.encode()) > WIKI_MAX_BYTES:
        raise ApiError(400, {"message": {
            "content": ["is too long (5 MiB). The maximum size is 5 MiB."]}})
    return title, content, fmt


def _duplicate_page() -> ApiError:
    return ApiError(400, {"message": {
        "base": ["Duplicate page: A page with that title already exists"]}})


def get_wiki(state: GitLabState, req: Request) -> Response:
    return json_response(200, wiki_json(_wiki_page(state, req)))


def create_wiki(state: GitLabState, req: Request) -> Response:
    title, content, fmt = _wiki_fields(req, creating=True)
    assert title is not None and content is not None
    slug = wiki_slug(title)
    if slug in state.db.wiki:
        raise _duplicate_page()
    page = state.db.wiki[slug] = WikiPage(slug, title, content, fmt or "markdown")
    return json_response(201, wiki_json(page))


def update_wiki(state: GitLabState, req: Request) -> Response:
    page = _wiki_page(state, req)
    title, content, fmt = _wiki_fields(req, creating=False)
    if title is not None:  # a new title renames the page
        new_slug = wiki_slug(title)
        if new_slug != page.slug:
            if new_slug in state.db.wiki:
                raise _duplicate_page()
            del state.db.wiki[page.slug]
            page.slug = new_slug
            state.db.wiki[new_slug] = page
        page.title = title
    if content is not None:
        page.content = content
    if fmt is not None:
        page.format = fmt
    return json_response(200, wiki_json(page))


# -- generic packages ---------------------------------------------------------------------------


def _package_path(req: Request) -> tuple[str, str, str]:
    name, version, file_name = req.params["name"], req.params["version"], req.params["file_name"]
    if not PACKAGE_NAME_RE.fullmatch(name) or name in (".", ".."):
        raise bad_param("package_name is invalid")
    if not PACKAGE_VERSION_RE.fullmatch(version) or ".." in version:
        raise bad_param("package_version is invalid")
    if not PACKAGE_NAME_RE.fullmatch(file_name) or file_name in (".", ".."):
        raise bad_param("file_name is invalid")
    return name, version, file_name


def put_package_file(state: GitLabState, req: Request) -> Response:
    """``lib/api/generic_packages.rb``: ``status`` is optional, ``default`` or ``hidden``."""
    name, version, file_name = _package_path(req)
    status = req.query.get("status")
    if status is not None and status not in ("default", "hidden"):
        raise bad_param("status does not have a valid value")
    duplicate = state.db.find_package_file(name, version, file_name) is not None
    if duplicate and not state.allow_duplicate_packages:
        raise ApiError(400, {"message": "Duplicate package is not allowed"})
    state.db.store_package_file(name, version, file_name, req.body, status)
    return json_response(201, {"message": "201 Created"})


def get_package_file(state: GitLabState, req: Request) -> Response:
    name, version, file_name = _package_path(req)
    package = state.db.find_package(name, version)
    if package is None or package.status not in INSTALLABLE_STATUSES:
        raise not_found("Package")
    found = state.db.find_package_file(name, version, file_name)
    if found is None:
        raise not_found("Package file")
    return file_response(found.data)


def list_packages(state: GitLabState, req: Request) -> Response:
    package_type = req.choice("package_type", PACKAGE_TYPES, "")
    order_by = req.choice("order_by", tuple(PACKAGE_ORDER), "created_at")
    sort = req.choice("sort", ("asc", "desc"), "asc")
    # GitLab matches package_name as a substring, in any case.
    needle = req.query.get("package_name", "").lower()
    packages = [p for p in state.db.packages
                if package_type in ("", p.package_type) and needle in p.name.lower()
                and p.status in DISPLAYABLE_STATUSES]
    packages.sort(key=lambda p: (getattr(p, PACKAGE_ORDER[order_by]), p.id),
                  reverse=sort == "desc")
    return paged_json(req, packages, lambda p: package_json(state, p))


def list_package_files(state: GitLabState, req: Request) -> Response:
    """Every file of the package, duplicates included, oldest first (GitLab's default)."""
    package_id = req.params["package_id"]
    package = next((p for p in state.db.packages if str(p.id) == package_id), None)
    if package is None:
        raise not_found("Package")
    return paged_json(req, list(package.files), lambda f: package_file_json(package, f))


# -- PyPI packages ------------------------------------------------------------------------------


def upload_pypi_package(state: GitLabState, req: Request) -> Response:
    """`twine upload` (the legacy upload API): multipart fields ``content`` (the file), ``name``
    and ``version`` required (Grape: "<field> is missing"), one POST per file; 201 on success
    (lib/api/pypi_packages.rb, `post do` under ':id/packages/pypi')."""
    content_type = req.headers.get("Content-Type") or ""
    parts = (parse_multipart(content_type, req.body)
             if content_type.lower().startswith("multipart/form-data") else {})
    for name in ("content", "name", "version"):
        if name not in parts:
            raise bad_param(f"{name} is missing")
    file_name, data = parts["content"]
    if not file_name:
        raise bad_param("content is invalid")
    state.db.store_package_file(parts["name"][1].decode(), parts["version"][1].decode(),
                                file_name, data, package_type="pypi")
    return json_response(201, {"message": "201 Created"})


# -- project uploads ----------------------------------------------------------------------------


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Minimal multipart/form-data parser: field name -> (filename, bytes).

    Written by hand because the email parser may rewrite line endings inside binary parts.
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise bad_param("file is missing")
    parts: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(b"--" + match.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        disposition = next((line for line in head.decode("utf-8", "replace").split("\r\n")
                            if line.lower().startswith("content-disposition:")), "")
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if name is not None:
            parts[name.group(1)] = (filename.group(1) if filename else None, data)
    return parts


def create_upload(state: GitLabState, req: Request) -> Response:
    content_type = req.headers.get("Content-Type") or ""
    if not content_type.lower().startswith("multipart/form-data"):
        raise bad_param("file is missing")
    filename, data = parse_multipart(content_type, req.body).get("file", (None, b""))
    if not filename:
        raise bad_param("file is missing")
    secret = secrets.token_hex(16)
    url = f"/uploads/{secret}/{filename}"
    alt = filename.rsplit(".", 1)[0]
    markdown = (f"![{alt}]({url})" if filename.lower().endswith(IMAGE_SUFFIXES)
                else f"[{filename}]({url})")
    upload_id = state.db.next_id("upload")
    state.db.uploads.append(Upload(upload_id, secret, filename, data, url, markdown))
    return json_response(201, {
        "id": upload_id, "alt": alt, "url": url, "markdown": markdown,
        "full_path": f"/-/project/{state.project_id}/uploads/{secret}/{filename}",
    })


# -- the table ----------------------------------------------------------------------------------

Handler = Callable[[GitLabState, Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    allow_job_token: bool = False  # what a CI_JOB_TOKEN may call; anything else answers 403
    # Routes that do not take a job token at all (not in doc/ci/jobs/ci_job_token.md's "Job
    # token access" table): the request counts as unauthenticated, and ``authenticate!`` answers
    # 401.
    job_token_unauthenticated: bool = False
    # Routes GitLab marks `job_token_allowed: :basic_auth, basic_auth_personal_access_token`
    # (the package managers' APIs) also take the token as HTTP Basic credentials.
    basic_auth: bool = False
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


_MR = "/projects/:id/merge_requests/:iid"
_PACKAGE = "/projects/:id/packages/generic/:name/:version/:file_name"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/user", get_user),
    Route("GET", "/version", get_version, job_token_unauthenticated=True),
    Route("GET", "/personal_access_tokens/self", get_own_token, job_token_unauthenticated=True),
    Route("GET", "/projects/:id", get_project, job_token_unauthenticated=True),
    Route("GET", "/projects/:id/repository/commits/:sha/merge_requests", commit_merge_requests,
          allow_job_token=True),
    Route("GET", f"{_MR}/commits", merge_request_commits),
    Route("GET", f"{_MR}/notes", list_notes, allow_job_token=True),
    Route("POST", f"{_MR}/notes", create_note),
    Route("PUT", f"{_MR}/notes/:note_id", update_note),
    Route("DELETE", f"{_MR}/notes/:note_id", delete_note),
    Route("POST", "/projects/:id/wikis", create_wiki),
    Route("GET", "/projects/:id/wikis/:slug", get_wiki),
    Route("PUT", "/projects/:id/wikis/:slug", update_wiki),
    Route("PUT", _PACKAGE, put_package_file, allow_job_token=True),
    Route("GET", _PACKAGE, get_package_file, allow_job_token=True),
    Route("GET", "/projects/:id/packages", list_packages, allow_job_token=True),
    Route("GET", "/projects/:id/packages/:package_id/package_files", list_package_files,
          allow_job_token=True),
    Route("POST", "/projects/:id/uploads", create_upload),
    Route("POST", "/projects/:id/packages/pypi", upload_pypi_package, allow_job_token=True,
          basic_auth=True),
)


def find_route(method: str, path: str) -> tuple[Route, dict[str, str]]:
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


_TOKEN_HEADERS: tuple[tuple[str, TokenKind], ...] = (("PRIVATE-TOKEN", "private"),
                                                      ("JOB-TOKEN", "job"))


def authenticate(state: GitLabState, headers: Message) -> tuple[str | None, Token | None]:
    """The token header sent and the token it names, the way GitLab looks: each header only
    accepts its own kind of token. HTTP Basic credentials name a job token with the user
    ``gitlab-ci-token`` and a personal/project token with any other user
    (lib/gitlab/auth/auth_finders.rb); dispatch accepts them on basic-auth routes only."""
    for header, kind in _TOKEN_HEADERS:
        value = headers.get(header)
        if value is not None:
            return header, state.token(value, kind)
    authorization = headers.get("Authorization") or ""
    if authorization[:6].lower() == "basic ":
        try:
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return "Authorization", None
        kind: TokenKind = "job" if user == "gitlab-ci-token" else "private"
        return "Authorization", state.token(password, kind)
    return None, None


def dispatch(state: GitLabState, req: Request) -> Response:
    """Route, then GitLab's checks in its order: 401 without a valid token, 404 for a project
    the token cannot see, 403 for what a job token may not do; then the handler."""
    route, params = find_route(req.method, req.path)
    if req.basic_auth and not route.basic_auth:
        req.token = None  # GitLab's REST API ignores Basic credentials outside those routes
    if req.token is None:
        raise ApiError(401, {"message": "401 Unauthorized"})
    if "id" in params and not (state.is_project(params["id"]) and req.token.project_access):
        raise not_found("Project")
    if req.token.kind == "job" and not route.allow_job_token:
        if route.job_token_unauthenticated:
            raise ApiError(401, {"message": "401 Unauthorized"})
        raise forbidden()
    if "/packages" in route.template and not state.packages_enabled:
        # The project's package registry is off: GitLab's package policies deny read_package /
        # create_package, and lib/api/helpers/packages_helpers.rb answers forbidden!.
        raise forbidden()
    req.params = params
    with state.lock:
        return route.handler(state, req)
