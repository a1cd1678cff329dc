"""Real kernels: every way a notebook can fail is a readable, specific case failure."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from nbproject import junit_cases, run_pytest, write_notebook, write_pyproject

SECRET = "s3cr3t-value-for-nbgate"
NOTEBOOKS: dict[str, tuple[list[str], str | None]] = {
    "ok": (
        [
            "from nbgate import record\nimport os\nprint('token', os.environ['NBGATE_TEST_TOKEN'])",
            "record('auc', 0.9)\nrecord('x_seen', x)",
        ],
        "x = 1",
    ),
    "cell_error": (
        [
            "from nbgate import record\nrecord('auc', 0.8)",
            "a = 1\nb = 2\nraise ValueError('bad input')\nc = 3",
        ],
        "x = 1",
    ),
    "dies": (["import os\nos._exit(1)"], "x = 1"),
    "slow": (["import time\ntime.sleep(60)"], "x = 1"),
    "missing_metric": (["from nbgate import record\nrecord('auc', 0.9)"], "x = 1"),
    "nan_metric": (["from nbgate import record\nrecord('auc', float('nan'))"], "x = 1"),
    "not_number": (["from nbgate import record\nrecord('auc', 'high')"], "x = 1"),
    "unknown_param": (["pass"], "x = 1"),
    "no_params_cell": (["x = 1"], None),
    "below_threshold": (["from nbgate import record\nrecord('auc', 0.5)"], "x = 1"),
    "leaks_secret": (
        ["import os\nraise RuntimeError('token ' + os.environ['NBGATE_TEST_TOKEN'])"],
        "x = 1",
    ),
}
PIPELINES = {
    "ok": 'parameters = { x = 5 }\nthresholds = { auc = ">= 0.85", x_seen = "== 5" }',
    "cell_error": 'thresholds = { auc = ">= 0.5" }',
    "slow": "timeout = 3",
    "missing_metric": 'thresholds = { auc = ">= 0.5", loss = "<= 1" }',
    "nan_metric": 'thresholds = { auc = ">= 0.5" }',
    "unknown_param": "parameters = { typo = 1 }",
    "no_params_cell": "parameters = { x = 2 }",
    "below_threshold": 'thresholds = { auc = ">= 0.9" }',
}
USER_TEST = """
import pytest

@pytest.mark.parametrize("x", [1, 3])
def test_ok_notebook(run_notebook, x):
    result = run_notebook("notebooks/ok.ipynb", parameters={"x": x}, thresholds={"x_seen": "<= 2"})
    assert result.metrics["x_seen"] == x
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("execution")
    table = "timeout = 60\n"
    for name, (cells, parameters) in NOTEBOOKS.items():
        write_notebook(root / "notebooks" / f"{name}.ipynb", cells, parameters=parameters)
        table += f'[[tool.nbgate.pipelines]]\nnotebook = "notebooks/{name}.ipynb"\nkind = "train"\n'
        table += PIPELINES.get(name, "") + "\n"
    for name, text in {"invalid_json": "{not json", "not_a_notebook": '{"cells": 3}'}.items():
        (root / "notebooks" / f"{name}.ipynb").write_text(text)
        table += f'[[tool.nbgate.pipelines]]\nnotebook = "notebooks/{name}.ipynb"\nkind = "score"\n'
    write_pyproject(root, table)
    (root / "tests").mkdir()
    (root / "tests" / "test_user.py").write_text(textwrap.dedent(USER_TEST))
    return root


@pytest.fixture(scope="module")
def session(project: Path) -> dict[str, dict[str, object]]:
    result = run_pytest(
        project,
        "notebooks",
        "tests",
        "--junitxml=junit.xml",
        "-rA",
        env={"NBGATE_TEST_TOKEN": SECRET},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    cases = {}
    for name, case in junit_cases(project / "junit.xml").items():
        failure = case.find("failure")
        cases[name] = {
            "failed": failure is not None,
            "text": (failure.text or "") if failure is not None else "",
            "properties": {p.get("name"): p.get("value") for p in case.iter("property")},
        }
    cases["__stdout__"] = {"text": result.stdout + result.stderr}
    return cases


def failure_text(project: Path, session: dict, name: str) -> str:
    junit = (project / "junit.xml").read_text()
    assert name in junit
    stdout = str(session["__stdout__"]["text"])
    start = stdout.index(f"_ notebooks/{name}.ipynb::")
    end = stdout.find("\n___", start + 1)
    return stdout[start:end]


def test_passing_case_injects_parameters_and_records_metrics(project: Path, session: dict) -> None:
    stdout = str(session["__stdout__"]["text"])
    assert "PASSED notebooks/ok.ipynb::train[cpu]" in stdout
    executed = json.loads((project / "reports" / "notebooks" / "ok-train-cpu.ipynb").read_text())
    sources = ["".join(c["source"]) for c in executed["cells"]]
    assert any("x = 5" in s for s in sources)  # papermill's injected-parameters cell


def test_failing_cell_shows_index_source_exception_and_traceback(
    project: Path, session: dict
) -> None:
    text = failure_text(project, session, "cell_error")
    assert "ValueError in cell 2: bad input" in text  # no parameters injected: no extra cell
    assert ">3 | raise ValueError('bad input')" in text
    assert "Traceback:" in text and "\x1b[" not in text
    assert "auc=0.8" in text  # recorded before the failure, still reported


def test_kernel_death_names_the_cell_and_does_not_hang(project: Path, session: dict) -> None:
    text = failure_text(project, session, "dies")
    assert "kernel died in cell 1" in text and "os._exit(1)" in text


def test_timeout_names_limit_and_cell(project: Path, session: dict) -> None:
    assert "timed out after 3 s in cell 1" in failure_text(project, session, "slow")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing_metric", "loss not recorded (recorded: auc)"),
        ("nan_metric", "auc is not finite (nan)"),
        ("not_number", "TypeError in cell 1: nbgate.record('auc', ...) needs a plain number"),
        ("unknown_param", "parameter typo not defined in the 'parameters' cell (it defines: x)"),
        ("no_params_cell", "has no cell tagged 'parameters', but parameters are injected (x)"),
        ("below_threshold", "auc 0.5000 < 0.9000 (short by 0.4000)"),
        ("invalid_json", "not a notebook: invalid JSON"),
        ("not_a_notebook", "not a notebook:"),
    ],
)
def test_bad_notebooks_fail_with_a_specific_reason(
    project: Path, session: dict, name: str, expected: str
) -> None:
    assert expected in failure_text(project, session, name)


def test_secrets_never_reach_reports_or_executed_notebooks(project: Path, session: dict) -> None:
    assert "token [MASKED]" in failure_text(project, session, "leaks_secret")
    assert SECRET not in str(session["__stdout__"]["text"])
    assert SECRET not in (project / "junit.xml").read_text()
    for path in (project / "reports").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_metrics_reach_user_properties_in_pytests_junit(project: Path) -> None:
    junit = (project / "junit.xml").read_text()
    assert '<property name="auc" value="0.9" />' in junit
    assert '<property name="auc" value="0.8" />' in junit  # from the failing cell_error case


def test_fixture_runs_notebooks_from_parametrized_tests(project: Path, session: dict) -> None:
    stdout = str(session["__stdout__"]["text"])
    assert "PASSED tests/test_user.py::test_ok_notebook[1]" in stdout
    assert "FAILED tests/test_user.py::test_ok_notebook[3]" in stdout
    text = stdout[stdout.index("_ test_ok_notebook[3] _") :]
    assert (
        "tests/test_user.py::test_ok_notebook[3] failed: x_seen 3 > 2 (over by 1)" in text
    )
