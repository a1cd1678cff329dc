"""``[tool.nbgate]`` in pyproject.toml: loading and validation.

Every mistake becomes a ConfigError whose message names the file, the key and what is allowed,
so pytest can show it as a usage error instead of a traceback.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from nbgate.contract.model import KINDS, Threshold, case_id
from nbgate.contract.names import (
    CANDIDATE_SUFFIX,
    file_name_problem,
    package_name,
    version_problem,
)
from nbgate.running.thresholds import parse_threshold

DEFAULT_TIMEOUT = 900.0
DEFAULT_RUNNERS: dict[str, dict[str, Any]] = {"cpu": {}, "gpu": {"gpu": True}}
# Semantic version without build metadata: the part after "+" is nbgate's (commit, pipeline).
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$", re.ASCII)
_RUNNER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A runner name becomes a pytest mark on its cases. These marks change how pytest runs a test
# (a runner named "xfail" turned a failed gate into "1 xfailed", exit 0; "skip" gave an
# INTERNALERROR): pytest's own marks, and those of plugins that nbgate's stack installs.
RESERVED_MARKS = frozenset(
    {
        "filterwarnings",
        "parametrize",
        "skip",
        "skipif",
        "tryfirst",
        "trylast",
        "usefixtures",
        "xfail",
        "xdist_group",  # pytest-xdist
        "anyio",  # anyio's pytest plugin (installed with jupyter_client's dependencies)
    }
)


class ConfigError(Exception):
    """A mistake in ``[tool.nbgate]``; the message is meant for the user as it is."""


@dataclass(frozen=True)
class ParameterSource:
    """Parameters from one place of the config, and whether the notebook must define them.

    Pipeline parameters are ``required``: a name the notebook's parameters cell does not assign
    is a typo and fails the case. Runner and CI parameters are shared by every pipeline, so
    they are injected only into notebooks that define them.
    """

    name: str  # where they come from, as messages say it: "pipeline", "runners.gpu", "ci"
    values: Mapping[str, Any]
    required: bool


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
    inputs: tuple[str, ...] = ()  # files and folders hashed into the case's fingerprint
    experiment: str | None = None
    version: str | None = None
    # File-name-safe form of the whole notebook path (see _file_names); "" outside the parser.
    file_name: str = ""

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
        """File-name-safe name for this case's artefacts, unique among the declared cases."""
        base = self.pipeline.file_name or file_safe(self.pipeline.notebook)
        return f"{base}-{self.pipeline.kind}-{self.runner.name}"


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

    def parameter_sources(self, case: Case, in_ci: bool) -> tuple[ParameterSource, ...]:
        """Pipeline, then runner, then (in CI) ci parameters: later ones win."""
        sources = [
            ParameterSource("pipeline", case.pipeline.parameters, required=True),
            ParameterSource(f"runners.{case.runner.name}", case.runner.parameters, False),
        ]
        if in_ci:
            sources.append(ParameterSource("ci", self.ci_parameters, required=False))
        return tuple(sources)


def load_config(pyproject: Path) -> NbgateConfig | None:
    """Read ``[tool.nbgate]``; None when the file or the table is absent."""
    if not pyproject.is_file():
        return None
    try:
        text = pyproject.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{pyproject}: not valid TOML: {exc}") from None
    return parse_config(pyproject, text)


def parse_config(pyproject: Path, text: str) -> NbgateConfig | None:
    """``[tool.nbgate]`` of ``text``, as if it were ``pyproject``'s content (paths relative to
    its folder): `nbgate init` checks what it is about to write before writing it."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
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
        self._real_folders: dict[str, str] = {}

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
        # TOML has nan and inf; "nan <= 0" is false, and both broke the run later.
        if not math.isfinite(number):
            raise self.fail(where, f"expected a finite number of seconds, got {number!r}")
        if number <= 0:
            raise self.fail(where, f"expected a positive number of seconds, got {number}")
        return float(number)

    def parameters(self, where: str, value: Any) -> dict[str, Any]:
        return json_parameters(where, value, self.fail)

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
        self.parameters("[tool.nbgate.ci].parameters", ci.get("parameters", {}))
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
        pipelines = _with_file_names(pipelines)
        seen: dict[tuple[str, str], int] = {}
        for i, p in enumerate(pipelines):
            if (p.notebook, p.kind) in seen:
                raise self.fail(
                    _pipeline_where(i, p.notebook),
                    f"duplicate pipeline: {p.notebook} is already declared with kind "
                    f"{p.kind!r} in [[tool.nbgate.pipelines]] #{seen[(p.notebook, p.kind)] + 1}",
                )
            seen[(p.notebook, p.kind)] = i
        self.distinct_packages(pipelines)
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
            if name in RESERVED_MARKS:
                raise self.fail(
                    rwhere,
                    f"{name!r} is a mark that pytest or one of its plugins acts on, and a runner "
                    "name becomes the mark of its cases; choose another name (reserved: "
                    f"{', '.join(sorted(RESERVED_MARKS))})",
                )
            self.typed(rwhere, raw, dict, "a table")
            self.check_keys(rwhere, raw, ("parameters", "gpu"))
            params = self.parameters(f"{rwhere}.parameters", raw.get("parameters", {}))
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
                "inputs",
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
        params = self.parameters(f"{where}.parameters", raw.get("parameters", {}))
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
            # Each output is a file of a package version: GitLab refuses a name like
            # "model v2.pkl" only at the upload, after the training it came from.
            problem = file_name_problem(PurePosixPath(output.replace("\\", "/")).name)
            if problem is not None:
                raise self.fail(f"{where}.outputs[{i}]", problem)
        inputs = self.string_list(f"{where}.inputs", raw.get("inputs", []))
        for i, declared in enumerate(inputs):
            real = self.inside_root(f"{where}.inputs[{i}]", declared)
            if not os.path.exists(real):
                raise self.fail(f"{where}.inputs[{i}]", f"{declared!r} does not exist under "
                                f"{self.root}; inputs are files or folders whose content is "
                                "part of the case's fingerprint")
        experiment = raw.get("experiment")
        if experiment is not None:
            self.typed(f"{where}.experiment", experiment, str, "an experiment name")
        version = raw.get("version")
        if version is not None:
            self.typed(f"{where}.version", version, str, "a version string")
            if "+" in version:
                raise self.fail(
                    f"{where}.version", f"{version!r} has build metadata ('+...'); nbgate "
                    "writes that part itself (commit and pipeline), declare only '1.2.0'"
                )
            problem = version_problem(version)
            if problem is not None:
                raise self.fail(f"{where}.version", problem)
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
            inputs=inputs,
            experiment=experiment,
            version=version,
        )

    def distinct_packages(self, pipelines: list[Pipeline]) -> None:
        """Two pipelines must not publish into one package (nor one into the other's candidate
        package): the newest release would then be the other notebook's model."""
        owners: dict[str, tuple[int, str]] = {}
        for i, p in enumerate(pipelines):
            release = package_name(p.notebook)
            for name in (release, release + CANDIDATE_SUFFIX):
                owner = owners.get(name)
                if owner is not None and owner[1] != p.notebook:
                    raise self.fail(
                        _pipeline_where(i, p.notebook),
                        f"publishes to package {name!r}, as {owner[1]} "
                        f"([[tool.nbgate.pipelines]] #{owner[0] + 1}) does; package names come "
                        "from the notebook's path, so rename or move one notebook",
                    )
                owners.setdefault(name, (i, p.notebook))

    def inside_root(self, where: str, value: str) -> str:
        """The real path of ``value``, which must stay inside the root (symlinks followed).

        String operations, not pathlib: this runs for every declared pipeline on every pytest
        start, and thousands of Path.resolve() calls showed up in collection time.
        """
        if os.path.isabs(value):
            raise self.fail(where, f"{value!r} must be a path inside {self.root}")
        joined = os.path.join(self.real_root, value)
        if ".." in value.replace("\\", "/").split("/"):
            real = os.path.realpath(joined)  # ".." after a symlink: only realpath knows where
        else:
            # Pipelines share a few folders: resolve each folder once, then only the file
            # itself (one lstat) unless it is a link.
            folder, name = os.path.split(joined)
            real_folder = self._real_folders.get(folder)
            if real_folder is None:
                real_folder = self._real_folders[folder] = os.path.realpath(folder)
            real = os.path.join(real_folder, name)
            if os.path.islink(real):
                real = os.path.realpath(real)
        if not real.startswith(self.real_root + os.sep):
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


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def file_safe(notebook: str) -> str:
    """The whole notebook path as one file name: ``a/train.ipynb`` -> ``a-train``.

    The whole path, not the stem: ``a/train.ipynb`` and ``b/train.ipynb`` must not write the
    same executed notebook and figures.
    """
    stem = notebook[: -len(".ipynb")] if notebook.endswith(".ipynb") else notebook
    return _UNSAFE.sub("-", stem.replace("/", "-")).strip("-.") or "notebook"


def _with_file_names(pipelines: list[Pipeline]) -> list[Pipeline]:
    """Give each pipeline its file name; paths that flatten to the same name (``a-b/c`` and
    ``a/b-c``, or names differing only in case, which collide on macOS and Windows) get a short
    hash of their path appended, so every declared case writes its own files."""
    by_name: dict[str, set[str]] = {}
    for p in pipelines:
        by_name.setdefault(file_safe(p.notebook).lower(), set()).add(p.notebook)
    named = []
    for p in pipelines:
        name = file_safe(p.notebook)
        if len(by_name[name.lower()]) > 1:
            name += "-" + hashlib.sha1(p.notebook.encode()).hexdigest()[:8]
        named.append(replace(p, file_name=name))
    return named


def json_parameters(
    where: str, value: Any, fail: Callable[[str, str], Exception]
) -> dict[str, Any]:
    """A parameters table: identifiers mapped to JSON values; ``fail(key, problem)`` makes the
    error to raise. The one check for every way parameters arrive (``[tool.nbgate]`` tables and
    ``run_notebook(parameters=...)``), run before any kernel starts.

    Parameters are injected as Python literals and written to metrics.json and MLflow, so
    each value must be a JSON value: a tuple or any other object is refused rather than
    injected as its text. NumPy scalars (``np.int64(3)``, what a test computes) become the
    Python number they hold. TOML dates and times are not converted (whether a notebook wants a
    string, a datetime or a pandas Timestamp is its own business): they are a usage error that
    shows the quoted string to write instead.
    """
    if not isinstance(value, dict):
        raise fail(where, f"expected a table, got {_describe(value)}")
    checked = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise fail(
                f"{where}.{name}", "a parameter name must be a Python identifier "
                "(letters, digits, '_'), since it is assigned in the notebook"
            )
        checked[name] = _json_value(f"{where}.{name}", item, fail)
    return checked


def _json_value(where: str, value: Any, fail: Callable[[str, str], Exception]) -> Any:
    if _is_numpy_scalar(value):
        value = value.item()
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        raise fail(
            where,
            f"TOML {type(value).__name__} {value.isoformat()} cannot be injected: "
            f"parameters are JSON values; quote it as a string: \"{value.isoformat()}\"",
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(where, f"{value!r} is not a JSON number; use a finite number or a string")
    if isinstance(value, list):
        return [_json_value(f"{where}[{i}]", item, fail) for i, item in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise fail(where, "a table's keys must be strings (JSON object keys)")
        return {key: _json_value(f"{where}.{key}", item, fail) for key, item in value.items()}
    if value is None or isinstance(value, str | bool | int | float):
        return value
    hint = "; use a list" if isinstance(value, tuple) else ""
    raise fail(where, f"{_describe(value)} is not a JSON value (string, number, boolean, "
                      f"null, list or table){hint}")


def _is_numpy_scalar(value: Any) -> bool:
    # Without importing numpy (collection stays light): its scalars are numpy.generic, whose
    # item() gives the Python value.
    return type(value).__module__ == "numpy" and hasattr(value, "item") and \
        getattr(value, "ndim", None) == 0


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
