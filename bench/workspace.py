"""The notebook projects the benchmark runs, generated fresh into a work folder.

Every project is a self-contained nbgate repository (a pyproject.toml with pytest's and nbgate's
tables), so each variant runs there as a user would: cwd = the project root.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAINING_NOTEBOOK = REPO / "notebooks" / "training_example.ipynb"
TRAINING_CONFIG = REPO / "config.yaml"

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
