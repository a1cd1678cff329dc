"""A real PostgreSQL on loopback (tests/postgres.py): one Optuna study shared by two training
runs of the shipped example at once, and an `mlflow server` whose backend store is PostgreSQL.

Without PostgreSQL's server binaries these tests are skipped with the reason; in CI (CI set)
they fail instead: .ci/install-tools.sh installs them there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mlflow_server import MlflowServer
from tests.support.nbproject import write_notebook, write_pyproject
from tests.support.postgres import PostgresCluster, find_bindir

REPO = Path(__file__).resolve().parents[2]
TRAIN_CPU = "notebooks/training_example.ipynb::train[cpu]"
N_TRIALS = 4

pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One throwaway cluster for the session (~1.5 s to make and start); each test makes its
    own database in it."""
    bindir = find_bindir()
    if bindir is None:
        message = ("PostgreSQL's server (initdb, pg_ctl) is not installed: run "
                   ".ci/install-tools.sh (as root), which installs Debian's postgresql package")
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI the server is part of the job; its absence is a bug
        pytest.skip(message)
    cluster = PostgresCluster(bindir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def clean_env() -> dict[str, str]:
    """The environment of an inner run: none of the outer job's CI, MLflow or Optuna settings."""
    leaky = re.compile(r"^(CI|GITLAB_CI|CI_.*|MLFLOW_.*|OPTUNA_.*|NBGATE_.*|PYTEST_.*)$")
    env = {k: v for k, v in os.environ.items() if not leaky.match(k)}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def example_copy(root: Path) -> Path:
    """A copy of the shipped example whose training runs N_TRIALS optuna trials."""
    for name in ("notebooks", "config.yaml", "scoring_config.yaml", "conftest.py"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name)
        else:
            shutil.copy(source, root / name)
    pyproject, count = re.subn(
        r'(notebook = "notebooks/training_example.ipynb".*?parameters = \{ )',
        rf"\1n_trials = {N_TRIALS}, ", (REPO / "pyproject.toml").read_text(), flags=re.S)
    assert count == 1, "the example's training pipeline declares parameters"
    (root / "pyproject.toml").write_text(pyproject)
    return root


def start_pytest(root: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def train_case(root: Path) -> dict[str, Any]:
    cases = json.loads((root / "reports" / "metrics.json").read_text())["cases"]
    (case,) = [c for c in cases if c["id"] == TRAIN_CPU]
    return case


def test_two_training_jobs_at_once_fill_one_study(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    """The CI set-up for one study: two parallel jobs (CI_NODE_INDEX 1 and 2 of 2) with
    NBGATE_SHARD=off, so both run the training case, and OPTUNA_STORAGE on a fresh database.
    Each job is its own checkout, as GitLab's jobs are."""
    url = postgres.create_database("optuna_shared")
    jobs = []
    for index in (1, 2):
        root = example_copy(tmp_path / f"job{index}")
        env = {**clean_env(), "OPTUNA_STORAGE": url, "OPTUNA_STUDY": "shared-search",
               "NBGATE_SHARD": "off", "CI_NODE_INDEX": str(index), "CI_NODE_TOTAL": "2",
               # Two jobs on one machine here, not two runners: xgboost's OpenMP threads of
               # both would busy-wait on each other's cores.
               "OMP_NUM_THREADS": "1"}
        # Both start before either is waited for: they open the study (and race to create
        # Optuna's tables in the empty database) and run their trials at the same time.
        jobs.append((root, start_pytest(root, env, "-m", "train and not gpu", "-v",
                                        "-p", "no:nbgate-tracking")))
    outputs = []
    for _root, process in jobs:
        output, _ = process.communicate(timeout=600)
        outputs.append(output)
        assert process.returncode == 0, output
        assert f"{TRAIN_CPU} PASSED" in output or f"PASSED {TRAIN_CPU}" in output, output

    # Every trial of both jobs is in the one study: numbers 0..7, none lost, none twice.
    (study_id,) = postgres.query(
        "optuna_shared", "SELECT study_id FROM studies WHERE study_name = 'shared-search'")[0]
    trials = postgres.query("optuna_shared",
                            f"SELECT number, state FROM trials WHERE study_id = {study_id}")
    assert sorted(number for number, _ in trials) == list(range(2 * N_TRIALS)), trials
    assert {state for _, state in trials} <= {"COMPLETE", "PRUNED"}, trials
    (best,) = postgres.query(
        "optuna_shared", "SELECT min(v.value) FROM trial_values v JOIN trials t USING (trial_id) "
        f"WHERE t.study_id = {study_id} AND t.state = 'COMPLETE'")[0]

    metrics = [train_case(root)["metrics"] for root, _ in jobs]
    for own in metrics:  # each job counts the trials it ran itself
        assert own["n_trials_completed"] + own["n_trials_pruned"] == N_TRIALS, metrics
        assert N_TRIALS <= own["study_n_trials"] <= 2 * N_TRIALS, metrics
    # The job whose search ended last saw the other's trials finished, and the study's best.
    last = max(metrics, key=lambda m: m["study_n_trials"])
    assert last["study_n_trials"] == 2 * N_TRIALS, metrics
    assert last["study_best_value"] == pytest.approx(best)

    # The storage URL's password never reaches the executed notebook or the reports.
    for root, _ in jobs:
        executed = (root / "reports" / "notebooks" /
                    "notebooks-training_example-train-cpu.ipynb").read_text()
        assert "optuna study 'shared-search' in postgresql://nbgate:***@127.0.0.1" in executed
        for path in (root / "reports").rglob("*"):
            if path.is_file():
                assert postgres.password not in path.read_text(errors="replace"), path
    assert all(postgres.password not in output for output in outputs)


def test_the_example_still_trains_in_memory_without_a_storage(tmp_path: Path) -> None:
    """No OPTUNA_STORAGE: the study is in memory, seeded, and the whole study is this run."""
    root = example_copy(tmp_path / "laptop")
    process = start_pytest(root, clean_env(), "-m", "train and not gpu",
                           "-p", "no:nbgate-tracking")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    metrics = train_case(root)["metrics"]
    assert metrics["n_trials_completed"] + metrics["n_trials_pruned"] == N_TRIALS
    assert metrics["study_n_trials"] == N_TRIALS
    assert metrics["study_best_value"] == metrics["best_trial_value"]
    executed = (root / "reports" / "notebooks" /
                "notebooks-training_example-train-cpu.ipynb").read_text()
    assert "optuna study 'xgboost-breast-cancer' in memory" in executed


def test_mlflow_server_on_postgresql_end_to_end(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    """`mlflow server --backend-store-uri postgresql://...`: a case's run, its metric and its
    tags land in PostgreSQL, and MlflowClient reads them back through the server."""
    url = postgres.create_database("mlflow")
    server = MlflowServer(tmp_path / "server", backend_uri=url).start()
    try:
        root = tmp_path / "project"
        write_notebook(root / "notebooks" / "tracked.ipynb",
                       ["from nbgate import record\nrecord('auc', 0.93)"])
        write_pyproject(root, '[[tool.nbgate.pipelines]]\nnotebook = "notebooks/tracked.ipynb"\n'
                              'kind = "train"\nexperiment = "nbgate-on-postgres"\n'
                              'thresholds = { auc = ">= 0.9" }\n')
        server.wait_ready()
        process = start_pytest(root, {**clean_env(), "MLFLOW_TRACKING_URI": server.url}, "-v")
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
        (case,) = json.loads((root / "reports" / "metrics.json").read_text())["cases"]
        tracking = case["tracking"]
        assert tracking["tracking_uri"] == server.url
        run_id = tracking["run_id"]

        from mlflow import MlflowClient

        run = MlflowClient(tracking_uri=server.url).get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.metrics == {"auc": 0.93}
        assert run.data.tags["nbgate.case_id"] == "notebooks/tracked.ipynb::train[cpu]"
        # Straight from PostgreSQL: the server kept the run there, not in a file or sqlite.
        assert postgres.query("mlflow", "SELECT status FROM runs WHERE run_uuid = "
                                        f"'{run_id}'") == [("FINISHED",)]
        assert postgres.query("mlflow", "SELECT key, value FROM metrics WHERE run_uuid = "
                                        f"'{run_id}'") == [("auc", 0.93)]
        assert not (tmp_path / "server" / "db.sqlite").exists()
    finally:
        server.stop()
