"""Commit-title and schedule selection (``--nbgate-commit``) on real repositories in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbgate.config import NbgateConfig, load_config
from nbgate.pytest_plugin.commit_select import CommitSelection, SelectionError, selection_for
from tests.support.nbproject import run_pytest

TRAIN_A = "notebooks/train_a.ipynb"
TRAIN_B = "notebooks/train_b.ipynb"
SCORE_A = "notebooks/score_a.ipynb"
UNDECLARED = "notebooks/scratch.ipynb"

PYPROJECT = f"""
[tool.nbgate]
[tool.nbgate.runners.cpu]
[tool.nbgate.runners.gpu]
gpu = true

[[tool.nbgate.pipelines]]
notebook = "{TRAIN_A}"
kind = "train"
runners = ["cpu", "gpu"]

[[tool.nbgate.pipelines]]
notebook = "{TRAIN_B}"
kind = "train"

[[tool.nbgate.pipelines]]
notebook = "{SCORE_A}"
kind = "score"
"""


def write_notebook(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [],
            "execution_count": None}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for rel in (TRAIN_A, TRAIN_B, SCORE_A, UNDECLARED):
        write_notebook(root / rel)
    (root / "pyproject.toml").write_text(PYPROJECT)
    # A notebook just outside the repository: escapes must be refused although the file exists.
    write_notebook(tmp_path / "outside.ipynb")
    return root


@pytest.fixture
def config(repo: Path) -> NbgateConfig:
    loaded = load_config(repo / "pyproject.toml")
    assert loaded is not None
    return loaded


def kept(config: NbgateConfig, selection: CommitSelection) -> list[str]:
    return [case.id for case in config.cases() if selection.keeps(case)]


# --- triggers -------------------------------------------------------------------------------


def test_train_title_keeps_only_that_notebooks_train_cases(config: NbgateConfig) -> None:
    selection = selection_for(config, f"train {TRAIN_A}", {})
    assert selection.kind == "train"
    assert selection.notebooks == (TRAIN_A,)
    assert kept(config, selection) == [f"{TRAIN_A}::train[cpu]", f"{TRAIN_A}::train[gpu]"]
    assert selection.describe() == (
        f"nbgate: commit title 'train {TRAIN_A}' selects train {TRAIN_A} (2 cases)"
    )


def test_score_title_keeps_score_cases(config: NbgateConfig) -> None:
    selection = selection_for(config, f"score {SCORE_A}", {})
    assert (selection.kind, selection.notebooks) == ("score", (SCORE_A,))
    assert kept(config, selection) == [f"{SCORE_A}::score[cpu]"]
    assert selection.describe().endswith("(1 case)")


def test_several_paths_normalised_and_deduplicated(config: NbgateConfig) -> None:
    selection = selection_for(config, f"train ./{TRAIN_B}\t{TRAIN_A}  notebooks//train_b.ipynb", {})
    assert selection.notebooks == (TRAIN_B, TRAIN_A)
    assert len(kept(config, selection)) == 3


def test_dotdot_that_stays_inside_is_normalised(config: NbgateConfig) -> None:
    selection = selection_for(config, "train notebooks/../notebooks/train_b.ipynb", {})
    assert selection.notebooks == (TRAIN_B,)


def test_only_the_first_line_counts(config: NbgateConfig) -> None:
    message = f"train {TRAIN_A}\n\nscore {SCORE_A}\nbody text ../../etc/passwd\n"
    selection = selection_for(config, message, {})
    assert (selection.kind, selection.notebooks) == ("train", (TRAIN_A,))
    # A trigger in the body is not a trigger, and its hostile paths are never looked at.
    assert selection_for(config, f"fix typo\n\ntrain {TRAIN_A}", {}).kind is None


def test_windows_line_endings(config: NbgateConfig) -> None:
    selection = selection_for(config, f"train {TRAIN_A}\r\n\r\nmore", {})
    assert selection.notebooks == (TRAIN_A,)


@pytest.mark.parametrize(
    "message",
    [
        "fix typo",
        "",
        "train",  # no path
        "train   ",
        f"Train {TRAIN_A}",  # case-sensitive
        f"TRAIN {TRAIN_A}",
        f"training {TRAIN_A}",
        f"train:{TRAIN_A}",
        f" train {TRAIN_A}",  # must start the title, as the CI rules require
        f"Merge branch 'x' into 'main'\n\ntrain {TRAIN_A}",
    ],
)
def test_not_a_trigger_selects_nothing_and_says_so(config: NbgateConfig, message: str) -> None:
    selection = selection_for(config, message, {})
    assert selection.kind is None
    assert selection.notebooks == ()
    assert kept(config, selection) == []
    assert "is not a train/score trigger: no notebook case selected" in selection.describe()


def test_describe_for_ordinary_title(config: NbgateConfig) -> None:
    assert selection_for(config, "fix typo", {}).describe() == (
        "nbgate: commit title 'fix typo' is not a train/score trigger: no notebook case selected"
    )


def test_long_title_is_shortened_in_messages(config: NbgateConfig) -> None:
    describe = selection_for(config, "x" * 500, {}).describe()
    assert len(describe) < 200 and "…" in describe


# --- hostile and wrong paths ------------------------------------------------------------------


def selection_error(
    config: NbgateConfig, message: str | None, env: dict[str, str] | None = None
) -> str:
    with pytest.raises(SelectionError) as info:
        selection_for(config, message, env or {})
    return str(info.value)


def assert_lists_declared_train(text: str) -> None:
    assert f"Declared train pipelines: train {TRAIN_A}, train {TRAIN_B}" in text
    assert SCORE_A not in text.split("Declared")[-1]


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../outside.ipynb", "leaves the repository"),
        ("notebooks/../../outside.ipynb", "leaves the repository"),
        ("..", "leaves the repository"),
        ("notebooks/nope.ipynb", "does not exist"),
        (UNDECLARED, "is not a declared train pipeline"),
        (SCORE_A, "is not a declared train pipeline (it is declared as score)"),
        ("notebooks", "is not a notebook file"),
        ("pyproject.toml", "is not a declared train pipeline"),
    ],
)
def test_bad_path_is_a_usage_error(config: NbgateConfig, path: str, why: str) -> None:
    text = selection_error(config, f"train {path}")
    assert f"'{path}' {why}" in text
    assert f"commit title 'train {path}'" in text
    assert_lists_declared_train(text)


def test_absolute_path_is_refused_even_for_a_declared_notebook(
    config: NbgateConfig, repo: Path
) -> None:
    absolute = str(repo / TRAIN_A)
    text = selection_error(config, f"train {absolute}")
    # A long path is clipped in the message (the temporary folder's length varies by runner).
    assert "is an absolute path" in text and absolute[:20] in text
    assert_lists_declared_train(text)


def test_symlink_out_of_the_repository_is_refused(
    config: NbgateConfig, repo: Path, tmp_path: Path
) -> None:
    (repo / "notebooks" / "link.ipynb").symlink_to(tmp_path / "outside.ipynb")
    text = selection_error(config, "train notebooks/link.ipynb")
    assert "'notebooks/link.ipynb' is a symlink that leaves the repository" in text
    assert str(tmp_path / "outside.ipynb") in text
    assert_lists_declared_train(text)


def test_symlinked_directory_out_of_the_repository_is_refused(
    config: NbgateConfig, repo: Path, tmp_path: Path
) -> None:
    (repo / "ext").symlink_to(tmp_path, target_is_directory=True)
    text = selection_error(config, "train ext/outside.ipynb")
    assert "'ext/outside.ipynb' is a symlink that leaves the repository" in text


def test_symlink_loop_is_refused_not_crashing(config: NbgateConfig, repo: Path) -> None:
    (repo / "loop.ipynb").symlink_to(repo / "loop.ipynb")
    text = selection_error(config, "train loop.ipynb")
    assert "'loop.ipynb'" in text
    assert_lists_declared_train(text)


def test_symlink_inside_the_repository_to_a_declared_notebook_is_that_notebook(
    config: NbgateConfig, repo: Path
) -> None:
    (repo / "latest.ipynb").symlink_to(repo / TRAIN_A)
    assert selection_for(config, "train latest.ipynb", {}).notebooks == (TRAIN_A,)


def test_every_bad_path_is_named_and_a_good_one_does_not_hide_them(config: NbgateConfig) -> None:
    text = selection_error(config, f"train {TRAIN_A} ../outside.ipynb /etc/passwd")
    assert "'../outside.ipynb' leaves the repository" in text
    assert "'/etc/passwd' is an absolute path" in text


def test_kind_with_no_declared_pipeline_says_so(repo: Path) -> None:
    (repo / "pyproject.toml").write_text(
        f'[tool.nbgate]\n[[tool.nbgate.pipelines]]\nnotebook = "{TRAIN_A}"\nkind = "train"\n'
    )
    config = load_config(repo / "pyproject.toml")
    assert config is not None
    text = selection_error(config, f"score {SCORE_A}")
    assert f"'{SCORE_A}' is not a declared score pipeline" in text
    assert f"No score pipeline is declared in {repo / 'pyproject.toml'}" in text


def test_score_error_lists_score_pipelines(config: NbgateConfig) -> None:
    text = selection_error(config, f"score {TRAIN_A}")
    assert f"Declared score pipelines: score {SCORE_A}" in text
    assert "train_b" not in text


# --- where the message comes from -------------------------------------------------------------


def test_without_value_reads_ci_commit_message(config: NbgateConfig) -> None:
    env = {"CI_COMMIT_MESSAGE": f"train {TRAIN_B}\n\nwhy", "CI_COMMIT_TITLE": "ignored"}
    assert selection_for(config, None, env).notebooks == (TRAIN_B,)


def test_falls_back_to_ci_commit_title(config: NbgateConfig) -> None:
    assert selection_for(config, None, {"CI_COMMIT_TITLE": f"score {SCORE_A}"}).kind == "score"


def test_no_message_anywhere_selects_nothing_and_says_why(config: NbgateConfig) -> None:
    selection = selection_for(config, None, {"CI_PIPELINE_SOURCE": "push"})
    assert selection.kind is None and kept(config, selection) == []
    assert "CI_COMMIT_MESSAGE and CI_COMMIT_TITLE are unset" in selection.describe()


def test_explicit_message_wins_over_environment(config: NbgateConfig) -> None:
    env = {"CI_COMMIT_MESSAGE": f"train {TRAIN_A}", "CI_PIPELINE_SOURCE": "schedule",
           "TRAINING_NOTEBOOK": TRAIN_B}
    assert selection_for(config, f"score {SCORE_A}", env).notebooks == (SCORE_A,)
    assert selection_for(config, "docs only", env).kind is None


# --- schedules ----------------------------------------------------------------------------------


def test_schedule_training_notebook_selects_like_train(config: NbgateConfig) -> None:
    env = {"CI_PIPELINE_SOURCE": "schedule", "TRAINING_NOTEBOOK": f" {TRAIN_A}  ./{TRAIN_B} ",
           "CI_COMMIT_MESSAGE": "Merge branch 'feature'"}
    selection = selection_for(config, None, env)
    assert (selection.kind, selection.notebooks) == ("train", (TRAIN_A, TRAIN_B))
    assert selection.source == "schedule variable TRAINING_NOTEBOOK"
    assert selection.describe() == (
        f"nbgate: schedule variable TRAINING_NOTEBOOK selects train {TRAIN_A} {TRAIN_B} (3 cases)"
    )


def test_schedule_scoring_notebook_selects_like_score(config: NbgateConfig) -> None:
    env = {"CI_PIPELINE_SOURCE": "schedule", "SCORING_NOTEBOOK": SCORE_A, "TRAINING_NOTEBOOK": ""}
    selection = selection_for(config, None, env)
    assert (selection.kind, selection.notebooks) == ("score", (SCORE_A,))
    assert kept(config, selection) == [f"{SCORE_A}::score[cpu]"]


def test_schedule_with_neither_variable_scores_every_score_pipeline(config: NbgateConfig) -> None:
    selection = selection_for(config, None, {"CI_PIPELINE_SOURCE": "schedule"})
    assert (selection.kind, selection.notebooks) == ("score", (SCORE_A,))
    assert "TRAINING_NOTEBOOK" in selection.describe()


def test_schedule_with_no_score_pipeline_says_none_is_declared(repo: Path) -> None:
    (repo / "pyproject.toml").write_text(
        f'[tool.nbgate]\n[[tool.nbgate.pipelines]]\nnotebook = "{TRAIN_A}"\nkind = "train"\n'
    )
    config = load_config(repo / "pyproject.toml")
    assert config is not None
    selection = selection_for(config, None, {"CI_PIPELINE_SOURCE": "schedule"})
    assert kept(config, selection) == []
    assert "none is declared: no notebook case selected" in selection.describe()


def test_schedule_variable_with_hostile_path_is_a_usage_error(config: NbgateConfig) -> None:
    env = {"CI_PIPELINE_SOURCE": "schedule", "TRAINING_NOTEBOOK": "../outside.ipynb"}
    text = selection_error(config, None, env)
    assert "schedule variable TRAINING_NOTEBOOK" in text
    assert "'../outside.ipynb' leaves the repository" in text
    assert_lists_declared_train(text)


def test_schedule_training_wins_when_both_variables_are_set(config: NbgateConfig) -> None:
    env = {"CI_PIPELINE_SOURCE": "schedule", "TRAINING_NOTEBOOK": TRAIN_A,
           "SCORING_NOTEBOOK": SCORE_A}
    assert selection_for(config, None, env).kind == "train"


def test_relative_config_root_works_from_the_repository(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest may hand the plugin a config loaded from a relative path.
    monkeypatch.chdir(repo)
    config = load_config(Path("pyproject.toml"))
    assert config is not None
    assert selection_for(config, f"train ./{TRAIN_A}", {}).notebooks == (TRAIN_A,)
    assert "leaves the repository" in selection_error(config, "train ../outside.ipynb")


# --- any title: a selection or a usage error, never a crash -----------------------------------

HOSTILE_TITLES = [
    "train " + "a" * 300 + ".ipynb",  # one name longer than NAME_MAX (was INTERNALERROR)
    "train " + "d/" * 3000 + "x.ipynb",  # a path longer than PATH_MAX
    "train notebooks/x\x00y.ipynb",  # NUL byte
    "train notebooks/\udcff\udcfe.ipynb",  # undecodable bytes from argv or the environment
    "train notebooks/\x1b[31mred\x1b[0m.ipynb",  # terminal escapes
    "train 'notebooks/unclosed.ipynb",
    'train "notebooks/unclosed.ipynb',
    "train notebooks/trailing\\",
    "train " + " ".join(f"n{i}.ipynb" for i in range(3000)),
    "train ~/x.ipynb $HOME/y.ipynb *.ipynb notebooks/*.ipynb",
    "train ''",
    "train .",
    "train notebooks/",
    "train \u202enotebooks/x.ipynb",  # right-to-left override
    f"train {TRAIN_A}\x0bscore {SCORE_A}",  # vertical tab: splitlines() ends the title there
    "score \t " + "é" * 200,
]


@pytest.mark.parametrize("title", HOSTILE_TITLES)
def test_any_title_is_a_selection_or_a_usage_error(config: NbgateConfig, title: str) -> None:
    try:
        selection = selection_for(config, title, {})
    except SelectionError as exc:
        text = str(exc)
        assert text.startswith("--nbgate-commit: commit title '")
    else:
        text = selection.describe()
        assert set(selection.notebooks) <= {TRAIN_A, TRAIN_B, SCORE_A}
    # Printable and bounded: it goes to a terminal and into CI logs as is.
    assert text.isprintable() and len(text) < 3000
    text.encode("utf-8")  # no lone surrogates left to crash a strict stdout


def test_a_too_long_path_names_why(config: NbgateConfig) -> None:
    text = selection_error(config, "train " + "a" * 300 + ".ipynb")
    assert "cannot be a notebook path (File name too long)" in text
    assert_lists_declared_train(text)


def test_unbalanced_quote_says_how_to_quote(config: NbgateConfig) -> None:
    text = selection_error(config, 'train "notebooks/my model.ipynb')
    assert "cannot split the paths (No closing quotation)" in text
    assert 'train "notebooks/my model.ipynb"' in text


def test_many_bad_paths_are_summarised(config: NbgateConfig) -> None:
    text = selection_error(config, "train " + " ".join(f"n{i}.ipynb" for i in range(50)))
    assert "'n9.ipynb' does not exist" in text and "'n10.ipynb'" not in text
    assert "and 40 more" in text


@pytest.fixture
def spaced(repo: Path) -> NbgateConfig:
    write_notebook(repo / "notebooks" / "my model.ipynb")
    with (repo / "pyproject.toml").open("a") as handle:
        handle.write('\n[[tool.nbgate.pipelines]]\nnotebook = "notebooks/my model.ipynb"\n'
                     'kind = "train"\n')
    loaded = load_config(repo / "pyproject.toml")
    assert loaded is not None
    return loaded


@pytest.mark.parametrize(
    "title",
    [
        'train "notebooks/my model.ipynb"',
        "train 'notebooks/my model.ipynb'",
        "train notebooks/my\\ model.ipynb",
        f'train {TRAIN_A} "notebooks/my model.ipynb"',
    ],
)
def test_a_path_with_spaces_is_quoted_like_in_a_shell(spaced: NbgateConfig, title: str) -> None:
    assert "notebooks/my model.ipynb" in selection_for(spaced, title, {}).notebooks


def test_an_unquoted_path_with_spaces_names_both_halves(spaced: NbgateConfig) -> None:
    text = selection_error(spaced, "train notebooks/my model.ipynb")
    assert "'notebooks/my' does not exist" in text and "'model.ipynb' does not exist" in text


def test_schedule_variables_are_split_the_same_way(spaced: NbgateConfig) -> None:
    env = {"CI_PIPELINE_SOURCE": "schedule", "TRAINING_NOTEBOOK": '"notebooks/my model.ipynb"'}
    assert selection_for(spaced, None, env).notebooks == ("notebooks/my model.ipynb",)


@pytest.mark.parametrize(
    ("title", "exit_code"),
    [
        ("train " + "a" * 300 + ".ipynb", 4),  # usage error
        ("fix \udcff\x1b[2J", 5),  # not a trigger: nothing selected, nothing collected
    ],
)
def test_pytest_never_answers_a_title_with_internalerror(
    repo: Path, title: str, exit_code: int
) -> None:
    result = run_pytest(repo, "--collect-only", "-q", f"--nbgate-commit={title}", "notebooks")
    output = result.stdout + result.stderr
    assert result.returncode == exit_code, output
    assert "INTERNALERROR" not in output and "Traceback" not in output
    assert "\x1b[2J" not in output
