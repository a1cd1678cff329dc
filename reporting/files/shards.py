"""Reports of a sharded run (``parallel: N`` training jobs): one merged set that is complete or
says loudly that it is not.

Each shard job keeps its reports under ``nbgate-jobs/<job>-K-of-N/`` (``reports/shard-K-of-N/``
locally), with a ``shard.json`` (``nbgate.pytest_plugin.shard_plugin``) that records the whole
split: the ids of the cases every shard of the job owns, the split's fingerprint, the pipeline and
commit. A shard whose job failed or was cancelled before keeping its reports leaves no folder; the
other shards' ``shard.json`` still name its cases, so a merge lists them as not run instead of
showing a smaller run as if it were whole.

Shards that cannot belong together (another pipeline or commit, a split computed from other
cases or durations) and two different results for one case are refused, naming both files:
merging them would report a run that never happened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import case_to_json
from nbgate.contract.files import display_path
from nbgate.contract.json_file import JSONFileError, read_json
from nbgate.contract.model import CaseResult, preferred
from nbgate.contract.session import SessionResults
from reporting.errors import PublishUsageError
from reporting.files.incomplete import MissingShard, incomplete_line
from reporting.files.report_files import Written, write_reports
from reporting.files.reports_folder import RunReports

SHARD_FILE = "shard.json"  # written by nbgate.pytest_plugin.shard_plugin
# 1 (before the whole split was recorded) cannot say what a missing shard was to run
READABLE_SHARD_SCHEMAS = (2,)


@dataclass(frozen=True)
class ShardFile:
    """One shard.json: which shard of which job, and the split it computed."""

    path: Path
    job: str  # CI_JOB_NAME without " K/N"; "" outside CI
    index: int
    total: int
    split: str  # the split's fingerprint
    pipeline_id: str | None
    commit_sha: str | None
    cases: tuple[str, ...]  # this shard's
    split_cases: tuple[tuple[str, ...], ...]  # every shard's, by index - 1


@dataclass
class ShardCheck:
    """What the shards among some reports folders say about the merged whole."""

    missing: list[MissingShard] = field(default_factory=list)

    @property
    def not_run(self) -> list[str]:
        return [case for shard in self.missing for case in shard.cases]

    @property
    def incomplete(self) -> str | None:
        """"incomplete: shard 2/3 missing, 10 cases not run", or None when complete."""
        return incomplete_line(self.missing)


def check_shards(folders: Sequence[Path], runs: Sequence[RunReports] = ()) -> ShardCheck:
    """Every shard.json in ``folders`` (or one level below, as nbgate-jobs/ holds them),
    grouped by job and shard count. ``PublishUsageError`` when shards of one job disagree on
    the pipeline, the commit or the split; the shards with no folder are the missing ones."""
    files = [_read_shard_file(path) for path in _shard_files(folders)]
    _refuse_other_pipelines(files, runs)
    groups: dict[tuple[str, int], list[ShardFile]] = {}
    for shard in files:
        groups.setdefault((shard.job, shard.total), []).append(shard)
    check = ShardCheck()
    for (job, total), shards in sorted(groups.items()):
        first = shards[0]
        present = {s.index for s in shards}
        for shard in shards[1:]:
            if shard.split != first.split:
                raise PublishUsageError(
                    f"{display_path(first.path)} and {display_path(shard.path)}: the shards "
                    f"computed different splits ({first.split} and {shard.split}): their jobs "
                    "saw different cases or durations, so cases may have run twice or not at "
                    "all. Run every shard of the job again from one commit and one baseline")
        for index in range(1, total + 1):
            if index not in present:
                cases = first.split_cases[index - 1]
                check.missing.append(MissingShard(job, index, total, cases, len(cases)))
    return check


def _shard_files(folders: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
            path = candidate / SHARD_FILE
            if path.is_file() and path not in found:
                found.append(path)
    return found


def _read_shard_file(path: Path) -> ShardFile:
    shown = display_path(path)
    try:
        data = read_json(path, shown)
    except JSONFileError as exc:
        raise PublishUsageError(str(exc)) from None

    def bad(what: str) -> PublishUsageError:
        return PublishUsageError(f"{shown}: {what} (a shard.json written by nbgate --nbgate-shard)")

    if not isinstance(data, Mapping) or data.get("schema") not in READABLE_SHARD_SCHEMAS:
        schema = data.get("schema") if isinstance(data, Mapping) else None
        raise bad(f"schema: {schema!r} is not a shard.json schema this nbgate reads "
                  f"({', '.join(map(str, READABLE_SHARD_SCHEMAS))}): run every shard of the "
                  "job with this nbgate")
    for key in ("index", "total"):
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(f"{key}: expected a whole number from 1, found {value!r}")
    if not 1 <= data["index"] <= data["total"]:
        raise bad(f"index: {data['index']} is not a shard of 1..{data['total']}")
    cases = _ids(data.get("cases"), "cases", bad)
    raw = data.get("split_cases")
    if not isinstance(raw, list) or len(raw) != data["total"]:
        raise bad(f"split_cases: expected {data['total']} lists of case ids, one per shard")
    split_cases = tuple(_ids(ids, f"split_cases[{i}]", bad) for i, ids in enumerate(raw))
    texts = {}
    for key in ("job", "split", "pipeline_id", "commit_sha"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise bad(f"{key}: expected text, found {value!r}")
        texts[key] = value
    return ShardFile(path, texts["job"] or "", data["index"], data["total"], texts["split"] or "",
                     texts["pipeline_id"], texts["commit_sha"], cases, split_cases)


def _ids(value: Any, where: str, bad: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad(f"{where}: expected a list of case ids")
    return tuple(value)


def _refuse_other_pipelines(files: Sequence[ShardFile], runs: Sequence[RunReports]) -> None:
    """Shards of one merge come from one pipeline and commit: their shard.json files, and the
    metrics.json beside each (the CI context of the job that wrote it)."""
    seen: list[tuple[str, str, str | None]] = [
        (display_path(f.path), "pipeline", f.pipeline_id) for f in files]
    seen += [(display_path(f.path), "commit", f.commit_sha) for f in files]
    shard_folders = {f.path.parent for f in files}
    for run in runs:
        if run.folder in shard_folders:
            where = display_path(run.folder / "metrics.json")
            seen += [(where, "pipeline", run.pipeline.pipeline_id),
                     (where, "commit", run.pipeline.commit_sha)]
    for what in ("pipeline", "commit"):
        values = [(where, value) for where, kind, value in seen if kind == what]
        for where, value in values[1:]:
            if value != values[0][1]:
                raise PublishUsageError(
                    f"{values[0][0]} and {where} are shards of different {what}s "
                    f"({values[0][1] or 'none'} and {value or 'none'}): merge the shards of "
                    "one pipeline only")


def merge_reports(runs: Sequence[RunReports], into: Path, root: Path,
                  shards: ShardCheck | None = None) -> Written:
    """One set of report files (metrics.json, metrics.txt, junit.xml, summary.md) for all runs:
    every case once, a skip never hiding a result that ran, and the cases of missing shards
    listed as not run. ``PublishUsageError`` when two runs hold different results for one case
    (identical copies are fine)."""
    merged = SessionResults(root, into)
    source: dict[str, tuple[CaseResult, Path]] = {}
    for run in runs:
        for result in run.results:
            earlier = source.get(result.case_id)
            if earlier is not None:
                _refuse_conflict(earlier, (result, run.folder))
            if earlier is None or preferred(earlier[0], result) is result:
                source[result.case_id] = (result, run.folder)
            merged.add(result)
        merged.interrupted = merged.interrupted or run.interrupted
    shards = shards or ShardCheck()
    not_run = [case for run in runs for case in run.not_run if case not in merged.results]
    not_run += [case for case in shards.not_run if case not in merged.results]
    merged.expected = dict.fromkeys([*merged.results, *not_run])
    merged.missing_shards = [m.to_dict() for m in shards.missing]
    pipeline = runs[0].pipeline if runs else CIContext()
    return write_reports(merged, pipeline=pipeline)


def _refuse_conflict(first: tuple[CaseResult, Path], second: tuple[CaseResult, Path]) -> None:
    (a, folder_a), (b, folder_b) = first, second
    if "skipped" in (a.outcome, b.outcome):
        return  # the GPU job may skip what the CPU job ran: the run result is kept
    if case_to_json(a) == case_to_json(b):
        return  # the same result copied twice (reports/ and nbgate-jobs/<job>/)
    raise PublishUsageError(
        f"{display_path(folder_a / 'metrics.json')} and {display_path(folder_b / 'metrics.json')}"
        f" hold different results for {a.case_id} ({a.outcome} and {b.outcome}): merge the "
        "reports of one run of each case")
