"""``--nbgate-commit``: pick the notebook cases a commit title or a CI schedule asks for.

A title ``train <path> [<path>...]`` / ``score <path> [...]`` keeps only those notebooks' cases of
that kind; a scheduled pipeline does the same from ``TRAINING_NOTEBOOK`` / ``SCORING_NOTEBOOK``.
Paths are separated by spaces and quoted like in a POSIX shell, so a path containing spaces is
written ``train "notebooks/my model.ipynb"`` (or ``train notebooks/my\\ model.ipynb``).
The title comes from a developer's commit and reaches CI unchecked, so every path is treated as
hostile: it must name a declared pipeline of that kind inside the repository, or the run stops
with a usage error that lists what is declared. Whatever the title holds (a path longer than the
file system allows, a NUL byte, undecodable bytes, terminal escapes), the answer is a selection or
a usage error. Pure logic: the pytest plugin does the wiring.
"""

from __future__ import annotations

import os
import re
import shlex
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
_PATH_SHOWN = 100
_PROBLEMS_SHOWN = 10


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
    kind = match.group(1)
    return _select(config, kind, _split_paths(match.group(2), source), source)


def _split_paths(text: str, source: str) -> list[str]:
    """Paths as a POSIX shell would split them: quotes or a backslash keep spaces in a path."""
    try:
        return shlex.split(text)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise SelectionError(
            f"--nbgate-commit: {source}: cannot split the paths ({exc}); separate paths with "
            "spaces and quote a path that contains spaces: train \"notebooks/my model.ipynb\""
        ) from None


def _from_schedule(config: NbgateConfig, env: Mapping[str, str]) -> CommitSelection:
    # Training first: a schedule that sets both is a retraining schedule (the CI file only
    # creates the scoring job when TRAINING_NOTEBOOK is empty).
    for kind in KINDS:
        variable = _SCHEDULE_VARIABLES[kind]
        source = f"schedule variable {variable}"
        paths = _split_paths(env.get(variable, ""), source)
        if paths:
            return _select(config, kind, paths, source)
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
            problems.append(f"{_shown_path(raw)} {problem}")
        elif notebook not in chosen:
            chosen.append(notebook)
    if problems:
        raise SelectionError(_usage(config, kind, source, problems, declared))
    return CommitSelection(kind, tuple(chosen), source, _count_cases(config, kind, chosen))


def _check_path(
    root: Path, raw: str, kind: str, declared: tuple[str, ...], other: Mapping[str, str]
) -> tuple[str, None] | tuple[None, str]:
    """The declared notebook ``raw`` names, or why it may not be run."""
    try:
        return _check_path_on_disk(root, raw, kind, declared, other)
    except (OSError, ValueError) as exc:
        # ENAMETOOLONG from a 300-character name, ValueError from a NUL byte: the title, not
        # nbgate, is at fault, so it is a usage error like any other bad path.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, f"cannot be a notebook path ({reason})"


def _check_path_on_disk(
    root: Path, raw: str, kind: str, declared: tuple[str, ...], other: Mapping[str, str]
) -> tuple[str, None] | tuple[None, str]:
    path = PurePosixPath(raw)
    if path.is_absolute():
        return None, "is an absolute path (give it relative to the repository root)"
    lexical = os.path.normpath(raw)
    if lexical == ".." or lexical.startswith("../"):
        return None, "leaves the repository"
    top = root.resolve()
    try:
        resolved = (top / lexical).resolve()
    except RuntimeError as exc:  # symlink loops (OSError is handled by the caller)
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
    shown = problems[:_PROBLEMS_SHOWN]
    if len(problems) > _PROBLEMS_SHOWN:
        shown.append(f"and {len(problems) - _PROBLEMS_SHOWN} more")
    return f"--nbgate-commit: {source}: {'; '.join(shown)}. {listing}"


def _declared(config: NbgateConfig, kind: str) -> tuple[str, ...]:
    return tuple(p.notebook for p in config.pipelines if p.kind == kind)


def _count_cases(config: NbgateConfig, kind: str, notebooks: tuple[str, ...] | list[str]) -> int:
    return sum(
        len(p.runners) for p in config.pipelines if p.kind == kind and p.notebook in notebooks
    )


def _first_line(message: str) -> str:
    lines = message.splitlines()
    return lines[0].rstrip() if lines else ""


def _printable(text: str) -> str:
    """``text`` safe to print: control characters (terminal escapes) and undecodable bytes
    (surrogates, which a strict stdout cannot encode) are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _quote(title: str) -> str:
    shown = title if len(title) <= _TITLE_SHOWN else title[: _TITLE_SHOWN - 1] + "…"
    return f"'{_printable(shown)}'"


def _shown_path(raw: str) -> str:
    shown = raw if len(raw) <= _PATH_SHOWN else raw[: _PATH_SHOWN - 1] + "…"
    return repr(shown)  # repr escapes control characters and surrogates
