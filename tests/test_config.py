"""[tool.nbgate] validation: every mistake names the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from nbproject import write_notebook, write_pyproject

from nbgate.config import ConfigError, load_config

pytest_plugins = ["pytester"]

GOOD = """
reports = "out"
timeout = 120
[tool.nbgate.runners.cpu]
parameters = { device = "cpu" }
[tool.nbgate.runners.gpu]
parameters = { device = "cuda" }
gpu = true
[tool.nbgate.ci]
parameters = { is_local_development = false }
[[tool.nbgate.pipelines]]
notebook = "notebooks/train.ipynb"
kind = "train"
runners = ["cpu", "gpu"]
parameters = { notebook_dir = "notebooks", device = "default" }
thresholds = { roc_auc = ">= 0.95", log_loss = "<=0.25" }
outputs = ["models/m.json"]
version = "1.2.0"
[[tool.nbgate.pipelines]]
notebook = "notebooks/score.ipynb"
kind = "score"
timeout = 30
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_notebook(tmp_path / "notebooks" / "train.ipynb", ["pass"])
    write_notebook(tmp_path / "notebooks" / "score.ipynb", ["pass"])
    return tmp_path


def test_valid_config_is_read(project: Path) -> None:
    config = load_config(write_pyproject(project, GOOD))
    assert config is not None
    assert config.reports == project / "out"
    assert [c.id for c in config.cases()] == [
        "notebooks/train.ipynb::train[cpu]",
        "notebooks/train.ipynb::train[gpu]",
        "notebooks/score.ipynb::score[cpu]",
    ]
    train_gpu = config.cases()[1]
    assert train_gpu.runner.gpu and train_gpu.slug == "train-train-gpu"
    assert [t.rule.text for t in train_gpu.pipeline.thresholds] == [">= 0.95", "<= 0.25"]
    score = config.pipelines[1]
    assert score.timeout == 30 and score.runners == ("cpu",)
    assert config.pipelines[0].timeout == 120


def test_parameters_merge_pipeline_runner_then_ci(project: Path) -> None:
    config = load_config(write_pyproject(project, GOOD))
    assert config is not None
    case = config.cases()[1]
    assert config.parameters_for(case, in_ci=False) == {
        "notebook_dir": "notebooks",
        "device": "cuda",
    }
    assert config.parameters_for(case, in_ci=True)["is_local_development"] is False


def test_no_table_means_no_config(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert load_config(tmp_path / "pyproject.toml") is None
    assert load_config(tmp_path / "missing.toml") is None


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("timeout = 120", "timout = 120"), ["[tool.nbgate].timout", "unknown key", "timeout"]),
        (
            ('runners = ["cpu", "gpu"]', 'runners = ["cpu", "tpu"]'),
            ["#1 (notebooks/train.ipynb).runners", "unknown runner 'tpu'", "cpu, gpu"],
        ),
        (
            ('roc_auc = ">= 0.95"', 'roc_auc = "at least 0.95"'),
            ["thresholds.roc_auc", "'at least 0.95' is not a threshold", ">=, >, <=, <, =="],
        ),
        (
            ('notebook = "notebooks/score.ipynb"', 'notebook = "notebooks/nope.ipynb"'),
            ["#2 (notebooks/nope.ipynb).notebook", "does not exist"],
        ),
        (
            (
                'notebook = "notebooks/score.ipynb"\nkind = "score"',
                'notebook = "notebooks/train.ipynb"\nkind = "train"',
            ),
            ["#2 (notebooks/train.ipynb)", "duplicate pipeline", "#1"],
        ),
        (
            ("timeout = 30", 'timeout = "30"'),
            ["#2 (notebooks/score.ipynb).timeout", "expected a number of seconds, got a string"],
        ),
        (("timeout = 30", "timeout = -1"), ["expected a positive number"]),
        (('kind = "score"', 'kind = "predict"'), ["'predict' is not a kind", "train, score"]),
        (("gpu = true", 'gpu = "yes"'), ["[tool.nbgate.runners.gpu].gpu", "true or false"]),
        (('version = "1.2.0"', 'version = "v1"'), ["'v1' is not a semantic version"]),
        (
            ('outputs = ["models/m.json"]', 'outputs = ["../elsewhere.json"]'),
            ["outputs[0]", "must be a path inside"],
        ),
        (
            ('notebook = "notebooks/score.ipynb"', 'notebook = "../score.ipynb"'),
            ["must be a path inside"],
        ),
        (('notebook = "notebooks/score.ipynb"', "notebook = 3"), ["expected a path to an .ipynb"]),
        (
            ("[tool.nbgate.runners.gpu]", "[tool.nbgate.runners.train]"),
            ["[tool.nbgate.runners.train]", "not train or score"],
        ),
    ],
)
def test_mistakes_name_file_key_and_what_is_allowed(
    project: Path, edit: tuple[str, str], expected: list[str]
) -> None:
    old, new = edit
    assert old in GOOD
    path = write_pyproject(project, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: ")
    for fragment in expected:
        assert fragment in message


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.nbgate\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_pytest_shows_a_usage_error_without_traceback(
    pytester: pytest.Pytester, project: Path
) -> None:
    write_notebook(pytester.path / "notebooks" / "train.ipynb", ["pass"])
    write_notebook(pytester.path / "notebooks" / "score.ipynb", ["pass"])
    write_pyproject(pytester.path, GOOD.replace('"<=0.25"', '"<= lots"'))
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "ERROR:" in err and "thresholds.log_loss" in err and "'<= lots'" in err
    assert "Traceback" not in err + result.stdout.str()
