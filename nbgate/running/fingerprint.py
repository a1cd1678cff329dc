"""A case's fingerprint: a hash of what determines its model (SPEC §8, Provenance).

- ``code``: the notebook's code cells, sources only: outputs, execution counts and metadata do
  not change a model, and the injected parameters cell is left out (its content is
  ``parameters``);
- ``parameters``: the injected parameters as canonical JSON;
- ``lock``: ``requirements.txt`` (None when the repository has none);
- ``inputs``: the files of the pipeline's ``inputs`` key, folders by content, each by its path
  relative to the repository root, in sorted order;
- ``python``: the interpreter's version, recorded beside the others but not in the compared
  digest (``nbgate.contract.model.Fingerprint``).

It is computed twice: by the case that trains (``nbgate.running.case``), and by ``nbgate promote``
in the merge commit's checkout (``checkout_fingerprints``), so promote can tell whether a reviewed
candidate was made from the code that was merged. Only the standard library: it runs when a
case starts, never while collecting.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbgate.contract.model import Fingerprint
from nbgate.running.injection import INJECTED_TAG, has_tag

if TYPE_CHECKING:
    from nbgate.config import NbgateConfig

LOCK_FILE = "requirements.txt"
_CHUNK = 1 << 20


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_digest(cells: Iterable[Mapping[str, Any]]) -> str:
    """The code cells' sources, in order (a notebook's ``cells``, read or executed)."""
    sources = []
    for cell in cells:
        if cell.get("cell_type") != "code" or has_tag(cell, INJECTED_TAG):
            continue
        source = cell.get("source", "")
        sources.append("".join(source) if isinstance(source, list) else str(source))
    return _sha256(json.dumps(sources, ensure_ascii=False).encode("utf-8"))


def parameters_digest(parameters: Mapping[str, Any]) -> str:
    text = json.dumps(parameters, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return _sha256(text.encode("utf-8"))


def lock_digest(root: Path) -> str | None:
    try:
        return _sha256((root / LOCK_FILE).read_bytes())
    except FileNotFoundError:
        return None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def input_files(root: Path, inputs: Iterable[str]) -> list[tuple[str, Path]]:
    """Every file the declared inputs name, as (path relative to ``root``, path), sorted and
    each once. A missing input raises FileNotFoundError naming it."""
    found: dict[str, Path] = {}
    for declared in inputs:
        path = root / declared
        if path.is_file():
            found[Path(os.path.relpath(path, root)).as_posix()] = path
        elif path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in files:
                    file = Path(folder) / name
                    found[Path(os.path.relpath(file, root)).as_posix()] = file
        else:
            raise FileNotFoundError(f"input {declared!r} does not exist under {root}")
    return sorted(found.items())


def inputs_digest(root: Path, inputs: Iterable[str]) -> str:
    listing = "".join(f"{rel}\0{_file_digest(path)}\n" for rel, path in input_files(root, inputs))
    return _sha256(listing.encode("utf-8"))


def case_fingerprint(cells: Iterable[Mapping[str, Any]], parameters: Mapping[str, Any],
                     root: Path, inputs: Iterable[str] = ()) -> Fingerprint:
    return Fingerprint.of({
        "code": code_digest(cells),
        "parameters": parameters_digest(parameters),
        "lock": lock_digest(root),
        "inputs": inputs_digest(root, inputs),
        "python": platform.python_version(),
    })


def checkout_fingerprints(config: NbgateConfig, in_ci: bool) -> dict[str, Fingerprint | str]:
    """Each declared case's fingerprint in this checkout, computed as the case would inject
    its parameters (``in_ci``: with ``[tool.nbgate.ci]`` parameters); a case whose notebook
    cannot be read maps to why."""
    from nbgate.running.notebook import NotebookProblem, read_notebook, resolve_parameters

    found: dict[str, Fingerprint | str] = {}
    for case in config.cases():
        notebook = case.pipeline.notebook
        try:
            nb = read_notebook(config.root / notebook)
            parameters = resolve_parameters(nb, notebook, config.parameter_sources(case, in_ci))
            found[case.id] = case_fingerprint(nb.cells, parameters, config.root,
                                              case.pipeline.inputs)
        except NotebookProblem as problem:
            found[case.id] = str(problem)
        except FileNotFoundError as exc:
            found[case.id] = str(exc)
    return found
