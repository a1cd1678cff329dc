"""Reading notebooks, checking their kernel, choosing and injecting parameters, reading back
what they recorded."""

from __future__ import annotations

import ast
import base64
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbgate.config import ParameterSource
from nbgate.contract.json_file import JSONFileError, parse_json
from nbgate.running.injection import PARAMETERS_TAG, has_tag
from nbgate.running.recording import FIGURE_MIME, METRIC_MIME

if TYPE_CHECKING:
    from nbformat import NotebookNode

_PYTHON_LANGUAGES = ("python", "python3", "python2", "ipython", "ipython3")


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
        raw = parse_json(text, str(path))
    except JSONFileError as exc:
        reason = str(exc).removeprefix(f"{path}: not valid JSON: ")
        raise NotebookProblem("not_a_notebook", f"not a notebook: invalid JSON ({reason})") \
            from None
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
        # Every cell carries a tags list, as papermill's loader leaves it in executed notebooks.
        cell.metadata.setdefault("tags", [])
    return nb


def check_kernel(nb: NotebookNode, notebook: str) -> None:
    """Refuse a notebook written for another language, naming its kernel.

    Every notebook runs on a Python kernel of the interpreter that runs pytest, whatever its
    kernelspec is called (``python3``, a conda env's ``conda-env-x-py``, a virtualenv's own
    name): that is what makes ``record`` and the harness's environment work. An R or Julia
    notebook must not be run as Python; it would fail in a misleading way, or worse, pass.
    """
    metadata = nb.get("metadata", {})
    spec = metadata.get("kernelspec") or {}
    name = spec.get("name") if isinstance(spec.get("name"), str) else None
    language = spec.get("language") or (metadata.get("language_info") or {}).get("name")
    language = language if isinstance(language, str) and language.strip() else None
    if language is None and name is not None and "py" not in name.lower():
        language = _installed_language(name)  # a name alone says little: ask the kernelspec
        if language is None:
            raise NotebookProblem(
                "kernel",
                f"not a Python notebook: {notebook} names kernel {name!r}, which is not "
                "installed here, and no language; nbgate runs Python notebooks only. "
                "If it is Python, select a Python kernel in Jupyter and save the notebook",
            )
    if language is None or language.lower() in _PYTHON_LANGUAGES:
        return
    shown = f"kernel {name!r}" if name else "its kernel"
    display = spec.get("display_name")
    if isinstance(display, str) and display and display != name:
        shown += f" ({display})"
    installed = name is not None and _installed_language(name) is not None
    where = "is installed, but" if installed else "is not installed here, and"
    raise NotebookProblem(
        "kernel",
        f"not a Python notebook: {notebook} is a {language} notebook; {shown} {where} "
        "nbgate runs Python notebooks only (on the interpreter that runs pytest)",
    )


def _installed_language(kernel_name: str) -> str | None:
    """The language of an installed kernelspec, None when no such kernel is installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        return KernelSpecManager().get_kernel_spec(kernel_name).language or "unknown"
    except (NoSuchKernel, OSError, ValueError):
        return None


def parameter_names(nb: NotebookNode) -> set[str] | None:
    """Names assigned in the cell tagged ``parameters``; None when there is no such cell."""
    for cell in nb.cells:
        if cell.cell_type == "code" and has_tag(cell, PARAMETERS_TAG):
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


def resolve_parameters(
    nb: NotebookNode, notebook: str, sources: Sequence[ParameterSource]
) -> dict[str, Any]:
    """What to inject: every required parameter, and the shared ones the notebook defines.

    Papermill only warns about an undefined parameter, but a typo in a pipeline parameter
    silently changes nothing, so it fails the case. Runner and CI parameters are shared by
    every pipeline: a notebook that does not define ``device`` simply does not get it.
    Later sources win. Errors name where a parameter came from.
    """
    declared = parameter_names(nb)
    required = [s for s in sources if s.required and s.values]
    if required and declared is None:
        given = "; ".join(f"{s.name}: {', '.join(sorted(s.values))}" for s in required)
        raise NotebookProblem(
            "parameters",
            f"the notebook has no cell tagged 'parameters', but parameters are injected "
            f"({given}); tag the cell that holds their defaults "
            "(in Jupyter: View > Cell Toolbar > Tags, add 'parameters')",
        )
    for source in required:
        unknown = sorted(set(source.values) - (declared or set()))
        if unknown:
            raise NotebookProblem("parameters", unknown_parameters(source.name, unknown,
                                                                   declared or set()))
    injected: dict[str, Any] = {}
    for source in sources:
        for name, value in source.values.items():
            if source.required or (declared is not None and name in declared):
                injected[name] = value
    return injected


def unknown_parameters(source: str, unknown: Sequence[str], declared: set[str]) -> str:
    """The cause in one line, the likely fix first: "unknown pipeline parameter learning_rat
    (did you mean learning_rate?); the 'parameters' cell defines: device, learning_rate". The
    notebook is not named: the case it fails already says which."""
    plural = "s" if len(unknown) > 1 else ""
    guesses = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(declared), n=1)
        if close:
            guesses.append(f"{name} → {close[0]}" if len(unknown) > 1 else close[0])
    hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
    defines = ", ".join(sorted(declared)) or "nothing"
    return (f"unknown {source} parameter{plural} {', '.join(unknown)}{hint}; the 'parameters' "
            f"cell defines: {defines}")


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
