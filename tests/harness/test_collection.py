"""Declared pipelines become cases: ids, marks, selection, and a cheap collection."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.nbproject import run_pytest, write_notebook, write_pyproject

CONFIG = """
[tool.nbgate.runners.cpu]
[tool.nbgate.runners.gpu]
gpu = true
[[tool.nbgate.pipelines]]
notebook = "notebooks/train.ipynb"
kind = "train"
runners = ["cpu", "gpu"]
[[tool.nbgate.pipelines]]
notebook = "notebooks/score.ipynb"
kind = "score"
runners = ["cpu", "gpu"]
"""
TRAIN = ["notebooks/train.ipynb::train[cpu]", "notebooks/train.ipynb::train[gpu]"]
SCORE = ["notebooks/score.ipynb::score[cpu]", "notebooks/score.ipynb::score[gpu]"]
ALL = SCORE + TRAIN  # pytest walks the folder in name order
HEAVY = (
    "mlflow",
    "xgboost",
    "pandas",
    "numpy",
    "papermill",
    "nbclient",
    "nbformat",
    "jupyter_client",
    "sklearn",
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("collect")
    write_notebook(root / "notebooks" / "train.ipynb", ["raise SystemExit('must not run')"])
    write_notebook(root / "notebooks" / "score.ipynb", ["raise SystemExit('must not run')"])
    write_notebook(root / "notebooks" / "undeclared.ipynb", ["pass"])
    write_pyproject(root, CONFIG)
    (root / "tests").mkdir()
    (root / "tests" / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
    (root / "conftest.py").write_text(
        "import sys\n\n"
        "def pytest_collection_finish(session):\n"
        f"    heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "    print('HEAVY-IMPORTS:', ','.join(heavy) or 'none')\n"
    )
    return root


def collected(root: Path, *args: str) -> list[str]:
    result = run_pytest(root, "--collect-only", "-q", "--strict-markers", *args)
    assert result.returncode in (0, 5), result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_plain_pytest_lists_exactly_the_declared_cases(project: Path) -> None:
    assert collected(project) == ALL


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("train", TRAIN),
        ("score and not gpu", SCORE[:1]),
        ("train and cpu", TRAIN[:1]),
        ("gpu", [SCORE[1], TRAIN[1]]),
    ],
)
def test_markers_select_by_kind_and_runner(
    project: Path, expression: str, expected: list[str]
) -> None:
    assert collected(project, "-m", expression) == expected


def test_paths_decide_whether_notebooks_run(project: Path) -> None:
    assert collected(project, "notebooks/") == ALL
    assert collected(project, "notebooks/score.ipynb") == SCORE
    assert collected(project, "tests/test_plain.py") == ["tests/test_plain.py::test_plain"]


def test_nbmake_mode_leaves_every_notebook_to_nbmake(project: Path) -> None:
    assert collected(project, "--nbmake", "notebooks/") == [
        f"notebooks/{name}.ipynb::{name}.ipynb" for name in ("score", "train", "undeclared")
    ]


def test_markers_are_registered(project: Path) -> None:
    result = run_pytest(project, "--markers")
    for marker in ("train:", "score:", "cpu:", "gpu:"):
        assert f"@pytest.mark.{marker}" in result.stdout


def test_collection_imports_nothing_heavy_and_runs_nothing(project: Path) -> None:
    # nbmake's plugin imports nbclient on load; nbgate's share is what is measured here.
    result = run_pytest(project, "--collect-only", "-q", "-s", "-p", "no:nbmake")
    assert "HEAVY-IMPORTS: none" in result.stdout
    assert "must not run" not in result.stdout + result.stderr
