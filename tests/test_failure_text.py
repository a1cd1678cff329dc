"""Failure text built from a failed cell's error output (no kernel needed)."""

from __future__ import annotations

from nbformat.v4 import new_code_cell, new_notebook, new_output

from nbgate.contract.failure_text import render_failure
from nbgate.contract.model import CaseResult
from nbgate.execute import cell_failure, source_excerpt


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
    assert failure.message == "ValueError in cell 1: bad input"
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
    for part in ("nb.ipynb::train[cpu] failed: ValueError in cell 1: bad input",
                 "executed notebook: reports/notebooks/nb-train-cpu.ipynb", "cell 1:",
                 "ValueError: bad input", "Traceback:", "recorded metrics: auc=0.8"):
        assert part in text
