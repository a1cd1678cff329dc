"""``nbgate doctor``: ask the GitLab instance what will work before the first pipeline does.

One row per thing the CI file relies on, each with what was found and, when it fails, the fix.
It runs in CI or from a laptop (CI_SERVER_URL or CI_API_V4_URL, CI_PROJECT_ID and a token in the
environment). Only GitLab's own read-only endpoints are asked:

- ``GET /version`` (doc/api/version.md): the instance's version, compared with
  ``MINIMUM_GITLAB``;
- ``GET /personal_access_tokens/self`` (doc/api/personal_access_tokens.md, GitLab 15.5): the
  token's scopes. A project access token is a personal access token of the project's bot user,
  so it answers too; a CI_JOB_TOKEN cannot (it is not in the job token's list of endpoints,
  doc/ci/jobs/ci_job_token.md, so GitLab answers 401);
- ``GET /projects/:id`` (doc/api/projects.md): ``packages_enabled``, ``wiki_access_level``
  (``wiki_enabled`` on older versions) and ``permissions`` (the token user's role);
- ``GET /projects/:id/packages`` for a job token, which may read packages but not the project;
- the MLflow endpoint when MLFLOW_TRACKING_URI names a server (``experiments/get-by-name``: a
  404 "no such experiment" proves the token was accepted).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import requests
from gitlab.exceptions import GitlabError

from nbgate.contract.ci_context import CIContext
from reporting.errors import PublishUsageError
from reporting.gitlab.client import (
    JOB_TOKEN_MERGE_REQUESTS,
    PROTECTION_ADVICE,
    REQUEST_ERRORS,
    GitLabSession,
    Settings,
    Token,
    choose_token,
)

# The oldest GitLab the CI file runs on. `parallel: $[[ inputs.train_shards ]]` needs typed
# whole-value interpolation (lib/gitlab/ci/config/interpolation/template.rb, MR !144065, 16.10:
# older versions substitute text and entry/product/parallel.rb rejects a string), and the jobs
# come as a CI/CD component (catalog GA in 17.0). README and .gitlab-ci.yml state the same.
MINIMUM_GITLAB = (17, 0)
MINIMUM_TEXT = ".".join(map(str, MINIMUM_GITLAB))
REPORTER, DEVELOPER = 20, 30
ROLES = {10: "Guest", 15: "Planner", 20: "Reporter", 30: "Developer", 40: "Maintainer",
         50: "Owner"}
WRITE_SCOPES = frozenset({"api"})
READ_SCOPES = frozenset({"api", "read_api"})
REPO_TOKEN_FIX = ("set REPO_TOKEN: a project access token with the api scope and the Developer "
                  "role, " + PROTECTION_ADVICE)

State = Literal["ok", "FAIL", "n/a"]


@dataclass(frozen=True)
class Row:
    check: str
    state: State
    found: str
    fix: str = ""


@dataclass
class Facts:
    """What the instance told us; None where it could not be asked."""

    token: Token | None
    version: str | None = None
    version_problem: str = ""
    scopes: frozenset[str] | None = None
    token_problem: str = ""
    role: int | None = None
    packages: bool | None = None
    wiki: bool | None = None
    project_problem: str = ""


def doctor(env: Mapping[str, str], echo: Callable[[str], None] = print) -> bool:
    """Print the table; True when every row the CI file relies on passes (or does not apply)."""
    ctx = CIContext.from_env(env)
    api_url = ctx.api_url or (ctx.server_url.rstrip("/") + "/api/v4" if ctx.server_url else None)
    if not api_url or not ctx.project_id:
        raise PublishUsageError("set CI_SERVER_URL (e.g. https://gitlab.example.com) and "
                                "CI_PROJECT_ID (the number on the project's overview page), "
                                "and REPO_TOKEN")
    token = choose_token(env)
    facts = Facts(token)
    if token is not None:
        ask_gitlab(GitLabSession(api_url, ctx.project_id, token, Settings.from_env(env)), facts)
    rows = [*gitlab_rows(facts), mlflow_row(env), *step_rows(facts)]
    echo(f"nbgate doctor: {api_url.removesuffix('/api/v4')}, project {ctx.project_id}, "
         f"token {token.source if token else '(none)'}")
    for line in table(rows):
        echo(line)
    failed = [r.check for r in rows if r.state == "FAIL"]
    if failed:
        echo(f"nbgate doctor: {len(failed)} of {len(rows)} checks failed: {', '.join(failed)}")
    else:
        echo("nbgate doctor: everything the CI file uses will work")
    return not failed


# -- asking ----------------------------------------------------------------------------------


def ask_gitlab(session: GitLabSession, facts: Facts) -> None:
    def get(path: str, **query: Any) -> tuple[Any, str]:
        """The JSON answer, or why there is none ("GitLab answered 401 for GET /version")."""
        try:
            return session.gl.http_get(path, query_data=query), ""
        except GitlabError as exc:
            return None, f"GitLab answered {exc.response_code} for GET {path}"
        except REQUEST_ERRORS as exc:
            return None, str(session.unreachable(exc, f"GET {path}"))

    version, facts.version_problem = get("/version")
    if isinstance(version, dict):
        facts.version = str(version.get("version", ""))
    assert facts.token is not None
    if facts.token.kind == "private":
        own, facts.token_problem = get("/personal_access_tokens/self")
        if isinstance(own, dict):
            facts.scopes = frozenset(str(s) for s in own.get("scopes") or ())
    project, facts.project_problem = get(f"/projects/{session.project_id}")
    if isinstance(project, dict):
        facts.packages = bool(project.get("packages_enabled"))
        level = project.get("wiki_access_level")
        facts.wiki = level != "disabled" if level is not None else bool(project.get("wiki_enabled"))
        facts.role = best_role(project.get("permissions"))
    elif facts.token.kind == "job":
        # A job token may read the package list but not the project: a 403 there is the
        # registry being off (the job token reaches packages whenever the registry is on).
        _, problem = get(f"/projects/{session.project_id}/packages", per_page=1)
        facts.packages = not problem
        facts.project_problem = problem or facts.project_problem


def best_role(permissions: Any) -> int | None:
    """The token user's role: project membership or the group's, whichever is higher."""
    if not isinstance(permissions, dict):
        return None
    levels = [access.get("access_level") for access in permissions.values()
              if isinstance(access, dict)]
    known = [level for level in levels if isinstance(level, int)]
    return max(known) if known else None


def parse_version(text: str) -> tuple[int, int] | None:
    match = re.match(r"\s*(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


# -- the rows --------------------------------------------------------------------------------


def gitlab_rows(facts: Facts) -> list[Row]:
    token = facts.token
    if token is None:
        return [Row("token", "FAIL", "none (REPO_TOKEN, GITLAB_TOKEN, CI_JOB_TOKEN unset)",
                    REPO_TOKEN_FIX)]
    rows = [version_row(facts), token_row(facts)]
    if token.kind == "job":
        rows.append(Row("role", "n/a", "a job token acts with the role of the pipeline's user"))
    elif facts.role is None:
        rows.append(Row("role", "FAIL", f"unknown ({facts.project_problem or 'not a member'})",
                        "add the token's user to the project with the Developer role"))
    else:
        name = ROLES.get(facts.role, str(facts.role))
        rows.append(Row("role", "ok" if facts.role >= DEVELOPER else "FAIL", name,
                        "" if facts.role >= DEVELOPER else "give the token the Developer role"))
    rows.append(feature_row("package registry", facts.packages, facts,
                            "Settings > General > Visibility, project features, permissions: "
                            "turn on Package registry"))
    rows.append(feature_row("wiki", facts.wiki, facts,
                            "Settings > General > Visibility, project features, permissions: "
                            "turn on Wiki"))
    return rows


def version_row(facts: Facts) -> Row:
    found = parse_version(facts.version or "")
    if found is None:
        why = facts.version_problem or f"unreadable version {facts.version!r}"
        fix = ("run nbgate doctor with REPO_TOKEN (a job token cannot read GET /version)"
               if facts.token and facts.token.kind == "job" else "check the token and the URL")
        return Row("GitLab version", "FAIL", f"unknown ({why}); minimum {MINIMUM_TEXT}", fix)
    if found < MINIMUM_GITLAB:
        return Row("GitLab version", "FAIL", f"{facts.version} (minimum {MINIMUM_TEXT})",
                   f"upgrade GitLab to {MINIMUM_TEXT} or later: older versions reject the "
                   "pipeline (typed inputs in parallel:, CI/CD components)")
    return Row("GitLab version", "ok", f"{facts.version} (minimum {MINIMUM_TEXT})")


def token_row(facts: Facts) -> Row:
    token = facts.token
    assert token is not None
    if token.kind == "job":
        return Row("token", "ok", "CI_JOB_TOKEN, a job token (it has no scopes to read)")
    if facts.scopes is None:
        return Row("token", "FAIL", f"{token.source}, not readable ({facts.token_problem})",
                   f"check that {token.source} is a valid, unexpired access token")
    scopes = ", ".join(sorted(facts.scopes)) or "none"
    if not facts.scopes & READ_SCOPES:
        return Row("token", "FAIL", f"{token.source}, scopes: {scopes}",
                   "create the token with the api scope")
    return Row("token", "ok", f"{token.source}, an access token, scopes: {scopes}")


def feature_row(name: str, enabled: bool | None, facts: Facts, fix: str) -> Row:
    if enabled is None:
        reader = ("a job token cannot read the project's settings; run nbgate doctor with "
                  "REPO_TOKEN") if facts.token and facts.token.kind == "job" else fix
        return Row(name, "FAIL", f"unknown ({facts.project_problem})", reader)
    return Row(name, "ok", "enabled") if enabled else Row(name, "FAIL", "disabled", fix)


def step_rows(facts: Facts) -> list[Row]:
    """Which nbgate commands of the CI file this token can run."""
    token = facts.token
    job = token is not None and token.kind == "job"
    scopes = facts.scopes or frozenset()
    role = facts.role or 0
    reads = job or (bool(scopes & READ_SCOPES) and role >= REPORTER)
    writes = (bool(scopes & WRITE_SCOPES) and role >= DEVELOPER) if not job else None
    packages_on = facts.packages is True

    def row(step: str, ok: bool, found: str, fix: str) -> Row:
        return Row(step, "ok" if ok else "FAIL", found, "" if ok else fix)

    no_write = (f"{token.source if token else 'no token'}: needs the api scope and the Developer "
                "role" if not job else "a job token cannot post notes, wiki pages or uploads")
    rows = [
        row("fetch-baseline, fetch-artifact", reads and packages_on,
            "reads packages" if reads else "cannot read packages",
            REPO_TOKEN_FIX if not reads else "turn on the package registry"),
        row("publish artifacts", (job or bool(writes)) and packages_on,
            "uploads packages" if (job or writes) else "cannot upload packages",
            REPO_TOKEN_FIX if not (job or writes) else "turn on the package registry"),
        row("publish mr", bool(writes), "posts merge request notes" if writes else no_write,
            REPO_TOKEN_FIX),
        row("publish wiki", bool(writes) and facts.wiki is True,
            "writes wiki pages" if writes else no_write,
            REPO_TOKEN_FIX if not writes else "turn on the wiki"),
    ]
    if job:
        rows.append(Row("promote", "FAIL", JOB_TOKEN_MERGE_REQUESTS,
                        "set REPO_TOKEN for the promote-model job"))
    else:
        rows.append(row("promote", bool(writes) and packages_on,
                        "finds the merged MR and releases its candidate" if writes else no_write,
                        REPO_TOKEN_FIX))
    return rows


def mlflow_row(env: Mapping[str, str]) -> Row:
    uri = env.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri.startswith(("http://", "https://")):
        return Row("MLflow", "n/a", "not configured: each job keeps a local MLflow store"
                   if not uri else f"a local store ({uri})")
    token = env.get("MLFLOW_TRACKING_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name"
    shown = uri.split("@")[-1] if "@" in uri.split("//", 1)[-1] else uri
    try:
        answer = requests.get(probe, params={"experiment_name": "nbgate-doctor-probe"},
                              headers=headers, timeout=float(env.get("NBGATE_GITLAB_TIMEOUT")
                                                             or 30))
    except requests.RequestException as exc:
        return Row("MLflow", "FAIL", f"{shown} could not be reached ({type(exc).__name__})",
                   "check MLFLOW_TRACKING_URI")
    if answer.status_code in (200, 404):  # 404: no such experiment, but the token was taken
        return Row("MLflow", "ok", f"{shown} answers with MLFLOW_TRACKING_TOKEN"
                   if token else f"{shown} answers without a token")
    if answer.status_code in (401, 403):
        return Row("MLflow", "FAIL", f"{shown} answered {answer.status_code}",
                   "set MLFLOW_TRACKING_TOKEN (on GitLab: a token with the api scope) "
                   + PROTECTION_ADVICE)
    return Row("MLflow", "FAIL", f"{shown} answered {answer.status_code}",
               "check MLFLOW_TRACKING_URI")


def table(rows: list[Row]) -> list[str]:
    """Fixed-width columns: state, check, what was found, the fix."""
    check_width = max(len(r.check) for r in rows)
    found_width = min(max(len(r.found) for r in rows), 60)  # a long one runs over, not all
    lines = []
    for r in rows:
        line = f"  {r.state:<4}  {r.check:<{check_width}}  {r.found:<{found_width}}"
        if r.fix:
            line += f"  fix: {r.fix}"
        lines.append(line.rstrip())
    return lines
