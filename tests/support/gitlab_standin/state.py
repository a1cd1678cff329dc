"""The stand-in's data: one project, its users and tokens, merge requests and notes, wiki pages,
generic and PyPI packages and uploads, and the records the server keeps (requests, faults).

Nothing here speaks HTTP. ``GitLabState`` is what tests seed and inspect (copies out, under its
lock); ``Tables`` holds the rows that the route handlers in routes.py read and change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

TokenKind = Literal["private", "job"]
FaultKind = Literal["status", "drop", "delay"]

# Timestamps come from a counter rather than the wall clock so that ordering by created_at is
# deterministic even for objects created within the same millisecond.
_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def wiki_slug(title: str) -> str:
    """GitLab's slug: spaces become dashes, ``/`` makes folders."""
    return title.strip().replace(" ", "-")


@dataclass
class User:
    id: int
    username: str
    name: str


# GitLab's access levels (doc/api/members.md, "Roles"): what ``permissions`` reports.
REPORTER, DEVELOPER, MAINTAINER = 20, 30, 40


@dataclass
class Token:
    value: str
    kind: TokenKind
    user: User
    # A valid token whose user is not a project member: GitLab answers 404, not 403.
    project_access: bool = True
    # What GET /personal_access_tokens/self tells about a personal/project access token, and the
    # role of its user in the project (GET /projects/:id, permissions.project_access).
    id: int = 0
    name: str = "nbgate"
    scopes: tuple[str, ...] = ("api",)
    access_level: int = MAINTAINER
    expires_at: str | None = "2027-01-01"


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
    merge_commit_sha: str | None = None
    squash_commit_sha: str | None = None
    merged_at: str | None = None  # GitLab's time of the merge, ISO 8601

    def related_to(self, sha: str) -> bool:
        """GitLab's ``by_related_commit_sha``: a commit of the MR, or its merge/squash commit."""
        return sha in self.commits or sha in (self.merge_commit_sha, self.squash_commit_sha)


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


# GitLab's package statuses (``app/models/packages/package.rb``): the list endpoint shows the
# displayable ones only; files of the installable ones download.
PACKAGE_STATUSES = ("default", "hidden", "processing", "error", "pending_destruction",
                    "deprecated")
DISPLAYABLE_STATUSES = ("default", "error", "deprecated")
INSTALLABLE_STATUSES = ("default", "hidden", "deprecated")


@dataclass
class Package:
    id: int
    name: str
    version: str
    created_at: str
    files: list[PackageFile] = field(default_factory=list)
    status: str = "default"
    package_type: str = "generic"  # or "pypi" (twine uploads)


@dataclass
class Upload:
    id: int
    secret: str
    filename: str
    data: bytes
    url: str
    markdown: str


@dataclass
class RequestRecord:
    """One request as the stand-in saw it: where a token came from, never its value."""

    method: str
    path: str  # raw (still percent-encoded) path including /api/v4, without the query
    query: dict[str, str]
    header_names: frozenset[str]  # lower-cased
    token_header: str | None  # "PRIVATE-TOKEN", "JOB-TOKEN", "Authorization" (Basic) or None
    token_kind: TokenKind | None  # kind of the matched token; None when absent or unknown
    token_matched: bool
    username: str | None
    content_type: str | None
    body: bytes
    status: int | None = None  # None when the connection was dropped
    fault: FaultKind | None = None


@dataclass
class Fault:
    """A queued misbehaviour: answer ``status``, drop the connection, or delay the answer."""

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


@dataclass
class Tables:
    """The rows of the one project; handlers change them while holding ``GitLabState.lock``."""

    merge_requests: dict[int, MergeRequest] = field(default_factory=dict)
    commits: set[str] = field(default_factory=set)
    notes: dict[int, Note] = field(default_factory=dict)
    wiki: dict[str, WikiPage] = field(default_factory=dict)
    packages: list[Package] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    quick_actions: list[tuple[int, list[str]]] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    ticks: int = 0

    def next_id(self, kind: str) -> int:
        self.ids[kind] = self.ids.get(kind, 0) + 1
        return self.ids[kind]

    def tick(self) -> str:
        """The next timestamp, one second after the last, in GitLab's ISO format."""
        self.ticks += 1
        moment = _EPOCH + timedelta(seconds=self.ticks)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    def new_note(self, mr_iid: int, body: str, author: User, *, system: bool = False) -> Note:
        stamp = self.tick()
        note = Note(self.next_id("note"), mr_iid, body, author, system, stamp, stamp)
        self.notes[note.id] = note
        return note

    def find_package(self, name: str, version: str,
                     package_type: str = "generic") -> Package | None:
        return next((p for p in self.packages if p.name == name and p.version == version
                     and p.package_type == package_type), None)

    def find_package_file(self, name: str, version: str, file_name: str) -> PackageFile | None:
        """The newest file of that name: GitLab serves the last one uploaded."""
        package = self.find_package(name, version)
        files = reversed(package.files) if package else ()
        return next((f for f in files if f.file_name == file_name), None)

    def store_package_file(self, name: str, version: str, file_name: str, data: bytes,
                           status: str | None = None,
                           package_type: str = "generic") -> Package:
        """GitLab's ``Packages::Generic::CreatePackageFileService``: the package is created
        (status ``default``) by its first file, and an upload that gives a status sets it:
        ``package.update_column(:status, params[:status]) if params[:status] && ...``."""
        package = self.find_package(name, version, package_type)
        if package is None:
            package = Package(self.next_id("package"), name, version, self.tick(),
                              package_type=package_type)
            self.packages.append(package)
        package.files.append(PackageFile(self.next_id("package_file"), file_name, data,
                                         self.tick()))
        if status is not None and status != package.status:
            package.status = status
        return package


class GitLabState:
    """One project's data as tests seed and inspect it; the server answers from ``db``."""

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
        version: str = "17.5.1-ee",
    ) -> None:
        self.project_id = project_id
        # GET /version; the project's features as GET /projects/:id shows them.
        self.version = version
        self.packages_enabled = True
        self.wiki_access_level = "enabled"  # "disabled", "private" or "enabled"
        # Whether GET /repository/commits/:sha/merge_requests takes a CI_JOB_TOKEN: only recent
        # GitLab (job_token_allowed in lib/api/commits.rb, 2025; doc/ci/jobs/ci_job_token.md
        # lists it). Older instances do not find the project for a job token there: 404.
        self.job_token_lists_commit_merge_requests = False
        self.project_path = project_path
        self.private_token = private_token
        self.job_token = job_token
        self.allow_duplicate_packages = allow_duplicate_packages
        self.lock = threading.RLock()
        self.db = Tables()
        self._users: dict[str, User] = {}
        self._tokens: dict[str, Token] = {}
        self.user = self.add_user(username, user_id=1)
        self.job_user = self.add_user(job_username, user_id=2)
        self.add_token(private_token, username=username)
        self.add_token(job_token, username=job_username, kind="job")

    # -- users and tokens -----------------------------------------------------------------

    def add_user(self, username: str, *, user_id: int | None = None) -> User:
        with self.lock:
            if username not in self._users:
                uid = user_id if user_id is not None else 100 + len(self._users)
                self._users[username] = User(uid, username, username.replace("-", " ").title())
            return self._users[username]

    def add_token(
        self, value: str, *, username: str, kind: TokenKind = "private",
        project_access: bool = True, scopes: tuple[str, ...] = ("api",),
        access_level: int = MAINTAINER,
    ) -> Token:
        with self.lock:
            token = Token(value, kind, self.add_user(username), project_access,
                          len(self._tokens) + 1, f"{username} token", scopes, access_level)
            self._tokens[value] = token
            return token

    def token(self, value: str, kind: TokenKind) -> Token | None:
        """The token with that value, if it is of ``kind`` (each header takes its own kind)."""
        with self.lock:
            token = self._tokens.get(value)
        return token if token is not None and token.kind == kind else None

    def is_project(self, raw_id: str) -> bool:
        """Numeric id or ``group/project`` path (already unquoted)."""
        return raw_id == str(self.project_id) or raw_id.lower() == self.project_path.lower()

    # -- seeding --------------------------------------------------------------------------

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
        merge_commit_sha: str | None = None,
        squash_commit_sha: str | None = None,
        merged_at: str | None = None,
    ) -> MergeRequest:
        """An MR whose head is ``sha`` (plus earlier ``commits``, newest first); a merged one
        may name the merge and squash commits it made on the target branch, and gets a
        ``merged_at`` (the next tick of the clock unless given)."""
        with self.lock:
            if state == "merged" and merged_at is None:
                merged_at = self.db.tick()
            mr = MergeRequest(1000 + iid, iid, source_branch, sha, state, target_branch,
                              title or f"Merge {source_branch}", [sha, *commits],
                              merge_commit_sha, squash_commit_sha, merged_at)
            self.db.merge_requests[iid] = mr
            self.db.commits.update(mr.commits)
            self.db.commits.update(s for s in (merge_commit_sha, squash_commit_sha) if s)
            return replace(mr)

    def add_commit(self, sha: str) -> None:
        """Make a commit known that belongs to no merge request."""
        with self.lock:
            self.db.commits.add(sha)

    def add_note(
        self, mr_iid: int, body: str, *, author: str | None = None, system: bool = False
    ) -> Note:
        with self.lock:
            if mr_iid not in self.db.merge_requests:
                raise KeyError(f"no merge request !{mr_iid}; call add_merge_request first")
            user = self.add_user(author) if author else self.user
            return replace(self.db.new_note(mr_iid, body, user, system=system))

    def seed_notes(
        self, mr_iid: int, count: int, *, author: str = "alice", system: bool = False,
        body: str = "note {n}",
    ) -> list[Note]:
        """Add ``count`` notes; ``body`` may use ``{n}`` (1-based)."""
        return [self.add_note(mr_iid, body.format(n=n), author=author, system=system)
                for n in range(1, count + 1)]

    def add_wiki_page(self, title: str, content: str, *, format: str = "markdown") -> WikiPage:
        with self.lock:
            page = WikiPage(wiki_slug(title), title, content, format)
            self.db.wiki[page.slug] = page
            return replace(page)

    def add_package_file(self, name: str, version: str, file_name: str, data: bytes,
                         status: str | None = None) -> Package:
        with self.lock:
            package = self.db.store_package_file(name, version, file_name, data, status)
            return replace(package, files=list(package.files))

    # -- inspection (copies, so a test never races the server) ------------------------------

    def notes(self, mr_iid: int) -> list[Note]:
        """Notes of one merge request, oldest first."""
        with self.lock:
            return [replace(n) for n in sorted(self.db.notes.values(), key=lambda n: n.id)
                    if n.mr_iid == mr_iid]

    def wiki_pages(self) -> dict[str, WikiPage]:
        with self.lock:
            return {slug: replace(page) for slug, page in self.db.wiki.items()}

    def wiki_page(self, slug: str) -> WikiPage | None:
        return self.wiki_pages().get(slug)

    def packages(self) -> list[Package]:
        with self.lock:
            return [replace(p, files=list(p.files)) for p in self.db.packages]

    def replace_package_file(self, name: str, version: str, file_name: str, data: bytes) -> None:
        """Change a stored file's bytes in place (a tampered or corrupted registry)."""
        with self.lock:
            found = self.db.find_package_file(name, version, file_name)
            if found is None:
                raise KeyError(f"{name} {version} has no file {file_name}")
            found.data = data

    def package_file(self, name: str, version: str, file_name: str) -> bytes | None:
        """Bytes GitLab would serve for that file (the newest upload), or None."""
        with self.lock:
            found = self.db.find_package_file(name, version, file_name)
            return found.data if found else None

    def uploads(self) -> list[Upload]:
        with self.lock:
            return list(self.db.uploads)

    @property
    def quick_actions(self) -> list[tuple[int, list[str]]]:
        """(MR iid, command lines) for every note body GitLab would have run commands from."""
        with self.lock:
            return [(iid, list(lines)) for iid, lines in self.db.quick_actions]
