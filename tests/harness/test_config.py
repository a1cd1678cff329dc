"""[tool.nbgate] validation: every mistake names the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbgate.config import RESERVED_MARKS, ConfigError, load_config
from tests.support.nbproject import write_notebook, write_pyproject

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
    assert train_gpu.runner.gpu and train_gpu.slug == "notebooks-train-train-gpu"
    assert [t.rule.text for t in train_gpu.pipeline.thresholds] == [">= 0.95", "<= 0.25"]
    score = config.pipelines[1]
    assert score.timeout == 30 and score.runners == ("cpu",)
    assert config.pipelines[0].timeout == 120


def test_parameters_merge_pipeline_runner_then_ci(project: Path) -> None:
    config = load_config(write_pyproject(project, GOOD))
    assert config is not None
    case = config.cases()[1]

    def merged(in_ci: bool) -> dict[str, object]:  # later sources win, as the run injects them
        values: dict[str, object] = {}
        for source in config.parameter_sources(case, in_ci):
            values.update(source.values)
        return values

    assert merged(in_ci=False) == {"notebook_dir": "notebooks", "device": "cuda"}
    assert merged(in_ci=True)["is_local_development"] is False


def test_parameter_sources_say_where_each_comes_from_and_which_are_required(
    project: Path,
) -> None:
    config = load_config(write_pyproject(project, GOOD))
    assert config is not None
    sources = config.parameter_sources(config.cases()[1], in_ci=True)
    assert [(s.name, dict(s.values), s.required) for s in sources] == [
        ("pipeline", {"notebook_dir": "notebooks", "device": "default"}, True),
        ("runners.gpu", {"device": "cuda"}, False),
        ("ci", {"is_local_development": False}, False),
    ]
    assert [s.name for s in config.parameter_sources(config.cases()[1], in_ci=False)] == [
        "pipeline",
        "runners.gpu",
    ]


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
        # GitLab's package rules, checked before any notebook runs (notes: "Names").
        (
            ('outputs = ["models/m.json"]', 'outputs = ["models/model v2.pkl"]'),
            ["#1 (notebooks/train.ipynb).outputs[0]", "'model v2.pkl' is not a file name GitLab"],
        ),
        (('version = "1.2.0"', 'version = "1.2.0+meta"'), ["version", "build metadata"]),
        (('version = "1.2.0"', 'version = "1.2.0-rc..1"'), ["version", "without '..'"]),
        (('version = "1.2.0"', 'version = "1.2.0-bêta"'), ["version", "ASCII"]),
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
        # TOML has nan and inf: both used to pass "positive" and break the run later.
        (("timeout = 120", "timeout = nan"), ["[tool.nbgate].timeout", "finite", "nan"]),
        (("timeout = 120", "timeout = inf"), ["[tool.nbgate].timeout", "finite", "inf"]),
        (("timeout = 30", "timeout = -inf"), ["#2 (notebooks/score.ipynb).timeout", "finite"]),
        (("timeout = 30", "timeout = 0"), ["#2 (notebooks/score.ipynb).timeout", "positive"]),
        # Parameters are JSON values: a TOML date/time names its key and the string to write.
        (
            ('notebook_dir = "notebooks"', "start = 2024-05-01"),
            ["#1 (notebooks/train.ipynb).parameters.start", "TOML date 2024-05-01",
             'quote it as a string: "2024-05-01"'],
        ),
        (
            ('device = "cuda"', "device = 2024-05-01T10:00:00Z"),
            ["[tool.nbgate.runners.gpu].parameters.device", "TOML datetime",
             '"2024-05-01T10:00:00+00:00"'],
        ),
        (
            ("is_local_development = false", "cutoff = 10:30:00"),
            ["[tool.nbgate.ci].parameters.cutoff", "TOML time 10:30:00"],
        ),
        (
            ('notebook_dir = "notebooks"', "windows = [[1979-05-27T07:32:00]]"),
            ["parameters.windows[0][0]", "TOML datetime 1979-05-27T07:32:00"],
        ),
        (
            ('notebook_dir = "notebooks"', "split = { at = 1979-05-27 }"),
            ["parameters.split.at", "TOML date"],
        ),
        (
            ('notebook_dir = "notebooks"', "lr = nan"),
            ["#1 (notebooks/train.ipynb).parameters.lr", "nan is not a JSON number"],
        ),
        (
            ('device = "cuda"', "limit = -inf"),
            ["[tool.nbgate.runners.gpu].parameters.limit", "-inf is not a JSON number"],
        ),
        (
            ('notebook_dir = "notebooks"', '"notebook-dir" = "notebooks"'),
            ["parameters.notebook-dir", "must be a Python identifier"],
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


@pytest.mark.parametrize("name", sorted(RESERVED_MARKS))
def test_runner_named_like_a_pytest_mark_is_refused(project: Path, name: str) -> None:
    # A runner named "xfail" turned a failed gate into "1 xfailed", exit 0.
    path = write_pyproject(project, GOOD.replace("runners.gpu]", f"runners.{name}]").replace(
        '"cpu", "gpu"', f'"cpu", "{name}"'))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert f"[tool.nbgate.runners.{name}]" in message
    assert f"{name!r} is a mark that pytest or one of its plugins acts on" in message


def test_builtin_marks_are_all_reserved(pytester: pytest.Pytester) -> None:
    # Whatever marks this pytest defines by itself, none may be a runner name.
    result = pytester.runpytest_subprocess(
        "--markers", "-p", "no:nbgate", "-p", "no:nbgate-reporting", "-p", "no:nbmake"
    )
    names = {
        line.split("@pytest.mark.", 1)[1].split("(", 1)[0].split(":", 1)[0]
        for line in result.outlines
        if line.startswith("@pytest.mark.")
    }
    assert {"skip", "xfail", "parametrize"} <= names
    assert names <= RESERVED_MARKS


def test_runner_named_xfail_is_a_usage_error_not_a_green_run(
    pytester: pytest.Pytester,
) -> None:
    write_notebook(pytester.path / "notebooks" / "train.ipynb", ["pass"])
    write_pyproject(
        pytester.path,
        '[tool.nbgate.runners.xfail]\n[[tool.nbgate.pipelines]]\n'
        'notebook = "notebooks/train.ipynb"\nkind = "train"\nrunners = ["xfail"]\n',
    )
    result = pytester.runpytest_subprocess("-p", "no:nbgate-tracking")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "[tool.nbgate.runners.xfail]" in result.stderr.str()


def write_notebooks(root: Path, *paths: str) -> str:
    table = ""
    for path in paths:
        write_notebook(root / path, ["pass"])
        table += f'[[tool.nbgate.pipelines]]\nnotebook = "{path}"\nkind = "train"\n'
    return table


def test_file_names_come_from_the_whole_notebook_path(tmp_path: Path) -> None:
    table = write_notebooks(tmp_path, "a/train.ipynb", "b/train.ipynb", "train.ipynb")
    config = load_config(write_pyproject(tmp_path, table))
    assert config is not None
    assert [c.slug for c in config.cases()] == [
        "a-train-train-cpu",
        "b-train-train-cpu",
        "train-train-cpu",
    ]


def test_paths_that_flatten_alike_still_get_separate_file_names(tmp_path: Path) -> None:
    table = write_notebooks(tmp_path, "X/y.ipynb", "x/Y.ipynb")
    config = load_config(write_pyproject(tmp_path, table))
    assert config is not None
    slugs = [c.slug for c in config.cases()]
    assert len({s.lower() for s in slugs}) == 2  # unique even on a case-insensitive disk
    assert slugs[0].lower().startswith("x-y-") and slugs[1].lower().startswith("x-y-")
    assert all(s.endswith("-train-cpu") for s in slugs)


def test_two_pipelines_that_would_share_a_package_are_refused(tmp_path: Path) -> None:
    """Package names come from the notebook's path (``a-b/c.ipynb`` -> ``a-b-c``): two paths
    that flatten alike would publish into one package, so the config names both."""
    table = write_notebooks(tmp_path, "a-b/c.ipynb", "a/b-c.ipynb")
    with pytest.raises(ConfigError, match=r"#2 \(a/b-c.ipynb\): publishes to package 'a-b-c', "
                                          r"as a-b/c.ipynb \(\[\[tool.nbgate.pipelines\]\] #1\)"):
        load_config(write_pyproject(tmp_path, table))
    table = write_notebooks(tmp_path, "m.ipynb", "m-candidate.ipynb")
    with pytest.raises(ConfigError, match=r"publishes to package 'm-candidate', as m\.ipynb"):
        load_config(write_pyproject(tmp_path, table))
