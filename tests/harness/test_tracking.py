"""MLflow tracking: one run per case in the local store or on a real `mlflow server`.

Inner pytest sessions run small notebooks in throwaway projects; the runs are read back with
MlflowClient. A recording reverse proxy in front of the server lists the REST endpoints the
harness and the kernels called (all must be in GitLab's MLflow subset) and plays GitLab's token
check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mlflow_server import MlflowServer, RecordingProxy, free_port
from tests.support.nbproject import process_alive, run_pytest, write_notebook, write_pyproject

# mlflow's sqlite store warns about its own use of sqlalchemy when the tests read runs back.
pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")

TOKEN = "glpat-right-token-0123456789"
WRONG_TOKEN = "glpat-wrong-token-9876543210"
CI_ENV = {
    "CI": "true",
    "GITLAB_CI": "true",
    "CI_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567",
    "CI_COMMIT_REF_NAME": "feature",
    "CI_PIPELINE_ID": "777",
    "CI_PIPELINE_URL": "https://gitlab.example.com/group/project/-/pipelines/777",
    "CI_JOB_ID": "4242",
    "CI_JOB_URL": "https://gitlab.example.com/group/project/-/jobs/4242",
    "CI_JOB_NAME": "train-cpu",
    "CI_MERGE_REQUEST_IID": "12",
}
# GitLab's MLflow endpoint (/api/v4/projects/:id/ml/mlflow/api/2.0/mlflow/...): the MLflow 2.x
# REST subset it implements (doc/user/project/ml/experiment_tracking/mlflow_client.md).
GITLAB_MLFLOW_ENDPOINTS = {
    ("POST", "experiments/create"),
    ("GET", "experiments/get"),
    ("GET", "experiments/get-by-name"),
    ("POST", "runs/create"),
    ("GET", "runs/get"),
    ("POST", "runs/update"),
    ("POST", "runs/log-metric"),
    ("POST", "runs/log-parameter"),
    ("POST", "runs/log-batch"),
    ("POST", "runs/set-tag"),
    ("POST", "registered-models/create"),
    ("GET", "registered-models/get"),
    ("PATCH", "registered-models/update"),
    ("POST", "registered-models/get-latest-versions"),
    ("POST", "model-versions/create"),
    ("GET", "model-versions/get"),
    ("PATCH", "model-versions/update"),
}
REST_PREFIX = "/api/2.0/mlflow/"
ARTIFACTS_PREFIX = "/api/2.0/mlflow-artifacts/artifacts/"

NOTEBOOKS = {
    # Trains "a model", proves in-kernel mlflow calls land in the harness's run, leaks the token.
    "good": (
        [
            "from nbgate import record\nrecord('auc', 0.9)\nrecord('loss', 0.25)",
            "import os\nprint('token is', os.environ.get('MLFLOW_TRACKING_TOKEN', 'unset'))",
            "import mlflow\nmlflow.log_param('inside', x)\nmlflow.log_metric('inside_metric', 1.5)",
            "from pathlib import Path\nPath('models').mkdir(exist_ok=True)\n"
            "Path('models/m.json').write_text('{\"trees\": 1}')",
            # A recorded figure (anything with savefig) goes to the run as an artifact too.
            "from nbgate import record_figure\n"
            "class Figure:\n"
            "    def savefig(self, buffer, **options):\n"
            "        buffer.write(b'\\x89PNG\\r\\n\\x1a\\n')\n"
            "record_figure('roc', Figure())",
        ],
        "x = 1\nlabel = 'default'",
    ),
    "bad": (["from nbgate import record\nrecord('auc', 0.4)", "raise ValueError('boom')"], "x = 1"),
    "dies": (["from nbgate import record\nrecord('auc', 0.4)", "import os\nos._exit(3)"], "x = 1"),
    "slow": (["from nbgate import record\nrecord('auc', 0.1)", "import time\ntime.sleep(60)"],
             "x = 1"),
    "plain": (["from nbgate import record\nrecord('auc', 0.95)"], "x = 1"),
    # Chooses its own experiment: nbgate's run lives in another one.
    "conflict": (["import mlflow\nmlflow.set_experiment('their-own')\n"
                  "mlflow.log_metric('mine', 1.0)"], "x = 1"),
    # The same, with the pipeline's `experiment` naming that experiment.
    "follows": (["import mlflow\nmlflow.set_experiment('nbgate-follow')\n"
                 "mlflow.log_metric('mine', 1.0)"], "x = 1"),
    # Signals that it runs, then waits to be interrupted.
    "waits": (["from pathlib import Path\nPath('started.flag').touch()",
               "import time\ntime.sleep(120)"], "x = 1"),
}
PIPELINES = {
    "good": 'kind = "train"\nparameters = { x = 5 }\nthresholds = { auc = ">= 0.8" }\n'
    'outputs = ["models/m.json"]\nversion = "1.2.3"\nexperiment = "nbgate-test"',
    "bad": 'kind = "score"',
    "dies": 'kind = "score"',
    "slow": 'kind = "train"\ntimeout = 2',
    "plain": 'kind = "train"\nthresholds = { auc = ">= 0.9" }',
    "conflict": 'kind = "score"',
    "follows": 'kind = "score"\nexperiment = "nbgate-follow"',
    "waits": 'kind = "train"',
}
# Inner-session probes: was mlflow imported by collection, and the case results (with tracking).
INNER_CONFTEST = """
import json, sys
from pathlib import Path

RESULTS = []

def pytest_configure(config):
    worker = getattr(config, "workerinput", None)
    if worker is not None:  # which MLflow helper this pytest-xdist worker was given
        helper = worker.get("nbgate_mlflow_helper")
        Path(f"helper-{worker['workerid']}.json").write_text(json.dumps(helper))

def pytest_collection_finish(session):
    imported = sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow."))
    Path("collection.json").write_text(json.dumps(imported))

def pytest_runtest_logreport(report):
    RESULTS.extend(getattr(report, "nbgate_results", None) or [])

def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the controller under pytest-xdist
        Path("results.json").write_text(json.dumps(RESULTS))
        tracker = session.config.pluginmanager.get_plugin("nbgate-tracking")
        if tracker is not None and tracker.helper_pid:  # the MLflow helper it talked to
            Path("helper.pid").write_text(str(tracker.helper_pid))
"""


def make_project(root: Path, names: list[str]) -> Path:
    table = "timeout = 120\n"
    for name in names:
        cells, parameters = NOTEBOOKS[name]
        write_notebook(root / "notebooks" / f"{name}.ipynb", cells, parameters=parameters)
        table += f'\n[[tool.nbgate.pipelines]]\nnotebook = "notebooks/{name}.ipynb"\n'
        table += PIPELINES[name] + "\n"
    write_pyproject(root, table)
    (root / "conftest.py").write_text(textwrap.dedent(INNER_CONFTEST))
    return root


# Inner sessions share a warm helper, as a user's sessions do, that stops soon after the last.
WARM = "20"


def clean_environment(monkeypatch: pytest.MonkeyPatch, idle: str = WARM) -> None:
    """Inner sessions must not see the outer CI job's tracking server or CI variables."""
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "CI_")) or name in ("CI", "GITLAB_CI"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NBGATE_MLFLOW_HELPER_IDLE", idle)


def results_of(root: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in json.loads((root / "results.json").read_text())}


def run_session(
    root: Path, env: dict[str, str] | None = None, *args: str
) -> tuple[str, dict[str, Any]]:
    completed = run_pytest(root, "-v", "-rA", *args, env=env)
    output = completed.stdout + completed.stderr
    assert completed.returncode in (0, 1), output
    return output, results_of(root)


def client_for(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def run_data(client: Any, run_id: str) -> tuple[Any, dict[str, str], dict[str, str], dict]:
    run = client.get_run(run_id)
    return run, run.data.tags, run.data.params, run.data.metrics


def artifact_names(client: Any, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One `mlflow server` per test process; booted early, waited for by ``server``."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module", autouse=True)
def _boot_server_early(mlflow_server: MlflowServer) -> None:
    """Booting takes seconds: let it happen while the local-store session runs."""


@pytest.fixture
def server(mlflow_server: MlflowServer) -> MlflowServer:
    return mlflow_server.wait_ready()


@pytest.fixture(scope="module")
def local_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, str, dict[str, Any]]:
    """`pytest -n 2` in a git repository without MLFLOW_TRACKING_URI: the local store.

    Two workers create the sqlite store at once: it must come out whole.
    """
    root = make_project(tmp_path_factory.mktemp("local"), ["good", "bad", "slow"])
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=root, check=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        clean_environment(monkeypatch)
        output, results = run_session(root, None, "-n", "2")
    return root, output, results


@pytest.fixture(scope="module")
def server_session(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer
) -> Iterator[tuple[Path, str, dict[str, Any], RecordingProxy]]:
    """`pytest` in CI, tracking to the server through a proxy that wants TOKEN."""
    root = make_project(tmp_path_factory.mktemp("server"), ["good", "dies"])
    mlflow_server.wait_ready()
    with RecordingProxy(mlflow_server.url, token=TOKEN) as proxy:
        with pytest.MonkeyPatch.context() as monkeypatch:
            clean_environment(monkeypatch)
            env = {**CI_ENV, "MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_TRACKING_TOKEN": TOKEN}
            output, results = run_session(root, env)
        yield root, output, results, proxy


# -- local store ----------------------------------------------------------------------------
def test_collection_does_not_import_mlflow(local_session: tuple[Path, str, dict]) -> None:
    root, _, _ = local_session
    assert json.loads((root / "collection.json").read_text()) == []


def test_local_store_gets_a_run_per_case(local_session: tuple[Path, str, dict]) -> None:
    root, output, results = local_session
    assert (root / "mlflow.db").is_file() and (root / "mlruns").is_dir()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    store = f"sqlite:///{(root / 'mlflow.db').resolve().as_posix()}"
    client = client_for(store)

    good = results["notebooks/good.ipynb::train[cpu]"]
    assert good["outcome"] == "passed", output
    tracking = good["tracking"]
    assert tracking["url"] is None and tracking["tracking_uri"] == store
    run, tags, params, metrics = run_data(client, tracking["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "nbgate-test"
    assert tracking["experiment_id"] == run.info.experiment_id
    assert {
        "nbgate.case_id": "notebooks/good.ipynb::train[cpu]",
        "nbgate.notebook": "notebooks/good.ipynb",
        "nbgate.kind": "train",
        "nbgate.runner": "cpu",
        "nbgate.outcome": "passed",
        "mlflow.runName": "notebooks/good.ipynb::train[cpu]",
        "mlflow.source.git.commit": commit,
    }.items() <= tags.items()
    assert not any(k.startswith(("ci.", "gitlab.")) for k in tags)  # not in CI
    # Injected parameters only (not the notebook's own defaults), plus the notebook's own call.
    fingerprint = good["fingerprint"]  # the case's fingerprint and its parts, as tags
    assert tags["nbgate.fingerprint"] == fingerprint["sha256"]
    assert {f"nbgate.fingerprint.{k}": v or "absent"
            for k, v in fingerprint["parts"].items()}.items() <= tags.items()
    assert params == {"x": "5", "inside": "5"}
    assert metrics == {"auc": 0.9, "loss": 0.25, "inside_metric": 1.5}
    assert artifact_names(client, run.info.run_id) == {
        "notebooks-good-train-cpu.ipynb", "m.json", "notebooks-good-train-cpu-roc.png"}
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(root / "mlruns")
    # The model is registered with the pipeline's semantic version.
    (version,) = client.search_model_versions("name='good'")
    assert version.tags["gitlab.version"] == "1.2.3" and version.run_id == run.info.run_id
    assert tags["nbgate.model_version"] == f"good/{version.version}"


def test_a_second_local_run_reuses_the_version_of_an_unchanged_semver(
    local_session: tuple[Path, str, dict],
) -> None:
    """`make train` twice locally: one registered version per semver tag, not a pile of them."""
    root, _, _ = local_session
    with pytest.MonkeyPatch.context() as monkeypatch:
        clean_environment(monkeypatch)
        output, results = run_session(root, None, "-k", "good")
    client = client_for(f"sqlite:///{(root / 'mlflow.db').resolve().as_posix()}")
    versions = client.search_model_versions("name='good'")
    assert [v.tags["gitlab.version"] for v in versions] == ["1.2.3"], output
    _, tags, _, _ = run_data(client, results["notebooks/good.ipynb::train[cpu]"]["tracking"]
                             ["run_id"])
    assert tags["nbgate.model_version"] == f"good/{versions[0].version}"


def test_failing_and_timed_out_cases_end_failed(local_session: tuple[Path, str, dict]) -> None:
    root, _, results = local_session
    client = client_for(f"sqlite:///{(root / 'mlflow.db').resolve().as_posix()}")
    expected = {
        "notebooks/bad.ipynb::score[cpu]": ("cell_error", {"notebooks-bad-score-cpu.ipynb"}),
        "notebooks/slow.ipynb::train[cpu]": ("timeout", {"notebooks-slow-train-cpu.ipynb"}),
    }
    for case_id, (kind, artifacts) in expected.items():
        result = results[case_id]
        assert result["outcome"] == "failed" and result["failure"]["kind"] == kind
        run, tags, params, metrics = run_data(client, result["tracking"]["run_id"])
        assert run.info.status == "FAILED", case_id
        assert tags["nbgate.outcome"] == "failed" and tags["nbgate.failure_kind"] == kind
        # No experiment declared: one per pipeline.
        experiment = client.get_experiment(run.info.experiment_id).name
        assert experiment == f"{result['notebook']}::{result['kind']}"
        assert metrics == result["metrics"] and params == {}
        assert artifact_names(client, run.info.run_id) == artifacts


def test_xdist_workers_share_the_controllers_helper(local_session: tuple[Path, str, dict]) -> None:
    # mlflow is imported once per session, in one helper process, not once per worker.
    root, _, _ = local_session
    given = [json.loads(path.read_text()) for path in sorted(root.glob("helper-gw*.json"))]
    assert len(given) == 2 and given[0] and given[0] == given[1], given


def store_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve().as_posix()}"


def runs_of(root: Path, experiment: str) -> list[Any]:
    client = client_for(store_uri(root))
    found = client.get_experiment_by_name(experiment)
    assert found is not None, experiment
    return client.search_runs([found.experiment_id])


def helpers_started_by(pid: int) -> list[int]:
    """Running MLflow helper processes whose parent is ``pid``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"nbgate.tracking.helper" in argv and process_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


# pytest as a terminal starts it: Ctrl-C raises KeyboardInterrupt. A process inherits an
# ignored SIGINT (a shell without job control ignores it in every `cmd &` it starts, so
# `make test &` passed SIG_IGN to this test and the inner pytest), and Python then leaves it
# ignored: the inner session never saw the Ctrl-C and this test waited out its 60 s.
AS_IN_A_TERMINAL = (
    "import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.exit(pytest.main(sys.argv[1:]))"
)


def test_ctrl_c_ends_the_running_cases_run_killed_and_the_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path, ["waits"])
    clean_environment(monkeypatch, idle="0")  # a helper for this session only, as in CI
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    process = subprocess.Popen(
        [sys.executable, "-c", AS_IN_A_TERMINAL, "-p", "no:cacheprovider", "-q"], cwd=root,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (root / "started.flag").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.stdout
            time.sleep(0.1)
        (helper,) = helpers_started_by(process.pid)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        output = process.communicate(timeout=60)[0].decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert "KeyboardInterrupt" in output, output
    (run,) = runs_of(root, "notebooks/waits.ipynb::train")
    assert run.info.status == "KILLED", output
    assert run.data.tags["nbgate.outcome"] == "interrupted"
    assert not process_alive(helper)


def test_a_warm_helper_serves_the_next_session_and_never_a_stale_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path, ["plain"])
    clean_environment(monkeypatch)
    case = "notebooks/plain.ipynb::train[cpu]"
    output, results = run_session(root)  # creates the store
    assert results[case]["outcome"] == "passed", output
    first = int((root / "helper.pid").read_text())
    assert process_alive(first)  # warm after its session

    output, results = run_session(root)
    assert results[case]["outcome"] == "passed", output
    assert int((root / "helper.pid").read_text()) == first  # mlflow was not imported again

    (root / "mlflow.db").rename(root / "earlier.db")  # the user moves the store away
    output, results = run_session(root)
    third = results[case]
    assert third["outcome"] == "passed", output
    assert int((root / "helper.pid").read_text()) != first  # not the helper of the old store
    # The run went to a new store at the store's path, not to the file the old helper had open.
    (run,) = runs_of(root, "notebooks/plain.ipynb::train")
    assert run.info.run_id == third["tracking"]["run_id"] and run.info.status == "FINISHED"
    earlier = client_for(f"sqlite:///{(root / 'earlier.db').resolve().as_posix()}")
    (experiment,) = [e for e in earlier.search_experiments() if e.name.startswith("notebooks/")]
    assert len(earlier.search_runs([experiment.experiment_id])) == 2
    deadline = time.monotonic() + 30
    while process_alive(first):  # no longer the installation's current helper: it stops
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_helper_ends_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_project(tmp_path, ["plain"])
    clean_environment(monkeypatch, idle="2")
    output, results = run_session(root)
    assert results["notebooks/plain.ipynb::train[cpu]"]["outcome"] == "passed", output
    warm = int((root / "helper.pid").read_text())
    deadline = time.monotonic() + 60
    while process_alive(warm):  # 2 s after its last session
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # In CI each session has its own helper, gone when the session is.
    monkeypatch.delenv("NBGATE_MLFLOW_HELPER_IDLE")
    output, results = run_session(root, {"CI": "true"})
    assert results["notebooks/plain.ipynb::train[cpu]"]["outcome"] == "passed", output
    assert not process_alive(int((root / "helper.pid").read_text()))


def test_a_store_uri_of_the_users_own_gets_a_helper_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative sqlite URI names a different file in every directory: no warm helper can
    # tell two of them apart, so the session's helper is its own and goes with it.
    root = make_project(tmp_path, ["plain"])
    clean_environment(monkeypatch)
    output, results = run_session(root, {"MLFLOW_TRACKING_URI": "sqlite:///custom.db"})
    result = results["notebooks/plain.ipynb::train[cpu]"]
    assert result["outcome"] == "passed", output
    assert not process_alive(int((root / "helper.pid").read_text()))
    client = client_for(f"sqlite:///{(root / 'custom.db').as_posix()}")
    assert client.get_run(result["tracking"]["run_id"]).info.status == "FINISHED"


def test_no_helper_when_nbmake_runs_the_notebooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path, ["plain"])
    clean_environment(monkeypatch)
    output, results = run_session(root, None, "--nbmake", "notebooks")
    assert "1 passed" in output and results == {}  # nbmake ran it, nbgate had no case
    assert not (root / "helper.pid").exists() and not (root / "mlflow.db").exists()


# Arms a fault in every process of an inner session that opens an sqlite store with MLflow:
# the process dies where Ctrl-C struck in the reported case, half-way through MLflow's
# migrations of a new store, right after a migration created its temporary table.
INTERRUPT_MIGRATION = """
import os

if os.environ.get("NBGATE_TEST_INTERRUPT_MIGRATION"):
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "after_cursor_execute")
    def _interrupt(conn, cursor, statement, *args):
        if "CREATE TABLE _alembic_tmp_trace_info" in statement:
            os._exit(130)
"""


def test_a_first_run_interrupted_while_creating_the_store_breaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path / "project", ["plain"])
    clean_environment(monkeypatch)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(INTERRUPT_MIGRATION)
    env = {"PYTHONPATH": str(tmp_path / "site")}

    # A helper of its own (a warm one, started without the fault, would not be interrupted).
    interrupted = run_pytest(root, env={**env, "NBGATE_TEST_INTERRUPT_MIGRATION": "1",
                                        "NBGATE_MLFLOW_HELPER_IDLE": "0"})
    output = interrupted.stdout + interrupted.stderr
    assert interrupted.returncode != 0, output
    assert not (root / "mlflow.db").exists(), output  # nothing half-made where the store goes
    assert "MLflow tracking failed" in output  # the case says its run was not recorded

    output, results = run_session(root, env)
    result = results["notebooks/plain.ipynb::train[cpu]"]
    assert result["outcome"] == "passed", output
    (run,) = runs_of(root, "notebooks/plain.ipynb::train")
    assert run.info.status == "FINISHED" and run.data.metrics == {"auc": 0.95}
    assert list(root.glob(".mlflow.db.*")) == []  # the interrupted build's leftovers are gone


def test_a_store_that_cannot_be_opened_fails_with_the_one_line_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path / "project", ["plain"])
    clean_environment(monkeypatch)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(INTERRUPT_MIGRATION)
    # What an interrupted first run of an earlier nbgate (or plain mlflow) left: a store
    # migrated in place up to where it was stopped.
    half_made = subprocess.run(
        [sys.executable, "-c", "import sys; from mlflow import MlflowClient; "
         "MlflowClient(tracking_uri=sys.argv[1]).search_experiments()", store_uri(root)],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site"),
             "NBGATE_TEST_INTERRUPT_MIGRATION": "1", "MLFLOW_DISABLE_TELEMETRY": "true"},
        capture_output=True, text=True, timeout=300,
    )
    assert half_made.returncode == 130 and (root / "mlflow.db").is_file(), half_made.stderr

    output, results = run_session(root)
    result = results["notebooks/plain.ipynb::train[cpu]"]
    store = root.resolve() / "mlflow.db"
    assert result["outcome"] == "failed" and result["failure"]["kind"] == "tracking", output
    assert f"mv {store} {store}.broken" in result["failure"]["message"]
    assert f"mv {store} {store}.broken" in output

    store.rename(f"{store}.broken")  # the fix, as given
    output, results = run_session(root)
    assert results["notebooks/plain.ipynb::train[cpu]"]["outcome"] == "passed", output


def test_a_notebooks_own_set_experiment_points_to_the_experiment_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path, ["conflict", "follows"])
    clean_environment(monkeypatch)
    output, results = run_session(root)

    conflict = results["notebooks/conflict.ipynb::score[cpu]"]
    assert conflict["outcome"] == "failed", output
    message = conflict["failure"]["message"]
    assert 'experiment = "their-own"' in message and "[[tool.nbgate.pipelines]]" in message
    assert 'notebook = "notebooks/conflict.ipynb"' in message
    assert "--experiment-name" not in message  # MLflow's advice about a CLI nbgate has not
    (run,) = runs_of(root, "notebooks/conflict.ipynb::score")
    assert run.info.status == "FAILED" and run.data.tags["nbgate.failure"] == message

    # With the key set, the notebook's set_experiment names the experiment nbgate chose.
    follows = results["notebooks/follows.ipynb::score[cpu]"]
    assert follows["outcome"] == "passed", output
    (run,) = runs_of(root, "nbgate-follow")
    assert run.info.status == "FINISHED" and run.data.metrics == {"mine": 1.0}


SECRET = "zq8Kd93hfLw0pXr2"


def test_what_nbgate_writes_to_mlflow_is_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A secret in the notebook's file name (so in the case id, run name, experiment, artifact
    # and model names), in a parameter, a metric name and a declared output's file name.
    name = f"nb_{SECRET}"
    write_notebook(
        tmp_path / "notebooks" / f"{name}.ipynb",
        ["import os\nfrom nbgate import record\n"
         "record('auc_' + os.environ['NBGATE_DEMO_TOKEN'], 0.9)",
         "from pathlib import Path\nPath('models').mkdir(exist_ok=True)\n"
         f"Path('models/{SECRET}.json').write_text('{{}}')"],
        parameters="label = ''",
    )
    write_pyproject(tmp_path, (
        f'[[tool.nbgate.pipelines]]\nnotebook = "notebooks/{name}.ipynb"\nkind = "train"\n'
        f'parameters = {{ label = "{SECRET}" }}\noutputs = ["models/{SECRET}.json"]\n'
        'version = "1.0.0"\n'
    ))
    (tmp_path / "conftest.py").write_text(textwrap.dedent(INNER_CONFTEST))
    clean_environment(monkeypatch)
    output, results = run_session(tmp_path, {"NBGATE_DEMO_TOKEN": SECRET})
    (result,) = results.values()
    assert result["outcome"] == "passed", output

    client = client_for(store_uri(tmp_path))
    sent: list[str] = []
    for experiment in client.search_experiments():
        sent.append(experiment.name)
        for run in client.search_runs([experiment.experiment_id]):
            sent += [run.info.run_name, *run.data.params.items(), *run.data.metrics]
            sent += [f"{k}={v}" for k, v in run.data.tags.items()]
            sent += [a.path for a in client.list_artifacts(run.info.run_id)]
    for model in client.search_registered_models():
        sent.append(model.name)
        for version in client.search_model_versions(f"name='{model.name}'"):
            sent += [version.description or "", *version.tags.items()]
    text = json.dumps(sent)
    assert "MASKED" in text and "auc_MASKED" in text and "MASKED.json" in text, text
    assert SECRET not in text, text


# -- a real server, as GitLab's endpoint would be used ------------------------------------
def test_server_runs_tags_params_metrics_artifacts(
    server_session: tuple, server: MlflowServer
) -> None:
    root, output, results, proxy = server_session
    client = client_for(server.url)

    good = results["notebooks/good.ipynb::train[cpu]"]
    assert good["outcome"] == "passed", output
    tracking = good["tracking"]
    run, tags, params, metrics = run_data(client, tracking["run_id"])
    experiment_id, run_id = run.info.experiment_id, run.info.run_id
    assert tracking["url"] == f"{proxy.url}/#/experiments/{experiment_id}/runs/{run_id}"
    assert tracking["tracking_uri"] == proxy.url
    assert run.info.status == "FINISHED"
    assert {
        "nbgate.case_id": "notebooks/good.ipynb::train[cpu]",
        "mlflow.source.git.commit": CI_ENV["CI_COMMIT_SHA"],
        "ci.pipeline_id": "777",
        "ci.pipeline_url": CI_ENV["CI_PIPELINE_URL"],
        "ci.job_id": "4242",
        "ci.job_url": CI_ENV["CI_JOB_URL"],
        "ci.merge_request_iid": "12",
        "gitlab.CI_JOB_ID": "4242",
    }.items() <= tags.items()
    assert params == {"x": "5", "inside": "5"}
    assert metrics == {"auc": 0.9, "loss": 0.25, "inside_metric": 1.5}
    assert artifact_names(client, run.info.run_id) == {
        "notebooks-good-train-cpu.ipynb", "m.json", "notebooks-good-train-cpu-roc.png"}
    notebook = client.download_artifacts(run.info.run_id, "notebooks-good-train-cpu.ipynb",
                                         str(root))
    assert "token is [MASKED]" in Path(notebook).read_text() and TOKEN not in output
    (version,) = client.search_model_versions("name='good'")
    assert version.tags["gitlab.version"] == "1.2.3"

    dies = results["notebooks/dies.ipynb::score[cpu]"]
    assert dies["failure"]["kind"] == "kernel_died"
    run, tags, _, metrics = run_data(client, dies["tracking"]["run_id"])
    assert run.info.status == "FAILED" and metrics == {"auc": 0.4}
    assert "gitlab.CI_JOB_ID" in tags

    for path in (root / "reports").rglob("*"):
        if path.is_file():
            assert TOKEN not in path.read_text(errors="replace"), path


def test_only_gitlab_supported_endpoints_are_called(server_session: tuple) -> None:
    _, _, _, proxy = server_session
    assert proxy.requests and all(r.authorization == f"Bearer {TOKEN}" for r in proxy.requests)
    unsupported = set()
    for method, path in proxy.endpoints():
        if path.startswith(ARTIFACTS_PREFIX):
            # log_artifact with no artifact_path: one file right under the run's artifact root.
            parts = path.removeprefix(ARTIFACTS_PREFIX).split("/")
            if method != "PUT" or len(parts) != 4 or parts[2] != "artifacts":
                unsupported.add((method, path))
        elif not path.startswith(REST_PREFIX) or (
            (method, path.removeprefix(REST_PREFIX)) not in GITLAB_MLFLOW_ENDPOINTS
        ):
            unsupported.add((method, path))
    assert unsupported == set()
    called = {p.removeprefix(REST_PREFIX) for _, p in proxy.endpoints()}
    assert {"runs/create", "runs/log-batch", "runs/update", "model-versions/create"} <= called


# -- a server that cannot be used ------------------------------------------------------------
def test_bad_token_fails_the_case_with_uri_and_status(
    tmp_path: Path, server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path, ["plain"])
    clean_environment(monkeypatch)
    with RecordingProxy(server.url, token=TOKEN) as proxy:
        env = {"MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_TRACKING_TOKEN": WRONG_TOKEN}
        output, results = run_session(root, env)
    result = results["notebooks/plain.ipynb::train[cpu]"]
    assert result["outcome"] == "failed" and result["tracking"] is None
    assert result["metrics"] == {"auc": 0.95}  # the notebook still ran and reported
    message = result["failure"]["message"]
    assert result["failure"]["kind"] == "tracking"
    assert f"{proxy.url} answered HTTP 401" in message and "MLFLOW_TRACKING_TOKEN" in message
    # The usual cause in CI: a protected variable (GitLab's default) never reaches an MR branch.
    assert "a protected CI/CD variable, GitLab's default, reaches protected branches only" in (
        message)
    assert f"{proxy.url} answered HTTP 401" in output
    assert WRONG_TOKEN not in output
    for path in [*(root / "reports").rglob("*"), root / "results.json"]:
        if path.is_file():
            assert WRONG_TOKEN not in path.read_text(errors="replace"), path


# -- the hooks in-process, for the remaining combinations ------------------------------------
def hook_case(tmp_path: Path) -> tuple[Any, Any]:
    from nbgate.contract.model import CaseResult
    from nbgate.running.case import CaseRun, CaseSpec

    spec = CaseSpec("notebooks/n.ipynb::train[cpu]", "notebooks/n.ipynb", "train", "cpu", "n")
    result = CaseResult(spec.case_id, spec.notebook, "train", "cpu", "passed", metrics={"a": 1.0})
    return CaseRun(spec, tmp_path, tmp_path / "reports"), result


@pytest.fixture
def trackers() -> Iterator[list[Any]]:
    """Trackers made in the test process; each started a helper process, closed here."""
    made: list[Any] = []
    yield made
    for tracker in made:
        helper = tracker._helper
        tracker.close()
        if helper is not None and helper.process is not None:
            assert helper.process.poll() is not None  # the helper ended with its tracker


def test_unreachable_server_fails_the_case_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trackers: list[Any]
) -> None:
    from nbgate.tracking.plugin import Tracker

    clean_environment(monkeypatch, idle="0")
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker(tmp_path, optional=False)
    trackers.append(tracker)
    run, result = hook_case(tmp_path)
    tracker.pytest_nbgate_case_start(run=run)
    assert "MLFLOW_RUN_ID" not in run.case_env
    assert run.case_env["MLFLOW_TRACKING_URI"] == uri
    tracker.pytest_nbgate_case_finish(run=run, result=result)
    assert result.outcome == "failed" and result.failure.kind == "tracking"
    assert f"{uri} could not be reached (connection refused)" in result.failure.message
    assert result.metrics == {"a": 1.0}
    # The next case does not wait for the same dead server again.
    run2, result2 = hook_case(tmp_path)
    tracker.pytest_nbgate_case_start(run=run2)
    tracker.pytest_nbgate_case_finish(run=run2, result=result2)
    assert result2.failure is not None and uri in result2.failure.message


def test_unreachable_server_is_a_warning_when_tracking_is_optional(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trackers: list[Any]
) -> None:
    from nbgate.tracking.plugin import NbgateTrackingWarning, Tracker

    clean_environment(monkeypatch, idle="0")
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the user's setting wins
    tracker = Tracker(tmp_path, optional=True)
    trackers.append(tracker)
    run, result = hook_case(tmp_path)
    with pytest.warns(NbgateTrackingWarning, match=f"{uri} could not be reached"):
        tracker.pytest_nbgate_case_start(run=run)
        tracker.pytest_nbgate_case_finish(run=run, result=result)
    assert result.outcome == "passed" and result.failure is None and result.tracking is None
    assert result.metrics == {"a": 1.0}


def test_bad_token_is_a_warning_when_tracking_is_optional(
    tmp_path: Path, server: MlflowServer, monkeypatch: pytest.MonkeyPatch, trackers: list[Any]
) -> None:
    from nbgate.tracking.plugin import NbgateTrackingWarning, Tracker

    clean_environment(monkeypatch, idle="0")
    with RecordingProxy(server.url, token=TOKEN) as proxy:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", WRONG_TOKEN)
        tracker = Tracker(tmp_path, optional=True)
        trackers.append(tracker)
        run, result = hook_case(tmp_path)
        with pytest.warns(NbgateTrackingWarning) as caught:
            tracker.pytest_nbgate_case_start(run=run)
            tracker.pytest_nbgate_case_finish(run=run, result=result)
    assert result.outcome == "passed" and result.failure is None and result.tracking is None
    (warning,) = [w for w in caught if issubclass(w.category, NbgateTrackingWarning)]
    text = str(warning.message)
    assert f"{proxy.url} answered HTTP 401: Unauthorized" in text and WRONG_TOKEN not in text


def test_run_urls() -> None:
    from nbgate.contract.ci_context import CIContext
    from nbgate.tracking.plugin import run_url

    assert run_url("http://u:p@mlflow:5000/", "3", "abc", CIContext()) == (
        "http://mlflow:5000/#/experiments/3/runs/abc"
    )
    assert run_url("sqlite:///mlflow.db", "3", "abc", CIContext()) is None
    gitlab = "https://gitlab.example.com/api/v4/projects/42/ml/mlflow"
    ci = CIContext(ci=True, project_id="42", project_url="https://gitlab.example.com/g/p")
    assert run_url(gitlab, "7", "abc", ci) == "https://gitlab.example.com/g/p/-/ml/experiments/7"
    by_path = "https://gitlab.example.com/api/v4/projects/g%2Fp/ml/mlflow"
    assert run_url(by_path, "7", "abc", CIContext()) == (
        "https://gitlab.example.com/g/p/-/ml/experiments/7"
    )
    assert run_url(gitlab, "7", "abc", CIContext()) is None  # numeric id, no CI: no page known
