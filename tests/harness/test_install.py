"""The harness installs without the example's stack: ``pip install .`` with no extras."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.nbproject import write_notebook, write_pyproject

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")


def test_a_plain_install_collects_a_project_without_the_example_stack(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".tools", ".git", "reports", "mlruns", "mlflow.db", "__pycache__", "*.egg-info",
        "build", "bench", "tests", "notebooks", ".gitlab-ci-local"))
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_OFFLINE": "1"}  # only what `make install` already cached
    subprocess.run([str(UV), "venv", "-q", "--python", sys.executable, str(venv)],
                   check=True, env=env, capture_output=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(UV), "pip", "install", "-q", "--python", str(python), "-c",
         str(ROOT / "requirements.txt"), str(source)], env=env, capture_output=True, text=True)
    assert install.returncode == 0, install.stderr

    missing = subprocess.run(
        [str(python), "-c", "import importlib.util as u, nbgate, reporting.files.plugin; "
         "print([m for m in ('xgboost', 'optuna', 'nbmake', 'papermill') if u.find_spec(m)])"],
        capture_output=True, text=True)
    assert missing.stdout.strip() == "[]", missing.stdout + missing.stderr

    project = tmp_path / "project"
    write_notebook(project / "notebooks" / "a.ipynb", ["from nbgate import record\nrecord('m', 1)"])
    write_pyproject(project, '[[tool.nbgate.pipelines]]\nnotebook = "notebooks/a.ipynb"\n'
                             'kind = "train"\nthresholds = { m = ">= 1" }\n')
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    collect = subprocess.run([str(python), "-m", "pytest", "--collect-only", "-q", "-m", "train"],
                             cwd=project, env=clean, capture_output=True, text=True)
    assert collect.returncode == 0, collect.stdout + collect.stderr
    assert "notebooks/a.ipynb::train[cpu]" in collect.stdout
