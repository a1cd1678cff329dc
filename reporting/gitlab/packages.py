"""A model's packages in GitLab's generic package registry: candidates and releases.

- A **release** is what production scores: package ``<notebook path>`` (``notebooks/train.ipynb``
  -> ``notebooks-train``, ``nbgate.contract.names``), version ``<semver>+<sha8>.<pipeline id>``
  (``1.0.0+89abcdef.990``; without a declared ``version`` just ``<sha8>.<pipeline id>``). It is
  uploaded from the default branch, or by ``nbgate promote``.
- A **candidate** is what a merge request trained: package ``<release package>-candidate``,
  version ``<semver>-mr<iid>.<branch>+<sha8>.<pipeline id>``. The version text is for people;
  which MR a candidate belongs to is decided by its manifest's commit
  (``reporting.gitlab.promote``).

Each version holds the pipeline's declared outputs, ``metrics.json``, the ``requirements.txt`` lock,
and last ``nbgate-manifest.json`` (``reporting.gitlab.manifest``). Every file but the manifest is
uploaded with ``status=hidden`` and the manifest with ``status=default``: GitLab creates the package
on the first file and sets its status from each upload that gives one
(``app/services/packages/generic/create_package_file_service.rb``), and the list shows only
displayable statuses (``DISPLAYABLE_STATUSES`` in ``app/models/packages/package.rb``), while
hidden files still download (``INSTALLABLE_STATUSES``). So a version appears whole, or not at
all; a version without a valid manifest (older nbgate, or made by hand) is skipped by readers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial

from nbgate.contract.ci_context import CIContext
from nbgate.contract.names import candidate_package, package_name, version_problem
from reporting.errors import PublishError, PublishUsageError, VerificationError
from reporting.gitlab.client import GitLabSession
from reporting.gitlab.manifest import MANIFEST_FILE, Manifest, ManifestError

METRICS_FILE = "metrics.json"
LOCK_FILE = "requirements.txt"
RESERVED_FILES = (METRICS_FILE, LOCK_FILE, MANIFEST_FILE)
_BRANCH_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")

__all__ = ["candidate_package", "package_name"]


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


def check_version(version: str) -> str:
    problem = version_problem(version)
    if problem is not None:
        raise PublishUsageError(problem)
    return version


@dataclass(frozen=True)
class PackageVersion:
    name: str
    version: str
    package_id: int


@dataclass(frozen=True)
class Complete:
    """A version whose manifest was read and is valid."""

    package: PackageVersion
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.package.name

    @property
    def version(self) -> str:
        return self.package.version


class Registry:
    """The project's generic packages, through one GitLab session."""

    def __init__(self, session: GitLabSession) -> None:
        self.session = session

    def versions(self, name: str) -> list[PackageVersion]:
        """Every visible version of package ``name``, newest first (GitLab filters names
        loosely, so they are compared exactly here)."""
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

    def upload(self, name: str, version: str, file_name: str, data: bytes, status: str) -> None:
        where = f"/packages/generic/{name}/{version}/{file_name}?status={status}"
        send = partial(self.session.project.generic_packages.upload, name, version, file_name,
                       data=data, status=status)
        self.session.call(self.session.endpoint("PUT", where), send, self.hints())

    def hints(self) -> dict[int, str]:
        return {
            403: f"the token in {self.session.token.source} may not publish packages; it needs "
                 "the api scope and the Developer role, and the package registry must be enabled",
            400: "GitLab refused the file (duplicate packages disallowed, or a name/version it "
                 "rejects); publish from a new pipeline or pass another --version",
        }

    # -- complete versions ---------------------------------------------------------------

    def manifest(self, package: PackageVersion) -> Manifest | None:
        """The version's manifest; None when it has none or an invalid one (not complete)."""
        try:
            data = self.download(package.name, package.version, MANIFEST_FILE)
        except PublishError as exc:
            if exc.status == 404 and "project" not in exc.detail.lower():
                return None
            raise
        try:
            manifest = Manifest.loads(data, f"{package.name} {package.version}")
        except ManifestError:
            return None
        if (manifest.package, manifest.version) != (package.name, package.version):
            return None  # a manifest copied from another version describes other files
        return manifest

    def complete(self, name: str) -> Iterator[Complete]:
        """The complete versions of package ``name``, newest first."""
        for package in self.versions(name):
            manifest = self.manifest(package)
            if manifest is not None:
                yield Complete(package, manifest)

    def newest_release(self, notebook: str) -> Complete | None:
        """Production: the newest complete release of a notebook's package."""
        return next(self.complete(package_name(notebook)), None)

    def find(self, name: str, version: str) -> Complete | None:
        return next((c for c in self.complete(name) if c.version == version), None)

    # -- writing and reading whole versions ----------------------------------------------

    def publish(self, files: Mapping[str, bytes], manifest: Manifest) -> None:
        """Upload ``files`` hidden, then the manifest, which makes the version visible. A
        rerun after a failure midway uploads them again into the same version: GitLab serves
        the newest file of a name, and the manifest still comes last."""
        for file_name, data in files.items():
            self.upload(manifest.package, manifest.version, file_name, data, "hidden")
        self.upload(manifest.package, manifest.version, MANIFEST_FILE, manifest.dumps(),
                    "default")

    def fetch(self, complete: Complete, names: list[str] | None = None) -> dict[str, bytes]:
        """The named files (default: all) of a complete version, each checked against the
        manifest. A file that does not match is an error naming it, never a skip."""
        manifest = complete.manifest
        wanted = names if names is not None else [f.name for f in manifest.files]
        found: dict[str, bytes] = {}
        for file_name in wanted:
            entry = manifest.file(file_name)
            if entry is None:
                raise PublishUsageError(
                    f"{complete.name} {complete.version} has no file {file_name!r}; its "
                    f"manifest lists {', '.join(f.name for f in manifest.files) or 'none'}")
            data = self.download(complete.name, complete.version, file_name)
            problem = entry.problem(data)
            if problem is not None:
                raise tampered(self.session, complete, problem)
            found[file_name] = data
        return found


def tampered(session: GitLabSession, complete: Complete, problem: str) -> VerificationError:
    name, version = complete.name, complete.version
    return VerificationError(
        session.endpoint("GET", f"/packages/generic/{name}/{version}/"),
        f"{name} {version}: {problem}; refused: the file is not the one published with this "
        "version (changed or cut short since), so nothing was written")


def no_release(notebook: str, endpoint: str) -> PublishError:
    return PublishError(
        None, endpoint,
        f"there is no release of {package_name(notebook)!r} yet: a release is published by "
        "`nbgate publish artifacts` from the default branch (a scheduled or `train <notebook>` "
        "pipeline on it), or by `nbgate promote` when a merge request with a passing candidate "
        "is merged", "no release")
