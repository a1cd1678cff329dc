"""The injected-parameters cell, written exactly as papermill writes it for a Python kernel.

Importing papermill costs about 0.25 s per pytest process (its I/O layer pulls in pyarrow and
the cloud file systems), paid again by every xdist worker, for a few lines of text. The cell's
source, tag, position and the ``papermill`` metadata match papermill's ``parameterize_notebook``
(a test compares the two over awkward values), so executed notebooks read as papermill users
expect. Like papermill without ``black`` installed, the cell is not reformatted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbformat import NotebookNode

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"  # papermill's tag on the cell it inserts
COMMENT = "# Parameters"


def python_literal(value: Any) -> str:
    """``value`` (a JSON value) as Python source, the way papermill's PythonTranslator writes it."""
    if value is None or isinstance(value, bool | int):
        return str(value)
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return str(value)
        if math.isnan(value):
            return "float('nan')"
        return "float('-inf')" if value < 0 else "float('inf')"
    if isinstance(value, dict):
        items = ", ".join(f"{_quoted(key)}: {python_literal(item)}" for key, item in value.items())
        return f"{{{items}}}"
    if isinstance(value, list):
        return f"[{', '.join(python_literal(item) for item in value)}]"
    return _quoted(value)


def _quoted(value: Any) -> str:
    # papermill escapes strings, and writes anything else (a non-string dict key) inside quotes
    # as str() gives it.
    if isinstance(value, str):
        value = value.encode("unicode_escape").decode("utf-8").replace('"', r"\"")
    return f'"{value}"'


def parameters_source(parameters: dict[str, Any]) -> str:
    lines = [COMMENT, *(f"{name} = {python_literal(value)}" for name, value in parameters.items())]
    return "\n".join(lines) + "\n"


def has_tag(cell: Any, tag: str) -> bool:
    return tag in (cell.get("metadata", {}).get("tags") or [])


def tagged_index(nb: NotebookNode, tag: str) -> int:
    """The first cell carrying ``tag``, or -1."""
    return next((index for index, cell in enumerate(nb.cells) if has_tag(cell, tag)), -1)


def inject_parameters(nb: NotebookNode, parameters: dict[str, Any]) -> NotebookNode:
    """A cell assigning ``parameters``: replacing an earlier injected cell, else right after the
    ``parameters`` cell, else first. Nothing is injected for no parameters (as nbgate always
    did: papermill would add a cell holding only the comment)."""
    if not parameters:
        return nb
    import nbformat

    nb = nbformat.v4.upgrade(nb)
    cell = nbformat.v4.new_code_cell(source=parameters_source(parameters))
    cell.metadata["tags"] = [INJECTED_TAG]
    injected, declared = tagged_index(nb, INJECTED_TAG), tagged_index(nb, PARAMETERS_TAG)
    if injected >= 0:
        before, after = nb.cells[:injected], nb.cells[injected + 1 :]
    elif declared >= 0:
        before, after = nb.cells[: declared + 1], nb.cells[declared + 1 :]
    else:
        before, after = [], nb.cells
    nb.cells = [*before, cell, *after]
    papermill = nb.metadata.setdefault("papermill", {"parameters": {}, "environment_variables": {}})
    papermill["parameters"] = parameters
    return nb
