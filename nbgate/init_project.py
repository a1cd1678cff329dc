"""`nbgate init`: declare a repository's notebooks in pyproject.toml and include the CI component.

It only ever adds: a ``[tool.nbgate]`` table appended to pyproject.toml as text (the user's
tables, comments and formatting stay byte for byte), a ``parameters`` tag on one cell with
``--tag-parameters``, and a ``.gitlab-ci.yml`` where there is none. An existing nbgate table or CI
file is never edited; a second run with the same arguments finds everything in place and changes
nothing.
"""

from __future__ import annotations

import ast
import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbgate import __version__
from nbgate.config import parse_config
from nbgate.running.injection import PARAMETERS_TAG
from nbgate.running.notebook import NotebookProblem, check_kernel, parameter_names, read_notebook

# Where nbgate's own project lives on the adopter's GitLab (its CI/CD component and PyPI
# registry); --component-project points elsewhere.
COMPONENT_PROJECT = "nbgate/nbgate"
COMPONENT_NAME = "pipeline"
CI_FILE = ".gitlab-ci.yml"


class InitError(Exception):
    """Bad input `nbgate init` cannot act on: which file, what was expected."""


@dataclass(frozen=True)
class NotebookCheck:
    path: str  # relative to the repository root, as [tool.nbgate] names it
    parameters: tuple[str, ...] | None  # names in the tagged cell; None: no such cell
    candidate: int | None  # the first all-assignments code cell (when none is tagged)
    metrics: tuple[str, ...]  # the names of its record("...", ...) calls
    kernel: str
    problem: str | None  # not a notebook / not a Python notebook


def check_notebook(path: Path, root: Path) -> NotebookCheck:
    rel = _relative(path, root)
    try:
        nb = read_notebook(path)
    except NotebookProblem as exc:
        return NotebookCheck(rel, None, None, (), "unknown", f"{rel}: {exc}")
    problem = None
    try:
        check_kernel(nb, rel)
    except NotebookProblem as exc:
        problem = str(exc)
    names = parameter_names(nb)
    return NotebookCheck(
        rel,
        None if names is None else tuple(sorted(names)),
        first_assignments_cell(nb.cells) if names is None else None,
        recorded_metrics(nb.cells),
        _kernel_text(nb),
        problem,
    )


def recorded_metrics(cells: Sequence[Any]) -> tuple[str, ...]:
    """Metric names of ``record("name", value)`` calls (``nbgate.record`` too), in order."""
    found: list[str] = []
    for cell in cells:
        tree = _parse(cell) if cell.cell_type == "code" else None
        for node in ast.walk(tree) if tree else ():
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            first = node.args[0]
            if name == "record" and isinstance(first, ast.Constant) and isinstance(
                    first.value, str) and first.value not in found:
                found.append(first.value)
    return tuple(found)


def first_assignments_cell(cells: Sequence[Any]) -> int | None:
    """Index of the first code cell made only of assignments: papermill's idea of a
    parameters cell, and what `--tag-parameters` tags."""
    for index, cell in enumerate(cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        tree = _parse(cell)
        if tree and tree.body and all(
                isinstance(n, ast.Assign | ast.AnnAssign) for n in tree.body):
            return index
    return None


def _parse(cell: Any) -> ast.Module | None:
    # IPython magics and shell escapes are not Python: read the rest of the cell.
    source = "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line
                       for line in cell.source.splitlines())
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def _kernel_text(nb: Any) -> str:
    spec = nb.metadata.get("kernelspec") or {}
    name = spec.get("name") or "no kernelspec"
    language = spec.get("language") or (nb.metadata.get("language_info") or {}).get("name")
    return f"{name} ({language})" if language else str(name)


def _relative(path: Path, root: Path) -> str:
    real = Path(os.path.realpath(path))
    real_root = Path(os.path.realpath(root))
    if not real.is_relative_to(real_root):
        raise InitError(f"{path}: outside the repository {root} (where pyproject.toml is)")
    return real.relative_to(real_root).as_posix()


# -- what it writes ------------------------------------------------------------------------


def nbgate_table(checks: Sequence[NotebookCheck], kind: str) -> str:
    lines = ["# Declared by `nbgate init` (README: \"Declaring a pipeline\"). Runs on the cpu",
             "# runner; add runners = [\"cpu\", \"gpu\"] to a pipeline to train it on a GPU too.",
             "[tool.nbgate]", 'reports = "reports"']
    lines += _pipelines(checks, kind)
    return "\n".join(lines) + "\n"


def _pipelines(checks: Sequence[NotebookCheck], kind: str) -> list[str]:
    lines: list[str] = []
    for check in checks:
        lines += ["", "[[tool.nbgate.pipelines]]", f'notebook = "{check.path}"',
                  f'kind = "{kind}"']
        if check.metrics:
            # Which way a metric is good is the author's call: suggested, never written.
            lines.append(f"# records {', '.join(check.metrics)}: gate them with "
                         'thresholds = { <metric> = ">= <value>" } (or "<=")')
    return lines


def ci_file(install: str, project: str) -> str:
    return f"""# nbgate's jobs from its CI/CD component (README: "Use it in your repository").
# A commit titled "train <notebook>" trains and gates it; "score <notebook>" scores.
include:
{include_lines(install, project)}
stages:
  - test
  - train
  - score
  - notify

# Branch pipelines only: a merged-results MR pipeline carries GitLab's merge commit message,
# never a `train ...` title.
workflow:
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
      when: never
    - when: always
"""


def include_lines(install: str, project: str) -> str:
    return (f"  - component: $CI_SERVER_FQDN/{project}/{COMPONENT_NAME}@{__version__}\n"
            f"    inputs:\n"
            f"      install: {install}\n")


def install_line(project: str) -> str:
    """pip from the nbgate project's PyPI registry on the same GitLab (the path URL-encoded as
    GitLab's API takes it; unknown packages are forwarded to PyPI.org)."""
    encoded = project.replace("/", "%2F")
    return ('pip install --quiet --index-url '
            f'"https://gitlab-ci-token:${{CI_JOB_TOKEN}}@${{CI_SERVER_HOST}}/api/v4/projects/'
            f'{encoded}/packages/pypi/simple" nbgate')


# -- the command ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InitOptions:
    notebooks: Sequence[Path]
    kind: str
    pyproject: Path
    ci: bool = False
    tag_parameters: bool = False
    dry_run: bool = False
    component_project: str = COMPONENT_PROJECT


def run_init(options: InitOptions, echo: Callable[[str], None]) -> int:
    """0: declared, now or by an earlier run; 2: an nbgate table exists that lacks these
    notebooks (never edited: the lines to add are printed). Bad input raises InitError, or
    ConfigError when what it would write is not a valid [tool.nbgate]."""
    pyproject = options.pyproject
    root = pyproject.parent
    would = "would " if options.dry_run else ""
    checks = [check_notebook(_existing(path), root) for path in options.notebooks]
    for check in checks:
        _report(check, options, echo)
    broken = [c for c in checks if c.problem]
    if broken:
        raise InitError("; ".join(c.problem or "" for c in broken))
    # The table is checked (and written) first: a run that stops on it changes no notebook.
    code = _declare(pyproject, checks, options, echo)
    for check in checks if code == 0 else ():
        if check.parameters is None and check.candidate is not None and options.tag_parameters:
            echo(f"{check.path}: {would}tag cell {check.candidate + 1} as '{PARAMETERS_TAG}'")
            if not options.dry_run:
                tag_cell(root / check.path, check.candidate)
    wrote_ci = options.ci and _include_component(root, options, echo)
    if code == 0:
        paths = " ".join(c.path for c in checks)
        added = " ".join(["pyproject.toml", paths] + ([CI_FILE] if wrote_ci else []))
        echo("next:")
        echo("  nbgate cases          # the declared cases, checked")
        echo(f"  pytest -m {options.kind}       # run them here, metrics gated")
        echo(f'  git add {added} && git commit -m "{options.kind} {paths}" && git push'
             f"   # the title makes CI {options.kind} them")
    return code


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise InitError(f"{path}: no such notebook")
    return path


def _report(check: NotebookCheck, options: InitOptions, echo: Callable[[str], None]) -> None:
    if check.problem:
        echo(check.problem)  # names the notebook
        return
    if check.parameters is not None:
        names = ", ".join(check.parameters) or "no assignments"
        params = f"'{PARAMETERS_TAG}' cell ({names})"
    elif check.candidate is not None and options.tag_parameters:
        params = f"no '{PARAMETERS_TAG}' cell; cell {check.candidate + 1} holds only assignments"
    elif check.candidate is not None:
        params = (f"no '{PARAMETERS_TAG}' cell; cell {check.candidate + 1} holds only "
                  "assignments: --tag-parameters tags it (injected values go to the top until "
                  "then)")
    else:
        params = (f"no '{PARAMETERS_TAG}' cell and no all-assignments cell to tag: injected "
                  "values go to the top of the notebook")
    metrics = ", ".join(check.metrics) if check.metrics else (
        "none found (record(\"name\", value) from nbgate reports a metric)")
    echo(f"{check.path}: kernel {check.kernel}; {params}; records: {metrics}")


def tag_cell(path: Path, index: int) -> None:
    """Add the parameters tag to one cell, leaving the rest as nbformat writes it."""
    import nbformat

    nb = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
    tags = nb.cells[index].metadata.setdefault("tags", [])
    if PARAMETERS_TAG not in tags:
        tags.append(PARAMETERS_TAG)
        nbformat.write(nb, str(path))


def _declare(pyproject: Path, checks: Sequence[NotebookCheck], options: InitOptions,
             echo: Callable[[str], None]) -> int:
    would = "would " if options.dry_run else ""
    old = pyproject.read_text(encoding="utf-8") if pyproject.is_file() else ""
    try:
        before = tomllib.loads(old)
    except tomllib.TOMLDecodeError as exc:
        raise InitError(f"{pyproject}: not valid TOML: {exc}") from None
    existing = before.get("tool", {}).get("nbgate")
    if existing is not None:
        declared = {(p.get("notebook"), p.get("kind")) for p in existing.get("pipelines", [])
                    if isinstance(p, dict)}
        missing = [c for c in checks if (c.path, options.kind) not in declared]
        if not missing:
            echo(f"{pyproject}: [tool.nbgate] already declares "
                 + ", ".join(f"{options.kind} {c.path}" for c in checks) + "; nothing to change")
            return 0
        echo(f"{pyproject}: [tool.nbgate] exists; nbgate init never edits it. Add by hand:")
        for line in _pipelines(missing, options.kind):
            echo(f"    {line}")
        return 2
    table = nbgate_table(checks, options.kind)
    new = old + ("\n" if old and not old.endswith("\n") else "") + ("\n" if old else "") + table
    # What is about to be written must read back as it was meant: the other tables unchanged,
    # and a [tool.nbgate] that nbgate itself accepts (notebook paths, kinds).
    after = parse_config(pyproject, new)
    tables = tomllib.loads(new)
    tables.get("tool", {}).pop("nbgate", None)
    if not tables.get("tool"):
        tables.pop("tool", None)
    if after is None or tables != before:
        raise InitError(f"{pyproject}: appending [tool.nbgate] would change its other tables "
                        "(a `tool = {...}` inline table?); declare the pipelines by hand")
    echo(f"{pyproject}: {would}{'add' if old else 'create it with'} [tool.nbgate] declaring "
         + ", ".join(f"{options.kind} {c.path}" for c in checks) + ":")
    for line in table.splitlines():
        echo(f"    {line}")
    if not options.dry_run:
        pyproject.write_text(new, encoding="utf-8")
    return 0


def _include_component(root: Path, options: InitOptions, echo: Callable[[str], None]) -> bool:
    """True when the CI file is (or would be) this run's."""
    path = root / CI_FILE
    install = install_line(options.component_project)
    address = f"{options.component_project}/{COMPONENT_NAME}@"
    if path.is_file():
        if address in path.read_text(encoding="utf-8"):
            echo(f"{CI_FILE}: already includes nbgate's component; nothing to change")
            return False
        echo(f"{CI_FILE}: exists; nbgate init never edits it. Add to its include: list (and "
             "the stages train, score, notify):")
        for line in include_lines(install, options.component_project).splitlines():
            echo(f"    {line}")
        return False
    echo(f"{CI_FILE}: {'would write' if options.dry_run else 'written'}, including "
         f"$CI_SERVER_FQDN/{address}{__version__}")
    if not options.dry_run:
        path.write_text(ci_file(install, options.component_project), encoding="utf-8")
    return True
