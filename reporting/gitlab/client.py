"""What every ``nbgate publish`` command shares: the token, the python-gitlab session and errors
that say what to check.

Facts this module relies on (from GitLab's API documentation and python-gitlab's source):

- python-gitlab sends ``PRIVATE-TOKEN`` for ``private_token=`` and ``JOB-TOKEN`` for ``job_token=``;
  a ``CI_JOB_TOKEN`` may read notes, packages and job artifacts, never post notes, wiki pages or
  uploads, nor call ``GET /user``.
- It has no timeout by default (we always set one), retries 429 by itself, and retries 5xx and
  connection errors only with ``retry_transient_errors=True`` -- for every verb, POST included.
  A POST whose answer was lost may have been applied, so creates that must not happen twice go
  through ``GitLabSession.create_once`` instead, which looks before it retries.
- 401 raises ``GitlabAuthenticationError`` (not a ``GitlabHttpError``); other statuses raise
  ``GitlabGetError``/``GitlabCreateError``/... with ``.response_code``.

How a command ends (skipped, refused, bad input) is in ``reporting.errors``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import gitlab
import requests
from gitlab.exceptions import GitlabError

from nbgate.contract.ci_context import CIContext
from nbgate.contract.redact import Redactor
from reporting.errors import PublishError, PublishRefused, PublishSkipped, PublishUsageError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
# python-gitlab waits 0.1 * 2**n s between tries: 6 retries span ~6 s of 5xx/resets, enough for
# a GitLab blip, short enough that a notify job fails while someone is still looking at it.
DEFAULT_RETRIES = 6
DEFAULT_BACKOFF_S = 1.0  # first pause before re-checking an unanswered create; doubles
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
CONNECTION_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
# Any other requests failure (a CI_API_V4_URL without a scheme, ...) is not worth a retry.
REQUEST_ERRORS = (requests.RequestException,)
TOKEN_VARIABLES = ("REPO_TOKEN", "GITLAB_TOKEN")
TOKEN_ADVICE = "set REPO_TOKEN (a project access token with the api scope and the Developer role)"
# GitLab protects new CI/CD variables by default (application_settings.protected_ci_variables
# DEFAULT true, db/structure.sql), and a protected variable reaches protected refs only: an
# ordinary merge request branch then runs without REPO_TOKEN.
# GET /projects/:id/repository/commits/:sha/merge_requests takes a job token only on recent
# GitLab (job_token_allowed in lib/api/commits.rb, added in 2025); older instances answer 404
# "Project Not Found", which must not read as a wrong CI_PROJECT_ID.
JOB_TOKEN_MERGE_REQUESTS = ("a job token may list a commit's merge requests only on GitLab "
                            "versions from 2025 on (older: 404 \"Project Not Found\")")
PROTECTION_ADVICE = ("as a CI/CD variable that is not protected (GitLab protects new variables "
                     "by default, and protected ones reach protected branches only), or protect "
                     "the merge request branches")


# -- outcomes --------------------------------------------------------------------------------


# -- token -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """The token to use and where it came from; its value never appears in a repr."""

    value: str = field(repr=False)
    kind: Literal["private", "job"]
    source: str  # the environment variable it came from

    @property
    def can_write(self) -> bool:
        """Notes, wiki pages and uploads need a personal/project token, not a job token."""
        return self.kind == "private"


def choose_token(env: Mapping[str, str]) -> Token | None:
    """REPO_TOKEN, else GITLAB_TOKEN (sent as PRIVATE-TOKEN), else CI_JOB_TOKEN (JOB-TOKEN)."""
    for name in TOKEN_VARIABLES:
        value = env.get(name, "").strip()
        if value:
            return Token(value, "private", name)
    value = env.get("CI_JOB_TOKEN", "").strip()
    return Token(value, "job", "CI_JOB_TOKEN") if value else None


def scrubber(env: Mapping[str, str]) -> Callable[[str], str]:
    """A function that masks every secret-looking environment value (tokens included) in text;
    everything the CLI prints or sends goes through it."""
    redactor = Redactor(env)
    token = choose_token(env)

    def scrub(text: str) -> str:
        text = redactor.text(text)
        return text.replace(token.value, "[MASKED]") if token else text

    return scrub


# -- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """NBGATE_GITLAB_TIMEOUT (s per request), NBGATE_GITLAB_RETRIES,
        NBGATE_GITLAB_BACKOFF (s)."""

        def number(name: str, default: float, kind: type) -> Any:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                value = -1
            if value < 0 or (name == "NBGATE_GITLAB_TIMEOUT" and value == 0):
                raise PublishUsageError(f"{name}={raw!r} is not a valid number; unset it or "
                                        f"use e.g. {default}")
            return value

        return cls(
            timeout_s=number("NBGATE_GITLAB_TIMEOUT", DEFAULT_TIMEOUT_S, float),
            retries=number("NBGATE_GITLAB_RETRIES", DEFAULT_RETRIES, int),
            backoff_s=number("NBGATE_GITLAB_BACKOFF", DEFAULT_BACKOFF_S, float),
        )


class _BoundedGitlab(gitlab.Gitlab):
    """python-gitlab with a session-wide bound on retries (its default is 10 per request, with
    no constructor option to change it)."""

    def __init__(self, *args: Any, max_retries: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_retries = max_retries

    def http_request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("max_retries", self.max_retries)
        return super().http_request(*args, **kwargs)


# -- the session -----------------------------------------------------------------------------


def base_url(api_url: str) -> str:
    """python-gitlab wants the server URL: CI_API_V4_URL without its trailing /api/v4."""
    url = api_url.rstrip("/")
    return url[: -len("/api/v4")] if url.endswith("/api/v4") else url


class GitLabSession:
    """One project on one GitLab, through python-gitlab, with errors mapped to PublishError."""

    def __init__(
        self,
        api_url: str,
        project_id: str,
        token: Token,
        settings: Settings | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings or Settings()
        self.token = token
        self.project_id = project_id
        self.url = base_url(api_url)
        self.gl = _BoundedGitlab(
            self.url,
            private_token=token.value if token.kind == "private" else None,
            job_token=token.value if token.kind == "job" else None,
            timeout=self.settings.timeout_s,
            retry_transient_errors=True,
            max_retries=self.settings.retries,
            user_agent="nbgate",
        )
        self.project = self.gl.projects.get(project_id, lazy=True)
        self._sleep = sleep
        self._user_id: int | Literal[False] | None = False  # False: not asked yet

    def endpoint(self, method: str, path: str) -> str:
        """'POST /projects/42/...' for messages: the project part spelled once, here."""
        return f"{method} /projects/{self.project_id}{path}"

    def call(self, endpoint: str, fn: Callable[[], T], hints: Mapping[int, str] | None = None) -> T:
        """Run one python-gitlab call; GitLab errors and exhausted retries become PublishError."""
        try:
            return fn()
        except GitlabError as exc:
            raise self.error(exc, endpoint, hints) from None
        except REQUEST_ERRORS as exc:
            raise self.unreachable(exc, endpoint) from None

    def error(
        self, exc: GitlabError, endpoint: str, hints: Mapping[int, str] | None = None
    ) -> PublishError:
        status = exc.response_code
        message = str(exc.error_message)
        hint = (hints or {}).get(status or 0) or self.default_hint(status)
        if status == 404 and "project" in message.lower():
            hint = self.default_hint(404)  # the project itself, whatever the call was about
        return PublishError(status, endpoint, hint, " ".join(message.split())[:300])

    def unreachable(self, exc: BaseException, endpoint: str) -> PublishError:
        why = type(exc).__name__
        if not isinstance(exc, CONNECTION_ERRORS):
            return PublishError(None, endpoint, f"{why}: {exc}; check CI_API_V4_URL "
                                f"({self.url}/api/v4)")
        return PublishError(
            None, endpoint,
            f"{why} after {self.settings.retries + 1} tries with a {self.settings.timeout_s:g} s "
            f"timeout; check that CI_API_V4_URL ({self.url}/api/v4) is reachable from this job",
        )

    def default_hint(self, status: int | None) -> str:
        source = self.token.source
        if status == 401:
            return f"the token in {source} was rejected; check that it is valid and not expired"
        if status == 403:
            if not self.token.can_write:
                return f"CI_JOB_TOKEN may not do this; {TOKEN_ADVICE}"
            return (f"the token in {source} may not do this; it needs the api scope and at least "
                    "the Developer role on the project")
        if status == 404:
            return (f"not found, or not visible to the token in {source} (GitLab answers 404 for "
                    f"private resources); check CI_PROJECT_ID={self.project_id} and that the "
                    "token's user is a member of the project")
        if status in TRANSIENT_STATUSES:
            return (f"still failing after {self.settings.retries} retries; GitLab may be busy, "
                    "run the job again later")
        if status == 400:
            return "GitLab rejected the request as invalid"
        return "unexpected answer from GitLab"

    def user_id(self) -> int | None:
        """The token user's id (GET /user), to only ever touch our own notes; None when the
        token cannot tell (a job token, or a token without read access to /user)."""
        if self._user_id is False:
            self._user_id = None
            if self.token.can_write:
                try:
                    self.gl.auth()
                except GitlabError as exc:
                    if exc.response_code == 401:
                        raise self.error(exc, "GET /user") from None
                except REQUEST_ERRORS as exc:
                    raise self.unreachable(exc, "GET /user") from None
                else:
                    self._user_id = self.gl.user.id if self.gl.user is not None else None
        return self._user_id

    def create_once(
        self,
        endpoint: str,
        create: Callable[..., T],
        existing: Callable[[], T | None],
        hints: Mapping[int, str] | None = None,
    ) -> tuple[T, bool]:
        """POST something that must exist once (a sticky note), surviving lost answers.

        A timeout, a reset connection or a 5xx may come after GitLab already stored the object,
        so python-gitlab's blind retry could store it twice. Here python-gitlab's transport
        retry is off for the POST (it still waits out 429s, which GitLab answers before doing
        anything); after a lost answer we wait, call ``existing()`` to see whether the first try
        landed, and only then post again. Returns (object, created_by_this_call).
        """
        last: BaseException | None = None
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self._sleep(self.settings.backoff_s * 2 ** (attempt - 1))
                found = existing()  # an ordinary (retried, error-mapped) read
                if found is not None:
                    return found, False
            try:
                return create(retry_transient_errors=False), True
            except GitlabError as exc:
                if exc.response_code not in TRANSIENT_STATUSES:
                    raise self.error(exc, endpoint, hints) from None
                last = exc
            except REQUEST_ERRORS as exc:
                if not isinstance(exc, CONNECTION_ERRORS):
                    raise self.unreachable(exc, endpoint) from None
                last = exc
        if isinstance(last, GitlabError):
            raise self.error(last, endpoint, hints)
        assert last is not None
        raise self.unreachable(last, endpoint)


def connect(
    env: Mapping[str, str], what: str, *, write: bool, settings: Settings | None = None
) -> GitLabSession:
    """A session for ``what`` ("the merge request comment"), or PublishSkipped saying why not.

    ``write``: the command posts notes, wiki pages or uploads, which a CI_JOB_TOKEN cannot do.
    """
    ctx = CIContext.from_env(env)
    if not ctx.api_url or not ctx.project_id:
        raise PublishSkipped(
            f"skipped {what}: not in GitLab CI (CI_API_V4_URL and CI_PROJECT_ID are not set)")
    token = choose_token(env)
    if token is None:
        raise PublishSkipped(f"skipped {what}: no GitLab token; {TOKEN_ADVICE}")
    if write and not token.can_write:
        raise PublishSkipped(
            f"skipped {what}: only CI_JOB_TOKEN is set, and a job token cannot post merge "
            f"request notes or write wiki pages; {TOKEN_ADVICE}")
    return GitLabSession(ctx.api_url, ctx.project_id, token, settings or Settings.from_env(env))


def require_note_token(env: Mapping[str, str], what: str) -> None:
    """In CI on a merge request's branch (an MR pipeline, or a branch pipeline whose
    CI_OPEN_MERGE_REQUESTS names an MR of this project) a missing note-capable token is a
    broken set-up, usually a protected REPO_TOKEN: PublishRefused with the fix, not a skip.
    Elsewhere (not in CI, a branch without an MR) ``connect`` says what it skipped."""
    ctx = CIContext.from_env(env)
    iid = ctx.merge_request_iid or ctx.open_merge_request_of_this_project()
    if not (ctx.ci and ctx.api_url and ctx.project_id and iid):
        return
    token = choose_token(env)
    if token is not None and token.can_write:
        return
    have = "only CI_JOB_TOKEN, which cannot post notes," if token else "no GitLab token"
    raise PublishRefused(
        f"could not post {what} on !{iid}: this job has {have}; add REPO_TOKEN (a project "
        f"access token, scope api, role Developer) {PROTECTION_ADVICE}")


def connect_unless_dry_run(
    env: Mapping[str, str],
    what: str,
    *,
    write: bool,
    dry_run: bool,
    echo: Callable[[str], None],
    settings: Settings | None = None,
) -> GitLabSession | None:
    """``connect``, except that a dry run without CI or token goes on offline (None)."""
    try:
        return connect(env, what, write=write, settings=settings)
    except PublishSkipped as skipped:
        if not dry_run:
            raise
        echo(f"dry run ({skipped})")
        return None
