"""Seeding the stand-in's package registry the way nbgate publishes: every file hidden, then a
valid ``nbgate-manifest.json`` with status ``default`` (``reporting.gitlab.packages``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nbgate.contract.ci_context import CIContext
from reporting.gitlab.manifest import MANIFEST_FILE, CandidateRef, ManifestCase, build_manifest
from tests.support.gitlab_standin import GitLabStandIn

WEB = "https://gitlab.example.com/group/project"


def seed_version(
    standin: GitLabStandIn,
    package: str,
    version: str,
    files: Mapping[str, bytes],
    *,
    commit: str = "0" * 40,
    ref: str = "main",
    pipeline: str = "1",
    release: bool | None = None,
    cases: Sequence[ManifestCase] = (),
    mr_iid: str | None = None,
    candidate: CandidateRef | None = None,
    merged_at: str | None = None,
    manifest: bool = True,
) -> None:
    """A version holding ``files``; ``manifest=False`` leaves it half made (hidden)."""
    for name, data in files.items():
        standin.add_package_file(package, version, name, data, status="hidden")
    if not manifest:
        return
    made_by = CIContext(ci=True, ref=ref, commit_sha=commit, pipeline_id=pipeline,
                        pipeline_url=f"{WEB}/-/pipelines/{pipeline}", job_id=f"{pipeline}0",
                        job_url=f"{WEB}/-/jobs/{pipeline}0")
    document = build_manifest(
        package, version, files, release=not package.endswith("-candidate")
        if release is None else release, made_by=made_by, image="python:3.11", mr_iid=mr_iid,
        cases=cases, candidate=candidate, merged_at=merged_at)
    standin.add_package_file(package, version, MANIFEST_FILE, document.dumps(), status="default")
