"""A model's packages in GitLab's generic package registry: candidates and releases.

- A **release** is what production scores: package ``<pipeline>`` (the notebook's stem), version
  ``<semver>+<sha8>.<pipeline id>`` (``1.0.0+89abcdef.990``; without a declared ``version`` just
  ``<sha8>.<pipeline id>``). It is uploaded from the default branch, or by ``nbgate promote``.
- A **candidate** is what a merge request trained: package ``<pipeline>-candidate``, version
  ``<semver>-mr<iid>.<branch>+<sha8>.<pipeline id>`` (``1.0.0-mr7.feature-x+01234567.1002``), so
  its version says which branch and merge request it came from. Scoring never picks one up by
  itself: only ``fetch-artifact --version`` naming it does.

Each package version holds the pipeline's declared outputs, ``metrics.json`` (the metrics of
that pipeline's cases, with the package named in it) and the ``requirements.txt`` lock. GitLab
cannot rename or move a version's files, so promotion uploads the candidate's files again, byte
for byte, as a release whose version carries the candidate's build (``+<sha8>.<pipeline>``): the
version says which candidate it was, and a second promotion finds it already there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import PurePosixPath

from nbgate.contract.ci_context import CIContext
from reporting.errors import PublishError, PublishUsageError
from reporting.gitlab_client import GitLabSession

CANDIDATE_SUFFIX = "-candidate"
METRICS_FILE = "metrics.json"
LOCK_FILE = "requirements.txt"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_BRANCH_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")
_VERSION = re.compile(r"^[\w+.-]+$")
_MR = re.compile(r"-mr(\d+)\.")


def package_name(name: str) -> str:
    """A pipeline name (or notebook path) as a generic package name."""
    stem = PurePosixPath(name.replace("\\", "/")).name.removesuffix(".ipynb")
    return _UNSAFE.sub("_", stem).strip("._") or "model"


def candidate_package(name: str) -> str:
    return package_name(name) + CANDIDATE_SUFFIX


def build_of(ctx: CIContext) -> str | None:
    """``<sha8>.<pipeline id>``: which commit and pipeline made the files."""
    short = ctx.commit_short_sha or (ctx.commit_sha or "")[:8] or None
    core = ".".join(p for p in (short, ctx.pipeline_id) if p)
    return core or None


def release_version(build: str, semver: str | None) -> str:
    return f"{semver}+{build}" if semver else build


def candidate_version(build: str, semver: str | None, mr_iid: str | None, branch: str | None) \
        -> str:
    where = ".".join(p for p in (f"mr{mr_iid}" if mr_iid else None,
                                 _BRANCH_UNSAFE.sub("-", branch or "").strip("-")[:40] or None)
                     if p) or "branch"
    return f"{semver or '0.0.0'}-{where}+{build}"


def build_part(version: str) -> str:
    """The ``<sha8>.<pipeline>`` a version was built from (what a release and its candidate
    share)."""
    return version.rsplit("+", 1)[-1]


def semver_part(version: str) -> str | None:
    """The declared semantic version of a candidate or release version, if it has one."""
    if "+" not in version:
        return None
    head = version.rsplit("+", 1)[0]
    return head.split("-mr", 1)[0] if _MR.search(head + ".") else head


def mr_of(version: str) -> str | None:
    """The merge request a candidate version names."""
    match = _MR.search(version.split("+", 1)[0] + ".")
    return match.group(1) if match else None


def check_version(version: str) -> str:
    if not _VERSION.match(version) or ".." in version:
        raise PublishUsageError(f"version {version!r} is not valid for a generic package: "
                                "use letters, digits, '.', '_', '+' and '-'")
    return version


@dataclass(frozen=True)
class PackageVersion:
    name: str
    version: str
    package_id: int


class Registry:
    """The project's generic packages, through one GitLab session."""

    def __init__(self, session: GitLabSession) -> None:
        self.session = session

    def versions(self, name: str) -> list[PackageVersion]:
        """Every version of package ``name``, newest first (GitLab filters names loosely, so
        they are compared exactly here)."""
        path = f"/packages?package_type=generic&package_name={name}&order_by=created_at&sort=desc"

        def listing() -> list[PackageVersion]:
            found = []
            for package in self.session.project.packages.list(
                    package_type="generic", package_name=name, order_by="created_at",
                    sort="desc", per_page=100, iterator=True):
                if package.name == name:
                    found.append(PackageVersion(name, str(package.version), int(package.id)))
            return found

        return self.session.call(self.session.endpoint("GET", path), listing)

    def files(self, package: PackageVersion) -> list[str]:
        """The file names in one package version (each once, in upload order)."""
        path = f"/packages/{package.package_id}/package_files"

        def listing() -> list[str]:
            names: list[str] = []
            pkg = self.session.project.packages.get(package.package_id, lazy=True)
            for item in pkg.package_files.list(per_page=100, iterator=True):
                if item.file_name not in names:
                    names.append(str(item.file_name))
            return names

        return self.session.call(self.session.endpoint("GET", path), listing)

    def download(self, name: str, version: str, file_name: str) -> bytes:
        where = f"/packages/generic/{name}/{version}/{file_name}"
        hints = {404: f"{name} {version} has no file {file_name!r}, or the token cannot read "
                      "the package registry"}
        return self.session.call(self.session.endpoint("GET", where),
                                 partial(self._download, name, version, file_name), hints)

    def _download(self, name: str, version: str, file_name: str) -> bytes:
        # Not streamed: the whole body is read inside python-gitlab's request, so a connection
        # reset mid-download is retried like any other transient error.
        data = self.session.project.generic_packages.download(name, version, file_name)
        return data if isinstance(data, bytes) else bytes(data or b"")

    def upload(self, name: str, version: str, file_name: str, data: bytes) -> None:
        where = f"/packages/generic/{name}/{version}/{file_name}"
        send = partial(self.session.project.generic_packages.upload, name, version, file_name,
                       data=data)
        self.session.call(self.session.endpoint("PUT", where), send, self.hints())

    def hints(self) -> dict[int, str]:
        return {
            403: f"the token in {self.session.token.source} may not publish packages; it needs "
                 "the api scope and the Developer role, and the package registry must be enabled",
            400: "GitLab refused the file (duplicate packages disallowed, or a name/version it "
                 "rejects); publish from a new pipeline or pass another --version",
        }

    def newest_release(self, name: str) -> PackageVersion | None:
        versions = self.versions(package_name(name))
        return versions[0] if versions else None


def no_release(name: str, endpoint: str) -> PublishError:
    return PublishError(
        None, endpoint,
        f"there is no release of {package_name(name)!r} yet: a release is published by "
        "`nbgate publish artifacts` from the default branch (a scheduled or `train <notebook>` "
        "pipeline on it), or by `nbgate promote` when a merge request with a passing candidate "
        "is merged", "no release")
