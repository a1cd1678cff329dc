"""The baseline a run is compared with (both wings read it): usually production, the metrics
published with the newest release of each notebook (``nbgate fetch-baseline`` writes them in CI);
locally any metrics.json given with ``--nbgate-baseline``.

A folder holds one file per release, named ``<package>@<version>.json`` so the version is known
without asking GitLab again. ``baseline`` rules are checked against it inside pytest, so they are
real assertions in JUnit and the exit code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nbgate.contract.codec import MetricsDocument, ResultsFileError, load_metrics
from nbgate.contract.model import CaseResult, counterpart

ENV_VAR = "NBGATE_BASELINE"
RELEASE_SEPARATOR = "@"
# Written by `nbgate fetch-baseline` into the baseline folder instead of release files when there
# is nothing to compare with (no release yet; GitLab could not be asked under
# NBGATE_BASELINE_OPTIONAL=1): one line saying why, which baseline rules then show as their
# "not checked" reason.
NOT_CHECKED_FILE = "not-checked.txt"


class BaselineUnavailable(ResultsFileError):
    """The baseline folder says why there is no baseline (its text is the reason)."""


@dataclass(frozen=True)
class BaselineRun:
    """A run to compare with (``--nbgate-baseline``): usually a release's published metrics."""

    source: str  # "release 1.0.0+89abcdef.990", or the path given
    document: MetricsDocument
    version: str | None = None  # the release's package version, when it is one


def release_file_name(package: str, version: str) -> str:
    return f"{package}{RELEASE_SEPARATOR}{version}.json"


def load_baselines(path: Path, shown: str | None = None) -> list[BaselineRun]:
    """Every baseline run in ``path`` (a metrics.json, or a folder of release files).
    Raises ResultsFileError naming the file when one cannot be read."""
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        why = path / NOT_CHECKED_FILE
        if not files and why.is_file():
            reason = " ".join(why.read_text(encoding="utf-8", errors="replace").split())
            raise BaselineUnavailable(reason or "no baseline")
        if not files:
            raise ResultsFileError(f"{shown or path}: the folder holds no baseline (*.json)")
        return [_run(f, f.name) for f in files]
    return [_run(path, shown or os.fspath(path))]


def write_not_checked(folder: Path, reason: str) -> Path:
    """Leave only ``reason`` in the baseline folder: no release file lingers beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.json"):
        stale.unlink()
    path = folder / NOT_CHECKED_FILE
    path.write_text(reason.strip() + "\n", encoding="utf-8")
    return path


def _run(path: Path, shown: str) -> BaselineRun:
    document = load_metrics(path)
    stem = path.name.removesuffix(".json")
    if RELEASE_SEPARATOR in stem:
        version = stem.split(RELEASE_SEPARATOR, 1)[1]
        return BaselineRun(f"release {version}", document, version)
    return BaselineRun(shown, document)


def baseline_case(result: CaseResult, runs: Sequence[BaselineRun]) -> \
        tuple[BaselineRun, CaseResult] | None:
    """The baseline run and case that ``result`` compares with, if any."""
    for run in runs:
        case = counterpart(result, run.document.cases)
        if case is not None:
            return run, case
    return None


def baseline_metrics(result: CaseResult, runs: Sequence[BaselineRun]) -> Mapping[str, float] | None:
    found = baseline_case(result, runs)
    return dict(found[1].metrics) if found else None
