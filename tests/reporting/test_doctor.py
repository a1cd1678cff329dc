"""``nbgate doctor`` against the loopback GitLab, run as a user would from a laptop: only
CI_SERVER_URL, CI_PROJECT_ID and a token in the environment, no CI variables.

The stand-in answers as GitLab does (see tests/support/gitlab_standin/routes.py): ``GET /version``
(doc/api/version.md), ``GET /personal_access_tokens/self`` (doc/api/personal_access_tokens.md,
"Self-inform"), ``GET /projects/:id`` with ``packages_enabled``, ``wiki_access_level`` and
``permissions`` (doc/api/projects.md); a job token reaches none of those three (they are not in
doc/ci/jobs/ci_job_token.md's "Job token access" table: 401) but reads packages.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nbgate.cli import main
from reporting.gitlab.doctor import MINIMUM_GITLAB, MINIMUM_TEXT
from tests.support.gitlab_standin import GitLabStandIn
from tests.support.gitlab_standin.state import DEVELOPER, REPORTER
from tests.support.mlflow_server import MlflowServer, RecordingProxy

ROOT = Path(__file__).resolve().parents[2]
FIX_TOKEN = ("set REPO_TOKEN: a project access token with the api scope and the Developer role, "
             "as a CI/CD variable that is not protected (GitLab protects new variables by "
             "default, and protected ones reach protected branches only), or protect the merge "
             "request branches")


def doctor(standin: GitLabStandIn, capsys: pytest.CaptureFixture[str], **env: str) \
        -> tuple[int, list[str]]:
    base = {"CI_SERVER_URL": standin.url, "CI_PROJECT_ID": str(standin.project_id),
            "NBGATE_GITLAB_RETRIES": "0", "NBGATE_GITLAB_TIMEOUT": "5"}
    code = main(["doctor", "--pyproject", "absent.toml"], {**base, **env})
    captured = capsys.readouterr()
    assert captured.err == ""
    out = captured.out.replace(standin.url, "GITLAB")
    for secret in (standin.private_token, standin.job_token):
        assert secret not in out
    # Rows as (state, check, found, fix): the columns are padded, so split on 2+ spaces.
    return code, [line.strip() for line in out.splitlines()]


def rows(lines: list[str]) -> dict[str, tuple[str, ...]]:
    table = {}
    for line in lines[1:-1]:
        state, check, *rest = re.split(r"\s{2,}", line)
        table[check] = (state, *rest)
    return table


def test_a_token_that_can_do_everything_passes_every_row(
    gitlab_standin: GitLabStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = doctor(gitlab_standin, capsys, REPO_TOKEN=gitlab_standin.private_token)
    assert code == 0
    assert lines[0] == "nbgate doctor: GITLAB, project 42, token REPO_TOKEN"
    assert rows(lines) == {
        "GitLab version": ("ok", f"17.5.1-ee (minimum {MINIMUM_TEXT})"),
        "token": ("ok", "REPO_TOKEN, an access token, scopes: api"),
        "role": ("ok", "Maintainer"),
        "package registry": ("ok", "enabled"),
        "wiki": ("ok", "enabled"),
        "MLflow": ("n/a", "not configured: each job keeps a local MLflow store"),
        "fetch-baseline, fetch-artifact": ("ok", "reads packages"),
        "publish artifacts": ("ok", "uploads packages"),
        "publish mr": ("ok", "posts merge request notes"),
        "publish wiki": ("ok", "writes wiki pages"),
        "promote": ("ok", "finds the merged MR and releases its candidate"),
    }
    assert lines[-1] == "nbgate doctor: everything the CI file uses will work"
    asked = {r.path for r in gitlab_standin.request_log}
    assert asked == {"/api/v4/version", "/api/v4/personal_access_tokens/self",
                     "/api/v4/projects/42"}
    assert {r.method for r in gitlab_standin.request_log} == {"GET"}  # it only asks


def test_a_job_token_shows_what_it_cannot_do_and_fails(
    gitlab_standin: GitLabStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = doctor(gitlab_standin, capsys, CI_JOB_TOKEN=gitlab_standin.job_token)
    assert code == 1
    assert lines[0] == "nbgate doctor: GITLAB, project 42, token CI_JOB_TOKEN"
    job_cannot = "a job token cannot post notes, wiki pages or uploads"
    assert rows(lines) == {
        "GitLab version": ("FAIL", "unknown (GitLab answered 401 for GET /version); minimum "
                           f"{MINIMUM_TEXT}", "fix: run nbgate doctor with REPO_TOKEN (a job "
                           "token cannot read GET /version)"),
        "token": ("ok", "CI_JOB_TOKEN, a job token (it has no scopes to read)"),
        "role": ("n/a", "a job token acts with the role of the pipeline's user"),
        "package registry": ("ok", "enabled"),
        "wiki": ("FAIL", "unknown (GitLab answered 401 for GET /projects/42)",
                 "fix: a job token cannot read the project's settings; run nbgate doctor with "
                 "REPO_TOKEN"),
        "MLflow": ("n/a", "not configured: each job keeps a local MLflow store"),
        "fetch-baseline, fetch-artifact": ("ok", "reads packages"),
        "publish artifacts": ("ok", "uploads packages"),
        "publish mr": ("FAIL", job_cannot, f"fix: {FIX_TOKEN}"),
        "publish wiki": ("FAIL", job_cannot, f"fix: {FIX_TOKEN}"),
        "promote": ("FAIL", "a job token may list a commit's merge requests only on GitLab "
                    "versions from 2025 on (older: 404 \"Project Not Found\")",
                    "fix: set REPO_TOKEN for the promote-model job"),
    }
    assert lines[-1] == ("nbgate doctor: 5 of 11 checks failed: GitLab version, wiki, "
                         "publish mr, publish wiki, promote")


def test_each_broken_setting_fails_its_row_with_its_fix(
    gitlab_standin: GitLabStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    """Too old a GitLab, a read_api token with the Reporter role, a disabled registry and
    wiki: each row fails on its own, with the fix for it."""
    gitlab_standin.version = "16.9.2-ee"  # typed inputs in parallel: came in 16.10
    gitlab_standin.packages_enabled = False
    gitlab_standin.wiki_access_level = "disabled"
    gitlab_standin.add_token("glpat-reader-token-0000", username="reader",
                             scopes=("read_api",), access_level=REPORTER)
    code, lines = doctor(gitlab_standin, capsys, REPO_TOKEN="glpat-reader-token-0000")
    assert code == 1
    table = rows(lines)
    assert table["GitLab version"][:2] == ("FAIL", f"16.9.2-ee (minimum {MINIMUM_TEXT})")
    assert table["GitLab version"][2].startswith(f"fix: upgrade GitLab to {MINIMUM_TEXT}")
    assert table["token"] == ("ok", "REPO_TOKEN, an access token, scopes: read_api")
    assert table["role"] == ("FAIL", "Reporter", "fix: give the token the Developer role")
    assert table["package registry"][:2] == table["wiki"][:2] == ("FAIL", "disabled")
    assert table["publish mr"] == ("FAIL", "REPO_TOKEN: needs the api scope and the Developer "
                                   "role", f"fix: {FIX_TOKEN}")
    assert table["fetch-baseline, fetch-artifact"] == (
        "FAIL", "reads packages", "fix: turn on the package registry")
    # A Developer with the api scope, on a new enough GitLab with both features on: all pass.
    gitlab_standin.version, gitlab_standin.packages_enabled = "17.0.0", True
    gitlab_standin.wiki_access_level = "private"
    gitlab_standin.add_token("glpat-developer-token-00", username="dev", access_level=DEVELOPER)
    code, lines = doctor(gitlab_standin, capsys, REPO_TOKEN="glpat-developer-token-00")
    assert code == 0, "\n".join(lines)


def test_outside_any_project_it_says_what_to_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--pyproject", "absent.toml"], {"REPO_TOKEN": "x" * 20}) == 2
    err = capsys.readouterr().err
    assert err.startswith("nbgate doctor: error: set CI_SERVER_URL (e.g. https://gitlab.example."
                          "com) and CI_PROJECT_ID")


def test_the_mlflow_row_asks_the_endpoint_with_its_token(
    gitlab_standin: GitLabStandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A wrong or protected-away MLFLOW_TRACKING_TOKEN: the endpoint answers 401 (as GitLab's
    does, see RecordingProxy) and the row names the variable and its protection."""
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        server.wait_ready()
        with RecordingProxy(server.url, token="mlflow-right-token") as proxy:
            env = {"REPO_TOKEN": gitlab_standin.private_token, "MLFLOW_TRACKING_URI": proxy.url}
            code, lines = doctor(gitlab_standin, capsys, **env,
                                 MLFLOW_TRACKING_TOKEN="mlflow-wrong-token")
            assert code == 1
            assert rows(lines)["MLflow"] == (
                "FAIL", f"{proxy.url} answered 401", "fix: set MLFLOW_TRACKING_TOKEN (on GitLab: "
                "a token with the api scope) as a CI/CD variable that is not protected (GitLab "
                "protects new variables by default, and protected ones reach protected branches "
                "only), or protect the merge request branches")
            code, lines = doctor(gitlab_standin, capsys, **env,
                                 MLFLOW_TRACKING_TOKEN="mlflow-right-token")
            assert code == 0, lines
            assert rows(lines)["MLflow"] == (
                "ok", f"{proxy.url} answers with MLFLOW_TRACKING_TOKEN")
    finally:
        server.stop()


def test_the_minimum_version_is_stated_once_everywhere() -> None:
    """README, the CI file's header and doctor compare with the same minimum."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci_file = (ROOT / ".gitlab-ci.yml").read_text(encoding="utf-8")
    header = ci_file[: ci_file.index("\ninclude:")]
    assert f"GitLab {MINIMUM_TEXT} or later" in readme
    assert f"GitLab {MINIMUM_TEXT} or later" in header
    assert MINIMUM_GITLAB >= (16, 10)  # typed inputs in parallel: (MR !144065)
