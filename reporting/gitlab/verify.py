"""``nbgate verify``: where production came from, and whether its files are the published ones.

For each pipeline with outputs (or the one ``--pipeline`` names), the newest complete release
(or ``--version``): its version, commit, merge request, pipeline, job and image, the candidate
it was promoted from, each case's fingerprint with its parts, and every file with its size and
sha256, downloaded and checked against the manifest. A file that does not match is named, and
the command fails (exit 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from nbgate.contract.names import package_name
from reporting.errors import PublishUsageError, VerificationError
from reporting.gitlab.client import connect
from reporting.gitlab.manifest import Manifest
from reporting.gitlab.packages import Complete, Registry
from reporting.gitlab.publish_artifacts import Declared, choose, resolve_pipeline

Echo = Callable[[str], None]


def describe(complete: Complete) -> list[str]:
    """The manifest in lines a person reads (files are checked and printed apart)."""
    m: Manifest = complete.manifest
    what = "release" if m.release else "candidate"
    lines = [f"{m.package} {m.version} ({what}, published {m.created_at or 'at an unknown time'})"]
    commit = f"  commit     {m.commit or 'unknown'}" + (f" ({m.ref})" if m.ref else "")
    lines.append(commit)
    if m.mr_iid:
        merged = f", merged {m.merged_at}" if m.merged_at else ""
        lines.append(f"  merge request !{m.mr_iid}{merged}")
    pipeline_id, pipeline_url = m.pipeline
    job_id, job_url = m.job
    lines.append(f"  pipeline   #{pipeline_id or '?'} {pipeline_url or ''}".rstrip())
    lines.append(f"  job        #{job_id or '?'} {job_url or ''}".rstrip())
    lines.append(f"  image      {m.image or 'not recorded (CI_JOB_IMAGE unset)'}")
    if m.candidate is not None:
        lines.append(f"  promoted from candidate {m.candidate.package} {m.candidate.version} "
                     f"(commit {(m.candidate.commit or '?')[:8]}), unchanged")
    for case in m.cases:
        fingerprint = case.fingerprint
        if fingerprint is None:
            lines.append(f"  case       {case.id}: {case.outcome}, no fingerprint")
            continue
        parts = ", ".join(f"{k} {(v or 'absent')[:12] if k != 'python' else v}"
                          for k, v in fingerprint.parts.items())
        lines.append(f"  case       {case.id}: {case.outcome}, fingerprint "
                     f"{fingerprint.sha256[:12]} ({parts})")
    return lines


def verify(
    name: str | None,
    env: Mapping[str, str],
    *,
    declared: Sequence[Declared],
    version: str | None = None,
    echo: Echo = print,
) -> list[Complete]:
    """Print and check each chosen version; VerificationError names every file that does not
    match, after all were printed."""
    if name is not None:
        packages = [resolve_pipeline(name, declared)[0]]
    else:
        packages = list(dict.fromkeys(package_name(p.notebook) for p in declared if p.outputs))
        if not packages:
            raise PublishUsageError("no pipeline in [tool.nbgate] declares outputs; "
                                    "pass --pipeline NAME")
    session = connect(env, "verifying production", write=False)
    registry = Registry(session)
    checked, bad = [], []
    for package in packages:
        complete = choose(registry, package, version)
        for line in describe(complete):
            echo(line)
        for entry in complete.manifest.files:
            data = registry.download(complete.name, complete.version, entry.name)
            problem = entry.problem(data)
            state = "ok" if problem is None else "DOES NOT MATCH"
            echo(f"  file       {entry.name}  {entry.size} bytes  sha256 {entry.sha256}  {state}")
            if problem is not None:
                bad.append(f"{complete.name} {complete.version}: {problem}")
        checked.append(complete)
    if bad:
        raise VerificationError(
            session.endpoint("GET", "/packages/generic/"),
            "; ".join(bad) + "; the registry does not hold what was published")
    return checked
