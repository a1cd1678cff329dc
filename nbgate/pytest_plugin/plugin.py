"""The pytest plugin: declared notebooks become cases; a fixture runs notebooks from tests.

Collection must stay cheap (thousands of cases, no heavy imports): this module imports only
the standard library, pytest and nbgate's light modules; kernels, nbformat and papermill are
imported when a case runs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from nbgate.config import (
    DEFAULT_TIMEOUT,
    ConfigError,
    NbgateConfig,
    ParameterSource,
    json_parameters,
    load_config,
)
from nbgate.contract.baselines import ENV_VAR as BASELINE_ENV
from nbgate.contract.baselines import (
    BaselineUnavailable,
    load_baselines,
)
from nbgate.contract.codec import ResultsFileError, case_to_json
from nbgate.contract.failure_text import render_failure
from nbgate.contract.model import CUSTOM_KIND, CaseResult
from nbgate.contract.session import SessionResults, session_key
from nbgate.contract.text import clean_text
from nbgate.pytest_plugin import hookspecs, interrupt
from nbgate.pytest_plugin.commit_select import CommitSelection, SelectionError, selection_for
from nbgate.pytest_plugin.items import NotebookCase, NotebookFile, needs_kernel, remember
from nbgate.pytest_plugin.option_paths import redetermine_setup, spaced, value_options
from nbgate.pytest_plugin.state import (
    NbgateState,
    get_state,
    next_item_key,
    positions_key,
    results_key,
    state_key,
)
from nbgate.pytest_plugin.verdict import RESULTS_ATTRIBUTE, ResultGatherer
from nbgate.running.case import CaseFailed, CaseRunner, CaseSpec, slugify
from nbgate.running.kernels import prestart_depth
from nbgate.running.thresholds import parse_threshold

SESSION_KEY = "nbgate_session"  # in xdist's workerinput: the controller's session id


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nbgate", "notebook pipelines (nbgate)")
    group.addoption(
        "--nbgate-require-gpu",
        action="store_true",
        default=os.environ.get("NBGATE_REQUIRE_GPU", "").lower() in ("1", "true", "yes"),
        help="fail GPU cases when no CUDA GPU is visible instead of skipping them "
        "(also NBGATE_REQUIRE_GPU=1)",
    )
    group.addoption(
        "--nbgate-commit",
        nargs="?",
        const="",
        default=None,
        metavar="MESSAGE",
        help="keep only the cases a commit title 'train <path>...' or 'score <path>...' names "
        "(default: $CI_COMMIT_MESSAGE; in scheduled pipelines TRAINING_NOTEBOOK/SCORING_NOTEBOOK)",
    )
    group.addoption(
        "--nbgate-baseline",
        default=os.environ.get(BASELINE_ENV) or None,
        metavar="PATH",
        help="a metrics.json (or a folder of release metrics, as `nbgate fetch-baseline` writes "
        "it) to compare with: 'baseline' rules are checked against it and reports show each "
        f"metric's change (also {BASELINE_ENV})",
    )
    group.addoption(
        "--nbgate-require-baseline",
        action="store_true",
        default=False,
        help="fail a case whose 'baseline' rule cannot be checked (no baseline)",
    )
    group.addoption(
        "--nbgate-reports",
        default=None,
        metavar="DIR",
        help="folder for reports and executed notebooks (default: [tool.nbgate] reports)",
    )


@pytest.hookimpl(tryfirst=True)  # before pytest's own, which reads rootdir and testpaths
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    # `--nbgate-reports /tmp/x`: pytest chose its rootdir before it knew the option (see
    # nbgate/pytest_plugin/option_paths.py).
    if spaced(args, value_options(parser)):
        redetermine_setup(early_config, args)


def _pyproject(config: pytest.Config) -> Path:
    inipath = config.inipath
    if inipath is not None and inipath.name == "pyproject.toml":
        return inipath
    return config.rootpath / "pyproject.toml"


def pytest_configure(config: pytest.Config) -> None:
    try:
        nbgate_config = load_config(_pyproject(config))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    root = nbgate_config.root if nbgate_config else config.rootpath
    reports = Path(
        config.getoption("nbgate_reports")
        or (nbgate_config.reports if nbgate_config else root / "reports")
    ).resolve()
    # A shard writes under <reports>/shard-K-of-N/ (nbgate/pytest_plugin/shard_plugin.py).
    from nbgate.pytest_plugin.shard_plugin import active_shard, shard_reports

    reports = shard_reports(config, reports)
    shard = active_shard(config)
    interrupt.install(config)  # SIGTERM (a cancelled CI job) ends the session like Ctrl-C
    # xdist workers write their cases' files under the controller's session id, so only the
    # session's first file clears the previous run's notebooks and figures (case_files.py).
    session_id = getattr(config, "workerinput", {}).get(SESSION_KEY) or uuid.uuid4().hex
    state = NbgateState(
        config=nbgate_config,
        root=root,
        reports=reports,
        runner=CaseRunner(root, reports, config.hook, session_id),
        require_gpu=config.getoption("nbgate_require_gpu"),
        require_baseline=config.getoption("nbgate_require_baseline"),
        in_ci=bool(os.environ.get("CI")),
        session_id=session_id,
    )
    config.stash[state_key] = state
    baseline_problem = state.baseline_problem = _load_baselines(config, state)
    if not hasattr(config, "workerinput"):  # xdist workers hand their results to the controller
        gathered = config.stash[session_key] = SessionResults(
            root, reports, baselines=state.baselines, baseline_problem=baseline_problem,
            shard=(shard.index, shard.total) if shard else None)
        config.pluginmanager.register(ResultGatherer(gathered), "nbgate-results")
    config.addinivalue_line("markers", "train: a declared training notebook case (nbgate)")
    config.addinivalue_line("markers", "score: a declared scoring notebook case (nbgate)")
    if nbgate_config is None:
        return
    for name, runner in nbgate_config.runners.items():
        where = "a CUDA GPU" if runner.gpu else "the CPU"
        config.addinivalue_line("markers", f"{name}: a notebook case on runner {name} ({where})")
    for case in nbgate_config.cases():
        path = str(root / case.pipeline.notebook)
        state.cases_by_path.setdefault(path, []).append(case)
    gatherer = config.pluginmanager.get_plugin("nbgate-results")
    if gatherer is not None:
        gatherer.declared = {case.id for case in nbgate_config.cases()}
    state.selection = _commit_selection(config, nbgate_config)
    # MLflow run per case (declared and run_notebook ones); `-p no:nbgate-tracking` turns it off.
    from nbgate.tracking.plugin import PLUGIN_NAME, Tracker

    if not config.pluginmanager.is_blocked(PLUGIN_NAME):
        config.pluginmanager.register(Tracker(root, nbgate_config.tracking_optional), PLUGIN_NAME)


def _load_baselines(config: pytest.Config, state: NbgateState) -> str | None:
    """Read ``--nbgate-baseline`` once; returns why it could not be read (reports say so)."""
    given = config.getoption("nbgate_baseline")
    if not given:
        return None
    try:
        state.baselines = load_baselines(Path(config.invocation_params.dir, given), given)
    except BaselineUnavailable as exc:
        state.no_baseline = clean_text(str(exc))
        return state.no_baseline
    except ResultsFileError as exc:
        return clean_text(str(exc))
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, on the controller: hand the session id to the worker being started."""
    node.workerinput[SESSION_KEY] = get_state(node.config).session_id


def _commit_selection(config: pytest.Config, nbgate_config: NbgateConfig) -> CommitSelection | None:
    # Checked before collection, so a bad title fails before any case is listed.
    message = config.getoption("nbgate_commit")
    if message is None:
        return None
    try:
        return selection_for(nbgate_config, message or None, os.environ)
    except SelectionError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # A run whose cases wrote no file (every one skipped) must still clear the notebooks and
    # figures an earlier run left: reports describe this run only.
    config = session.config
    gathered = config.stash.get(session_key, None)
    state = config.stash.get(state_key, None)
    if gathered is None or state is None or config.option.collectonly:
        return
    if gathered.has_cases:
        state.runner.files.claim()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(state_key, None)
    if state is not None:
        state.runner.close()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".ipynb" or parent.config.getoption("nbmake", False):
        return None  # with --nbmake, nbmake runs every notebook with its own defaults
    state = parent.config.stash.get(state_key, None)
    if state is None or not state.cases_by_path:
        return None
    # A dict lookup by the path pytest hands over: this runs for every .ipynb in the tree.
    if str(file_path) not in state.cases_by_path:
        return None
    return NotebookFile.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    selection = get_state(config).selection
    if selection is None:
        return
    kept, dropped = [], []
    for item in items:
        if isinstance(item, NotebookCase) and not selection.keeps(item.case):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(selection.describe())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, Any, Any]:
    # Only here does pytest (and xdist's worker loop) say which item runs next in this process.
    upcoming = _upcoming(item, nextitem)
    item.stash[next_item_key] = upcoming
    if needs_kernel(item):
        # Usually a no-op: the previous case started these kernels. For the first case (or one
        # after plain tests) they boot while pytest sets the case up and nbgate reads the
        # notebook, instead of after.
        ahead = sum(map(needs_kernel, [item, *upcoming][: _prestart_depth()]))
        get_state(item.config).runner.prestart(ahead)
    return (yield)


def _upcoming(item: pytest.Item, nextitem: pytest.Item | None) -> list[pytest.Item]:
    """The items that run next in this process, as many as kernels may boot ahead."""
    if nextitem is None:
        return []
    depth = _prestart_depth()
    items = item.session.items
    if depth == 1 or hasattr(item.config, "workerinput"):
        return [nextitem]  # an xdist worker learns its items one at a time
    positions = item.session.stash.get(positions_key, None)
    if positions is None:
        positions = item.session.stash[positions_key] = {id(it): i for i, it in enumerate(items)}
    at = positions.get(id(nextitem))
    if at is None or items[at] is not nextitem:
        return [nextitem]
    return items[at : at + depth]


def _prestart_depth() -> int:
    return prestart_depth(CaseRunner.parallel_workers(), os.cpu_count() or 1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "call":
        results = item.stash.get(results_key, [])
        setattr(report, RESULTS_ATTRIBUTE, [case_to_json(r) for r in results])
        if call.excinfo is not None and isinstance(call.excinfo.value, CaseFailed):
            report.longrepr = render_failure(call.excinfo.value.result)
    return report


@pytest.fixture
def run_notebook(request: pytest.FixtureRequest) -> Callable[..., CaseResult]:
    """Run a notebook from a test; failures render like declared cases, results reach the reports.

    ``run_notebook("notebooks/x.ipynb", parameters={...}, thresholds={"auc": ">= 0.9"})``
    returns the CaseResult and raises (failing the test) when the notebook or a rule failed,
    unless ``check=False``.
    """
    state = get_state(request.config)
    calls = 0

    def run(
        notebook: str | Path,
        *,
        parameters: dict[str, Any] | None = None,
        thresholds: dict[str, str] | None = None,
        timeout: float | None = None,
        runner: str = "cpu",
        check: bool = True,
    ) -> CaseResult:
        nonlocal calls
        calls += 1
        path = Path(notebook)
        path = path if path.is_absolute() else state.root / path
        try:
            rel = path.resolve().relative_to(state.root.resolve()).as_posix()
        except ValueError:
            rel = str(path)
        suffix = f"#{calls}" if calls > 1 else ""
        case_id = f"{request.node.nodeid}{suffix}"
        try:
            rules = tuple(parse_threshold(k, v) for k, v in (thresholds or {}).items())
        except ValueError as exc:
            raise pytest.UsageError(f"run_notebook({rel!r}): thresholds: {exc}") from None
        # Checked as [tool.nbgate] tables are, before any kernel starts.
        parameters = json_parameters(
            "parameters", parameters if parameters is not None else {},
            lambda key, problem: pytest.UsageError(f"run_notebook({rel!r}): {key}: {problem}"))
        config = state.config
        declared = config.runners.get(runner) if config is not None else None
        if config is not None and declared is None:
            raise pytest.UsageError(
                f"run_notebook({rel!r}, runner={runner!r}): no such runner; declared runners: "
                f"{', '.join(config.runners)}")
        # Labelled honestly: the runner's (and in CI the ci) parameters reach the notebook as
        # they do for a declared case, and a declared pipeline's runs go to its experiment.
        shared = ()
        if config is not None and declared is not None:
            shared = (ParameterSource(f"runners.{runner}", declared.parameters, False),)
            if state.in_ci:
                shared += (ParameterSource("ci", config.ci_parameters, False),)
        pipeline = next((p for p in config.pipelines if p.notebook == rel), None) \
            if config is not None else None
        spec = CaseSpec(
            case_id=case_id,
            notebook=rel,
            kind=CUSTOM_KIND,
            runner=runner,
            slug=slugify(case_id.replace("::", "-")),
            parameters=parameters,
            parameters_from="run_notebook",
            shared_parameters=shared,
            thresholds=rules,
            timeout=timeout or (config.timeout if config else DEFAULT_TIMEOUT),
            experiment=pipeline.experiment if pipeline is not None else None,
        )
        result = state.runner.run(spec)
        remember(request.node, result)
        if check and not result.passed:
            raise CaseFailed(result)
        return result

    return run
