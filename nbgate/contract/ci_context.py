"""The GitLab CI context of a run, read from the predefined CI variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CIContext:
    ci: bool = False
    api_url: str | None = None  # CI_API_V4_URL
    server_url: str | None = None
    project_id: str | None = None
    project_path: str | None = None
    project_url: str | None = None
    default_branch: str | None = None
    ref: str | None = None  # CI_COMMIT_REF_NAME
    commit_sha: str | None = None
    commit_short_sha: str | None = None
    commit_title: str | None = None
    pipeline_id: str | None = None
    pipeline_iid: str | None = None
    pipeline_url: str | None = None
    pipeline_source: str | None = None
    job_id: str | None = None
    job_name: str | None = None
    job_url: str | None = None
    merge_request_iid: str | None = None
    open_merge_requests: str | None = None  # CI_OPEN_MERGE_REQUESTS, "group/project!iid,..."

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CIContext:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        sha = get("CI_COMMIT_SHA")
        return cls(
            ci=bool(get("CI") or get("GITLAB_CI")),
            api_url=get("CI_API_V4_URL"),
            server_url=get("CI_SERVER_URL"),
            project_id=get("CI_PROJECT_ID"),
            project_path=get("CI_PROJECT_PATH"),
            project_url=get("CI_PROJECT_URL"),
            default_branch=get("CI_DEFAULT_BRANCH"),
            ref=get("CI_COMMIT_REF_NAME"),
            commit_sha=sha,
            commit_short_sha=get("CI_COMMIT_SHORT_SHA") or (sha[:8] if sha else None),
            commit_title=get("CI_COMMIT_TITLE"),
            pipeline_id=get("CI_PIPELINE_ID"),
            pipeline_iid=get("CI_PIPELINE_IID"),
            pipeline_url=get("CI_PIPELINE_URL"),
            pipeline_source=get("CI_PIPELINE_SOURCE"),
            job_id=get("CI_JOB_ID"),
            job_name=get("CI_JOB_NAME"),
            job_url=get("CI_JOB_URL"),
            merge_request_iid=get("CI_MERGE_REQUEST_IID"),
            open_merge_requests=get("CI_OPEN_MERGE_REQUESTS"),
        )

    def open_merge_request_of_this_project(self) -> str | None:
        """The first iid in CI_OPEN_MERGE_REQUESTS ("group/project!7,upstream/project!12") whose
        project is this one (CI_PROJECT_PATH). A fork's branch lists the upstream project's MR,
        whose iid means nothing here; without CI_PROJECT_PATH nothing can be told apart."""
        if not self.project_path:
            return None
        for entry in (self.open_merge_requests or "").split(","):
            project, _, iid = entry.strip().rpartition("!")
            if iid.isdigit() and project == self.project_path:
                return iid
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CIContext:
        data = data or {}
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})
