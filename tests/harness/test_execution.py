"""Real kernels: every way a notebook can fail is a readable, specific case failure."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.support.nbproject import junit_cases, run_pytest, write_notebook, write_pyproject

SECRET = "s3cr3t-value-for-nbgate"
# Quote, backslash and non-ASCII: repr() and json.dumps() each write it differently.
ESCAPED_SECRET = 'pa"ss\\w\u00f6rd-42'
SHORT_SECRET = "8chars!!"  # GitLab's minimum length for a masked variable
INLINE_FIGURE = (
    "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
    "import matplotlib.pyplot as plt\n"
)
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
    # A figure that fails to draw: the cell's code finished, the error output comes after.
    "figure_error": (
        ["pass", INLINE_FIGURE + "fig, ax = plt.subplots()\nax.set_title('$\\\\badcommand$')"],
        "x = 1",
    ),
    "usage_error": (["%notamagic --flag"], "x = 1"),
    "exit_clean": (
        [
            "from nbgate import record\nrecord('auc', 0.9)",
            "import sys\nsys.exit(0)",
            "raise RuntimeError('ran past sys.exit(0)')",
        ],
        "x = 1",
    ),
    "exit_status": (["import sys\nsys.exit(3)"], "x = 1"),
    "inf_metric": (["from nbgate import record\nrecord('x', float('inf'))"], "x = 1"),
    "nan_without_rule": (
        ["from nbgate import record\nrecord('auc', 0.9)\nrecord('y', float('-inf'))"],
        "x = 1",
    ),
    "leaks_everywhere": (
        [
            "import json, os, sys, time\n"
            "token = os.environ['NBGATE_TEST_TOKEN']\n"
            "sys.stdout.write(token[:5]); sys.stdout.flush(); time.sleep(0.5)\n"
            "sys.stdout.write(token[5:] + '\\n'); sys.stdout.flush()\n"
            "password = os.environ['NBGATE_TEST_PASSWORD']\n"
            "print(repr(password)); print(json.dumps(password)); print({'p': password})\n"
            "print('short', os.environ['NBGATE_SHORT_TOKEN'])",
            "from nbgate import record, record_figure\n"
            + INLINE_FIGURE
            + "record('auc_' + token, 0.9)\n"
            "fig, ax = plt.subplots()\nrecord_figure('roc_' + token, fig)\nplt.close(fig)",
        ],
        "x = 1",
    ),
    "shared_parameters": (
        ["from nbgate import record\nrecord('on_cpu', float(device == 'cpu'))"],
        "x = 1\ndevice = 'default'",
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
    "exit_clean": 'thresholds = { auc = ">= 0.5" }',
    "inf_metric": 'thresholds = { x = ">= 0" }',
    "shared_parameters": 'thresholds = { on_cpu = "== 1" }',
}
# Runner and CI parameters reach only notebooks that define them: no notebook here but
# shared_parameters defines device, none defines is_local_development.
SHARED = """
[tool.nbgate.runners.cpu]
parameters = { device = "cpu" }
[tool.nbgate.ci]
parameters = { is_local_development = false }
"""
USER_TEST = """
import pytest

@pytest.mark.parametrize("x", [1, 3])
def test_ok_notebook(run_notebook, x):
    result = run_notebook("notebooks/ok.ipynb", parameters={"x": x}, thresholds={"x_seen": "<= 2"})
    assert result.metrics["x_seen"] == x
"""


def pipeline(name: str, kind: str = "train", extra: str = "") -> str:
    header = "[[tool.nbgate.pipelines]]"
    return f'{header}\nnotebook = "notebooks/{name}.ipynb"\nkind = "{kind}"\n{extra}\n'


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("execution")
    table = "timeout = 60\n" + SHARED
    for name, (cells, parameters) in NOTEBOOKS.items():
        write_notebook(root / "notebooks" / f"{name}.ipynb", cells, parameters=parameters)
        table += pipeline(name, extra=PIPELINES.get(name, ""))
    # Counting cells: parameters (1), two markdown cells (2, 3), code (4), failing code (5).
    numbered = write_notebook(
        root / "notebooks" / "numbered.ipynb", ["y = 1", "raise KeyError('k')"]
    )
    add_markdown(numbered, at=1, count=2)
    table += pipeline("numbered", extra="parameters = { x = 2 }")
    for name, kernelspec in KERNELS.items():
        path = write_notebook(root / "notebooks" / f"{name}.ipynb", KERNEL_CELLS)
        set_kernelspec(path, kernelspec)
        table += pipeline(name, extra='thresholds = { ran = "== 1" }')
    for name, text in {"invalid_json": "{not json", "not_a_notebook": '{"cells": 3}'}.items():
        (root / "notebooks" / f"{name}.ipynb").write_text(text)
        table += pipeline(name, kind="score")
    write_pyproject(root, table)
    (root / "tests").mkdir()
    (root / "tests" / "test_user.py").write_text(textwrap.dedent(USER_TEST))
    return root


KERNEL_CELLS = ["from nbgate import record\nrecord('ran', 1)"]
KERNELS = {
    "r_kernel": {"name": "ir", "display_name": "R", "language": "R"},
    # The name alone: an R kernel as some tools write it, no language and not installed.
    "julia_no_language": {"name": "julia-1.10", "display_name": "Julia 1.10"},
    # Python kernels of other names run on the harness's interpreter.
    "conda_kernel": {"name": "conda-env-ml-py", "display_name": "Python [conda env:ml]",
                     "language": "python"},
    "named_venv": {"name": "my-venv", "display_name": "my venv", "language": "python"},
}


def add_markdown(path: Path, at: int, count: int) -> None:
    import nbformat
    from nbformat.v4 import new_markdown_cell

    nb = nbformat.read(str(path), as_version=4)
    for n in range(count):
        nb.cells.insert(at, new_markdown_cell(f"## note {n}"))
    nbformat.write(nb, str(path))


def set_kernelspec(path: Path, kernelspec: dict[str, str]) -> None:
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    nb.metadata["kernelspec"] = kernelspec
    if kernelspec.get("language"):
        nb.metadata["language_info"] = {"name": kernelspec["language"].lower()}
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def session(project: Path) -> dict[str, dict[str, object]]:
    result = run_pytest(
        project,
        "notebooks",
        "tests",
        "--junitxml=junit.xml",
        "-rA",
        env={
            "NBGATE_TEST_TOKEN": SECRET,
            "NBGATE_TEST_PASSWORD": ESCAPED_SECRET,
            "NBGATE_SHORT_TOKEN": SHORT_SECRET,
            "CI": "true",  # ci.parameters are injected only in CI
        },
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


def metrics_case(project: Path, name: str) -> dict:
    document = json.loads((project / "reports" / "metrics.json").read_text())
    return next(c for c in document["cases"] if c["notebook"] == f"notebooks/{name}.ipynb")


def executed(project: Path, name: str) -> dict:
    path = project / "reports" / "notebooks" / f"notebooks-{name}-train-cpu.ipynb"
    return json.loads(path.read_text())


def test_passing_case_injects_parameters_and_records_metrics(project: Path, session: dict) -> None:
    stdout = str(session["__stdout__"]["text"])
    assert "PASSED notebooks/ok.ipynb::train[cpu]" in stdout
    sources = ["".join(c["source"]) for c in executed(project, "ok")["cells"]]
    assert any("x = 5" in s for s in sources)  # papermill's injected-parameters cell


def test_failing_cell_shows_number_source_exception_and_traceback(
    project: Path, session: dict
) -> None:
    text = failure_text(project, session, "cell_error")
    # The third cell; nothing injected, so no extra cell, and In [3] is the same number.
    assert "ValueError in cell 3: bad input" in text
    assert ">3 | raise ValueError('bad input')" in text
    assert "Traceback:" in text and "\x1b[" not in text
    assert "auc=0.8" in text  # recorded before the failure, still reported


def test_cell_numbers_count_the_notebooks_own_cells_and_give_the_execution_count(
    project: Path, session: dict
) -> None:
    # parameters (1), markdown (2, 3), y = 1 (4), the failing cell (5); the injected cell runs
    # second, so the failing cell is In [4].
    text = failure_text(project, session, "numbered")
    assert text.split("\n")[1] == "KeyError in cell 5: 'k'"  # the cause first, for pytest -r
    assert "where: cell 5 (counting from 1, injected cell excluded; In [4])" in text
    assert metrics_case(project, "numbered")["failure"]["cell_index"] == 5  # executed notebook


def test_kernel_death_names_the_cell_and_does_not_hang(project: Path, session: dict) -> None:
    text = failure_text(project, session, "dies")
    assert text.split("\n")[1].startswith("kernel died in cell 2 (the process exited by os._exit")
    assert "where: cell 2 (counting from 1)" in text and "os._exit(1)" in text


def test_timeout_names_limit_and_cell(project: Path, session: dict) -> None:
    text = failure_text(project, session, "slow")
    assert text.split("\n")[1] == "timed out after 3 s in cell 2"
    assert "where: cell 2 (counting from 1)" in text


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing_metric", "loss not recorded (recorded: auc)"),
        ("nan_metric", "auc is not finite (nan)"),
        ("inf_metric", "x is not finite (inf)"),
        ("nan_without_rule", "1 metric not finite: y is not finite (-inf)"),
        (
            "not_number",
            "TypeError in cell 2: nbgate.record('auc', ...) needs a plain number",
        ),
        (
            "unknown_param",
            "unknown pipeline parameter typo; the 'parameters' cell defines: x",
        ),
        (
            "no_params_cell",
            "has no cell tagged 'parameters', but parameters are injected (pipeline: x)",
        ),
        ("below_threshold", "auc 0.5000 < 0.9000 (short by 0.4000)"),
        ("invalid_json", "not a notebook: invalid JSON"),
        ("not_a_notebook", "not a notebook:"),
        (
            "figure_error",
            "ValueError in cell 3, after its code finished (in a display or "
            "post-execute hook): \\badcommand",
        ),
        ("usage_error", "UsageError in cell 2: Line magic function `%notamagic`"),
        (
            "exit_status",
            "SystemExit in cell 2: exited with 3 (only sys.exit(0) ends a "
            "notebook cleanly)",
        ),
        (
            "r_kernel",
            "not a Python notebook: notebooks/r_kernel.ipynb is a R notebook; kernel 'ir' (R) is "
            "not installed here, and nbgate runs Python notebooks only",
        ),
        (
            "julia_no_language",
            "not a Python notebook: notebooks/julia_no_language.ipynb names kernel 'julia-1.10', "
            "which is not installed here, and no language",
        ),
    ],
)
def test_bad_notebooks_fail_with_a_specific_reason(
    project: Path, session: dict, name: str, expected: str
) -> None:
    assert expected in failure_text(project, session, name)


def test_other_language_notebooks_never_run_as_python(project: Path, session: dict) -> None:
    for name in ("r_kernel", "julia_no_language"):
        case = metrics_case(project, name)
        assert case["outcome"] == "failed" and "ran" not in case["metrics"]


def test_python_kernels_of_any_name_run_on_the_harness_interpreter(
    project: Path, session: dict
) -> None:
    stdout = str(session["__stdout__"]["text"])
    for name in ("conda_kernel", "named_venv"):
        assert f"PASSED notebooks/{name}.ipynb::train[cpu]" in stdout


def test_sys_exit_0_is_a_clean_early_stop(project: Path, session: dict) -> None:
    stdout = str(session["__stdout__"]["text"])
    assert "PASSED notebooks/exit_clean.ipynb::train[cpu]" in stdout
    assert metrics_case(project, "exit_clean")["metrics"] == {"auc": 0.9}
    last = executed(project, "exit_clean")["cells"][-1]
    assert last["execution_count"] is None and last["outputs"] == []  # never ran


def test_shared_parameters_reach_only_notebooks_that_define_them(
    project: Path, session: dict
) -> None:
    stdout = str(session["__stdout__"]["text"])
    assert "PASSED notebooks/shared_parameters.ipynb::train[cpu]" in stdout
    # runners.cpu's device is injected where the parameters cell defines it; ci's
    # is_local_development is defined by no notebook, so none gets it (and none fails on it).
    assert metrics_case(project, "shared_parameters")["parameters"] == {"device": "cpu"}
    assert metrics_case(project, "ok")["parameters"] == {"x": 5}
    assert metrics_case(project, "numbered")["parameters"] == {"x": 2}


def secret_forms() -> list[str]:
    return [
        SECRET,
        SHORT_SECRET,
        ESCAPED_SECRET,
        repr(ESCAPED_SECRET)[1:-1],
        json.dumps(ESCAPED_SECRET)[1:-1],
    ]


def written_files(project: Path) -> list[Path]:
    files = [project / "junit.xml", project / "mlflow.db"]
    for folder in ("reports", "mlruns"):
        files += [p for p in (project / folder).rglob("*") if p.is_file()]
    return files


def test_secrets_never_reach_reports_executed_notebooks_or_mlflow(
    project: Path, session: dict
) -> None:
    assert "token [MASKED]" in failure_text(project, session, "leaks_secret")
    stdout = str(session["__stdout__"]["text"])
    files = written_files(project)
    assert project / "mlflow.db" in files and any("mlruns" in str(p) for p in files)
    for form in secret_forms():
        assert form not in stdout, form
        for path in files:
            assert form.encode() not in path.read_bytes(), (form, path)
            assert form not in path.name, (form, path)


def test_split_escaped_and_named_secrets_are_masked_where_they_were(
    project: Path, session: dict
) -> None:
    cells = executed(project, "leaks_everywhere")["cells"]
    stdout = "".join(
        "".join(o["text"]) for o in cells[1]["outputs"] if o.get("name") == "stdout"
    )
    assert stdout.startswith("[MASKED]\n")  # written in two flushed parts
    assert stdout.count("[MASKED]") == 5  # the token, repr, JSON, dict repr, the short one
    case = metrics_case(project, "leaks_everywhere")
    # Names keep record()'s characters, so MLflow and GitLab's metrics report accept them.
    assert case["outcome"] == "passed", case["failure"]
    assert case["metrics"] == {"auc_MASKED": 0.9}
    assert list(case["figures"]) == ["roc_MASKED"]
    figure = case["figures"]["roc_MASKED"]
    assert figure.endswith("/notebooks-leaks_everywhere-train-cpu-roc_MASKED.png")


def test_metrics_reach_user_properties_in_pytests_junit(project: Path) -> None:
    junit = (project / "junit.xml").read_text()
    assert '<property name="auc" value="0.9" />' in junit
    assert '<property name="auc" value="0.8" />' in junit  # from the failing cell_error case


def test_fixture_runs_notebooks_from_parametrized_tests(project: Path, session: dict) -> None:
    stdout = str(session["__stdout__"]["text"])
    assert "PASSED tests/test_user.py::test_ok_notebook[1]" in stdout
    assert "FAILED tests/test_user.py::test_ok_notebook[3]" in stdout
    text = stdout[stdout.index("_ test_ok_notebook[3] _") :]
    assert text.split("\n")[1] == "x_seen 3 > 2 (over by 1)"  # the cause, first
