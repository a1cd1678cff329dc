"""``--nbgate-shard K/N``: this pytest run keeps its share of the selected cases.

Registered as the ``nbgate-shard`` pytest11 entry point. Without the option it follows
``NBGATE_SHARD``, then GitLab's ``CI_NODE_INDEX``/``CI_NODE_TOTAL`` (a ``parallel: N`` job), so
a CI job needs no extra flag. The split itself is ``nbgate.pytest_plugin.shard``.

A sharded run

- keeps its cases after every other selection (``-m``, ``-k``, ``--nbgate-commit``): the
  hook below runs last and reports the others through ``pytest_deselected``;
- writes its reports under ``<reports>/shard-K-of-N/`` (``nbgate.pytest_plugin.plugin`` asks
  ``shard_reports``), with a ``shard.json`` that says which cases this shard owned, which
  every shard of the split owns (``split_cases``), the split's fingerprint, and the job,
  pipeline and commit: what a merge of the shards needs to list a missing shard's cases and
  to refuse shards that do not belong together (``reporting.files.shards``);
- with nothing to run because every selected case belongs to other shards, says so in one
  line and exits 0 (pytest's "no tests collected", 5, is kept when the selection itself was
  empty).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import case_to_json
from nbgate.contract.files import write_text_atomic
from nbgate.pytest_plugin.items import NotebookCase
from nbgate.pytest_plugin.shard import (
    Shard,
    ShardError,
    assign,
    durations_from_metrics,
    fingerprint,
    ignored_note,
    read_durations,
    shard_from,
)
from nbgate.pytest_plugin.state import get_state

PLUGIN_NAME = "nbgate-shard"  # the entry point's name: `-p no:nbgate-shard` turns it off
SHARD_FILE = "shard.json"
_SHARD_SUFFIX = re.compile(r":? \[?[0-9]+/[0-9]+\]?$")
SHARD_SCHEMA = 2  # 2 adds split_cases, job, pipeline_id and commit_sha
_WORKER_KEY = "nbgate_shard"  # in xdist's workeroutput


@dataclass
class ShardRun:
    """What this shard kept; travels from xdist workers to the controller as a dict."""

    index: int
    total: int
    selected: int  # cases selected before the split
    cases: list[str] = field(default_factory=list)  # this shard's, in collection order
    split: str = ""  # fingerprint of the whole split
    durations: str = ""  # where the durations came from
    notebook_cases: bool = False  # any declared notebook case among the selected ones
    chosen_by: str = ""  # --nbgate-shard, NBGATE_SHARD or CI_NODE_INDEX/CI_NODE_TOTAL
    split_cases: list[list[str]] = field(default_factory=list)  # every shard's, by index - 1
    job: str = ""  # CI_JOB_NAME without GitLab's " K/N"; "" outside CI
    pipeline_id: str | None = None
    commit_sha: str | None = None

    def describe(self) -> str:
        if not self.cases:
            return (f"nbgate: shard {self.index}/{self.total} has nothing to run: all "
                    f"{self.selected} selected cases belong to other shards (split {self.split})")
        return (f"nbgate: shard {self.index}/{self.total} runs {len(self.cases)} of "
                f"{self.selected} selected cases (balanced by {self.durations}; "
                f"split {self.split})")


@dataclass
class _State:
    shard: Shard | None
    origin: str  # which setting chose the shard
    base_reports: Path | None = None  # the reports folder before the shard's own name
    run: ShardRun | None = None


_state_key = pytest.StashKey[_State]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nbgate", "notebook pipelines (nbgate)")
    group.addoption(
        "--nbgate-shard",
        default=None,
        metavar="K/N",
        help="run shard K of N (1-based) of the selected cases, balanced by their last recorded "
        "durations; 'off' runs them all. Default: $NBGATE_SHARD, else GitLab's "
        "CI_NODE_INDEX/CI_NODE_TOTAL when both are set (parallel: N)",
    )


def _state(config: pytest.Config) -> _State:
    # Parsed on first use: nbgate.pytest_plugin.plugin's pytest_configure may ask
    # (shard_reports) before this plugin's own pytest_configure has run.
    state = config.stash.get(_state_key, None)
    if state is None:
        try:
            shard, origin = shard_from(config.getoption("nbgate_shard", None), os.environ)
        except ShardError as exc:
            raise pytest.UsageError(str(exc)) from None
        state = config.stash[_state_key] = _State(shard, origin)
    return state


def active_shard(config: pytest.Config) -> Shard | None:
    """This run's shard, or None (not sharded, or this plugin turned off)."""
    if config.pluginmanager.get_plugin(PLUGIN_NAME) is None:
        return None
    return _state(config).shard


def shard_reports(config: pytest.Config, reports: Path) -> Path:
    """The reports folder of this run: ``reports/shard-K-of-N`` for a shard, else ``reports``."""
    shard = active_shard(config)
    if shard is None:
        return reports
    _state(config).base_reports = reports
    return reports / shard.name


def pytest_configure(config: pytest.Config) -> None:
    _state(config)  # a bad --nbgate-shard / NBGATE_SHARD / CI_NODE_* is a usage error up front


def _case_id(item: pytest.Item) -> str:
    # Declared cases by their case id, as metrics.json records them; any other test (one
    # that calls run_notebook, a plain test) by its node id, which run_notebook records.
    return item.case.id if isinstance(item, NotebookCase) else item.nodeid


def _durations(config: pytest.Config, state: _State) -> tuple[dict[str, float], str]:
    """Recorded durations: the baseline when one is given (the reporting plugin's
    --nbgate-baseline / NBGATE_BASELINE), else the last unsharded run's metrics.json.

    Shard runs never write that metrics.json (they write under shard-K-of-N/), so running
    the shards one after another on one machine does not change the split between them.
    """
    baseline = config.getoption("nbgate_baseline", None)
    ignored: list[str] = []
    if baseline:
        # Read once by the harness (a file, or the folder of release metrics CI fetches).
        runs = get_state(config).baselines
        cases = [case_to_json(c) for run in runs for c in run.document.cases]
        if not runs:
            return {}, f"count ({baseline} unreadable)"
        durations = durations_from_metrics({"cases": cases}, ignored)
        return durations, f"durations in {baseline}{ignored_note(ignored)}"
    if state.base_reports is not None:
        path = state.base_reports / "metrics.json"
        if not path.is_file():
            return {}, "count (no recorded durations)"
    else:
        return {}, "count (no recorded durations)"
    try:
        durations = read_durations(path, ignored)
    except (OSError, ValueError) as exc:
        # Every shard job reads the same file, so each falls back alike and the split agrees.
        reason = getattr(exc, "strerror", None) or exc
        return {}, f"count ({_shown(path, config)} unreadable: {reason})"
    return durations, f"durations in {_shown(path, config)}{ignored_note(ignored)}"


def _shown(path: Path, config: pytest.Config) -> str:
    try:
        return path.relative_to(config.invocation_params.dir).as_posix()
    except ValueError:
        return str(path)


@pytest.hookimpl(trylast=True)  # after -m, -k and --nbgate-commit have deselected theirs
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    shard = active_shard(config)
    if shard is None:
        return
    state = _state(config)
    ids = [_case_id(item) for item in items]
    durations, source = _durations(config, state)
    shard_of = assign(ids, durations, shard.total)
    kept = [item for item, case in zip(items, ids, strict=True)
            if shard_of[case] == shard.index - 1]
    dropped = [item for item, case in zip(items, ids, strict=True)
               if shard_of[case] != shard.index - 1]
    split_cases: list[list[str]] = [[] for _ in range(shard.total)]
    for case in ids:
        split_cases[shard_of[case]].append(case)
    ci = CIContext.from_env(os.environ)
    state.run = ShardRun(
        index=shard.index, total=shard.total, selected=len(items),
        cases=[_case_id(item) for item in kept], split=fingerprint(shard_of), durations=source,
        notebook_cases=any(isinstance(item, NotebookCase) for item in items),
        chosen_by=state.origin, split_cases=split_cases, job=_job_name(ci.job_name),
        pipeline_id=ci.pipeline_id, commit_sha=ci.commit_sha,
    )
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        # xdist: only workers collect; the controller learns the split at testnodedown.
        workeroutput[_WORKER_KEY] = asdict(state.run)
        return
    if state.run.cases:
        _say(config, state.run.describe())  # an empty shard says so once, at the end


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    config = node.config
    data = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    state = config.stash.get(_state_key, None)
    if state is not None and state.run is None and isinstance(data, dict):
        state.run = ShardRun(**data)  # every worker computed the same split
        if state.run.cases:
            _say(config, state.run.describe())


@pytest.hookimpl(trylast=True)  # after the reporting plugin has written its files
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(_state_key, None)
    if state is None or state.run is None or hasattr(config, "workeroutput"):
        return
    run = state.run
    shard = state.shard
    if shard is not None and not config.option.collectonly:
        folder = (state.base_reports / shard.name) if state.base_reports else None
        if folder is not None and (run.notebook_cases or folder.is_dir()):
            _write_json(folder / SHARD_FILE, {"schema": SHARD_SCHEMA, **asdict(run)})
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and run.selected and not run.cases:
        session.exitstatus = pytest.ExitCode.OK
        _say(config, run.describe())


def _job_name(name: str | None) -> str:
    """The job's name without the shard GitLab appends ("train-cpu 2/3"; gitlab-ci-local
    writes "train-cpu: [2/3]"): every shard of one job then says the same name."""
    return _SHARD_SUFFIX.sub("", (name or "").strip())


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    # Atomic: a merge reading the folder never sees half a file.
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
