"""``nbgate publish artifacts`` and ``nbgate fetch-artifact``: the model files a pipeline declares
as ``outputs``, through GitLab's generic package registry.

- Package name: the pipeline's name (its notebook's stem), reduced to ``[A-Za-z0-9._+-]``.
- Version: ``<short sha>-<pipeline id>`` (either alone when only one is known), prefixed with
  the pipeline's ``version`` and ``+`` when it declares one (``1.2.0+0123abcd-1002``). The
  pipeline id makes every pipeline a new version: a scheduled retraining on an unchanged commit
  must not append its model to an older version, or "the newest version" would miss it.
- File: the basename of each declared output.
- Only a pipeline whose cases all passed (skips aside) is published: a failed gate publishes no
  model. A declared output that is missing after a passing run is an error (exit 2).

Fetching lists the project's generic packages newest first (GitLab filters ``package_name``
loosely, so names are compared exactly here) and downloads the declared files of the newest
version, or of ``--version``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from nbgate.contract.ci_context import CIContext
from nbgate.contract.files import display_path, write_bytes_atomic
from nbgate.contract.model import CaseResult
from reporting.errors import PublishError, PublishSkipped, PublishUsageError
from reporting.gitlab_client import GitLabSession, connect, connect_unless_dry_run
from reporting.reports_folder import RunReports, load_reports

Echo = Callable[[str], None]
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_VERSION = re.compile(r"^[\w+.-]+$")


def package_name(name: str) -> str:
    """A pipeline name (or notebook path) as a generic package name."""
    stem = PurePosixPath(name.replace("\\", "/")).name.removesuffix(".ipynb")
    safe = _UNSAFE.sub("_", stem).strip("._") or "model"
    return safe


def package_version(ctx: CIContext, declared: str | None = None) -> str | None:
    short = ctx.commit_short_sha or (ctx.commit_sha or "")[:8] or None
    core = "-".join(p for p in (short, ctx.pipeline_id) if p)
    if not core:
        return None
    return f"{declared}+{core}" if declared else core


def check_version(version: str) -> str:
    if not _VERSION.match(version) or ".." in version:
        raise PublishUsageError(f"version {version!r} is not valid for a generic package: "
                                "use letters, digits, '.', '_', '+' and '-'")
    return version


@dataclass(frozen=True)
class Declared:
    """A pipeline as ``[tool.nbgate.pipelines]`` declares it: what it publishes."""

    notebook: str
    kind: str
    outputs: tuple[str, ...] = ()
    version: str | None = None


@dataclass
class Upload:
    pipeline: str  # package name
    version: str
    files: list[Path]


def plan_uploads(
    runs: Sequence[RunReports],
    declared: Sequence[Declared],
    root: Path,
    env_ctx: CIContext,
    *,
    kind: str | None = None,
    version: str | None = None,
    echo: Echo = print,
) -> list[Upload]:
    """What to upload: per pipeline in the reports, its declared outputs, if its cases passed.
    Raises PublishSkipped saying why when there is nothing to upload."""
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for run in runs:
        for result in run.results:
            if result.declared and (kind is None or result.kind == kind):
                groups.setdefault((result.notebook, result.kind), []).append(result)
    uploads = []
    held: list[str] = []
    for (notebook, case_kind), results in groups.items():
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
        files = []
        for output in outputs:
            path = root / output
            if not path.is_file():
                raise PublishUsageError(
                    f"{notebook} declares output {output!r}, but {path} does not exist: the "
                    "training job must write it and keep it as an artifact")
            files.append(path)
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise PublishUsageError(f"{notebook}: outputs {declared} share a file name; a "
                                    "generic package holds files by name")
        run_ctx = _run_ctx(runs, results, env_ctx)
        chosen = version or package_version(run_ctx, pipeline.version if pipeline else None)
        if not chosen:
            raise PublishUsageError("no package version: CI_COMMIT_SHORT_SHA and CI_PIPELINE_ID "
                                    "are unset; pass --version")
        uploads.append(Upload(name, check_version(chosen), files))
    if not uploads:
        raise PublishSkipped("; ".join(held) or "no pipeline in the reports declares outputs "
                             "to publish ([[tool.nbgate.pipelines]] outputs = [...])")
    for line in held:
        echo(line)
    return uploads


def _run_ctx(
    runs: Sequence[RunReports], results: Sequence[CaseResult], env: CIContext
) -> CIContext:
    """This job's commit and pipeline (the model is published from them), else the run's."""
    ids = {r.case_id for r in results}
    run = next((r.pipeline for r in runs if any(c.case_id in ids for c in r.results)), CIContext())
    return CIContext(
        commit_sha=env.commit_sha or run.commit_sha,
        commit_short_sha=env.commit_short_sha or run.commit_short_sha,
        pipeline_id=env.pipeline_id or run.pipeline_id,
    )


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
    session = connect_unless_dry_run(
        env, "publishing artifacts", write=False, dry_run=dry_run, echo=echo
    )
    runs = load_reports(folders)
    uploads = plan_uploads(runs, declared, root, CIContext.from_env(env), kind=kind,
                           version=version, echo=echo)
    for upload in uploads:
        for path in upload.files:
            where = f"/packages/generic/{upload.pipeline}/{upload.version}/{path.name}"
            if dry_run or session is None:
                size = path.stat().st_size
                echo(f"dry run: would upload {display_path(path, root)} ({size} bytes) "
                     f"to PUT /projects/:id{where}")
                continue
            endpoint = session.endpoint("PUT", where)
            send = partial(session.project.generic_packages.upload, upload.pipeline,
                           upload.version, path.name, path=str(path))
            session.call(endpoint, send, _hints(session))
            echo(f"uploaded {display_path(path, root)} as {upload.pipeline} {upload.version} "
                 f"({path.name})")


def _hints(session: GitLabSession) -> dict[int, str]:
    return {
        403: f"the token in {session.token.source} may not publish packages; it needs the api "
             "scope and the Developer role, and the package registry must be enabled",
        400: "GitLab refused the file (duplicate packages disallowed, or a name/version it "
             "rejects); publish from a new pipeline or pass another --version",
    }


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


def newest_version(session: GitLabSession, name: str) -> str:
    endpoint = session.endpoint(
        "GET", f"/packages?package_type=generic&package_name={name}&order_by=created_at&sort=desc")

    def first_exact() -> str | None:
        packages = session.project.packages.list(
            package_type="generic", package_name=name, order_by="created_at", sort="desc",
            per_page=100, iterator=True)
        for package in packages:  # the name filter is a substring match: compare exactly
            if package.name == name:
                return str(package.version)
        return None

    version = session.call(endpoint, first_exact)
    if version is None:
        raise PublishError(
            None, endpoint,
            f"project {session.project_id} has no generic package named {name!r}; a training "
            "pipeline must run `nbgate publish artifacts` first", "no such package")
    return version


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
    """Download the named pipeline's files of the newest (or given) version to ``dest``.

    ``dest`` is the file to write when there is one file and it is not a folder; otherwise the
    folder to write each file into. The files are those given, else the declared outputs, else
    a file named like ``dest``.
    """
    session = connect(env, f"fetching {name}", write=False)
    package = package_name(name)
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
    chosen = check_version(version) if version else newest_version(session, package)
    written = []
    for file_name in wanted:
        target = dest / file_name if (into_folder or len(wanted) > 1) else dest
        where = f"/packages/generic/{package}/{chosen}/{file_name}"
        hints = {404: f"{package} {chosen} has no file {file_name!r}, or the token cannot read "
                      "the package registry"}
        data = session.call(session.endpoint("GET", where),
                            partial(_download, session, package, chosen, file_name), hints)
        write_bytes_atomic(target, data)  # never half a model where scoring would load it
        echo(f"fetched {package} {chosen} {file_name} -> {display_path(target)} "
             f"({len(data)} bytes)")
        written.append(target)
    return written


def _download(session: GitLabSession, package: str, version: str, file_name: str) -> bytes:
    # Not streamed: the whole body is read inside python-gitlab's request, so a connection reset
    # mid-download is retried like any other transient error.
    data = session.project.generic_packages.download(package, version, file_name)
    return data if isinstance(data, bytes) else bytes(data or b"")

