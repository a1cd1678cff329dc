"""The GitLab stand-in, driven by the real python-gitlab client and plain requests over HTTP.

These tests pin the behaviour that nbgate's publishing and promotion rely on (the project's
GitLab notes), so that a client test passing against the stand-in means something for real GitLab:
token rules, error shapes, pagination, faults, and each route the product calls.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import gitlab
import pytest
import requests
from gitlab.v4.objects import Project, ProjectMergeRequest

from tests.support.gitlab_standin import GitLabStandIn

SHA = "a" * 40


@pytest.fixture
def gl(gitlab_standin: GitLabStandIn) -> gitlab.Gitlab:
    return gitlab.Gitlab(gitlab_standin.url, private_token=gitlab_standin.private_token, timeout=5)


@pytest.fixture
def job_gl(gitlab_standin: GitLabStandIn) -> gitlab.Gitlab:
    return gitlab.Gitlab(gitlab_standin.url, job_token=gitlab_standin.job_token, timeout=5)


@pytest.fixture
def project(gl: gitlab.Gitlab, gitlab_standin: GitLabStandIn) -> Project:
    return gl.projects.get(gitlab_standin.project_id, lazy=True)


@pytest.fixture
def mr(project: Project, gitlab_standin: GitLabStandIn) -> ProjectMergeRequest:
    gitlab_standin.add_merge_request(7, source_branch="feature/x", sha=SHA)
    return project.mergerequests.get(7, lazy=True)


def api(standin: GitLabStandIn, path: str) -> str:
    return f"{standin.api_url}/projects/{standin.project_id}{path}"


def auth(standin: GitLabStandIn) -> dict[str, str]:
    return {"PRIVATE-TOKEN": standin.private_token}


def get(standin: GitLabStandIn, url: str, params: dict[str, object] | None = None
        ) -> requests.Response:
    return requests.get(url, params=params, headers=auth(standin), timeout=5)


# --------------------------------------------------------------------------- lifecycle and tokens


def test_serves_one_project_by_id_or_path_on_loopback_and_stops() -> None:
    with GitLabStandIn(project_id=7, project_path="team/models") as standin:
        url = standin.url
        assert url.startswith("http://127.0.0.1:")
        client = gitlab.Gitlab(url, private_token=standin.private_token, timeout=5)
        assert client.projects.get("team/models", lazy=True).packages.list() == []
        assert standin.request_log[-1].path == "/api/v4/projects/team%2Fmodels/packages"
        with pytest.raises(gitlab.GitlabListError) as caught:
            client.projects.get(42, lazy=True).packages.list()
        assert (caught.value.response_code, caught.value.error_message) == (
            404, "404 Project Not Found")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/api/v4/user", timeout=2)


def test_user_is_the_token_owner(gl: gitlab.Gitlab, gitlab_standin: GitLabStandIn) -> None:
    gl.auth()
    assert gl.user is not None and (gl.user.id, gl.user.username) == (1, "nbgate-bot")
    record = gitlab_standin.request_log[-1]
    assert (record.token_header, record.token_kind, record.token_matched) == (
        "PRIVATE-TOKEN", "private", True)
    assert "private-token" in record.header_names and "job-token" not in record.header_names


def test_missing_and_unknown_tokens_get_401(gitlab_standin: GitLabStandIn) -> None:
    missing = requests.get(f"{gitlab_standin.api_url}/user", timeout=5)
    unknown = requests.get(f"{gitlab_standin.api_url}/user", headers={"PRIVATE-TOKEN": "nope"},
                           timeout=5)
    assert (missing.status_code, missing.json()) == (401, {"message": "401 Unauthorized"})
    assert unknown.status_code == 401
    assert [r.token_matched for r in gitlab_standin.request_log] == [False, False]
    with pytest.raises(gitlab.GitlabAuthenticationError):
        gitlab.Gitlab(gitlab_standin.url, private_token="nope", timeout=5).auth()


def test_a_job_token_counts_only_in_its_own_header(gitlab_standin: GitLabStandIn) -> None:
    as_private = requests.get(api(gitlab_standin, "/packages"),
                              headers={"PRIVATE-TOKEN": gitlab_standin.job_token}, timeout=5)
    as_job = requests.get(api(gitlab_standin, "/packages"),
                          headers={"JOB-TOKEN": gitlab_standin.job_token}, timeout=5)
    assert (as_private.status_code, as_job.status_code) == (401, 200)


def test_a_job_token_cannot_call_user(job_gl: gitlab.Gitlab,
                                      gitlab_standin: GitLabStandIn) -> None:
    with pytest.raises(gitlab.GitlabGetError) as caught:
        job_gl.auth()
    assert (caught.value.response_code, caught.value.error_message) == (403, "403 Forbidden")
    record = gitlab_standin.request_log[-1]
    assert (record.token_header, record.token_kind, record.username) == (
        "JOB-TOKEN", "job", "pipeline-user")
    assert "job-token" in record.header_names and "private-token" not in record.header_names


def test_a_token_without_project_access_sees_404(gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.add_token("outsider-token", username="outsider", project_access=False)
    outsider = gitlab.Gitlab(gitlab_standin.url, private_token="outsider-token", timeout=5)
    outsider.auth()
    assert outsider.user is not None and outsider.user.username == "outsider"
    with pytest.raises(gitlab.GitlabListError) as caught:
        outsider.projects.get(gitlab_standin.project_id, lazy=True).packages.list()
    assert caught.value.response_code == 404


def test_unknown_route_is_404_and_wrong_method_405(gitlab_standin: GitLabStandIn) -> None:
    nothing = get(gitlab_standin, api(gitlab_standin, "/nothing"))
    wrong = requests.delete(api(gitlab_standin, "/uploads"), headers=auth(gitlab_standin),
                            timeout=5)
    assert (nothing.status_code, nothing.json()) == (404, {"error": "404 Not Found"})
    assert (wrong.status_code, wrong.json()) == (405, {"error": "405 Not Allowed"})


def test_a_chunked_body_is_reported_as_a_stand_in_limit() -> None:
    with GitLabStandIn() as standin:
        with pytest.raises(requests.ConnectionError):
            requests.put(api(standin, "/packages/generic/m/1.0.0/f.bin"), data=iter([b"x"]),
                         headers=auth(standin), timeout=5)
        assert "chunked" in "".join(standin.internal_errors)
    assert standin.packages() == []


# --------------------------------------------------------------------------- merge requests


def test_merge_requests_of_a_commit(project: Project, gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.add_merge_request(3, source_branch="feature", sha=SHA)
    gitlab_standin.add_merge_request(2, source_branch="old", sha="b" * 40, commits=[SHA],
                                     state="merged")
    commit = project.commits.get(SHA, lazy=True)
    assert [(m["iid"], m["state"]) for m in commit.merge_requests()] == [
        (3, "opened"), (2, "merged")]
    assert [m["iid"] for m in commit.merge_requests(state="opened")] == [3]
    with pytest.raises(gitlab.GitlabGetError) as bad_state:
        commit.merge_requests(state="open")
    assert bad_state.value.error_message == "state does not have a valid value"


def test_unknown_commit_is_404_and_a_lone_commit_has_none(project: Project,
                                                         gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.add_commit("b" * 40)
    assert project.commits.get("b" * 40, lazy=True).merge_requests() == []
    with pytest.raises(gitlab.GitlabGetError) as caught:
        project.commits.get("c" * 40, lazy=True).merge_requests()
    assert caught.value.error_message == "404 Commit Not Found"


def test_a_merge_or_squash_commit_finds_the_merged_merge_request(
    project: Project, gitlab_standin: GitLabStandIn
) -> None:
    merge, squash = "e" * 40, "f" * 40
    gitlab_standin.add_merge_request(4, source_branch="train-x", sha=SHA, state="merged",
                                     merge_commit_sha=merge, squash_commit_sha=squash)
    gitlab_standin.add_merge_request(5, sha="d" * 40)
    for sha in (merge, squash, SHA):
        found = project.commits.get(sha, lazy=True).merge_requests(get_all=True)
        assert [(m["iid"], m["state"], m["source_branch"]) for m in found] == [
            (4, "merged", "train-x")], sha
        assert (found[0]["merge_commit_sha"], found[0]["squash_commit_sha"]) == (merge, squash)
    assert project.commits.get(merge, lazy=True).merge_requests(state="opened") == []


# --------------------------------------------------------------------------- notes


def test_notes_default_to_newest_first_and_include_system_notes(
    mr: ProjectMergeRequest, gitlab_standin: GitLabStandIn
) -> None:
    gitlab_standin.add_note(7, "added 1 commit", author="alice", system=True)
    gitlab_standin.seed_notes(7, 2, author="alice")
    assert [n.body for n in mr.notes.list(get_all=True)] == ["note 2", "note 1", "added 1 commit"]
    ascending = mr.notes.list(get_all=True, sort="asc", order_by="created_at")
    assert [n.system for n in ascending] == [True, False, False]


def test_pagination_headers_and_a_next_link_built_from_the_host(
    gitlab_standin: GitLabStandIn,
) -> None:
    gitlab_standin.add_merge_request(1)
    gitlab_standin.seed_notes(1, 45)
    by_name = gitlab_standin.url.replace("127.0.0.1", "localhost")
    response = get(gitlab_standin, f"{by_name}/api/v4/projects/42/merge_requests/1/notes",
                   params={"sort": "asc", "page": 2})
    assert [n["body"] for n in response.json()][:2] == ["note 21", "note 22"]
    headers = response.headers
    assert [headers[f"X-{h}"] for h in ("Page", "Per-Page", "Next-Page", "Total", "Total-Pages")
            ] == ["2", "20", "3", "45", "3"]
    next_url = response.links["next"]["url"]
    assert next_url.startswith(f"{by_name}/api/v4/projects/42/merge_requests/1/notes?")
    assert "sort=asc" in next_url and "page=3" in next_url
    last = get(gitlab_standin, next_url)
    assert len(last.json()) == 5
    assert last.headers["X-Next-Page"] == "" and "next" not in last.links


def test_per_page_is_capped_at_100(gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.add_merge_request(1)
    gitlab_standin.seed_notes(1, 120)
    response = get(gitlab_standin, api(gitlab_standin, "/merge_requests/1/notes"),
                   params={"per_page": 500})
    assert (len(response.json()), response.headers["X-Per-Page"]) == (100, "100")
    bad = get(gitlab_standin, api(gitlab_standin, "/merge_requests/1/notes"),
              params={"per_page": "many"})
    assert (bad.status_code, bad.json()) == (400, {"error": "per_page is invalid"})


def test_get_all_follows_link_next_past_100_notes(mr: ProjectMergeRequest,
                                                  gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.seed_notes(7, 250)
    notes = mr.notes.list(get_all=True, per_page=100)
    assert len({n.id for n in notes}) == 250
    assert len(gitlab_standin.requests_to("/notes", method="GET")) == 3


def test_create_and_update_own_note(mr: ProjectMergeRequest,
                                    gitlab_standin: GitLabStandIn) -> None:
    note = mr.notes.create({"body": "<!-- nbgate:report -->\nfirst"})
    assert note.author["id"] == gitlab_standin.user.id
    assert gitlab_standin.request_log[-1].status == 201
    note.body = "<!-- nbgate:report -->\nsecond"
    note.save()
    assert gitlab_standin.request_log[-1].status == 200
    stored = gitlab_standin.notes(7)
    assert [n.body for n in stored] == ["<!-- nbgate:report -->\nsecond"]
    assert stored[0].updated_at > stored[0].created_at


def test_someone_elses_note_can_be_neither_edited_nor_deleted(
    mr: ProjectMergeRequest, gitlab_standin: GitLabStandIn
) -> None:
    theirs = gitlab_standin.add_note(7, "mine", author="alice")
    (note,) = mr.notes.list(get_all=True)
    note.body = "hijacked"
    with pytest.raises(gitlab.GitlabUpdateError) as edit:
        note.save()
    with pytest.raises(gitlab.GitlabDeleteError) as delete:
        mr.notes.delete(theirs.id)
    assert (edit.value.response_code, delete.value.response_code) == (403, 403)
    assert [n.body for n in gitlab_standin.notes(7)] == ["mine"]


def test_delete_own_note_answers_204(mr: ProjectMergeRequest,
                                     gitlab_standin: GitLabStandIn) -> None:
    mr.notes.create({"body": "bye"}).delete()
    record = gitlab_standin.request_log[-1]
    assert (record.method, record.status, record.content_type) == (
        "DELETE", 204, "application/json")  # python-gitlab sends a JSON type even here
    assert gitlab_standin.notes(7) == []


def test_quick_action_only_body_creates_no_note(mr: ProjectMergeRequest,
                                                gitlab_standin: GitLabStandIn) -> None:
    mr.notes.create({"body": "/label ~ml\n/approve"})
    assert gitlab_standin.request_log[-1].status == 202
    assert gitlab_standin.notes(7) == []
    assert gitlab_standin.quick_actions == [(7, ["/label ~ml", "/approve"])]


def test_quick_action_lines_are_stripped_from_mixed_bodies(
    mr: ProjectMergeRequest, gitlab_standin: GitLabStandIn
) -> None:
    note = mr.notes.create({"body": "report\n/close\nmore"})
    assert note.body == "report\nmore"
    note.body = "/merge"
    note.save()  # an edit down to commands only: GitLab runs them and deletes the note
    assert gitlab_standin.quick_actions == [(7, ["/close"]), (7, ["/merge"])]
    assert gitlab_standin.notes(7) == []


def test_note_body_limit_and_missing_body(mr: ProjectMergeRequest,
                                          gitlab_standin: GitLabStandIn) -> None:
    with pytest.raises(gitlab.GitlabCreateError) as too_long:
        mr.notes.create({"body": "x" * 1_000_001})
    assert too_long.value.error_message == {
        "note": ["is too long (maximum is 1000000 characters)"]}
    mr.notes.create({"body": "x" * 1_000_000})
    with pytest.raises(gitlab.GitlabCreateError) as empty:
        mr.notes.create({"body": ""})
    assert (empty.value.response_code, empty.value.error_message) == (400, "body is empty")
    assert len(gitlab_standin.notes(7)) == 1


def test_a_job_token_reads_notes_but_cannot_write(job_gl: gitlab.Gitlab,
                                                 gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.add_merge_request(1)
    gitlab_standin.seed_notes(1, 3)
    job_mr = job_gl.projects.get(42, lazy=True).mergerequests.get(1, lazy=True)
    assert len(job_mr.notes.list(get_all=True)) == 3
    with pytest.raises(gitlab.GitlabCreateError) as caught:
        job_mr.notes.create({"body": "hi"})
    assert (caught.value.response_code, caught.value.error_message) == (403, "403 Forbidden")


def test_notes_of_an_unknown_merge_request_are_404(project: Project) -> None:
    with pytest.raises(gitlab.GitlabListError) as caught:
        project.mergerequests.get(99, lazy=True).notes.list()
    assert caught.value.error_message == "404 Merge Request Not Found"


# --------------------------------------------------------------------------- wiki


def test_wiki_get_create_update_flow(project: Project, gitlab_standin: GitLabStandIn) -> None:
    with pytest.raises(gitlab.GitlabGetError) as caught:
        project.wikis.get("Model-history")
    assert caught.value.error_message == "404 Wiki Page Not Found"
    created = project.wikis.create({"title": "Model history", "content": "| a |",
                                    "format": "markdown"})
    assert created.slug == "Model-history"
    assert gitlab_standin.request_log[-1].status == 201
    page = project.wikis.get("Model-history")
    page.content = "| b |\n| a |"
    page.save()
    assert gitlab_standin.wiki_page("Model-history").content == "| b |\n| a |"


def test_wiki_duplicate_title_is_400(project: Project, gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.add_wiki_page("Model history", "old")
    with pytest.raises(gitlab.GitlabCreateError) as caught:
        project.wikis.create({"title": "Model history", "content": "new"})
    assert (caught.value.response_code, caught.value.error_message) == (
        400, {"base": ["Duplicate page: A page with that title already exists"]})
    assert gitlab_standin.wiki_page("Model-history").content == "old"


def test_wiki_folder_slug_arrives_encoded_and_a_title_renames(
    project: Project, gitlab_standin: GitLabStandIn
) -> None:
    project.wikis.create({"title": "reports/Model history", "content": "x"})
    page = project.wikis.get("reports/Model-history")
    assert gitlab_standin.request_log[-1].path.endswith("/wikis/reports%2FModel-history")
    page.title = "reports/History"
    page.save()
    assert set(gitlab_standin.wiki_pages()) == {"reports/History"}


@pytest.mark.parametrize(("fields", "error"), [
    ({"format": "md"}, "format does not have a valid value"),
    ({"content": "x" * (5 * 1024 * 1024 + 1)},
     {"content": ["is too long (5 MiB). The maximum size is 5 MiB."]}),
])
def test_wiki_format_and_size_are_checked(project: Project, gitlab_standin: GitLabStandIn,
                                          fields: dict[str, str], error: object) -> None:
    with pytest.raises(gitlab.GitlabCreateError) as caught:
        project.wikis.create({"title": "History", "content": "x", **fields})
    assert (caught.value.response_code, caught.value.error_message) == (400, error)
    assert gitlab_standin.wiki_pages() == {}


# --------------------------------------------------------------------------- generic packages


def test_generic_package_upload_download_newest_and_list(
    project: Project, gitlab_standin: GitLabStandIn
) -> None:
    uploaded = project.generic_packages.upload("model", "1.0.0", "model.json", data=b"v1")
    assert uploaded.message == "201 Created" and gitlab_standin.request_log[-1].status == 201
    project.generic_packages.upload("model", "1.0.0", "model.json", data=b"v1-again")
    project.generic_packages.upload("model", "1.1.0", "model.json", data=b"v2")
    project.generic_packages.upload("model-extra", "9.0.0", "x.bin", data=b"x")
    assert project.generic_packages.download("model", "1.0.0", "model.json") == b"v1-again"
    newest = project.packages.list(package_type="generic", package_name="model",
                                   order_by="created_at", sort="desc", get_all=True)
    # GitLab's package_name filter is fuzzy: clients must compare names themselves.
    assert [(p.name, p.version) for p in newest] == [
        ("model-extra", "9.0.0"), ("model", "1.1.0"), ("model", "1.0.0")]


def test_package_listing_is_paged_newest_first(project: Project,
                                               gitlab_standin: GitLabStandIn) -> None:
    for n in range(1, 26):
        gitlab_standin.add_package_file("model", f"0.{n}.0", "m.bin", b"x")
    pages = project.packages.list(package_type="generic", package_name="model",
                                  order_by="created_at", sort="desc", per_page=10, iterator=True)
    assert [p.version for p in pages] == [f"0.{n}.0" for n in range(25, 0, -1)]
    assert [r.query.get("page") for r in gitlab_standin.requests_to("/packages")] == [
        None, "2", "3"]  # pages 2 and 3 come from the Link header
    with pytest.raises(gitlab.GitlabListError) as caught:
        project.packages.list(sort="newest")
    assert caught.value.error_message == "sort does not have a valid value"


def test_package_files_list_every_upload_of_one_package(
    job_gl: gitlab.Gitlab, gitlab_standin: GitLabStandIn
) -> None:
    gitlab_standin.add_package_file("model", "1.0.0", "model.json", b"first")
    gitlab_standin.add_package_file("other", "1.0.0", "other.json", b"x")
    package = gitlab_standin.add_package_file("model", "1.0.0", "model.json", b"second")
    gitlab_standin.add_package_file("model", "1.0.0", "metrics.json", b"{}")
    packages = job_gl.projects.get(42, lazy=True).packages
    listed = packages.get(package.id, lazy=True).package_files.list(get_all=True)
    assert [(f.file_name, f.size) for f in listed] == [
        ("model.json", 5), ("model.json", 6), ("metrics.json", 2)]
    assert {f.package_id for f in listed} == {package.id}
    assert listed[1].file_sha256 == hashlib.sha256(b"second").hexdigest()
    with pytest.raises(gitlab.GitlabListError) as caught:
        packages.get(999, lazy=True).package_files.list()
    assert caught.value.error_message == "404 Package Not Found"


@pytest.mark.parametrize(
    ("name", "version", "file_name", "error"),
    [
        ("my model", "1.0.0", "m.bin", "package_name is invalid"),
        ("model", "1..0", "m.bin", "package_version is invalid"),
        ("model", "1.0.0", "%2E%2E", "file_name is invalid"),
        ("model", "1.0.0", "dir%2Fm.bin", "file_name is invalid"),
    ],
)
def test_generic_package_path_validation(
    gitlab_standin: GitLabStandIn, name: str, version: str, file_name: str, error: str
) -> None:
    response = requests.put(api(gitlab_standin, f"/packages/generic/{name}/{version}/{file_name}"),
                            data=b"x", headers=auth(gitlab_standin), timeout=5)
    assert (response.status_code, response.json()) == (400, {"error": error})
    assert gitlab_standin.packages() == []


def test_package_status_is_set_by_the_upload_that_gives_one(
    project: Project, gitlab_standin: GitLabStandIn
) -> None:
    """``create_package_file_service.rb``: the first file creates the package (default), an
    upload with ``status`` sets it; the list shows displayable statuses only
    (``Package::DISPLAYABLE_STATUSES``), hidden files still download (``INSTALLABLE``)."""
    def listed() -> list[tuple[str, str]]:
        return [(p.version, p.status) for p in project.packages.list(
            package_type="generic", package_name="model", get_all=True)]

    project.generic_packages.upload("model", "1.0.0", "model.json", data=b"m", status="hidden")
    project.generic_packages.upload("model", "1.0.0", "metrics.json", data=b"{}")  # no status
    assert listed() == []
    assert project.generic_packages.download("model", "1.0.0", "model.json") == b"m"
    project.generic_packages.upload("model", "1.0.0", "manifest.json", data=b"{}",
                                    status="default")
    assert listed() == [("1.0.0", "default")]
    project.generic_packages.upload("model", "1.0.0", "late.bin", data=b"x", status="hidden")
    assert listed() == []
    with pytest.raises(gitlab.GitlabUploadError) as caught:
        project.generic_packages.upload("model", "1.0.0", "x.bin", data=b"x", status="error")
    assert (caught.value.response_code, caught.value.error_message) == (
        400, "status does not have a valid value")


def test_merge_request_commits_are_paged_newest_first(
    project: Project, gitlab_standin: GitLabStandIn
) -> None:
    shas = [f"{n:040x}" for n in range(30, 0, -1)]
    gitlab_standin.add_merge_request(7, sha=shas[0], commits=shas[1:], state="merged",
                                     merge_commit_sha="f" * 40)
    mr = project.mergerequests.get(7, lazy=True)
    assert [c.id for c in mr.commits(per_page=20)] == shas
    assert [r.query.get("page") for r in gitlab_standin.requests_to("/merge_requests/7/commits")] \
        == [None, "2"]
    merged = project.commits.get("f" * 40, lazy=True).merge_requests()
    assert merged[0]["merged_at"] and merged[0]["iid"] == 7
    with pytest.raises(gitlab.GitlabListError) as caught:
        list(project.mergerequests.get(8, lazy=True).commits())
    assert caught.value.response_code == 404


def test_duplicate_package_files_can_be_disallowed() -> None:
    with GitLabStandIn(allow_duplicate_packages=False) as standin:
        url = api(standin, "/packages/generic/model/1.0.0/m.bin")
        first = requests.put(url, data=b"a", headers=auth(standin), timeout=5)
        second = requests.put(url, data=b"b", headers=auth(standin), timeout=5)
        assert (first.status_code, second.status_code) == (201, 400)
        assert second.json() == {"message": "Duplicate package is not allowed"}
        assert standin.package_file("model", "1.0.0", "m.bin") == b"a"


def test_a_job_token_uploads_and_downloads_packages(job_gl: gitlab.Gitlab) -> None:
    job_project = job_gl.projects.get(42, lazy=True)
    job_project.generic_packages.upload("model", "2.0.0", "m.bin", data=b"\x00\x01")
    assert job_project.generic_packages.download("model", "2.0.0", "m.bin") == b"\x00\x01"
    for version, file_name, message in (("3.0.0", "m.bin", "404 Package Not Found"),
                                        ("2.0.0", "n.bin", "404 Package file Not Found")):
        with pytest.raises(gitlab.GitlabGetError) as caught:
            job_project.generic_packages.download("model", version, file_name)
        assert caught.value.error_message == message


# --------------------------------------------------------------------------- uploads


def test_twine_uploads_to_the_pypi_registry_with_the_job_token_as_basic_auth(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    """The real twine, as the tag pipeline's publish-package job runs it: user gitlab-ci-token,
    the job token as password, one POST per file to /projects/:id/packages/pypi."""
    wheel = tmp_path / "demo-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo/__init__.py", "")
        archive.writestr("demo-1.0.0.dist-info/METADATA",
                         "Metadata-Version: 2.1\nName: demo\nVersion: 1.0.0\n")
        archive.writestr("demo-1.0.0.dist-info/WHEEL",
                         "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("demo-1.0.0.dist-info/RECORD", "")

    def twine(user: str, password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).with_name("twine")), "upload", "--non-interactive",
             "--disable-progress-bar", "--repository-url",
             f"{gitlab_standin.api_url}/projects/{gitlab_standin.project_id}/packages/pypi",
             str(wheel)], capture_output=True, text=True, timeout=60,
            env={**os.environ, "TWINE_USERNAME": user, "TWINE_PASSWORD": password})

    assert twine("gitlab-ci-token", "not-the-token").returncode != 0
    done = twine("gitlab-ci-token", gitlab_standin.job_token)
    assert done.returncode == 0, done.stdout + done.stderr
    (package,) = [p for p in gitlab_standin.packages() if p.package_type == "pypi"]
    assert (package.name, package.version) == ("demo", "1.0.0")
    assert [f.file_name for f in package.files] == [wheel.name]
    assert package.files[0].data == wheel.read_bytes()
    posts = gitlab_standin.requests_to("/packages/pypi", "POST")
    assert posts[-1].token_header == "Authorization" and posts[-1].token_kind == "job"
    # A personal or project token works as Basic too; Basic elsewhere is no token at all.
    assert twine("anyone", gitlab_standin.private_token).returncode == 0
    basic = requests.get(api(gitlab_standin, "/packages"), timeout=5,
                         auth=("gitlab-ci-token", gitlab_standin.job_token))
    assert basic.status_code == 401
    missing = requests.post(api(gitlab_standin, "/packages/pypi"), timeout=5,
                            auth=("gitlab-ci-token", gitlab_standin.job_token),
                            files={"name": (None, "demo")})
    assert missing.status_code == 400 and missing.json() == {"error": "content is missing"}


def test_project_upload_returns_markdown_and_keeps_bytes(
    project: Project, gitlab_standin: GitLabStandIn
) -> None:
    png = b"\x89PNG\r\n\x1a\n\r\n\x00binary\r\n"
    result = project.upload("f.png", filedata=png)
    secret = result["url"].split("/")[2]
    assert result["url"] == f"/uploads/{secret}/f.png" and len(secret) == 32
    assert (result["markdown"], result["alt"]) == (f"![f]({result['url']})", "f")
    assert gitlab_standin.request_log[-1].status == 201
    assert gitlab_standin.uploads()[0].data == png
    assert project.upload("t.txt", filedata=b"t")["markdown"].startswith("[t.txt](/uploads/")


def test_upload_needs_a_file_and_a_private_token(job_gl: gitlab.Gitlab,
                                                 gitlab_standin: GitLabStandIn) -> None:
    response = requests.post(api(gitlab_standin, "/uploads"), files={"avatar": ("a.png", b"a")},
                             headers=auth(gitlab_standin), timeout=5)
    assert (response.status_code, response.json()) == (400, {"error": "file is missing"})
    with pytest.raises(gitlab.GitlabUploadError) as caught:
        job_gl.projects.get(42, lazy=True).upload("f.png", filedata=b"x")
    assert caught.value.response_code == 403
    assert gitlab_standin.uploads() == []


# --------------------------------------------------------------------------- faults


def test_429_with_integer_retry_after_is_retried(mr: ProjectMergeRequest,
                                                 gitlab_standin: GitLabStandIn) -> None:
    fault = gitlab_standin.fail_next(2, 429, path_contains="/notes", retry_after=0)
    mr.notes.create({"body": "after rate limit"})
    assert fault.hits == 2
    assert [(r.status, r.fault) for r in gitlab_standin.requests_to("/notes")] == [
        (429, "status"), (429, "status"), (201, None)]
    assert len(gitlab_standin.notes(7)) == 1


def test_429_carries_an_integer_retry_after(gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.fail_next(1, 429)
    response = requests.get(f"{gitlab_standin.api_url}/user", timeout=5)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "0")
    assert response.json() == {"message": "429 Too Many Requests"}


def test_5xx_fails_without_retry_and_recovers_with_it(gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.add_merge_request(1)

    def notes(**options: bool) -> list[object]:
        client = gitlab.Gitlab(gitlab_standin.url, private_token=gitlab_standin.private_token,
                               timeout=5, **options)
        return client.projects.get(42, lazy=True).mergerequests.get(1, lazy=True).notes.list()

    gitlab_standin.fail_next(1, 502, path_contains="/merge_requests/1")
    with pytest.raises(gitlab.GitlabListError) as caught:
        notes()
    assert caught.value.response_code == 502
    fault = gitlab_standin.fail_next(2, 503, path_contains="/merge_requests/1")
    assert notes(retry_transient_errors=True) == []
    assert fault.hits == 2


def test_a_401_fault_raises_the_authentication_error(gl: gitlab.Gitlab,
                                                     gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.fail_next(1, 401, path_contains="/user")
    with pytest.raises(gitlab.GitlabAuthenticationError):
        gl.auth()
    gl.auth()
    assert [r.status for r in gitlab_standin.requests_to("/user")] == [401, 200]


def test_faults_match_path_and_method(gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.fail_next(1, 500, path_contains="/wikis", method="POST")
    assert get(gitlab_standin, api(gitlab_standin, "/wikis/a")).status_code == 404
    other = requests.post(api(gitlab_standin, "/uploads"), headers=auth(gitlab_standin), timeout=5)
    assert other.status_code == 400  # a POST, but not to /wikis
    created = requests.post(api(gitlab_standin, "/wikis"), json={"title": "a", "content": "b"},
                            headers=auth(gitlab_standin), timeout=5)
    assert created.status_code == 500
    assert gitlab_standin.wiki_pages() == {}


def test_a_dropped_connection_surfaces_as_a_connection_error(
    gitlab_standin: GitLabStandIn,
) -> None:
    fault = gitlab_standin.drop_next(1, path_contains="/user")
    with pytest.raises(requests.ConnectionError):
        get(gitlab_standin, f"{gitlab_standin.api_url}/user")
    assert get(gitlab_standin, f"{gitlab_standin.api_url}/user").status_code == 200
    assert fault.hits == 1
    assert [(r.status, r.fault) for r in gitlab_standin.requests_to("/user")] == [
        (None, "drop"), (200, None)]


def test_a_dropped_connection_is_retried_by_python_gitlab(gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.add_merge_request(1)
    gitlab_standin.drop_next(1, path_contains="/notes")
    client = gitlab.Gitlab(gitlab_standin.url, private_token=gitlab_standin.private_token,
                           timeout=5, retry_transient_errors=True)
    client.projects.get(42, lazy=True).mergerequests.get(1, lazy=True).notes.create(
        {"body": "once"})
    assert [n.body for n in gitlab_standin.notes(1)] == ["once"]
    assert len(gitlab_standin.requests_to("/notes", method="POST")) == 2


def test_a_delay_makes_a_short_timeout_fire(gitlab_standin: GitLabStandIn) -> None:
    gitlab_standin.delay_next(1, 1.0, path_contains="/user")
    with pytest.raises(requests.Timeout):
        requests.get(f"{gitlab_standin.api_url}/user", headers=auth(gitlab_standin), timeout=0.2)
    assert get(gitlab_standin, f"{gitlab_standin.api_url}/user").json()["username"] == "nbgate-bot"


def test_fail_next_takes_only_error_statuses(gitlab_standin: GitLabStandIn) -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        gitlab_standin.fail_next(1, 200)


# -- what `nbgate doctor` reads -----------------------------------------------------------------


def test_version_token_and_project_answer_in_gitlabs_shapes(
    gl: gitlab.Gitlab, gitlab_standin: GitLabStandIn
) -> None:
    """doc/api/version.md, doc/api/personal_access_tokens.md ("Self-inform"),
    doc/api/projects.md ("Get a single project": packages_enabled, wiki_access_level,
    permissions)."""
    assert gl.http_get("/version") == {"version": "17.5.1-ee", "revision": "0a1b2c3d"}
    own = gl.http_get("/personal_access_tokens/self")
    assert isinstance(own, dict)
    assert set(own) == {"id", "name", "revoked", "created_at", "description", "scopes",
                        "user_id", "last_used_at", "active", "expires_at"}
    assert (own["scopes"], own["active"], own["user_id"]) == (["api"], True, 1)
    project = gl.projects.get(42).attributes
    assert project["path_with_namespace"] == "group/project"
    assert (project["packages_enabled"], project["wiki_enabled"],
            project["wiki_access_level"]) == (True, True, "enabled")
    assert project["permissions"] == {
        "project_access": {"access_level": 40, "notification_level": 3}, "group_access": None}


def test_a_job_token_is_not_taken_where_gitlab_does_not_list_it(
    job_gl: gitlab.Gitlab, gitlab_standin: GitLabStandIn
) -> None:
    """doc/ci/jobs/ci_job_token.md, "Job token access": not /version, not the token endpoint,
    not the project itself (GitLab then sees no user: 401). The commit's merge requests: only
    on GitLab from 2025 (job_token_allowed in lib/api/commits.rb), older ones answer 404."""
    for path in ("/version", "/personal_access_tokens/self", "/projects/42"):
        with pytest.raises(gitlab.GitlabAuthenticationError):
            job_gl.http_get(path)
    gitlab_standin.add_merge_request(3, sha=SHA)
    commit = job_gl.projects.get(42, lazy=True).commits.get(SHA, lazy=True)
    with pytest.raises(gitlab.GitlabGetError) as caught:
        commit.merge_requests()
    assert (caught.value.response_code, caught.value.error_message) == (
        404, "404 Project Not Found")
    gitlab_standin.job_token_lists_commit_merge_requests = True
    assert [mr["iid"] for mr in commit.merge_requests()] == [3]


def test_a_disabled_package_registry_forbids_package_calls(
    job_gl: gitlab.Gitlab, gitlab_standin: GitLabStandIn
) -> None:
    gitlab_standin.packages_enabled = False
    packages = job_gl.projects.get(42, lazy=True).packages
    with pytest.raises(gitlab.GitlabListError) as caught:
        packages.list(get_all=True)
    assert caught.value.response_code == 403
