"""The two wings and the one contract between them, checked from the source.

- the harness (``nbgate``) never imports the reporting wing; only its CLI composes both;
- the reporting wing imports nothing of the harness but ``nbgate.contract``;
- the contract imports nothing of either wing but itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPOSER = "nbgate/cli.py"


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (also inside functions and TYPE_CHECKING blocks)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)]
            # "from nbgate import plugin" imports nbgate.plugin
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def crossings(package: str, allowed: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == COMPOSER:
            continue
        for line, module in imports(path):
            top = module.split(".")[0]
            if top not in forbidden:
                continue
            if not any(module == a or module.startswith(a + ".") for a in allowed):
                bad.append(f"{rel}:{line} imports {module}")
    return bad


def test_the_harness_never_imports_the_reporting_wing() -> None:
    assert crossings("nbgate", allowed=(), forbidden=("reporting",)) == []


def test_the_reporting_wing_uses_only_the_contract() -> None:
    # "from nbgate import x" is listed both as "nbgate" and "nbgate.x": only the second counts.
    bad = [line for line in crossings("reporting", allowed=("nbgate.contract",),
                                      forbidden=("nbgate",))
           if not line.endswith(" imports nbgate")]
    assert bad == []


def test_the_contract_depends_on_neither_wing() -> None:
    bad = crossings("nbgate/contract", allowed=("nbgate.contract",), forbidden=("nbgate",))
    bad += crossings("nbgate/contract", allowed=(), forbidden=("reporting",))
    assert [line for line in bad if not line.endswith(" imports nbgate")] == []


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    """The checker itself must be able to fail: a planted crossing is reported."""
    wing = tmp_path / "reporting"
    wing.mkdir()
    (wing / "sneaky.py").write_text("def f():\n    from nbgate.plugin import state_key\n")
    globals()["ROOT"] = tmp_path
    try:
        found = crossings("reporting", allowed=("nbgate.contract",), forbidden=("nbgate",))
    finally:
        globals()["ROOT"] = Path(__file__).resolve().parents[2]
    assert found == ["reporting/sneaky.py:2 imports nbgate.plugin",
                     "reporting/sneaky.py:2 imports nbgate.plugin.state_key"]
