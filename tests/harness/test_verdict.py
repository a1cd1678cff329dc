"""One verdict: every report says what pytest said about every case, also for the user's own
tests that run a notebook and then judge it themselves."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.nbproject import junit_cases, run_pytest, write_notebook, write_pyproject

USER_TESTS = """
import pytest

def test_asserts_after_the_run(run_notebook):
    result = run_notebook("notebooks/ok.ipynb")
    assert result.metrics["auc"] > 0.99, "auc too low for release"

def test_skips_after_the_run(run_notebook):
    run_notebook("notebooks/ok.ipynb")
    pytest.skip("not on weekends")

def test_accepts_a_failing_notebook(run_notebook):
    result = run_notebook("notebooks/broken.ipynb", check=False)
    assert not result.passed

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("cleanup failed")

def test_fails_in_teardown(run_notebook, broken_teardown):
    run_notebook("notebooks/ok.ipynb")

@pytest.mark.xfail(reason="known drift", strict=True)
def test_expected_to_fail(run_notebook):
    result = run_notebook("notebooks/ok.ipynb")
    assert result.metrics["auc"] > 0.99
"""
EXPECTED = {  # node id -> outcome every report must give
    "tests/test_user.py::test_asserts_after_the_run": "failed",
    "tests/test_user.py::test_skips_after_the_run": "skipped",
    "tests/test_user.py::test_accepts_a_failing_notebook": "passed",
    "tests/test_user.py::test_fails_in_teardown": "failed",
    "tests/test_user.py::test_expected_to_fail": "skipped",
    "notebooks/ok.ipynb::train[cpu]": "passed",
}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("verdict")
    write_notebook(root / "notebooks" / "ok.ipynb",
                   ["from nbgate import record\nrecord('auc', 0.9)"])
    write_notebook(root / "notebooks" / "broken.ipynb", ["raise ValueError('nope')"])
    write_pyproject(root, 'timeout = 60\n[[tool.nbgate.pipelines]]\n'
                          'notebook = "notebooks/ok.ipynb"\nkind = "train"\n',
                    testpaths='["notebooks", "tests"]')
    (root / "tests").mkdir()
    (root / "tests" / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    run = run_pytest(root, "-p", "no:nbgate-tracking", "--junitxml=pytest-junit.xml")
    assert run.returncode == 1, run.stdout + run.stderr
    return root


def test_reports_agree_with_pytest_on_every_case(reports: Path) -> None:
    pytest_says = junit_cases(reports / "pytest-junit.xml")
    assert pytest_says["test_asserts_after_the_run"].find("failure") is not None

    document = json.loads((reports / "reports" / "metrics.json").read_text())
    outcomes = {c["id"]: c["outcome"] for c in document["cases"]}
    assert outcomes == EXPECTED

    junit = ET.parse(reports / "reports" / "junit.xml").getroot()
    suite = junit.find("testsuite")
    assert suite is not None and suite.get("failures") == "2" and suite.get("skipped") == "2"
    for case in junit.iter("testcase"):
        got = ("failed" if case.find("failure") is not None or case.find("error") is not None
               else "skipped" if case.find("skipped") is not None else "passed")
        assert got == EXPECTED[case.get("name", "")], case.get("name")

    summary = (reports / "reports" / "summary.md").read_text()
    assert "❌ 2 failed · ✅ 2 passed · ⏭ 2 skipped" in summary


def test_the_users_assertion_is_the_failure(reports: Path) -> None:
    document = json.loads((reports / "reports" / "metrics.json").read_text())
    cases = {c["id"]: c for c in document["cases"]}
    failure = cases["tests/test_user.py::test_asserts_after_the_run"]["failure"]
    assert failure["kind"] == "test"
    assert "auc too low for release" in failure["message"]
    teardown = cases["tests/test_user.py::test_fails_in_teardown"]["failure"]
    assert "error in teardown" in teardown["message"] and "cleanup failed" in teardown["message"]
    skipped = cases["tests/test_user.py::test_skips_after_the_run"]
    assert skipped["skip_reason"] == "not on weekends"
    assert cases["tests/test_user.py::test_expected_to_fail"]["skip_reason"] == "xfail: known drift"
    junit = (reports / "reports" / "junit.xml").read_text()
    assert "auc too low for release" in junit


LABEL_TESTS = """
def test_on_the_cpu_runner(run_notebook):
    result = run_notebook("notebooks/device.ipynb")
    assert result.runner == "cpu"

def test_on_an_undeclared_runner(run_notebook):
    run_notebook("notebooks/device.ipynb", runner="tpu")
"""


def test_run_notebook_cases_are_labelled_as_declared(tmp_path: Path) -> None:
    """A fixture run on runner "cpu" gets the cpu runner's parameters, as a declared case does;
    a runner the project does not declare is a usage error, not a silent label."""
    root = tmp_path / "labels"
    write_notebook(root / "notebooks" / "device.ipynb",
                   ["from nbgate import record\nrecord('on_cpu', float(device == 'cpu'))"],
                   parameters="device = 'unset'")
    write_pyproject(root, '[tool.nbgate.runners.cpu]\nparameters = { device = "cpu" }\n',
                    testpaths='["tests"]')
    (root / "tests").mkdir()
    (root / "tests" / "test_labels.py").write_text(textwrap.dedent(LABEL_TESTS))
    run = run_pytest(root, "-p", "no:nbgate-tracking", "tests/test_labels.py")
    assert "no such runner; declared runners: cpu" in run.stdout + run.stderr
    ok = run_pytest(root, "-p", "no:nbgate-tracking",
                    "tests/test_labels.py::test_on_the_cpu_runner")
    assert ok.returncode == 0, ok.stdout
    [case] = json.loads((root / "reports" / "metrics.json").read_text())["cases"]
    assert case["runner"] == "cpu" and case["parameters"] == {"device": "cpu"}
    assert case["metrics"] == {"on_cpu": 1.0}
