"""The production baseline from GitLab: the metrics published with the newest complete release
of each notebook (``metrics.json`` inside its package, checked against the version's manifest;
see ``reporting.gitlab.packages``).

``nbgate fetch-baseline`` writes them into the reports folder before pytest runs, so ``baseline``
rules are checked inside pytest; ``nbgate publish mr`` reads them to show the deltas. No release
yet is a normal state for a new project: the comment then says why it shows no changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from nbgate.contract.baselines import (
    NOT_CHECKED_FILE,
    BaselineRun,
    release_file_name,
    write_not_checked,
)
from nbgate.contract.codec import ResultsFileError, read_metrics
from nbgate.contract.files import display_path, write_bytes_atomic
from reporting.errors import PublishError, PublishSkipped, VerificationError
from reporting.files.baseline import Baseline, BaselineLookup
from reporting.gitlab.client import REQUEST_ERRORS, GitLabSession, connect
from reporting.gitlab.packages import METRICS_FILE, Complete, Registry, package_name

OPTIONAL_VAR = "NBGATE_BASELINE_OPTIONAL"


def release_metrics(session: GitLabSession, notebooks: Iterable[str]) \
        -> tuple[list[tuple[Complete, bytes, BaselineRun]], list[str], list[PublishError]]:
    """For each notebook, its newest complete release and the metrics published with it; one
    line per notebook that has no release yet; and the releases whose metrics.json cannot be
    read. GitLab refusing or not answering raises PublishError; a metrics file that does not
    match the release's manifest raises VerificationError (a PublishError)."""
    registry = Registry(session)
    found, no_release, invalid = [], [], []
    for name in dict.fromkeys(package_name(n) for n in notebooks):
        release = registry.newest_release(name)
        if release is None:
            no_release.append(f"{name} has no release yet")
            continue
        data = registry.fetch(release, [METRICS_FILE])[METRICS_FILE]
        try:
            document = read_metrics(data, f"{release.name} {release.version}/{METRICS_FILE}")
        except ResultsFileError as exc:
            where = f"/packages/generic/{release.name}/{release.version}/{METRICS_FILE}"
            invalid.append(PublishError(
                200, session.endpoint("GET", where),
                "the release's metrics cannot be compared with; publish a new release", str(exc)))
            continue
        found.append((release, data, BaselineRun(f"release {release.version}", document,
                                                 release.version)))
    return found, no_release, invalid


def production_baseline(session: GitLabSession, notebooks: Iterable[str]) -> BaselineLookup:
    try:
        found, no_release, invalid = release_metrics(session, notebooks)
    except VerificationError as exc:
        return BaselineLookup(None, str(exc))
    except REQUEST_ERRORS as exc:
        return BaselineLookup(None, str(session.unreachable(exc, session.endpoint(
            "GET", "/packages"))))
    baseline = Baseline.from_runs(run for _, _, run in found)
    reasons = [*no_release, *(str(e) for e in invalid)]
    return BaselineLookup(baseline, "; ".join(reasons) or None)


def fetch_baseline(
    env: Mapping[str, str] | None,
    notebooks: Iterable[str],
    into: Path,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """``nbgate fetch-baseline``: write each notebook's newest release metrics into ``into``
    (``<package>@<version>.json``), where ``--nbgate-baseline`` reads them.

    Succeeds with the metrics, or when GitLab answered that there is no release yet (a new
    project): ``into`` then holds only the reason, which baseline rules show as "not checked".
    Anything else (401/403, 5xx or no answer after retries, a release whose metrics.json is
    invalid) raises PublishError, so the training job fails before pytest; with
    NBGATE_BASELINE_OPTIONAL=1 it is said in one line and written as the reason instead.
    """
    env = env or {}
    session = connect(env, "fetching the production baseline", write=False)
    try:
        found, no_release, invalid = release_metrics(session, notebooks)
        if invalid:
            raise invalid[0]
    except PublishError as exc:
        if not optional(env):
            raise
        why = (f"the release's metrics could not be read ({exc})" if exc.status == 200
               else f"GitLab could not be asked ({exc})")
        write_not_checked(into, why)
        raise PublishSkipped(f"{why}; {OPTIONAL_VAR}=1, so baseline rules are not checked") \
            from None
    for line in no_release:
        echo(f"no baseline for {line}")
    if not found:
        write_not_checked(into, "no release yet")
        raise PublishSkipped("no release to compare with yet; baseline rules are not checked")
    into.mkdir(parents=True, exist_ok=True)
    for stale in (*into.glob("*.json"), into / NOT_CHECKED_FILE):
        stale.unlink(missing_ok=True)  # an older release must not linger beside the new one
    written = []
    for release, data, _ in found:
        path = write_bytes_atomic(into / release_file_name(release.name, release.version), data)
        echo(f"baseline: {release.name} {release.version} -> {display_path(path)}")
        written.append(path)
    return written


def optional(env: Mapping[str, str]) -> bool:
    """NBGATE_BASELINE_OPTIONAL=1: training runs even when GitLab could not be asked."""
    return env.get(OPTIONAL_VAR, "").strip().lower() in ("1", "true", "yes")
