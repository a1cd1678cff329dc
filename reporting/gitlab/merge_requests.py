"""Which merge request a commit belongs to, and which candidates belong to a merge request.

A candidate belongs to !N by evidence only: the commit its manifest records is one of !N's
commits (``GET /projects/:id/merge_requests/:iid/commits``). The version text
(``1.0.0-mr7.feature+…``) is for people; a branch named ``backport-mr7`` proves nothing, and an
MR opened after the push still finds the candidates its commits made.
"""

from __future__ import annotations

from typing import Any

from nbgate.contract.ci_context import CIContext
from reporting.errors import PublishError
from reporting.gitlab.client import JOB_TOKEN_MERGE_REQUESTS, GitLabSession
from reporting.gitlab.packages import Complete, Registry


def merge_request_of(session: GitLabSession | None, ctx: CIContext) -> str | None:
    """The merge request a branch pipeline trains for: from the MR pipeline's variables, the
    branch pipeline's list of open MRs, or GitLab's MRs of the commit."""
    if ctx.merge_request_iid:
        return ctx.merge_request_iid
    listed = ctx.open_merge_request_of_this_project()
    if listed:
        return listed
    if session is None or not ctx.commit_sha:
        return None
    endpoint = session.endpoint("GET", f"/repository/commits/{ctx.commit_sha}/merge_requests")
    commit = session.project.commits.get(ctx.commit_sha, lazy=True)
    try:
        mrs = session.call(endpoint, lambda: commit.merge_requests(state="opened", get_all=True))
    except PublishError as exc:
        # 404: a commit GitLab does not know has no merge request; 403: a job token may not
        # list them (the candidate's manifest then names no MR; promote finds it by commit).
        if exc.status in (403, 404):
            return None
        raise
    iids = [int(mr["iid"]) for mr in mrs if isinstance(mr, dict) and "iid" in mr]
    return str(max(iids)) if iids else None


def merged_request(session: GitLabSession, sha: str) -> dict[str, Any] | None:
    """The merge request that commit ``sha`` merged (merge commit, squash commit, or the MR's
    head for a fast-forward merge), or None."""
    endpoint = session.endpoint("GET", f"/repository/commits/{sha}/merge_requests")
    try:
        found = session.call(endpoint, lambda: list(
            session.project.commits.get(sha, lazy=True).merge_requests(get_all=True)))
    except PublishError as exc:
        if exc.status == 404 and not session.token.can_write:
            raise PublishError(404, endpoint, f"{JOB_TOKEN_MERGE_REQUESTS}; set REPO_TOKEN "
                               "(scope api, role Developer) for this job", exc.detail) from None
        raise
    merged = [mr for mr in found if mr.get("state") == "merged"]
    for mr in merged:
        if sha in (mr.get("merge_commit_sha"), mr.get("squash_commit_sha"), mr.get("sha")):
            return mr
    return merged[0] if merged else None


def mr_commits(session: GitLabSession, iid: str) -> set[str]:
    """Every commit of merge request ``iid`` (all pages)."""
    endpoint = session.endpoint("GET", f"/merge_requests/{iid}/commits")
    mr = session.project.mergerequests.get(int(iid), lazy=True)
    return session.call(endpoint, lambda: {str(c.id) for c in mr.commits(per_page=100)})


def candidates_of(registry: Registry, package: str, commits: set[str]) -> list[Complete]:
    """The complete candidates in ``package`` made from one of ``commits``, newest first."""
    return [c for c in registry.complete(package) if c.manifest.commit in commits]
