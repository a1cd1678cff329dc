"""The house's rooms, checked from the source.

- no import circle among nbgate's and reporting's modules: imports at the top and inside
  functions both count, so what several modules take from the plugin lives in a room below it
  (``nbgate/pytest_plugin/state.py``, ``items.py``). A ``TYPE_CHECKING`` block never runs, so
  an annotation's import does not count;
- the tracking wing has no module over 400 lines;
- both wings are grouped into subpackages by job: only the entry points stay at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WINGS = ("nbgate", "reporting")
TRACKING_LIMIT = 400
# What stays at a wing's top level: the package, the CLI and the config every room reads, the
# project's adoption (`nbgate init`), and the reporting wing's errors, which both its rooms raise.
TOP_LEVEL = {
    "nbgate": {"__init__.py", "cli.py", "config.py", "init_project.py"},
    "reporting": {"__init__.py", "errors.py"},
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but those inside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.AST] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path, wings: tuple[str, ...] = WINGS) -> dict[str, set[str]]:
    """Module -> the wing modules it imports, wherever in the file the import statement is."""
    paths = {module_name(root, p): p for wing in wings for p in (root / wing).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from nbgate.tracking import helper" imports the module nbgate.tracking.helper
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in paths and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_circle_in_either_wing() -> None:
    graph = import_graph(ROOT)
    # The graph sees imports inside functions: the plugin registers the Tracker in one.
    assert "nbgate.tracking.plugin" in graph["nbgate.pytest_plugin.plugin"]
    assert circles(graph) == []


def test_the_check_sees_a_circle_through_a_function_level_import(tmp_path: Path) -> None:
    """The checker itself must be able to fail: the plugin <-> tracking circle it replaced."""
    face = tmp_path / "nbgate" / "pytest_plugin"
    tracking = tmp_path / "nbgate" / "tracking"
    for folder in (face, tracking):
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
    (tmp_path / "nbgate" / "__init__.py").write_text("")
    (face / "plugin.py").write_text(
        "def configure():\n    from nbgate.tracking.plugin import Tracker\n")
    (tracking / "plugin.py").write_text("from nbgate.pytest_plugin import plugin\n")
    assert circles(import_graph(tmp_path, ("nbgate",))) == [
        ["nbgate.pytest_plugin.plugin", "nbgate.tracking.plugin"]]


def test_no_tracking_module_over_400_lines() -> None:
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in (ROOT / "nbgate" / "tracking").glob("*.py")}
    assert len(sizes) > 3
    assert {path: n for path, n in sizes.items() if n > TRACKING_LIMIT} == {}


def test_both_wings_are_grouped_into_rooms() -> None:
    for wing, allowed in TOP_LEVEL.items():
        top = {p.name for p in (ROOT / wing).glob("*.py")}
        assert top == allowed, f"{wing}/ has modules outside its rooms: {sorted(top - allowed)}"
        rooms = {p.parent.name for p in (ROOT / wing).glob("*/__init__.py")}
        assert len(rooms) >= 2
