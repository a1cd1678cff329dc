"""nbgate writes the injected-parameters cell itself; papermill is the reference it must match."""

from __future__ import annotations

import ast
import copy
import math
from typing import Any

import nbformat
import pytest
from papermill.parameterize import parameterize_notebook

from nbgate.running.injection import inject_parameters, python_literal

AWKWARD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -7,
    10**30,
    0.1,
    -0.0,
    1e-300,
    1.5e300,
    math.inf,
    -math.inf,
    "",
    "plain",
    'say "hi"',
    "it's",
    "back\\slash",
    "two\nlines\ttab",
    "ünïcødé ✓",
    "\x00\x7f",
    "'\"'\"",
    [],
    [1, "a", None, [2.5, {"k": False}]],
    {},
    {"a": 1, 'q"uote': ["x", {"n": None}], "ü": -math.inf},
]


def _notebook(*tagged: tuple[str, str, list[str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    for kind, source, tags in tagged:
        cell = (
            nbformat.v4.new_code_cell(source)
            if kind == "code"
            else nbformat.v4.new_markdown_cell(source)
        )
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "P"}
    return nb


def _papermill(nb: nbformat.NotebookNode, parameters: dict[str, Any]) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    nb.metadata.setdefault("papermill", {"parameters": {}, "environment_variables": {}})
    return parameterize_notebook(nb, parameters, kernel_name="python3", language="python")


def _without_ids(nb: nbformat.NotebookNode) -> dict[str, Any]:
    # new_code_cell gives every cell a random id, papermill's and ours alike.
    plain = copy.deepcopy(dict(nb))
    plain["cells"] = [{k: v for k, v in cell.items() if k != "id"} for cell in nb.cells]
    return plain


@pytest.mark.parametrize("value", AWKWARD_VALUES, ids=repr)
def test_each_value_is_written_as_papermill_writes_it(value: Any) -> None:
    nb = _notebook(("code", "x = 1", ["parameters"]))
    ours = inject_parameters(copy.deepcopy(nb), {"x": value})
    theirs = _papermill(nb, {"x": value})
    assert ours.cells[1].source == theirs.cells[1].source
    assert _without_ids(ours) == _without_ids(theirs)


@pytest.mark.parametrize("value", AWKWARD_VALUES, ids=repr)
def test_the_written_value_evaluates_back_to_itself(value: Any) -> None:
    source = python_literal(value)
    restored = eval(source, {"__builtins__": {"float": float}})
    assert restored == value and repr(restored) == repr(value)


def test_nan_is_written_as_papermill_writes_it() -> None:
    nb = _notebook(("code", "x = 1", ["parameters"]))
    ours = inject_parameters(copy.deepcopy(nb), {"x": math.nan})
    assert ours.cells[1].source == _papermill(nb, {"x": math.nan}).cells[1].source
    assert "float('nan')" in ours.cells[1].source


@pytest.mark.parametrize(
    ("cells", "where"),
    [
        # after the parameters cell, even a markdown one, as papermill does
        ([("markdown", "# t", []), ("code", "a = 1", ["parameters"]), ("code", "b", [])], 2),
        ([("markdown", "p", ["parameters"]), ("code", "a = 1", [])], 1),
        # an earlier injected cell is replaced, not added to
        ([("code", "a = 1", ["parameters"]), ("code", "a = 2", ["injected-parameters"]),
          ("code", "print(a)", [])], 1),
        # no parameters cell: first
        ([("code", "print(1)", [])], 0),
    ],
)
def test_the_cell_goes_where_papermill_puts_it(
    cells: list[tuple[str, str, list[str]]], where: int
) -> None:
    nb = _notebook(*cells)
    ours = inject_parameters(copy.deepcopy(nb), {"a": 3, "s": "x"})
    theirs = _papermill(nb, {"a": 3, "s": "x"})
    assert _without_ids(ours) == _without_ids(theirs)
    assert ours.cells[where].metadata["tags"] == ["injected-parameters"]
    assert ast.literal_eval(ours.cells[where].source.splitlines()[1].split(" = ")[1]) == 3
    assert ours.metadata["papermill"]["parameters"] == {"a": 3, "s": "x"}


def test_no_parameters_leave_the_notebook_alone() -> None:
    nb = _notebook(("code", "a = 1", ["parameters"]))
    assert _without_ids(inject_parameters(copy.deepcopy(nb), {})) == _without_ids(nb)
