"""The baseline in CI: the metrics.json of the latest successful run of the same job on the
default branch, through the job-artifacts API.

``GET /projects/:id/jobs/artifacts/:ref/raw/<path>?job=NAME`` serves one file of the newest
successful pipeline's job of that name on ``ref``; 404 means there is none (yet), which is a
normal state for a new project, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import quote

from gitlab.exceptions import GitlabError

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import ResultsFileError
from reporting.baseline import Baseline, baseline_from_metrics
from reporting.gitlab_client import REQUEST_ERRORS, GitLabSession

DEFAULT_ARTIFACT = "reports/metrics.json"


@dataclass(frozen=True)
class BaselineLookup:
    """A baseline, or why there is none (one sentence, said once in the comment)."""

    baseline: Baseline | None
    reason: str | None = None


def fetch_baseline(
    session: GitLabSession,
    run: CIContext,
    env_ctx: CIContext,
    artifact_path: str = DEFAULT_ARTIFACT,
) -> BaselineLookup:
    """The default branch's metrics.json for the job that produced ``run``.

    The job name is the run's own (``train-cpu``, recorded in its metrics.json), not the
    publishing job's; the branch is CI_DEFAULT_BRANCH. 401 still fails (the token is bad,
    nothing else will work); any other refusal only costs the deltas, and the reason is shown
    instead.
    """
    ref = env_ctx.default_branch or run.default_branch
    job = run.job_name  # never the publishing job's own name: its artifacts hold no metrics
    if not job:
        return BaselineLookup(None, "the reports were written outside a CI job, so there is "
                                    "no job on the default branch to compare with")
    if not ref:
        return BaselineLookup(None, "CI_DEFAULT_BRANCH is not set")
    endpoint = session.endpoint("GET", f"/jobs/artifacts/{ref}/raw/{artifact_path}?job={job}")
    try:
        data = session.project.artifacts.raw(quote(ref, safe=""), artifact_path, job)
    except GitlabError as exc:
        if exc.response_code == 404:
            return BaselineLookup(None, f"no successful {job} job on {ref} has {artifact_path} yet")
        if exc.response_code == 401:
            raise session.error(exc, endpoint) from None
        return BaselineLookup(None, str(session.error(exc, endpoint)))
    except REQUEST_ERRORS as exc:
        return BaselineLookup(None, str(session.unreachable(exc, endpoint)))
    source = f"{artifact_path} of the latest successful {job} job on {ref}"
    try:
        baseline = baseline_from_metrics(data, source)
    except ResultsFileError as exc:
        return BaselineLookup(None, f"{source} is not readable: {exc}")
    if run.pipeline_id and baseline.info.pipeline_id == run.pipeline_id:
        return BaselineLookup(None, f"the latest successful {job} job on {ref} is this pipeline")
    if not baseline.info.ref:  # a metrics.json written outside CI names no branch
        baseline = Baseline(replace(baseline.info, ref=ref), baseline.cases)
    return BaselineLookup(baseline)
