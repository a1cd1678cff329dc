"""``[tool.nbgate]`` in pyproject.toml: loading and validation.

Every mistake becomes a ConfigError whose message names the file, the key and what is allowed,
so pytest can show it as a usage error instead of a traceback.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from nbgate.contract.model import KINDS, Threshold, case_id
from nbgate.thresholds import parse_threshold

DEFAULT_TIMEOUT = 900.0
DEFAULT_RUNNERS: dict[str, dict[str, Any]] = {"cpu": {}, "gpu": {"gpu": True}}
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_RUNNER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(Exception):
    """A mistake in ``[tool.nbgate]``; the message is meant for the user as it is."""


@dataclass(frozen=True)
class Runner:
    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    gpu: bool = False


@dataclass(frozen=True)
class Pipeline:
    notebook: str  # POSIX path relative to the repository root
    kind: str
    runners: tuple[str, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    thresholds: tuple[Threshold, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    outputs: tuple[str, ...] = ()
    experiment: str | None = None
    version: str | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(self.notebook).stem


@dataclass(frozen=True)
class Case:
    """One pipeline on one runner: a single pytest case."""

    pipeline: Pipeline
    runner: Runner

    @property
    def name(self) -> str:
        return f"{self.pipeline.kind}[{self.runner.name}]"

    @property
    def id(self) -> str:
        return case_id(self.pipeline.notebook, self.pipeline.kind, self.runner.name)

    @property
    def slug(self) -> str:
        """File-name-safe name for this case's artefacts."""
        return f"{self.pipeline.name}-{self.pipeline.kind}-{self.runner.name}"


@dataclass(frozen=True)
class NbgateConfig:
    path: Path  # the pyproject.toml it came from
    root: Path  # the repository root: the folder holding pyproject.toml
    reports: Path
    timeout: float
    runners: Mapping[str, Runner]
    ci_parameters: Mapping[str, Any]
    pipelines: tuple[Pipeline, ...]
    tracking_optional: bool = False
    wiki: Mapping[str, Any] = field(default_factory=dict)  # reporting's WikiSettings fields

    def cases(self) -> list[Case]:
        return [Case(p, self.runners[r]) for p in self.pipelines for r in p.runners]

    def parameters_for(self, case: Case, in_ci: bool) -> dict[str, Any]:
        """Pipeline, then runner, then (in CI) ci parameters: later ones win."""
        merged = {**case.pipeline.parameters, **case.runner.parameters}
        if in_ci:
            merged.update(self.ci_parameters)
        return merged


def load_config(pyproject: Path) -> NbgateConfig | None:
    """Read ``[tool.nbgate]``; None when the file or the table is absent."""
    if not pyproject.is_file():
        return None
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{pyproject}: not valid TOML: {exc}") from None
    table = data.get("tool", {}).get("nbgate")
    if table is None:
        return None
    return _Parser(pyproject).parse(table)


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = path.parent
        self.real_root = os.path.realpath(self.root)

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {problem}")

    def check_keys(self, where: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(
                    f"{where}.{key}", f"unknown key; allowed keys are {', '.join(allowed)}"
                )

    def typed(self, where: str, value: Any, kind: type | tuple[type, ...], label: str) -> Any:
        # bool is an int in Python, but `timeout = true` is a mistake, not a number.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            ok = False
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise self.fail(where, f"expected {label}, got {_describe(value)}")
        return value

    def positive(self, where: str, value: Any) -> float:
        number = self.typed(where, value, (int, float), "a number of seconds")
        if number <= 0:
            raise self.fail(where, f"expected a positive number of seconds, got {number}")
        return float(number)

    def string_list(self, where: str, value: Any) -> tuple[str, ...]:
        items = self.typed(where, value, list, "a list of strings")
        for i, item in enumerate(items):
            self.typed(f"{where}[{i}]", item, str, "a string")
        return tuple(items)

    def parse(self, table: Any) -> NbgateConfig:
        where = "[tool.nbgate]"
        self.typed(where, table, dict, "a table")
        self.check_keys(
            where, table, ("reports", "timeout", "runners", "ci", "pipelines", "tracking", "wiki")
        )
        reports = self.typed(f"{where}.reports", table.get("reports", "reports"), str, "a path")
        timeout = self.positive(f"{where}.timeout", table.get("timeout", DEFAULT_TIMEOUT))
        runners = self.runners(table.get("runners", DEFAULT_RUNNERS))
        ci = self.section("ci", table.get("ci", {}), {"parameters": (dict, "a table", None)})
        tracking = self.section(
            "tracking", table.get("tracking", {}), {"optional": (bool, "true or false", None)}
        )
        wiki = self.section(
            "wiki",
            table.get("wiki", {}),
            {
                "train_title": (str, "a page title", None),
                "score_title": (str, "a page title", None),
                "max_rows": (int, "a whole number of rows", lambda v: v > 0),
            },
        )
        raw_pipelines = self.typed(
            f"{where}.pipelines", table.get("pipelines", []), list, "an array of tables"
        )
        pipelines = [self.pipeline(i, raw, runners, timeout) for i, raw in enumerate(raw_pipelines)]
        seen: dict[tuple[str, str], int] = {}
        for i, p in enumerate(pipelines):
            if (p.notebook, p.kind) in seen:
                raise self.fail(
                    _pipeline_where(i, p.notebook),
                    f"duplicate pipeline: {p.notebook} is already declared with kind "
                    f"{p.kind!r} in [[tool.nbgate.pipelines]] #{seen[(p.notebook, p.kind)] + 1}",
                )
            seen[(p.notebook, p.kind)] = i
        return NbgateConfig(
            path=self.path,
            root=self.root,
            reports=(self.root / reports),
            timeout=timeout,
            runners=runners,
            ci_parameters=ci.get("parameters", {}),
            pipelines=tuple(pipelines),
            tracking_optional=tracking.get("optional", False),
            wiki=wiki,
        )

    def section(
        self,
        name: str,
        value: Any,
        spec: Mapping[str, tuple[type, str, Callable[[Any], bool] | None]],
    ) -> dict[str, Any]:
        where = f"[tool.nbgate.{name}]"
        self.typed(where, value, dict, "a table")
        self.check_keys(where, value, tuple(spec))
        for key, (kind, label, valid) in spec.items():
            if key in value:
                self.typed(f"{where}.{key}", value[key], kind, label)
                if valid is not None and not valid(value[key]):
                    raise self.fail(f"{where}.{key}", f"expected {label}, got {value[key]!r}")
        return dict(value)

    def runners(self, value: Any) -> dict[str, Runner]:
        where = "[tool.nbgate.runners]"
        self.typed(where, value, dict, "a table of runners")
        runners = {}
        for name, raw in value.items():
            rwhere = f"[tool.nbgate.runners.{name}]"
            if not _RUNNER_NAME.match(name) or name in KINDS:
                raise self.fail(
                    rwhere,
                    "a runner name must be an identifier (letters, digits, '_') and not "
                    f"{' or '.join(KINDS)}, since it becomes a pytest marker",
                )
            self.typed(rwhere, raw, dict, "a table")
            self.check_keys(rwhere, raw, ("parameters", "gpu"))
            params = self.typed(f"{rwhere}.parameters", raw.get("parameters", {}), dict, "a table")
            gpu = self.typed(f"{rwhere}.gpu", raw.get("gpu", False), bool, "true or false")
            runners[name] = Runner(name, params, gpu)
        if not runners:
            raise self.fail(
                where, "declares no runner; declare at least one, e.g. [tool.nbgate.runners.cpu]"
            )
        return runners

    def pipeline(
        self, index: int, raw: Any, runners: Mapping[str, Runner], default_timeout: float
    ) -> Pipeline:
        where = _pipeline_where(index, raw.get("notebook") if isinstance(raw, dict) else None)
        self.typed(where, raw, dict, "a table")
        self.check_keys(
            where,
            raw,
            (
                "notebook",
                "kind",
                "runners",
                "parameters",
                "thresholds",
                "timeout",
                "outputs",
                "experiment",
                "version",
            ),
        )
        if "notebook" not in raw:
            raise self.fail(where, "missing key 'notebook' (a path like 'notebooks/train.ipynb')")
        notebook = self.notebook_path(f"{where}.notebook", raw["notebook"])
        if "kind" not in raw:
            raise self.fail(where, f"missing key 'kind'; allowed: {', '.join(KINDS)}")
        kind = self.typed(f"{where}.kind", raw["kind"], str, "a string")
        if kind not in KINDS:
            raise self.fail(f"{where}.kind", f"{kind!r} is not a kind; allowed: {', '.join(KINDS)}")
        default_runners = ["cpu"] if "cpu" in runners else list(runners)
        names = self.string_list(f"{where}.runners", raw.get("runners", default_runners))
        for name in names:
            if name not in runners:
                raise self.fail(
                    f"{where}.runners",
                    f"unknown runner {name!r}; declared runners: {', '.join(runners)}",
                )
        if len(set(names)) != len(names) or not names:
            raise self.fail(f"{where}.runners", "expected a non-empty list of distinct runners")
        params = self.typed(f"{where}.parameters", raw.get("parameters", {}), dict, "a table")
        rules = self.typed(f"{where}.thresholds", raw.get("thresholds", {}), dict, "a table")
        thresholds = []
        for metric, text in rules.items():
            try:
                thresholds.append(parse_threshold(metric, text))
            except ValueError as exc:
                raise self.fail(f"{where}.thresholds.{metric}", str(exc)) from None
        timeout = self.positive(f"{where}.timeout", raw.get("timeout", default_timeout))
        outputs = self.string_list(f"{where}.outputs", raw.get("outputs", []))
        for i, output in enumerate(outputs):
            self.inside_root(f"{where}.outputs[{i}]", output)
        experiment = raw.get("experiment")
        if experiment is not None:
            self.typed(f"{where}.experiment", experiment, str, "an experiment name")
        version = raw.get("version")
        if version is not None:
            self.typed(f"{where}.version", version, str, "a version string")
            if not _SEMVER.match(version):
                raise self.fail(
                    f"{where}.version", f"{version!r} is not a semantic version like '1.2.0'"
                )
        return Pipeline(
            notebook=notebook,
            kind=kind,
            runners=names,
            parameters=params,
            thresholds=tuple(thresholds),
            timeout=timeout,
            outputs=outputs,
            experiment=experiment,
            version=version,
        )

    def inside_root(self, where: str, value: str) -> str:
        """The real path of ``value``, which must stay inside the root (symlinks followed).

        String operations, not pathlib: this runs for every declared pipeline on every pytest
        start, and thousands of Path.resolve() calls showed up in collection time.
        """
        real = os.path.realpath(os.path.join(self.real_root, value))
        if os.path.isabs(value) or not real.startswith(self.real_root + os.sep):
            raise self.fail(where, f"{value!r} must be a path inside {self.root}")
        return real

    def notebook_path(self, where: str, value: Any) -> str:
        self.typed(where, value, str, "a path to an .ipynb file")
        if not value.endswith(".ipynb"):
            raise self.fail(where, f"{value!r} is not an .ipynb file")
        real = self.inside_root(where, value)
        if not os.path.isfile(real):
            raise self.fail(where, f"notebook file {value!r} does not exist under {self.root}")
        return Path(real[len(self.real_root) + 1 :]).as_posix()


def _pipeline_where(index: int, notebook: Any) -> str:
    label = f" ({notebook})" if isinstance(notebook, str) else ""
    return f"[[tool.nbgate.pipelines]] #{index + 1}{label}"


def _describe(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    return f"{names.get(type(value), type(value).__name__)} {value!r:.60}"
