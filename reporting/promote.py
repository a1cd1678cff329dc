"""``nbgate promote``: when a merge request is merged, its reviewed candidates become releases.

Run by the ``promote-model`` job on pushes to the default branch. The pushed commit's merge
request (GitLab: merge requests of a commit, state ``merged``) names the candidates; for each
declared pipeline with outputs, the newest candidate of that MR whose cases all passed is
uploaded again, byte for byte, as a release. No retraining: the model reviewed is the model
shipped. The release's version carries the candidate's build, so running promote twice finds
the release already there and uploads nothing. The promoted cases' MLflow runs are tagged
``nbgate.release`` with the release version.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import ResultsFileError, read_metrics
from reporting.errors import PublishSkipped
from reporting.gitlab_client import connect_unless_dry_run
from reporting.packages import (
    METRICS_FILE,
    PackageVersion,
    Registry,
    build_part,
    candidate_package,
    mr_of,
    package_name,
    release_version,
    semver_part,
)
from reporting.publish_artifacts import Declared, is_default_branch, merged_request

Echo = Callable[[str], None]
RELEASE_TAG = "nbgate.release"


@dataclass(frozen=True)
class Promotion:
    pipeline: str
    candidate: PackageVersion
    release: str
    run_ids: tuple[str, ...]


def passing_runs(registry: Registry, candidate: PackageVersion) -> tuple[str, ...] | None:
    """The MLflow run ids of a candidate whose cases all passed (skips aside), else None."""
    data = registry.download(candidate.name, candidate.version, METRICS_FILE)
    try:
        document = read_metrics(data, f"{candidate.name} {candidate.version}/{METRICS_FILE}")
    except ResultsFileError:
        return None
    outcomes = [c.outcome for c in document.cases]
    if "failed" in outcomes or "passed" not in outcomes:
        return None
    return tuple(c.tracking.run_id for c in document.cases
                 if c.outcome == "passed" and c.tracking is not None)


def plan_promotions(registry: Registry, declared: Sequence[Declared], mr_iid: str,
                    echo: Echo) -> list[Promotion]:
    plans = []
    for pipeline in declared:
        if not pipeline.outputs:
            continue
        name = package_name(pipeline.notebook)
        candidates = [v for v in registry.versions(candidate_package(pipeline.notebook))
                      if mr_of(v.version) == mr_iid]
        chosen = None
        for candidate in candidates:  # newest first
            runs = passing_runs(registry, candidate)
            if runs is not None:
                chosen = (candidate, runs)
                break
        if chosen is None:
            if candidates:
                echo(f"{name}: no passing candidate of !{mr_iid} ({len(candidates)} found); "
                     "a failed or skipped model is never released")
            continue
        candidate, runs = chosen
        version = release_version(build_part(candidate.version), semver_part(candidate.version))
        if any(v.version == version for v in registry.versions(name)):
            echo(f"{name}: release {version} (from candidate {candidate.version}) already exists")
            continue
        plans.append(Promotion(name, candidate, version, runs))
    return plans


def promote(
    env: Mapping[str, str],
    *,
    declared: Sequence[Declared],
    dry_run: bool = False,
    echo: Echo = print,
) -> list[Promotion]:
    ctx = CIContext.from_env(env)
    session = connect_unless_dry_run(env, "promoting models", write=False, dry_run=dry_run,
                                     echo=echo)
    if session is None:
        return []
    if not is_default_branch(ctx):
        raise PublishSkipped(f"nothing to promote: {ctx.ref or 'this ref'} is not the default "
                             f"branch ({ctx.default_branch or 'CI_DEFAULT_BRANCH unset'})")
    if not ctx.commit_sha:
        raise PublishSkipped("nothing to promote: CI_COMMIT_SHA is not set")
    mr = merged_request(session, ctx.commit_sha)
    if mr is None:
        raise PublishSkipped(f"nothing to promote: commit {ctx.commit_sha[:8]} merged no merge "
                             "request")
    iid = str(mr["iid"])
    registry = Registry(session)
    plans = plan_promotions(registry, declared, iid, echo)
    if not plans:
        raise PublishSkipped(f"nothing to promote: !{iid} has no passing candidate that is not "
                             "released yet")
    for plan in plans:
        if dry_run:
            echo(f"dry run: would release {plan.pipeline} {plan.release} from candidate "
                 f"{plan.candidate.version} (!{iid})")
            continue
        for file_name in registry.files(plan.candidate):
            data = registry.download(plan.candidate.name, plan.candidate.version, file_name)
            registry.upload(plan.pipeline, plan.release, file_name, data)
        echo(f"released {plan.pipeline} {plan.release} from candidate {plan.candidate.version} "
             f"(!{iid}), unchanged")
        tag_runs(plan, env, echo)
    return plans


def tag_runs(plan: Promotion, env: Mapping[str, str], echo: Echo) -> None:
    """Tag the promoted cases' MLflow runs with the release version (on the tracking server
    named by MLFLOW_TRACKING_URI; a runner's local store is gone by now)."""
    uri = env.get("MLFLOW_TRACKING_URI")
    if not plan.run_ids:
        return
    if not uri:
        echo(f"{plan.pipeline}: MLflow runs not tagged (MLFLOW_TRACKING_URI is not set)")
        return
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for run_id in plan.run_ids:
        try:
            client.set_tag(run_id, RELEASE_TAG, plan.release)
        except Exception as exc:  # a missing run must not undo a release that happened
            echo(f"{plan.pipeline}: could not tag MLflow run {run_id}: {type(exc).__name__}")
        else:
            echo(f"{plan.pipeline}: MLflow run {run_id} tagged {RELEASE_TAG}={plan.release}")
