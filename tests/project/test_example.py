"""The shipped example end to end: train, then score with the model training wrote."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.support.nbproject import junit_cases, run_pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN_CPU = "notebooks/training_example.ipynb::train[cpu]"
TRAIN_GPU = "notebooks/training_example.ipynb::train[gpu]"
SCORE_CPU = "notebooks/scoring_example.ipynb::score[cpu]"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example project whose training runs only a few optuna trials."""
    root = tmp_path_factory.mktemp("example")
    for name in ("notebooks", "config.yaml", "scoring_config.yaml", "conftest.py"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name)
        else:
            shutil.copy(source, root / name)
    pyproject = (REPO / "pyproject.toml").read_text()
    pyproject, count = re.subn(
        r'(notebook = "notebooks/training_example.ipynb".*?parameters = \{ )',
        r"\1n_trials = 3, ",
        pyproject,
        flags=re.S,
    )
    assert count == 1, "the example's training pipeline declares parameters"
    (root / "pyproject.toml").write_text(pyproject)
    return root


def test_train_then_score_under_xdist(example: Path) -> None:
    train = run_pytest(example, "-m", "train", "-n", "2", "-v", "--junitxml=train.xml")
    assert train.returncode == 0, train.stdout + train.stderr
    assert f"PASSED {TRAIN_CPU}" in train.stdout
    gpu = re.escape(TRAIN_GPU)
    assert re.search(rf"SKIPPED {gpu}|{gpu} SKIPPED \(no CUDA GPU visible", train.stdout)
    names = [c.get("name") for c in junit_cases(example / "train.xml").values()]
    assert sorted(names) == ["train[cpu]", "train[gpu]"]  # each case reported exactly once
    assert (example / "models" / "xgb_model.json").is_file()
    executed = example / "reports" / "notebooks" / "notebooks-training_example-train-cpu.ipynb"
    assert "n_trials = 3" in executed.read_text()
    # The example's first outputs carry no warning (optuna's tqdm wants ipywidgets otherwise).
    cells = json.loads(executed.read_text())["cells"]
    streams = [o.get("text", "") for c in cells if c["cell_type"] == "code"
               for o in c.get("outputs", []) if o.get("output_type") == "stream"]
    assert not [s for s in streams if "Warning" in "".join(s)], streams

    score = run_pytest(example, "-m", "score", "-v")
    assert score.returncode == 0, score.stdout + score.stderr
    assert f"{SCORE_CPU} PASSED" in score.stdout
    assert (example / "scores" / "predictions.csv").is_file()
    executed_score = json.loads(
        (example / "reports" / "notebooks" / "notebooks-scoring_example-score-cpu.ipynb")
        .read_text()
    )
    assert executed_score["cells"]


def test_gpu_case_fails_when_a_gpu_is_required(example: Path) -> None:
    for args, env in (
        (["--nbgate-require-gpu"], {}),
        ([], {"NBGATE_REQUIRE_GPU": "1"}),
    ):
        result = run_pytest(example, "-m", "train and gpu", *args, env=env)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"FAILED {TRAIN_GPU}" in result.stdout
        assert "no CUDA GPU visible and a GPU is required" in result.stdout
