"""What the benchmark runs: generated notebook projects, and the commands timed in them.

Every project is a self-contained nbgate repository (a pyproject.toml with pytest's and nbgate's
tables), generated fresh into a work folder, so each variant runs there as a user would:
cwd = the project root, the tool's console script from this venv.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAINING_NOTEBOOK = REPO / "notebooks" / "training_example.ipynb"
TRAINING_CONFIG = REPO / "config.yaml"
PYTEST_FLAGS = ("-q", "-p", "no:cacheprovider")
# nbgate as a user gets it tracks every case in MLflow (a local sqlite store); the budget rows
# measure that. The same runs without tracking are reported beside them, for information.
NO_TRACKING = ("-p", "no:nbgate-tracking")

SMALL_CELLS = ("y = x * 2", "print(y)", "assert y == 2")


@dataclass(frozen=True)
class Project:
    root: Path
    notebooks: tuple[str, ...]  # repository-relative paths, in declaration order


@dataclass(frozen=True)
class TrainingProject(Project):
    script: str  # the notebook as a plain Python script, relative to root
    n_trials: int


def small_project(root: Path, count: int) -> Project:
    """``count`` notebooks of trivial cells, each declared as one cpu case."""
    names = tuple(f"notebooks/small_{i:02d}.ipynb" for i in range(count))
    for name in names:
        _write_notebook(root / name, ["x = 1", *SMALL_CELLS])
    _write_pyproject(root, [_pipeline(name, "train", ["cpu"]) for name in names])
    return Project(root, names)


def training_project(root: Path, copies: int, n_trials: int) -> TrainingProject:
    """``copies`` of the training example, each with its own config (and so its own model file).

    The copies would otherwise all write models/xgb_model.json at once under ``-n 2``.
    """
    import yaml

    if not TRAINING_NOTEBOOK.is_file():
        raise SystemExit(f"bench: {TRAINING_NOTEBOOK} is missing; the training rows need it")
    config = yaml.safe_load(TRAINING_CONFIG.read_text(encoding="utf-8"))
    names, pipelines = [], []
    for i in range(copies):
        name = f"notebooks/training_{i}.ipynb"
        config_file = f"config_{i}.yaml"
        (root / "notebooks").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TRAINING_NOTEBOOK, root / name)
        copy = {**config, "model_file": f"models/xgb_model_{i}.json"}
        (root / config_file).write_text(yaml.safe_dump(copy, sort_keys=False), encoding="utf-8")
        parameters = {"n_trials": n_trials, "config_path": config_file}
        names.append(name)
        pipelines.append(_pipeline(name, "train", ["cpu"], parameters))
    _write_pyproject(root, pipelines)
    script = "training_0.py"
    (root / script).write_text(
        notebook_as_script(root / names[0], {"n_trials": n_trials, "config_path": "config_0.yaml"}),
        encoding="utf-8",
    )
    return TrainingProject(root, tuple(names), script, n_trials)


def collection_project(root: Path, cases: int) -> Project:
    """``cases`` declared cases: one pipeline per notebook on two runners (cpu and gpu)."""
    count = (cases + 1) // 2
    names = tuple(f"notebooks/nb_{i:04d}.ipynb" for i in range(count))
    text = _notebook_json(["x = 1", *SMALL_CELLS])
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_text(text, encoding="utf-8")
    pipelines = [
        _pipeline(name, ("train", "score")[i % 2], ["cpu", "gpu"], {"x": i},
                  {"auc": ">= 0.5"})
        for i, name in enumerate(names)
    ]
    _write_pyproject(root, pipelines)
    return Project(root, names)


def empty_project(root: Path) -> Path:
    """The baseline folder for collection: no tests, no nbgate table.

    The empty pytest.ini only pins the rootdir here; without it pytest would climb to the nbgate
    repository's own pyproject.toml when the work folder lies inside the repository.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    return root


def notebook_as_script(path: Path, parameters: dict[str, object]) -> str:
    """The code cells joined, ``parameters`` assigned after the parameters cell (as papermill)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    chunks = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if any(line.lstrip().startswith(("%", "!")) for line in source.splitlines()):
            raise SystemExit(f"bench: {path} uses IPython syntax; it cannot run as a script")
        chunks.append(source)
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            chunks.append("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    return "\n\n".join(chunks) + "\n"


def _notebook_json(cells: Sequence[str]) -> str:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(source) for source in cells])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3", "language": "python"
    }
    # Fixed cell ids: generated ids would make every file (and every run) differ.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    return nbformat.writes(nb)


def _write_notebook(path: Path, cells: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_notebook_json(cells), encoding="utf-8")


def _pipeline(
    notebook: str,
    kind: str,
    runners: list[str],
    parameters: dict[str, object] | None = None,
    thresholds: dict[str, str] | None = None,
) -> str:
    lines = [
        "[[tool.nbgate.pipelines]]",
        f"notebook = {json.dumps(notebook)}",
        f"kind = {json.dumps(kind)}",
        f"runners = {json.dumps(runners)}",
    ]
    if parameters:
        lines.append(f"parameters = {_inline_table(parameters)}")
    if thresholds:
        lines.append(f"thresholds = {_inline_table(thresholds)}")
    return "\n".join(lines)


def _inline_table(values: dict[str, object]) -> str:
    # json.dumps writes TOML-compatible strings and numbers, which is all the benchmark uses.
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + " }"


def seed_mlflow_store(roots: Sequence[Path]) -> None:
    """Give each project the MLflow store its first nbgate run would have created.

    A user's repository has its store after the first run; creating one (MLflow's ~60
    migrations) takes seconds that no later session pays, so no timed run should either. One
    store is built, by nbgate's own code, and copied.
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        code = ("import sys; from pathlib import Path; "
                "from nbgate.tracking.store import create_local_store; "
                "create_local_store(Path(sys.argv[1]))")
        built = subprocess.run([sys.executable, "-c", code, folder], capture_output=True,
                               text=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        if built.returncode != 0:
            raise SystemExit(f"bench: could not create an MLflow store:\n{built.stderr[-3000:]}")
        for root in roots:
            shutil.copyfile(Path(folder) / "mlflow.db", root / "mlflow.db")


def _write_pyproject(root: Path, pipelines: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    text = (
        '[tool.pytest.ini_options]\ntestpaths = ["notebooks"]\n\n'
        '[tool.nbgate]\nreports = "reports"\n\n'
        '[tool.nbgate.runners.cpu]\n\n[tool.nbgate.runners.gpu]\ngpu = true\n\n'
        + "\n\n".join(pipelines)
        + "\n"
    )
    (root / "pyproject.toml").write_text(text, encoding="utf-8")


# -- the commands timed -----------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    cwd: Path
    env: tuple[tuple[str, str], ...] = ()  # set for this command only


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


# Both tools are installed in this venv, and pytest loads every installed plugin. Each tool runs
# as its own users have it: nbmake without nbgate's plugins (nbgate would read the project's
# pipelines and attach its MLflow helper), nbgate without nbmake's (~0.3 s of imports a
# process: nbclient, jupyter_client and nbformat at start-up).
WITHOUT_NBGATE = ("-p", "no:nbgate", "-p", "no:nbgate-reporting", "-p", "no:nbgate-shard")
WITHOUT_NBMAKE = ("-p", "no:nbmake")


def nbgate(
    key: str, label: str, project: Project, *extra: str, tracking: bool = True,
    warmup: bool = False, env: tuple[tuple[str, str], ...] = (),
) -> Variant:
    """nbgate's default run of the project (tracking on); ``tracking=False`` turns it off."""
    flags = (*PYTEST_FLAGS, *WITHOUT_NBMAKE, *(() if tracking else NO_TRACKING), *extra)
    command = Command((*tool("pytest"), *flags), project.root, env)
    return Variant(key, label, (command,), warmup=warmup)


def nbmake(key: str, label: str, project: Project, warmup: bool = False) -> Variant:
    argv = (*tool("pytest"), *PYTEST_FLAGS, *WITHOUT_NBGATE, "--nbmake", "notebooks")
    return Variant(key, label, (Command(argv, project.root),), warmup=warmup)


def papermill(
    key: str, label: str, project: Project, out: Path,
    parameters: Sequence[tuple[str, str]] = (), warmup: bool = False,
) -> Variant:
    """One papermill CLI process per notebook, one after another."""
    flags = tuple(x for name, value in parameters for x in ("-p", name, value))
    commands = tuple(
        Command((*tool("papermill"), nb, str(out / Path(nb).name), *flags), project.root)
        for nb in project.notebooks
    )
    return Variant(key, label, commands, warmup=warmup)


def script(key: str, label: str, project: TrainingProject, warmup: bool = False) -> Variant:
    argv = (sys.executable, project.script)
    return Variant(key, label, (Command(argv, project.root),), warmup=warmup)


def collect(
    key: str, label: str, root: Path, *extra: str, warmup: bool = False
) -> Variant:
    # Exit code 5 is pytest's "no tests collected": the expected answer in the empty folder.
    argv = (*tool("pytest"), "--collect-only", *PYTEST_FLAGS, *extra)
    return Variant(key, label, (Command(argv, root),), frozenset({0, 5}), warmup)
