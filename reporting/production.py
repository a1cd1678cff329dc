"""The production baseline from GitLab: the metrics published with the newest complete release
of each notebook (``metrics.json`` inside its package, checked against the version's manifest;
see ``reporting.packages``).

``nbgate fetch-baseline`` writes them into the reports folder before pytest runs, so ``baseline``
rules are checked inside pytest; ``nbgate publish mr`` reads them to show the deltas. No release
yet is a normal state for a new project: the comment then says why it shows no changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from gitlab.exceptions import GitlabError

from nbgate.contract.baselines import BaselineRun, release_file_name
from nbgate.contract.codec import ResultsFileError, read_metrics
from nbgate.contract.files import display_path, write_bytes_atomic
from reporting.baseline import Baseline, BaselineLookup
from reporting.errors import PublishSkipped, VerificationError
from reporting.gitlab_client import REQUEST_ERRORS, GitLabSession, connect
from reporting.packages import METRICS_FILE, Complete, Registry, package_name


def release_metrics(session: GitLabSession, notebooks: Iterable[str]) \
        -> tuple[list[tuple[Complete, bytes, BaselineRun]], list[str]]:
    """For each notebook, its newest complete release and the metrics published with it; and
    one line per notebook that has none (why). A metrics file that does not match the
    release's manifest raises VerificationError."""
    registry = Registry(session)
    found, reasons = [], []
    for name in dict.fromkeys(package_name(n) for n in notebooks):
        try:
            release = registry.newest_release(name)
            if release is None:
                reasons.append(f"{name} has no release yet")
                continue
            data = registry.fetch(release, [METRICS_FILE])[METRICS_FILE]
        except GitlabError as exc:
            if exc.response_code == 401:
                raise
            reasons.append(f"{name}: {exc.error_message}")
            continue
        try:
            document = read_metrics(data, f"{release.name} {release.version}/{METRICS_FILE}")
        except ResultsFileError as exc:
            reasons.append(str(exc))
            continue
        found.append((release, data, BaselineRun(f"release {release.version}", document,
                                                 release.version)))
    return found, reasons


def production_baseline(session: GitLabSession, notebooks: Iterable[str]) -> BaselineLookup:
    try:
        found, reasons = release_metrics(session, notebooks)
    except VerificationError as exc:
        return BaselineLookup(None, str(exc))
    except REQUEST_ERRORS as exc:
        return BaselineLookup(None, str(session.unreachable(exc, session.endpoint(
            "GET", "/packages"))))
    baseline = Baseline.from_runs(run for _, _, run in found)
    return BaselineLookup(baseline, "; ".join(reasons) or None)


def fetch_baseline(
    env: dict[str, str] | None,
    notebooks: Iterable[str],
    into: Path,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """``nbgate fetch-baseline``: write each notebook's newest release metrics into ``into``
    (``<package>@<version>.json``), where ``--nbgate-baseline`` reads them."""
    session = connect(env or {}, "fetching the production baseline", write=False)
    found, reasons = release_metrics(session, notebooks)
    for line in reasons:
        echo(f"no baseline for {line}")
    if not found:
        raise PublishSkipped("no release to compare with yet; baseline rules are not checked")
    into.mkdir(parents=True, exist_ok=True)
    for stale in into.glob("*.json"):  # an older release must not linger beside the new one
        stale.unlink()
    written = []
    for release, data, _ in found:
        path = write_bytes_atomic(into / release_file_name(release.name, release.version), data)
        echo(f"baseline: {release.name} {release.version} -> {display_path(path)}")
        written.append(path)
    return written
