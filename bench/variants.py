"""What is timed: each variant is one or more commands run one after another in a project."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.workspace import Project, TrainingProject

PYTEST_FLAGS = ("-q", "-p", "no:cacheprovider")
# nbgate's MLflow tracking (one run per case in a local sqlite store) is work the other tools
# do not do; the budgets compare running notebooks, so nbgate runs without it except in the
# one row that measures what tracking costs.
NO_TRACKING = ("-p", "no:nbgate-tracking")


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    cwd: Path


@dataclass(frozen=True)
class Variant:
    key: str  # unique, e.g. "small-4/nbgate"
    label: str  # how the report names it
    commands: tuple[Command, ...]
    ok_returncodes: frozenset[int] = field(default_factory=lambda: frozenset({0}))
    warmup: bool = False  # also run once, untimed, before the timed rounds


def tool(name: str) -> tuple[str, ...]:
    """The venv's console script (what a user types), else the module through this interpreter."""
    script = Path(sys.executable).parent / name
    return (str(script),) if script.is_file() else (sys.executable, "-m", name)


def nbgate(
    key: str, label: str, project: Project, *extra: str, tracking: bool = False,
    warmup: bool = False,
) -> Variant:
    flags = (*PYTEST_FLAGS, *(() if tracking else NO_TRACKING), *extra)
    return Variant(key, label, (Command((*tool("pytest"), *flags), project.root),), warmup=warmup)


def nbmake(key: str, label: str, project: Project) -> Variant:
    argv = (*tool("pytest"), *PYTEST_FLAGS, "--nbmake", "notebooks")
    return Variant(key, label, (Command(argv, project.root),))


def papermill(
    key: str, label: str, project: Project, out: Path, parameters: Sequence[tuple[str, str]] = ()
) -> Variant:
    """One papermill CLI process per notebook, one after another."""
    flags = tuple(x for name, value in parameters for x in ("-p", name, value))
    commands = tuple(
        Command((*tool("papermill"), nb, str(out / Path(nb).name), *flags), project.root)
        for nb in project.notebooks
    )
    return Variant(key, label, commands)


def script(key: str, label: str, project: TrainingProject) -> Variant:
    return Variant(key, label, (Command((sys.executable, project.script), project.root),))


def collect(key: str, label: str, root: Path, warmup: bool = False) -> Variant:
    # Exit code 5 is pytest's "no tests collected": the expected answer in the empty folder.
    argv = (*tool("pytest"), "--collect-only", *PYTEST_FLAGS)
    return Variant(key, label, (Command(argv, root),), frozenset({0, 5}), warmup)
