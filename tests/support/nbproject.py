"""Building throwaway nbgate projects for tests: a pyproject and small notebooks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path


def write_notebook(path: Path, cells: Sequence[str], *, parameters: str | None = "x = 1") -> Path:
    """A notebook whose first cell (tagged 'parameters') holds ``parameters``, then ``cells``."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    code = ([parameters] if parameters is not None else []) + [textwrap.dedent(c) for c in cells]
    nb = new_notebook(cells=[new_code_cell(source) for source in code])
    if parameters is not None:
        nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def write_pyproject(root: Path, nbgate_table: str, *, testpaths: str = '["notebooks"]') -> Path:
    """pyproject.toml with ``nbgate_table`` (TOML below a [tool.nbgate] header)."""
    path = root / "pyproject.toml"
    path.write_text(
        f"[tool.pytest.ini_options]\ntestpaths = {testpaths}\n\n"
        f"[tool.nbgate]\n{textwrap.dedent(nbgate_table)}",
        encoding="utf-8",
    )
    return path


def write_indexed_training_project(root: Path, count: int) -> None:
    """``count`` one-cell training notebooks ``notebooks/n<i>.ipynb``, each recording its index,
    declared on the cpu runner: the smallest project that shards and merges visibly."""
    table = "[tool.nbgate.runners.cpu]\n"
    for i in range(count):
        write_notebook(root / "notebooks" / f"n{i}.ipynb",
                       [f"from nbgate import record\nrecord('index', {i})"])
        table += (f'[[tool.nbgate.pipelines]]\nnotebook = "notebooks/n{i}.ipynb"\n'
                  'kind = "train"\nrunners = ["cpu"]\n')
    write_pyproject(root, table)


def run_pytest(
    root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """pytest in a fresh interpreter inside ``root``, as a user would run it there."""
    environment = {**os.environ, **(env or {})}
    environment.pop("PYTEST_XDIST_WORKER", None)
    environment.pop("PYTEST_XDIST_WORKER_COUNT", None)
    environment.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def junit_cases(path: Path) -> dict[str, ET.Element]:
    """pytest's own --junitxml testcases by node id (classname + name)."""
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        cases[case.get("name", "")] = case
    return cases


def process_alive(pid: int) -> bool:
    """Running, that is: a killed orphan stays a zombie until init reaps it, which can be never."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def kernels_with(marker: str) -> list[int]:
    """Live Jupyter kernels whose environment holds ``marker`` (NAME=value), any parent."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        mine = b"ipykernel" in cmdline and marker.encode() in environ.split(b"\0")
        if mine and process_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids
