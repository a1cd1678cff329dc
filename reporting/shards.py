"""Reports of a sharded run (``parallel: N`` training jobs): one merged set, with the shards
that never reported named.

Each shard job keeps its reports under ``nbgate-jobs/<job>-K-of-N/`` (``reports/shard-K-of-N/``
locally). A shard whose job failed or was cancelled before keeping them leaves no folder: its
cases are then not in any report, and the comment says which shard is missing rather than
showing a smaller run as if it were whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from nbgate.contract.ci_context import CIContext
from nbgate.contract.session import SessionResults
from reporting.report_files import Written, write_reports
from reporting.reports_folder import RunReports

_SHARD_FOLDER = re.compile(r"^(?P<job>.*?)-?(?P<index>\d+)-of-(?P<total>\d+)$")


def missing_shards(folders: Sequence[Path]) -> list[str]:
    """"train-cpu 2/3" for every shard of a sharded job that left no reports folder."""
    seen: dict[tuple[str, int], set[int]] = {}
    for folder in folders:
        candidates = [folder, *(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() \
            else []
        for path in candidates:
            match = _SHARD_FOLDER.match(path.name)
            if match is None or not ((path / "metrics.json").is_file()
                                     or (path / "shard.json").is_file()):
                continue
            job = match["job"].removesuffix("-").removesuffix("shard").rstrip("-") or "shard"
            seen.setdefault((job, int(match["total"])), set()).add(int(match["index"]))
    return [f"{job} {index}/{total}" for (job, total), present in sorted(seen.items())
            for index in range(1, total + 1) if index not in present]


def merge_reports(runs: Sequence[RunReports], into: Path, root: Path) -> Written:
    """One set of report files (metrics.json, metrics.txt, junit.xml, summary.md) for all runs:
    every case once, a skip never hiding a result that ran."""
    merged = SessionResults(root, into)
    for run in runs:
        for result in run.results:
            merged.add(result)
        merged.interrupted = merged.interrupted or run.interrupted
    not_run = [case for run in runs for case in run.not_run if case not in merged.results]
    merged.expected = dict.fromkeys([*merged.results, *not_run])
    pipeline = runs[0].pipeline if runs else CIContext()
    return write_reports(merged, pipeline=pipeline)
