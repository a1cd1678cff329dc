"""A case's fingerprint (SPEC §8): equal across runs of an unchanged case, different after a code
edit or a change to a declared input, unchanged when only outputs are cleared. Played through
real pytest runs with real kernels, reading the fingerprint back from metrics.json."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import nbformat
import pytest

from nbgate.config import ConfigError, load_config
from nbgate.contract.codec import load_metrics
from nbgate.contract.model import Fingerprint
from nbgate.running.fingerprint import checkout_fingerprints, code_digest
from tests.support.nbproject import run_pytest, write_notebook, write_pyproject

CASE = "notebooks/train.ipynb::train[cpu]"


def project(root: Path) -> Path:
    write_notebook(root / "notebooks" / "train.ipynb",
                   ["from nbgate import record\nrecord('auc', 0.9 + x / 100)"])
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    (root / "data" / "more").mkdir()
    (root / "data" / "more" / "extra.csv").write_text("c\n3\n", encoding="utf-8")
    (root / "requirements.txt").write_text("xgboost==3.2.0\n", encoding="utf-8")
    write_pyproject(root, 'timeout = 60\n[[tool.nbgate.pipelines]]\n'
                          'notebook = "notebooks/train.ipynb"\nkind = "train"\n'
                          'parameters = { x = 2 }\ninputs = ["data/"]\n')
    return root


def fingerprint(root: Path) -> Fingerprint:
    run = run_pytest(root, "-p", "no:nbgate-tracking", env={"CI": ""})
    assert run.returncode == 0, run.stdout + run.stderr
    [case] = load_metrics(root / "reports" / "metrics.json").cases
    assert case.fingerprint is not None
    return case.fingerprint


def test_the_fingerprint_follows_what_makes_the_model(tmp_path: Path) -> None:
    root = project(tmp_path)
    first = fingerprint(root)
    assert first.parts["python"] == platform.python_version()
    assert set(first.parts) == {"code", "parameters", "lock", "inputs", "python"}
    # What promote computes in a checkout is what the case recorded.
    config = load_config(root / "pyproject.toml")
    assert config is not None
    assert checkout_fingerprints(config, in_ci=False) == {CASE: first}

    assert fingerprint(root) == first  # unchanged case, second run

    # Outputs and execution counts cleared (as `jupyter nbconvert --clear-output` does).
    notebook = root / "notebooks" / "train.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="old output\n")]
    nb.cells[1].execution_count = 7
    with_outputs = code_digest(nb.cells)
    for cell in nb.cells:
        cell.outputs, cell.execution_count = [], None
    assert code_digest(nb.cells) == with_outputs == first.parts["code"]
    nbformat.write(nb, notebook)
    assert fingerprint(root) == first

    # A declared input's content changes, deep in a folder: only "inputs" differs.
    (root / "data" / "more" / "extra.csv").write_text("c\n4\n", encoding="utf-8")
    changed_input = fingerprint(root)
    assert changed_input.sha256 != first.sha256 and changed_input.changed(first) == ["inputs"]

    # A code edit: only "code" differs.
    nb.cells[1].source += "\nrecord('loss', 0.1)"
    nbformat.write(nb, notebook)
    edited = fingerprint(root)
    assert edited.changed(changed_input) == ["code"]

    # The lock is recorded as absent without requirements.txt; the run's MLflow tags and
    # metrics.json say the same.
    (root / "requirements.txt").unlink()
    no_lock = fingerprint(root)
    assert no_lock.parts["lock"] is None and no_lock.changed(edited) == ["lock"]
    raw = json.loads((root / "reports" / "metrics.json").read_text())
    assert raw["schema"] == 3 and raw["cases"][0]["fingerprint"]["parts"]["lock"] is None


def test_python_is_recorded_not_compared() -> None:
    parts: dict[str, str | None] = {"code": "a" * 64, "parameters": "b" * 64, "lock": None,
                                    "inputs": "c" * 64, "python": "3.11.7"}
    other = Fingerprint.of({**parts, "python": "3.12.1"})
    same = Fingerprint.of(parts)
    assert same.sha256 == other.sha256 and other.changed(same) == []


def test_a_missing_input_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    write_notebook(tmp_path / "notebooks" / "train.ipynb", ["pass"])
    write_pyproject(tmp_path, '[[tool.nbgate.pipelines]]\nnotebook = "notebooks/train.ipynb"\n'
                              'kind = "train"\ninputs = ["data/train.csv"]\n')
    with pytest.raises(ConfigError, match=r"#1 \(notebooks/train.ipynb\)\.inputs\[0\]: "
                                          r"'data/train.csv' does not exist"):
        load_config(tmp_path / "pyproject.toml")
