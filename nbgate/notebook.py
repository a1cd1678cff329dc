"""Reading notebooks, checking and injecting parameters, reading back what they recorded."""

from __future__ import annotations

import ast
import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbgate.recording import FIGURE_MIME, METRIC_MIME

if TYPE_CHECKING:
    from nbformat import NotebookNode

PARAMETERS_TAG = "parameters"


class NotebookProblem(Exception):
    """The notebook cannot be run as declared; ``kind`` is a result.FAILURE_KINDS entry."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_notebook(path: Path) -> NotebookNode:
    import nbformat

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NotebookProblem(
            "not_a_notebook", f"not a notebook: cannot read {path}: {exc}"
        ) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookProblem("not_a_notebook", f"not a notebook: invalid JSON ({exc})") from None
    if not isinstance(raw, dict) or "cells" not in raw or "nbformat" not in raw:
        raise NotebookProblem(
            "not_a_notebook", "not a notebook: JSON without the 'cells' and 'nbformat' keys"
        )
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises several unrelated types for bad documents
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NotebookProblem("not_a_notebook", f"not a notebook: {reason}") from None
    for cell in nb.cells:
        # papermill's injection (and its own loader) expects every cell to carry a tags list.
        cell.metadata.setdefault("tags", [])
    return nb


def parameter_names(nb: NotebookNode) -> set[str] | None:
    """Names assigned in the cell tagged ``parameters``; None when there is no such cell."""
    for cell in nb.cells:
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return _assigned_names(cell.source)
    return None


def _assigned_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        # IPython magics make a cell unparsable as Python; fall back to "name = ..." lines.
        return {
            line.split("=", 1)[0].split(":", 1)[0].strip()
            for line in source.splitlines()
            if "=" in line and not line.lstrip().startswith(("#", "%", "!"))
        }
    names: set[str] = set()
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else ([node.target] if isinstance(node, ast.AnnAssign) else [])
        )
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
    return names


def check_parameters(nb: NotebookNode, notebook: str, parameters: dict[str, Any]) -> None:
    """Papermill only warns about these; a typo in a parameter silently changes nothing."""
    if not parameters:
        return
    declared = parameter_names(nb)
    if declared is None:
        raise NotebookProblem(
            "parameters",
            f"{notebook} has no cell tagged 'parameters', but parameters are injected "
            f"({', '.join(sorted(parameters))}); tag the cell that holds their defaults "
            "(in Jupyter: View > Cell Toolbar > Tags, add 'parameters')",
        )
    unknown = sorted(set(parameters) - declared)
    if unknown:
        raise NotebookProblem(
            "parameters",
            f"{notebook}: parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"not defined in the 'parameters' cell (it defines: "
            f"{', '.join(sorted(declared)) or 'nothing'})",
        )


def inject_parameters(nb: NotebookNode, parameters: dict[str, Any]) -> NotebookNode:
    """Papermill's own injection, so executed notebooks look the way papermill users expect."""
    if not parameters:
        return nb
    from papermill.parameterize import parameterize_notebook

    # The metadata papermill's own loader would have added; its injection writes into it.
    nb.metadata.setdefault("papermill", {"parameters": {}, "environment_variables": {}})
    return parameterize_notebook(nb, parameters, kernel_name="python3", language="python")


@dataclass
class Recorded:
    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)


def read_recorded(nb: NotebookNode) -> Recorded:
    """Metrics and figures from outputs, in execution order; a later record of a name wins."""
    recorded = Recorded()
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            metric = data.get(METRIC_MIME)
            if isinstance(metric, dict) and isinstance(metric.get("name"), str):
                value = metric.get("value")
                recorded.metrics[metric["name"]] = (
                    float(value) if isinstance(value, int | float) else _non_finite(metric)
                )
            figure = data.get(FIGURE_MIME)
            if isinstance(figure, dict) and isinstance(figure.get("name"), str):
                recorded.figures[figure["name"]] = base64.b64decode(figure.get("png", ""))
    return recorded


def _non_finite(metric: dict[str, Any]) -> float:
    # record() stores NaN and infinities as null with their repr, since JSON cannot hold them.
    try:
        return float(metric.get("text", "nan"))
    except ValueError:
        return math.nan
