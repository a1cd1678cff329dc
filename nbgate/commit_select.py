"""``--nbgate-commit``: pick the notebook cases a commit title or a CI schedule asks for.

A title ``train <path> [<path>...]`` / ``score <path> [...]`` keeps only those notebooks' cases of
that kind; a scheduled pipeline does the same from ``TRAINING_NOTEBOOK`` / ``SCORING_NOTEBOOK``.
The title comes from a developer's commit and reaches CI unchecked, so every path is treated as
hostile: it must name a declared pipeline of that kind inside the repository, or the run stops
with a usage error that lists what is declared. Pure logic: the pytest plugin does the wiring.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from nbgate.config import Case, NbgateConfig
from nbgate.contract.model import KINDS

# The same shape as the `rules:if` regexes in .gitlab-ci.yml, so a title that creates a train
# job is exactly a title the harness accepts: lowercase word at the very start, whitespace, path.
_TRIGGER = re.compile(r"^(train|score)[ \t]+(\S.*)$")
_SCHEDULE_VARIABLES = {"train": "TRAINING_NOTEBOOK", "score": "SCORING_NOTEBOOK"}
_TITLE_SHOWN = 80


class SelectionError(Exception):
    """A trigger names a path that is not a declared pipeline of its kind; fit for a usage error."""


@dataclass(frozen=True)
class CommitSelection:
    kind: str | None  # "train" / "score"; None when the message is not a trigger
    notebooks: tuple[str, ...]  # repo-relative POSIX paths of declared pipelines
    source: str  # what selected, for messages: "commit title 'train x.ipynb'", ...
    # Declared cases (pipeline x runner) the selection keeps before any -m filtering; only for
    # describe(), so it takes no part in equality.
    case_count: int = field(default=0, compare=False)

    def keeps(self, case: Case) -> bool:
        return (
            self.kind is not None
            and case.pipeline.kind == self.kind
            and case.pipeline.notebook in self.notebooks
        )

    def describe(self) -> str:
        if self.kind is None:
            return f"nbgate: {self.source} is not a train/score trigger: no notebook case selected"
        if not self.notebooks:
            return (
                f"nbgate: {self.source} selects every declared {self.kind} pipeline, but none "
                "is declared: no notebook case selected"
            )
        plural = "" if self.case_count == 1 else "s"
        return (
            f"nbgate: {self.source} selects {self.kind} {' '.join(self.notebooks)} "
            f"({self.case_count} case{plural})"
        )


def selection_for(
    config: NbgateConfig, message: str | None, env: Mapping[str, str]
) -> CommitSelection:
    """What ``--nbgate-commit[=message]`` keeps.

    ``message`` is the option's value; None means it was given without one, so a scheduled
    pipeline selects by its variables and any other run reads CI_COMMIT_MESSAGE (then
    CI_COMMIT_TITLE). Raises SelectionError for a trigger naming a path it may not run.
    """
    if message is None and env.get("CI_PIPELINE_SOURCE") == "schedule":
        return _from_schedule(config, env)
    if message is None:
        message = env.get("CI_COMMIT_MESSAGE") or env.get("CI_COMMIT_TITLE")
        if not message:
            return CommitSelection(
                None, (), "the commit message (CI_COMMIT_MESSAGE and CI_COMMIT_TITLE are unset)"
            )
    title = _first_line(message)
    source = f"commit title {_quote(title)}"
    match = _TRIGGER.match(title)
    if match is None:
        return CommitSelection(None, (), source)
    kind, paths = match.group(1), match.group(2).split()
    return _select(config, kind, paths, source)


def _from_schedule(config: NbgateConfig, env: Mapping[str, str]) -> CommitSelection:
    # Training first: a schedule that sets both is a retraining schedule (the CI file only
    # creates the scoring job when TRAINING_NOTEBOOK is empty).
    for kind in KINDS:
        variable = _SCHEDULE_VARIABLES[kind]
        paths = env.get(variable, "").split()
        if paths:
            return _select(config, kind, paths, f"schedule variable {variable}")
    declared = _declared(config, "score")
    return CommitSelection(
        "score",
        declared,
        "a schedule without TRAINING_NOTEBOOK or SCORING_NOTEBOOK",
        _count_cases(config, "score", declared),
    )


def _select(config: NbgateConfig, kind: str, paths: list[str], source: str) -> CommitSelection:
    declared = _declared(config, kind)
    other = {p.notebook: p.kind for p in config.pipelines if p.kind != kind}
    chosen: list[str] = []
    problems: list[str] = []
    for raw in paths:
        notebook, problem = _check_path(config.root, raw, kind, declared, other)
        if problem is not None:
            problems.append(f"{raw!r} {problem}")
        elif notebook not in chosen:
            chosen.append(notebook)
    if problems:
        raise SelectionError(_usage(config, kind, source, problems, declared))
    return CommitSelection(kind, tuple(chosen), source, _count_cases(config, kind, chosen))


def _check_path(
    root: Path, raw: str, kind: str, declared: tuple[str, ...], other: Mapping[str, str]
) -> tuple[str, None] | tuple[None, str]:
    """The declared notebook ``raw`` names, or why it may not be run."""
    path = PurePosixPath(raw)
    if path.is_absolute():
        return None, "is an absolute path (give it relative to the repository root)"
    lexical = os.path.normpath(raw)
    if lexical == ".." or lexical.startswith("../"):
        return None, "leaves the repository"
    top = root.resolve()
    try:
        resolved = (top / lexical).resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops, unreadable components
        return None, f"cannot be resolved ({exc})"
    if not resolved.is_relative_to(top):
        return None, f"is a symlink that leaves the repository (it resolves to {resolved})"
    if not resolved.exists():
        return None, "does not exist"
    if not resolved.is_file():
        return None, "is not a notebook file"
    # Compare on the resolved path, as the config stores declared notebooks resolved too.
    notebook = resolved.relative_to(top).as_posix()
    if notebook in declared:
        return notebook, None
    if notebook in other:
        return None, f"is not a declared {kind} pipeline (it is declared as {other[notebook]})"
    return None, f"is not a declared {kind} pipeline"


def _usage(
    config: NbgateConfig, kind: str, source: str, problems: list[str], declared: tuple[str, ...]
) -> str:
    if declared:
        listing = f"Declared {kind} pipelines: " + ", ".join(f"{kind} {d}" for d in declared)
    else:
        listing = f"No {kind} pipeline is declared in {config.path}"
    return f"--nbgate-commit: {source}: {'; '.join(problems)}. {listing}"


def _declared(config: NbgateConfig, kind: str) -> tuple[str, ...]:
    return tuple(p.notebook for p in config.pipelines if p.kind == kind)


def _count_cases(config: NbgateConfig, kind: str, notebooks: tuple[str, ...] | list[str]) -> int:
    return sum(
        len(p.runners) for p in config.pipelines if p.kind == kind and p.notebook in notebooks
    )


def _first_line(message: str) -> str:
    lines = message.splitlines()
    return lines[0].rstrip() if lines else ""


def _quote(title: str) -> str:
    shown = title if len(title) <= _TITLE_SHOWN else title[: _TITLE_SHOWN - 1] + "…"
    return f"'{shown}'"
