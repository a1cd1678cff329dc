"""Executed notebooks and figures: one file per case, only this run's files, mode 0644."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbgate.running.case_files import MANIFEST, ReportFiles
from tests.support.nbproject import run_pytest, write_notebook, write_pyproject


@pytest.fixture
def strict_umask() -> Iterator[None]:
    # CI images often run with umask 077; report files must still be readable by others.
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_0644_whatever_the_umask(tmp_path: Path, strict_umask: None) -> None:
    path = ReportFiles(tmp_path, "s1").write("notebooks/a.ipynb", b"{}")
    assert path.read_bytes() == b"{}"
    assert mode(path) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["a.ipynb"]  # no temporary file left


def test_a_new_session_clears_the_files_an_earlier_one_wrote(tmp_path: Path) -> None:
    first = ReportFiles(tmp_path, "s1")
    first.write("notebooks/train.ipynb", b"1")
    first.write("figures/train-roc.png", b"1")
    ReportFiles(tmp_path, "s2").write("notebooks/score.ipynb", b"2")
    assert sorted(p.name for p in (tmp_path / "notebooks").iterdir()) == ["score.ipynb"]
    assert list((tmp_path / "figures").iterdir()) == []


def test_workers_of_one_session_keep_each_others_files(tmp_path: Path) -> None:
    ReportFiles(tmp_path, "old").write("notebooks/stale.ipynb", b"0")
    worker_a, worker_b = ReportFiles(tmp_path, "s1"), ReportFiles(tmp_path, "s1")
    worker_a.write("notebooks/a.ipynb", b"a")
    worker_b.write("notebooks/b.ipynb", b"b")
    worker_a.write("figures/a.png", b"a")
    assert sorted(p.name for p in (tmp_path / "notebooks").iterdir()) == ["a.ipynb", "b.ipynb"]


def test_a_session_that_writes_nothing_still_clears_when_it_claims(tmp_path: Path) -> None:
    ReportFiles(tmp_path, "s1").write("notebooks/train.ipynb", b"1")
    ReportFiles(tmp_path, "s2").claim()  # every case skipped, reports written
    assert list((tmp_path / "notebooks").iterdir()) == []


def test_only_files_nbgate_wrote_are_ever_removed(tmp_path: Path) -> None:
    # reports = "." would make reports/notebooks the user's own notebooks folder.
    (tmp_path / "notebooks").mkdir()
    own = tmp_path / "notebooks" / "training.ipynb"
    own.write_text("the user's notebook")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("keep")
    ReportFiles(tmp_path, "s1").write("notebooks/case.ipynb", b"1")
    # A manifest naming other paths (edited, or from a broken run) is not obeyed for them.
    with (tmp_path / MANIFEST).open("a") as manifest:
        manifest.write(f"../{outside.name}\n/etc/passwd\nnotebooks/../../x\npyproject.toml\n")
    (tmp_path / "pyproject.toml").write_text("[tool.nbgate]\n")
    ReportFiles(tmp_path, "s2").claim()
    assert own.read_text() == "the user's notebook"
    assert outside.read_text() == "keep"
    assert (tmp_path / "pyproject.toml").is_file()
    assert not (tmp_path / "notebooks" / "case.ipynb").exists()


@pytest.mark.parametrize("relative", ["summary.md", "../x.ipynb", "notebooks/a/b.ipynb", "x/y"])
def test_only_nbgates_subfolders_are_written(tmp_path: Path, relative: str) -> None:
    with pytest.raises(ValueError, match="is not under notebooks or figures"):
        ReportFiles(tmp_path, "s1").write(relative, b"")


# --- a real project ---------------------------------------------------------------------------

FIGURE_CELL = (
    "import matplotlib.pyplot as plt\nfrom nbgate import record, record_figure\n"
    "fig, ax = plt.subplots()\nrecord_figure('curve', fig)\nrecord('done', 1)"
)
TABLE = """
[tool.nbgate.runners.cpu]
[[tool.nbgate.pipelines]]
notebook = "a/train.ipynb"
kind = "train"
[[tool.nbgate.pipelines]]
notebook = "b/train.ipynb"
kind = "train"
[[tool.nbgate.pipelines]]
notebook = "s/score.ipynb"
kind = "score"
"""


def listing(root: Path, folder: str) -> list[str]:
    return sorted(p.name for p in (root / "reports" / folder).iterdir())


def test_same_file_names_in_two_folders_and_a_narrower_later_run(tmp_path: Path) -> None:
    for path in ("a/train.ipynb", "b/train.ipynb", "s/score.ipynb"):
        write_notebook(tmp_path / path, [FIGURE_CELL])
    write_pyproject(tmp_path, TABLE, testpaths='["a", "b", "s"]')
    (tmp_path / "reports" / "notebooks").mkdir(parents=True)
    (tmp_path / "reports" / "notebooks" / "mine.ipynb").write_text("not nbgate's")
    quiet = ("-p", "no:nbgate-tracking", "-q")

    # Two workers write one session's files; neither clears the other's.
    trained = run_pytest(tmp_path, "-m", "train", "-n", "2", *quiet)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert listing(tmp_path, "notebooks") == [
        "a-train-train-cpu.ipynb", "b-train-train-cpu.ipynb", "mine.ipynb"
    ]
    assert listing(tmp_path, "figures") == [
        "a-train-train-cpu-curve.png", "b-train-train-cpu-curve.png"
    ]
    for folder in ("notebooks", "figures"):
        for path in (tmp_path / "reports" / folder).glob("[ab]-*"):
            assert mode(path) == 0o644, path

    scored = run_pytest(tmp_path, "-m", "score", *quiet)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    assert listing(tmp_path, "notebooks") == ["mine.ipynb", "s-score-score-cpu.ipynb"]
    assert listing(tmp_path, "figures") == ["s-score-score-cpu-curve.png"]
