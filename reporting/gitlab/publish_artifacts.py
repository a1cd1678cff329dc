"""``nbgate publish artifacts`` and ``nbgate fetch-artifact``: a pipeline's model files in GitLab's
generic package registry, as a candidate (from a merge request's branch) or a release (from the
default branch). Naming, versions and atomic uploads: ``reporting.gitlab.packages``; the
manifest that closes every version: ``reporting.gitlab.manifest``.

- A package version holds the declared ``outputs``, ``metrics.json`` (that pipeline's cases),
  the ``requirements.txt`` lock and ``nbgate-manifest.json``.
- Only a pipeline whose cases all passed (skips aside) is published: a failed gate publishes no
  model. A declared output that is missing after a passing run is an error (exit 2).
- Fetching takes the newest complete release; a candidate only when ``--version`` names it.
  Every fetched file is checked against the manifest; a mismatch writes nothing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import dumps_metrics, metrics_document
from nbgate.contract.files import display_path, write_bytes_atomic
from nbgate.contract.model import CaseResult
from nbgate.contract.names import CANDIDATE_SUFFIX, candidate_package, package_name
from reporting.errors import PublishError, PublishSkipped, PublishUsageError
from reporting.files.reports_folder import RunReports, load_reports
from reporting.gitlab.client import GitLabSession, connect, connect_unless_dry_run
from reporting.gitlab.manifest import build_manifest
from reporting.gitlab.merge_requests import (
    candidates_of,
    merge_request_of,
    merged_request,
    mr_commits,
)
from reporting.gitlab.packages import (
    LOCK_FILE,
    METRICS_FILE,
    RESERVED_FILES,
    Complete,
    Registry,
    build_of,
    candidate_version,
    check_version,
    no_release,
    release_version,
)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Declared:
    """A pipeline as ``[tool.nbgate.pipelines]`` declares it: what it publishes."""

    notebook: str
    kind: str
    outputs: tuple[str, ...] = ()
    version: str | None = None

    @property
    def package(self) -> str:
        return package_name(self.notebook)


@dataclass
class Upload:
    package: str
    version: str
    files: dict[str, bytes] = field(default_factory=dict)  # file name -> content
    shown: dict[str, str] = field(default_factory=dict)  # file name -> where it came from
    release: bool = False
    cases: list[CaseResult] = field(default_factory=list)
    made_by: CIContext = field(default_factory=CIContext)  # the job that ran the cases
    mr_iid: str | None = None


def is_default_branch(ctx: CIContext) -> bool:
    return bool(ctx.ref and ctx.default_branch and ctx.ref == ctx.default_branch)


def resolve_pipeline(name: str, declared: Sequence[Declared]) -> tuple[str, Declared | None]:
    """The release package ``--pipeline`` names, and its declared pipeline: a notebook path,
    a package name or a unique notebook stem. Without a match, a path gives its package and
    anything else is taken as the package name itself."""
    stem = PurePosixPath(name).name.removesuffix(".ipynb")
    exact = [p for p in declared if name in (p.notebook, p.package)]
    by_stem = [p for p in declared if PurePosixPath(p.notebook).stem == stem]
    matches = list({p.notebook: p for p in (exact or by_stem)}.values())
    if len(matches) > 1:
        raise PublishUsageError(
            f"--pipeline {name!r} names {len(matches)} pipelines: "
            f"{', '.join(p.notebook for p in matches)}; give the notebook path")
    if matches:
        return matches[0].package, matches[0]
    return (package_name(name) if name.endswith(".ipynb") else name), None


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
        ctx = _run_ctx(found, env_ctx)
        upload = Upload(name if release else candidate_package(notebook), "", release=release,
                        cases=results, made_by=ctx)
        for output in outputs:
            path = root / output
            if not path.is_file():
                raise PublishUsageError(
                    f"{notebook} declares output {output!r}, but {path} does not exist: the "
                    "training job must write it and keep it as an artifact")
            if path.name in upload.files or path.name in RESERVED_FILES:
                raise PublishUsageError(f"{notebook}: outputs {outputs} share a file name (or "
                                        f"use one of {', '.join(RESERVED_FILES)}); a package "
                                        "holds files by name")
            upload.files[path.name] = path.read_bytes()
            upload.shown[path.name] = display_path(path, root)
        upload.files[METRICS_FILE] = dumps_metrics(metrics_document(
            results, pipeline=ctx)).encode("utf-8")
        upload.shown[METRICS_FILE] = f"the metrics of {len(results)} case(s)"
        lock = root / LOCK_FILE
        if lock.is_file():
            upload.files[LOCK_FILE] = lock.read_bytes()
            upload.shown[LOCK_FILE] = display_path(lock, root)
        semver = pipeline.version if pipeline else None
        build = build_of(env_ctx) or build_of(ctx)
        if not release:
            upload.mr_iid = mr_iid()
        if version:
            upload.version = check_version(version)
        elif build is None:
            upload.version = "<version: needs CI_COMMIT_SHA and CI_PIPELINE_ID>"
        elif release:
            upload.version = release_version(build, semver)
        else:
            upload.version = candidate_version(build, semver, upload.mr_iid,
                                               env_ctx.ref or ctx.ref)
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
                    "default_branch", "ref", "job_id", "job_url")
           and run.to_dict().get(k) is None},
    })


def reviewed_elsewhere(session: GitLabSession | None, ctx: CIContext,
                       uploads: Sequence[Upload]) -> dict[str, str]:
    """Releases a default-branch push must not make itself: when the pushed commit merged an MR
    that has candidates of the pipeline, ``promote-model`` ships that reviewed candidate (a
    squash or fast-forward merge keeps a ``train ...`` title, which retrains here too).

    Push pipelines only: a retraining schedule (or a manual run) on a merge commit is not the
    merge, and releases what it trained."""
    if session is None or not ctx.commit_sha or not any(u.release for u in uploads):
        return {}
    if ctx.pipeline_source not in (None, "push"):
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
    commits = mr_commits(session, iid)
    return {u.package: iid for u in uploads if u.release
            and candidates_of(registry, u.package + CANDIDATE_SUFFIX, commits)}


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
        manifest = build_manifest(upload.package, upload.version, upload.files,
                                  release=upload.release, made_by=upload.made_by,
                                  image=env.get("CI_JOB_IMAGE") or None, mr_iid=upload.mr_iid,
                                  cases=upload.cases)
        Registry(session).publish(upload.files, manifest)
        echo(f"uploaded {what} {upload.package} {upload.version}: "
             f"{', '.join(upload.files)} and its manifest")


# -- fetching --------------------------------------------------------------------------------


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
    or a candidate named explicitly) to ``dest``, each checked against the version's manifest
    first: on a mismatch nothing is written.

    ``dest`` is the file to write when there is one file and it is not a folder; otherwise the
    folder to write each file into. The files are those given, else the declared outputs, else
    a file named like ``dest``.
    """
    package, pipeline = resolve_pipeline(name, declared)
    session = connect(env, f"fetching {name}", write=False)
    registry = Registry(session)
    wanted = list(files) or ([PurePosixPath(o).name for o in pipeline.outputs]
                             if pipeline else [])
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
    chosen = choose(registry, package, version)
    verified = registry.fetch(chosen, wanted)  # all checked before anything is written
    written = []
    for file_name, data in verified.items():
        target = dest / file_name if (into_folder or len(wanted) > 1) else dest
        write_bytes_atomic(target, data)  # never half a model where scoring would load it
        echo(f"fetched {chosen.name} {chosen.version} {file_name} -> {display_path(target)} "
             f"({len(data)} bytes, sha256 {chosen.manifest.files_by_name[file_name][:12]}… "
             "as in the manifest)")
        written.append(target)
    return written


def choose(registry: Registry, package: str, version: str | None) -> Complete:
    """The newest complete release, or the complete release or candidate ``version`` names."""
    if version is None:
        newest = next(registry.complete(package), None)
        if newest is None:
            raise no_release(package, registry.session.endpoint(
                "GET", f"/packages?package_type=generic&package_name={package}"))
        return newest
    check_version(version)
    for name in (package, package + CANDIDATE_SUFFIX):
        found = registry.find(name, version)
        if found is not None:
            return found
    raise PublishUsageError(
        f"{package}: no complete release or candidate has version {version!r}; "
        "`nbgate fetch-artifact` without --version takes the newest release")
