"""``nbgate publish artifacts`` and ``nbgate fetch-artifact``: a pipeline's model files in GitLab's
generic package registry, as a candidate (from a merge request's branch) or a release (from the
default branch). Naming and versions: ``reporting.packages``.

- A package version holds the declared ``outputs``, ``metrics.json`` (that pipeline's cases) and
  the ``requirements.txt`` lock: what the model needs to be reviewed, scored and rebuilt.
- Only a pipeline whose cases all passed (skips aside) is published: a failed gate publishes no
  model. A declared output that is missing after a passing run is an error (exit 2).
- Fetching takes the newest release; a candidate only when ``--version`` names it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import dumps_metrics, metrics_document
from nbgate.contract.files import display_path, write_bytes_atomic
from nbgate.contract.model import CaseResult
from reporting.errors import PublishError, PublishSkipped, PublishUsageError
from reporting.gitlab_client import (
    JOB_TOKEN_MERGE_REQUESTS,
    GitLabSession,
    connect,
    connect_unless_dry_run,
)
from reporting.packages import (
    CANDIDATE_SUFFIX,
    LOCK_FILE,
    METRICS_FILE,
    Registry,
    build_of,
    candidate_package,
    candidate_version,
    check_version,
    mr_of,
    no_release,
    package_name,
    release_version,
)
from reporting.reports_folder import RunReports, load_reports

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Declared:
    """A pipeline as ``[tool.nbgate.pipelines]`` declares it: what it publishes."""

    notebook: str
    kind: str
    outputs: tuple[str, ...] = ()
    version: str | None = None


@dataclass
class Upload:
    package: str
    version: str
    files: dict[str, bytes] = field(default_factory=dict)  # file name -> content
    shown: dict[str, str] = field(default_factory=dict)  # file name -> where it came from
    release: bool = False


def is_default_branch(ctx: CIContext) -> bool:
    return bool(ctx.ref and ctx.default_branch and ctx.ref == ctx.default_branch)


def plan_uploads(
    runs: Sequence[RunReports],
    declared: Sequence[Declared],
    root: Path,
    env_ctx: CIContext,
    *,
    kind: str | None = None,
    version: str | None = None,
    mr_iid: Callable[[], str | None] = lambda: None,
    echo: Echo = print,
) -> list[Upload]:
    """What to upload: per pipeline in the reports, its declared outputs, its metrics and the
    lock, if its cases passed. Raises PublishSkipped saying why when there is nothing to do.
    ``mr_iid`` finds the merge request a candidate is for; it is asked once, when needed."""
    groups: dict[tuple[str, str], list[tuple[RunReports, CaseResult]]] = {}
    for run in runs:
        for result in run.results:
            if result.declared and (kind is None or result.kind == kind):
                groups.setdefault((result.notebook, result.kind), []).append((run, result))
    uploads, held = [], []
    release = is_default_branch(env_ctx)
    for (notebook, case_kind), found in groups.items():
        results = [r for _, r in found]
        pipeline = next((p for p in declared if p.notebook == notebook and p.kind == case_kind),
                        None)
        outputs = list(pipeline.outputs) if pipeline else sorted(
            {o for r in results for o in r.outputs})
        name = package_name(notebook)
        if not outputs:
            continue
        failed = [r.case_id for r in results if r.outcome == "failed"]
        if failed:
            held.append(f"not publishing {name}: {len(failed)} case(s) failed "
                        f"({', '.join(failed)}); a failed gate publishes no model")
            continue
        if not any(r.outcome == "passed" for r in results):
            held.append(f"not publishing {name}: every case was skipped")
            continue
        upload = Upload(name if release else candidate_package(notebook), "", release=release)
        for output in outputs:
            path = root / output
            if not path.is_file():
                raise PublishUsageError(
                    f"{notebook} declares output {output!r}, but {path} does not exist: the "
                    "training job must write it and keep it as an artifact")
            if path.name in upload.files or path.name in (METRICS_FILE, LOCK_FILE):
                raise PublishUsageError(f"{notebook}: outputs {outputs} share a file name (or "
                                        f"use {METRICS_FILE}/{LOCK_FILE}); a package holds "
                                        "files by name")
            upload.files[path.name] = path.read_bytes()
            upload.shown[path.name] = display_path(path, root)
        ctx = _run_ctx(found, env_ctx)
        upload.files[METRICS_FILE] = dumps_metrics(metrics_document(
            results, pipeline=ctx)).encode("utf-8")
        upload.shown[METRICS_FILE] = f"the metrics of {len(results)} case(s)"
        lock = root / LOCK_FILE
        if lock.is_file():
            upload.files[LOCK_FILE] = lock.read_bytes()
            upload.shown[LOCK_FILE] = display_path(lock, root)
        semver = pipeline.version if pipeline else None
        build = build_of(env_ctx) or build_of(ctx)
        if version:
            upload.version = check_version(version)
        elif build is None:
            upload.version = "<version: needs CI_COMMIT_SHA and CI_PIPELINE_ID>"
        elif release:
            upload.version = release_version(build, semver)
        else:
            iid = mr_iid()
            upload.version = candidate_version(build, semver, iid, env_ctx.ref or ctx.ref)
        uploads.append(upload)
    if not uploads:
        raise PublishSkipped("; ".join(held) or "no pipeline in the reports declares outputs "
                             "to publish ([[tool.nbgate.pipelines]] outputs = [...])")
    for line in held:
        echo(line)
    return uploads


def _run_ctx(found: Sequence[tuple[RunReports, CaseResult]], env: CIContext) -> CIContext:
    """The CI context of the job that ran the cases, with this job's commit and pipeline when
    it recorded none."""
    run = found[0][0].pipeline
    return CIContext.from_dict({
        **run.to_dict(),
        **{k: v for k, v in env.to_dict().items()
           if k in ("commit_sha", "commit_short_sha", "pipeline_id", "pipeline_url",
                    "default_branch", "ref") and run.to_dict().get(k) is None},
    })


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
        # list them (the candidate's version then names the branch only).
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


def reviewed_elsewhere(session: GitLabSession | None, ctx: CIContext,
                       uploads: Sequence[Upload]) -> dict[str, str]:
    """Releases a default-branch push must not make itself: when the pushed commit merged an MR
    that has candidates of the pipeline, ``promote-model`` ships that reviewed candidate (a
    squash or fast-forward merge keeps a ``train ...`` title, which retrains here too)."""
    if session is None or not ctx.commit_sha or not any(u.release for u in uploads):
        return {}
    try:
        mr = merged_request(session, ctx.commit_sha)
    except PublishError as exc:
        # 404: a commit GitLab does not know merged nothing. 403: a job token may not list
        # merge requests; without REPO_TOKEN the default branch releases what it trained.
        if exc.status in (403, 404):
            return {}
        raise
    if mr is None:
        return {}
    registry = Registry(session)
    iid = str(mr["iid"])
    return {u.package: iid for u in uploads if u.release and any(
        mr_of(v.version) == iid for v in registry.versions(u.package + CANDIDATE_SUFFIX))}


def publish_artifacts(
    folders: Sequence[Path],
    env: Mapping[str, str],
    *,
    declared: Sequence[Declared],
    root: Path,
    kind: str | None = None,
    version: str | None = None,
    dry_run: bool = False,
    echo: Echo = print,
) -> None:
    runs = load_reports(folders)
    session = connect_unless_dry_run(
        env, "publishing artifacts", write=False, dry_run=dry_run, echo=echo
    )
    env_ctx = CIContext.from_env(env)
    uploads = plan_uploads(runs, declared, root, env_ctx, kind=kind, version=version,
                           mr_iid=functools.cache(lambda: merge_request_of(session, env_ctx)),
                           echo=echo)
    reviewed = reviewed_elsewhere(session, env_ctx, uploads)
    for upload in uploads:
        what = "release" if upload.release else "candidate"
        if upload.package in reviewed:
            echo(f"not releasing {upload.package}: this commit merged !{reviewed[upload.package]}, "
                 "whose reviewed candidate promote-model releases unchanged")
            continue
        if dry_run or session is None:
            echo(f"dry run: would upload {what} {upload.package} {upload.version}: "
                 + ", ".join(f"{n} ({upload.shown[n]}, {len(d)} bytes)"
                             for n, d in upload.files.items()))
            continue
        check_version(upload.version)
        registry = Registry(session)
        for file_name, data in upload.files.items():
            registry.upload(upload.package, upload.version, file_name, data)
        echo(f"uploaded {what} {upload.package} {upload.version}: {', '.join(upload.files)}")


# -- fetching --------------------------------------------------------------------------------


def declared_files(declared: Sequence[Declared], name: str) -> list[str]:
    """Basenames of the outputs the named pipeline declares (by stem or notebook path)."""
    wanted = package_name(name)
    names: list[str] = []
    for pipeline in declared:
        if package_name(pipeline.notebook) == wanted:
            names += [PurePosixPath(o).name for o in pipeline.outputs if PurePosixPath(o).name
                      not in names]
    return names


def fetch_artifact(
    name: str,
    dest: Path,
    env: Mapping[str, str],
    *,
    declared: Sequence[Declared],
    version: str | None = None,
    files: Sequence[str] = (),
    echo: Echo = print,
) -> list[Path]:
    """Download the named pipeline's files of the newest release (or of ``version``, a release
    or a candidate named explicitly) to ``dest``.

    ``dest`` is the file to write when there is one file and it is not a folder; otherwise the
    folder to write each file into. The files are those given, else the declared outputs, else
    a file named like ``dest``.
    """
    session = connect(env, f"fetching {name}", write=False)
    registry = Registry(session)
    wanted = list(files) or declared_files(declared, name)
    into_folder = dest.is_dir() or str(dest).endswith(("/", os.sep))
    if not wanted:
        if into_folder:
            raise PublishUsageError(
                f"no file to fetch: {name!r} is not a pipeline with outputs in [tool.nbgate]; "
                "pass --file NAME")
        wanted = [dest.name]
    if len(wanted) > 1 and dest.exists() and not dest.is_dir():
        raise PublishUsageError(
            f"{dest} is a file, but {name} has {len(wanted)} files; give a folder")
    package, chosen = _choose(registry, name, version)
    written = []
    for file_name in wanted:
        target = dest / file_name if (into_folder or len(wanted) > 1) else dest
        data = registry.download(package, chosen, file_name)
        write_bytes_atomic(target, data)  # never half a model where scoring would load it
        echo(f"fetched {package} {chosen} {file_name} -> {display_path(target)} "
             f"({len(data)} bytes)")
        written.append(target)
    return written


def _choose(registry: Registry, name: str, version: str | None) -> tuple[str, str]:
    """(package, version): the newest release, or the release or candidate ``version`` names."""
    release = package_name(name)
    if version is None:
        newest = registry.newest_release(name)
        if newest is None:
            raise no_release(name, registry.session.endpoint(
                "GET", f"/packages?package_type=generic&package_name={release}"))
        return release, newest.version
    check_version(version)
    for package in (release, candidate_package(name)):
        if any(v.version == version for v in registry.versions(package)):
            return package, version
    raise PublishUsageError(
        f"{name}: no release or candidate has version {version!r}; `nbgate fetch-artifact` "
        "without --version takes the newest release")
