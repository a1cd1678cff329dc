"""`nbgate init` in someone else's repository: it only ever adds, twice is once, a dry run
writes nothing, and an existing nbgate table or CI file is never edited."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from nbgate.cli import main
from nbgate.config import load_config
from tests.support.nbproject import write_notebook

USER_PYPROJECT = """\
# The team's own project file: comments and layout must survive.
[project]
name = "churn"   # keep this comment
version = "0.3.0"

[tool.ruff]
line-length = 88
"""  # no blank line at the end, on purpose below


def untagged_notebook(path: Path) -> Path:
    """Markdown, an import cell with a magic, then an all-assignments cell: the one to tag."""
    nb = new_notebook(cells=[
        new_markdown_cell("# Churn"),
        new_code_cell("%matplotlib inline\nimport os"),
        new_code_cell("alpha = 0.5\nn_trees: int = 30"),
        new_code_cell("import nbgate\nnbgate.record('rmse', alpha)\nnbgate.record('mae', 1.0)"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_notebook(tmp_path / "nb" / "train_a.ipynb",
                   ["from nbgate import record\nrecord('accuracy', 0.9)"], parameters="x = 1")
    untagged_notebook(tmp_path / "nb" / "train_b.ipynb")
    (tmp_path / "pyproject.toml").write_text(USER_PYPROJECT.rstrip("\n"), encoding="utf-8")
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def init(root: Path, *args: str) -> int:
    notebooks = [str(root / "nb" / "train_a.ipynb"), str(root / "nb" / "train_b.ipynb")]
    return main(["init", *notebooks, "--pyproject", str(root / "pyproject.toml"), *args])


def test_reports_each_notebook_and_appends_the_table_as_text(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert init(repo, "--kind", "train") == 0
    out = capsys.readouterr().out
    assert "nb/train_a.ipynb: kernel python3 (python); 'parameters' cell (x); records: accuracy" \
        in out
    assert ("nb/train_b.ipynb: kernel python3 (python); no 'parameters' cell; cell 3 holds only "
            "assignments: --tag-parameters tags it") in out
    assert "records: rmse, mae" in out
    text = (repo / "pyproject.toml").read_text()
    # The user's text is untouched, byte for byte; the table comes after it.
    assert text.startswith(USER_PYPROJECT.rstrip("\n") + "\n\n")
    config = load_config(repo / "pyproject.toml")
    assert config is not None
    assert [(p.notebook, p.kind) for p in config.pipelines] == [
        ("nb/train_a.ipynb", "train"), ("nb/train_b.ipynb", "train")]
    assert "# records rmse, mae: gate them with thresholds" in text
    # The three next commands.
    tail = out.split("next:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in tail] == ["nbgate", "pytest", "git"]
    assert 'git commit -m "train nb/train_a.ipynb nb/train_b.ipynb"' in tail[2]
    # Without --tag-parameters no notebook changed.
    assert "parameters" not in (repo / "nb" / "train_b.ipynb").read_text()


def test_a_second_run_exits_0_and_changes_nothing(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert init(repo, "--kind", "train", "--ci", "--tag-parameters") == 0
    first = snapshot(repo)
    capsys.readouterr()
    assert init(repo, "--kind", "train", "--ci", "--tag-parameters") == 0
    out = capsys.readouterr().out
    assert snapshot(repo) == first
    assert "already declares train nb/train_a.ipynb, train nb/train_b.ipynb; nothing to change" \
        in out
    assert ".gitlab-ci.yml: already includes nbgate's component; nothing to change" in out
    assert "tag cell" not in out


def test_the_dry_run_writes_nothing(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(repo)
    assert init(repo, "--kind", "train", "--ci", "--tag-parameters", "--dry-run") == 0
    out = capsys.readouterr().out
    assert snapshot(repo) == before
    assert "pyproject.toml: would add [tool.nbgate]" in out
    assert "nb/train_b.ipynb: would tag cell 3 as 'parameters'" in out
    assert ".gitlab-ci.yml: would write" in out
    assert '    notebook = "nb/train_b.ipynb"' in out  # the table it would write, shown


def test_it_never_overwrites_an_nbgate_table(repo: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    own = USER_PYPROJECT + '\n[tool.nbgate]\ntimeout = 60  # ours\n\n[[tool.nbgate.pipelines]]\n' \
        'notebook = "nb/train_a.ipynb"\nkind = "train"\n'
    (repo / "pyproject.toml").write_text(own)
    # Declared already: nothing to do.
    assert main(["init", str(repo / "nb" / "train_a.ipynb"), "--kind", "train",
                 "--pyproject", str(repo / "pyproject.toml")]) == 0
    # Not declared: exit 2, the file as it was, the lines to add printed.
    capsys.readouterr()
    assert init(repo, "--kind", "train") == 2
    out = capsys.readouterr().out
    assert (repo / "pyproject.toml").read_text() == own
    assert "[tool.nbgate] exists; nbgate init never edits it. Add by hand:" in out
    assert 'notebook = "nb/train_b.ipynb"' in out and 'notebook = "nb/train_a.ipynb"' not in out
    assert "next:" not in out


def test_an_existing_ci_file_gets_the_include_lines_printed(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ours = "stages: [test]\nlint:\n  script: [ruff check .]\n"
    (repo / ".gitlab-ci.yml").write_text(ours)
    assert init(repo, "--kind", "train", "--ci") == 0
    out = capsys.readouterr().out
    assert (repo / ".gitlab-ci.yml").read_text() == ours
    assert "    - component: $CI_SERVER_FQDN/nbgate/nbgate/pipeline@" in out


def test_the_ci_file_it_writes_includes_the_component(repo: Path) -> None:
    assert init(repo, "--kind", "score", "--ci", "--component-project", "ds/nbgate") == 0
    ci = yaml.safe_load((repo / ".gitlab-ci.yml").read_text())
    (include,) = ci["include"]
    assert include["component"].startswith("$CI_SERVER_FQDN/ds/nbgate/pipeline@")
    assert "/api/v4/projects/ds%2Fnbgate/packages/pypi/simple" in include["inputs"]["install"]
    assert {"train", "score", "notify"} <= set(ci["stages"])
    assert ci["workflow"]["rules"][0] == {
        "if": '$CI_PIPELINE_SOURCE == "merge_request_event"', "when": "never"}


def test_tag_parameters_tags_one_cell_and_keeps_the_rest_as_nbformat_writes_it(
        repo: Path) -> None:
    path = repo / "nb" / "train_b.ipynb"
    expected = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
    expected.cells[2].metadata["tags"] = ["parameters"]
    reference = repo / "expected.ipynb"
    nbformat.write(expected, str(reference))
    assert init(repo, "--kind", "train", "--tag-parameters") == 0
    assert path.read_bytes() == reference.read_bytes()
    # The tagged notebook is one a train case injects into.
    assert load_config(repo / "pyproject.toml") is not None


def test_bad_input_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.ipynb").write_text(
        '{"cells": [], "metadata": {"kernelspec": {"name": "ir", "display_name": "R", '
        '"language": "R"}}, "nbformat": 4, "nbformat_minor": 5}')
    (tmp_path / "broken.ipynb").write_text('{"cells": ')
    pyproject = str(tmp_path / "pyproject.toml")
    assert main(["init", str(tmp_path / "r.ipynb"), "--kind", "train", "--pyproject",
                 pyproject]) == 2
    err = capsys.readouterr().err
    assert "nbgate init: error: not a Python notebook: r.ipynb is a R notebook" in err
    assert main(["init", str(tmp_path / "broken.ipynb"), "--kind", "train", "--pyproject",
                 pyproject]) == 2
    assert "nbgate init: error: broken.ipynb: not a notebook: invalid JSON" in (
        capsys.readouterr().err)
    assert main(["init", str(tmp_path / "gone.ipynb"), "--kind", "train", "--pyproject",
                 pyproject]) == 2
    assert "gone.ipynb: no such notebook" in capsys.readouterr().err
    assert not (tmp_path / "pyproject.toml").exists()
