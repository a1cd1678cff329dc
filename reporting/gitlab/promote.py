"""``nbgate promote``: when a merge request is merged, its reviewed candidate becomes the release.

Run by the ``promote-model`` job on pushes to the default branch, in the merge commit's
checkout. By evidence, never by version text:

1. The pushed commit's merge request (GitLab: merge requests of a commit, state ``merged``) and
   its commits (``GET merge_requests/:iid/commits``). A candidate belongs to the MR only if the
   commit in its manifest is one of them (``reporting.gitlab.merge_requests``).
2. Of those, the candidates whose cases passed (every case that ran passed, at least one ran).
3. Of those, the newest whose fingerprints equal the merged code's, case by case: the CLI
   computes each declared case's fingerprint in this checkout (code, parameters, lock, inputs;
   the Python version and the image are recorded, not compared). None matching: nothing is
   released, and one line says why, naming the commit.
4. Never over a later merge: production's manifest records its MR's ``merged_at``; a promote
   of an earlier merge that finishes last releases nothing.
5. The candidate's files, checked against its manifest, are uploaded again unchanged as a
   release whose manifest names the candidate; a release already made from that candidate
   (compared by manifest) is not made twice, and a half-made one is completed.

The promoted cases' MLflow runs are tagged ``nbgate.release`` with the release version.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import ResultsFileError, read_metrics
from nbgate.contract.model import Fingerprint
from nbgate.contract.names import candidate_package
from reporting.errors import PublishSkipped
from reporting.gitlab.client import GitLabSession, connect_unless_dry_run
from reporting.gitlab.manifest import (
    MANIFEST_FILE,
    CandidateRef,
    Manifest,
    build_manifest,
    parse_time,
)
from reporting.gitlab.merge_requests import candidates_of, merged_request, mr_commits
from reporting.gitlab.packages import METRICS_FILE, Complete, Registry, release_version
from reporting.gitlab.publish_artifacts import Declared, is_default_branch

Echo = Callable[[str], None]
RELEASE_TAG = "nbgate.release"
Expected = Mapping[str, Fingerprint | str]  # case id -> fingerprint in this checkout, or why none


@dataclass(frozen=True)
class Promotion:
    pipeline: str  # the release package
    candidate: Complete
    release: str
    run_ids: tuple[str, ...]


@dataclass(frozen=True)
class MergedRequest:
    iid: str
    head: str  # the MR's head commit
    merged_at: str | None
    commits: frozenset[str]

    @classmethod
    def of(cls, session: GitLabSession, mr: Mapping[str, Any]) -> MergedRequest:
        iid = str(mr["iid"])
        return cls(iid, str(mr.get("sha") or ""), mr.get("merged_at"),
                   frozenset(mr_commits(session, iid)))


def cases_of(pipeline: Declared, expected: Expected) -> dict[str, Fingerprint | str]:
    prefix = f"{pipeline.notebook}::{pipeline.kind}["
    return {k: v for k, v in expected.items() if k.startswith(prefix)}


def differences(manifest: Manifest, expected: Expected) -> list[str]:
    """What differs between a candidate's passed cases and this checkout: fingerprint parts
    (``code``, ``lock``, ...), or a sentence when a case cannot be compared. Empty: a match."""
    found: list[str] = []
    for case_id, fingerprint in manifest.fingerprints().items():
        here = expected.get(case_id)
        if fingerprint is None:
            reason = f"{case_id} recorded no fingerprint"
        elif here is None:
            reason = f"{case_id} is not declared in this commit"
        elif isinstance(here, str):
            reason = f"{case_id}: {here}"
        elif here.sha256 == fingerprint.sha256:
            continue
        else:
            found += [p for p in here.changed(fingerprint) if p not in found]
            continue
        if reason not in found:
            found.append(reason)
    return found


def choose_candidate(candidates: Sequence[Complete], expected: Expected) -> Complete | None:
    """The newest passing candidate made of what was merged (``candidates`` newest first)."""
    return next((c for c in candidates
                 if c.manifest.passing and not differences(c.manifest, expected)), None)


def why_none(name: str, pipeline: Declared, candidates: Sequence[Complete], mr: MergedRequest,
             merge_sha: str, expected: Expected) -> str:
    """One line: why nothing of ``pipeline`` is released for ``mr``, naming the commit."""
    passing = [c for c in candidates if c.manifest.passing]
    retrain = f"retrain it with a `train {pipeline.notebook}` commit"
    if not candidates:
        return (f"nothing to promote for {name}: no commit of !{mr.iid} published a "
                "candidate (a `train …` commit on its branch does)")
    if not passing:
        return (f"nothing to promote for {name}: !{mr.iid} has no passing candidate "
                f"({len(candidates)} found); a failed or skipped model is never released")
    changed = ", ".join(differences(passing[0].manifest, expected))
    if not any(c.manifest.commit == mr.head for c in passing):
        return (f"nothing to promote for {name}: !{mr.iid}'s head {mr.head[:8]} changed what "
                f"the model is made of ({changed}) and has no passing candidate; {retrain}")
    return (f"nothing to promote for {name}: the merge {merge_sha[:8]} of !{mr.iid} is not "
            f"what its passing candidates were made of ({changed}); {retrain}")


def later_production(registry: Registry, pipeline: Declared, mr: MergedRequest) -> str | None:
    """Why releasing ``mr`` now would replace a later merge in production, or None."""
    production = registry.newest_release(pipeline.notebook)
    if production is None:
        return None
    theirs, ours = production.manifest.merged_time(), parse_time(mr.merged_at)
    if theirs is None or ours is None or theirs <= ours:
        return None
    return (f"nothing to promote for {production.name}: !{mr.iid} was merged at "
            f"{mr.merged_at}, and production {production.version} comes from a later merge "
            f"(!{production.manifest.mr_iid}, merged at {production.manifest.merged_at})")


def already_released(registry: Registry, name: str, candidate: Complete) -> Complete | None:
    for release in registry.complete(name):
        ref = release.manifest.candidate
        if ref is not None and (ref.package, ref.version) == (candidate.name, candidate.version):
            return release
    return None


def promote(
    env: Mapping[str, str],
    *,
    declared: Sequence[Declared],
    fingerprints: Expected,
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
    found = merged_request(session, ctx.commit_sha)
    if found is None:
        raise PublishSkipped(f"nothing to promote: commit {ctx.commit_sha[:8]} merged no merge "
                             "request")
    mr = MergedRequest.of(session, found)
    registry = Registry(session)
    plans, reasons = [], []
    for pipeline in declared:
        if not pipeline.outputs:
            continue
        name = pipeline.package
        expected = cases_of(pipeline, fingerprints)
        candidates = candidates_of(registry, candidate_package(pipeline.notebook),
                                   set(mr.commits))
        chosen = choose_candidate(candidates, expected)
        if chosen is None:
            reasons.append(why_none(name, pipeline, candidates, mr, ctx.commit_sha, expected))
            continue
        later = later_production(registry, pipeline, mr)
        if later is not None:
            reasons.append(later)
            continue
        done = already_released(registry, name, chosen)
        if done is not None:
            reasons.append(f"nothing to promote for {name}: release {done.version} (from "
                           f"candidate {chosen.version}) already exists")
            continue
        source = chosen.manifest
        build = ".".join(p for p in ((source.commit or "")[:8], source.pipeline[0]) if p)
        version = release_version(build or chosen.version.rsplit("+", 1)[-1], pipeline.version)
        if dry_run:
            echo(f"dry run: would release {name} {version} from candidate {chosen.version} "
                 f"(!{mr.iid})")
            continue
        files = {n: d for n, d in registry.fetch(chosen).items() if n != MANIFEST_FILE}
        manifest = build_manifest(
            name, version, files, release=True, made_by=ctx,
            image=env.get("CI_JOB_IMAGE") or None, mr_iid=mr.iid, cases=source.cases,
            candidate=CandidateRef(chosen.name, chosen.version, source.commit),
            merged_at=mr.merged_at)
        registry.publish(files, manifest)
        echo(f"released {name} {version} from candidate {chosen.version} (!{mr.iid}, commit "
             f"{(source.commit or '?')[:8]}), unchanged")
        plan = Promotion(name, chosen, version, passed_runs(files.get(METRICS_FILE)))
        tag_runs(plan, env, echo)
        plans.append(plan)
    if not plans:
        raise PublishSkipped("; ".join(reasons) or f"nothing to promote: no pipeline of !{mr.iid} "
                             "declares outputs")
    for line in reasons:
        echo(line)
    return plans


def passed_runs(metrics: bytes | None) -> tuple[str, ...]:
    """The MLflow run ids of the passed cases in a candidate's metrics.json."""
    if metrics is None:
        return ()
    try:
        document = read_metrics(metrics, METRICS_FILE)
    except ResultsFileError:
        return ()
    return tuple(c.tracking.run_id for c in document.cases
                 if c.outcome == "passed" and c.tracking is not None)


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
