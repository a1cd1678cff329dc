"""Failure text built from a failed cell's error output (no kernel needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from nbgate.contract.failure_text import render_failure
from nbgate.contract.model import CaseResult
from nbgate.running.execute import cell_failure, cell_label, source_excerpt


def failed_notebook(source: str, line: int) -> object:
    cell = new_code_cell(source)
    cell.outputs = [
        new_output(
            "error",
            ename="\x1b[31mValueError\x1b[0m",
            evalue="bad \x1b[1minput\x1b[0m\nsecond line",
            traceback=[
                "\x1b[31m----------------\x1b[0m",
                f"Cell \x1b[32mIn[4], line {line}\x1b[0m",
                "\x1b[31mValueError\x1b[0m: bad input",
            ],
        )
    ]
    return new_notebook(cells=[new_code_cell("x = 1"), cell])


def test_failure_names_cell_and_exception_without_ansi() -> None:
    failure = cell_failure(failed_notebook("a = 1\nraise ValueError('bad input')", 2), 1)
    # The cause in one line; how the cell is counted is said beside it, not in it.
    assert failure.message == "ValueError in cell 2: bad input"
    assert failure.cell == "cell 2 (counting from 1)"
    assert failure.exception == "ValueError: bad input\nsecond line"
    assert failure.cell_index == 1
    assert "\x1b" not in (failure.traceback or "") + failure.message + failure.exception
    assert ">2 | raise ValueError('bad input')" in (failure.source or "")


def test_leading_blank_lines_do_not_shift_the_marked_line() -> None:
    # IPython numbers lines from the first non-blank one.
    failure = cell_failure(failed_notebook("\n\na = 1\nraise ValueError('x')", 2), 1)
    assert ">4 | raise ValueError('x')" in (failure.source or "")


def test_long_cells_are_cut_around_the_failing_line() -> None:
    source = "\n".join(f"line_{n} = {n}" for n in range(1, 41))
    excerpt = source_excerpt(source, 20)
    assert ">20 | line_20 = 20" in excerpt
    assert "line_1 = 1" not in excerpt and "more lines" in excerpt


def test_rendered_failure_lists_every_part() -> None:
    result = CaseResult("nb.ipynb::train[cpu]", "nb.ipynb", "train", "cpu", "failed")
    result.failure = cell_failure(failed_notebook("raise ValueError('bad input')", 1), 1)
    result.executed_notebook = "reports/notebooks/nb-train-cpu.ipynb"
    result.metrics = {"auc": 0.8}
    text = render_failure(result)
    assert text.split("\n")[0] == "ValueError in cell 2: bad input"  # pytest's -r line
    for part in ("where: cell 2 (counting from 1)",
                 "executed notebook: reports/notebooks/nb-train-cpu.ipynb", "failing cell:",
                 "ValueError: bad input", "Traceback:", "recorded metrics: auc=0.8"):
        assert part in text


def injected_notebook() -> object:
    """parameters, papermill's injected cell, markdown, code (In [3]), code (In [4])."""
    cells = [new_code_cell("x = 1", execution_count=1), new_code_cell("x = 2", execution_count=2),
             new_markdown_cell("# notes"), new_code_cell("y = x", execution_count=3),
             new_code_cell("z = y", execution_count=4)]
    cells[0].metadata["tags"] = ["parameters"]
    cells[1].metadata["tags"] = ["injected-parameters"]
    return new_notebook(cells=cells)


@pytest.mark.parametrize(
    ("index", "label"),
    [
        (0, "cell 1 (counting from 1, injected cell excluded)"),
        (1, "the injected parameters cell"),
        (3, "cell 3 (counting from 1, injected cell excluded)"),
        (4, "cell 4 (counting from 1, injected cell excluded)"),  # In [4]: the same number
    ],
)
def test_cells_are_numbered_as_the_user_sees_them(index: int, label: str) -> None:
    assert cell_label(injected_notebook(), index) == label


def test_execution_count_is_given_when_it_differs() -> None:
    nb = injected_notebook()
    nb.cells[4].execution_count = 7
    assert cell_label(nb, 4) == "cell 4 (counting from 1, injected cell excluded; In [7])"


def test_usage_error_without_error_output_takes_its_reason_from_the_reply() -> None:
    # IPython reports a %magic UsageError on stderr only; the execute reply carries the reason.
    cell = new_code_cell("%notamagic", execution_count=1)
    cell.outputs = [new_output("stream", name="stderr", text="UsageError: not found\n")]
    reason = "Line magic function `%notamagic` not found."
    reply = SimpleNamespace(ename="UsageError", evalue=reason)
    failure = cell_failure(new_notebook(cells=[cell]), 0, reply)
    assert failure.message == (
        "UsageError in cell 1: Line magic function `%notamagic` not found."
    )
    assert failure.exception == "UsageError: Line magic function `%notamagic` not found."


def test_error_after_the_code_finished_says_so_and_skips_blank_lines() -> None:
    cell = new_code_cell("ax.set_title('$\\\\bad$')", execution_count=1)
    cell.outputs = [
        new_output("execute_result", data={"text/plain": "Text(...)"}, execution_count=1),
        new_output("error", ename="ValueError", evalue="\n\\bad\n^", traceback=[]),
    ]
    failure = cell_failure(new_notebook(cells=[cell]), 0, after_code=True)
    assert failure.message == (
        "ValueError in cell 1, after its code finished (in a display or "
        "post-execute hook): \\bad"
    )


def test_a_clean_system_exit_output_is_not_the_failure() -> None:
    cell = new_code_cell("...", execution_count=1)
    cell.outputs = [
        new_output("error", ename="SystemExit", evalue="0", traceback=[]),
        new_output("error", ename="OSError", evalue="disk full", traceback=[]),
    ]
    failure = cell_failure(new_notebook(cells=[cell]), 0)
    assert failure.message == "OSError in cell 1: disk full"
