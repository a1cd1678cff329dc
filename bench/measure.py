"""Measuring: the environment every timed process runs in, running the variants interleaved
and repeated, the untimed collection probe, and what the report says about the machine."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import IO

from bench.projects import PYTEST_FLAGS, REPO, WITHOUT_NBMAKE, Command, Variant, tool

COMMAND_TIMEOUT = 600.0
PACKAGES = ("nbgate", "mlflow", "pytest", "papermill", "nbmake", "nbclient", "nbformat",
            "ipykernel", "jupyter_client", "pytest-xdist", "xgboost", "optuna")


# -- running -----------------------------------------------------------------------------------
class VariantFailed(Exception):
    """A variant exited with an unexpected code: the benchmark measured something broken."""


class OutOfTime(Exception):
    """A command was stopped at the benchmark's time limit."""


@dataclass(frozen=True)
class Samples:
    seconds: tuple[float, ...]

    @property
    def measured(self) -> bool:
        return bool(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass(frozen=True)
class Deadlines:
    """``time.monotonic()`` values: no variant starts that would end after ``soft`` going by
    its earlier samples; any command still running at ``hard`` is stopped."""

    soft: float
    hard: float


def run_variant(
    variant: Variant, env: Mapping[str, str], log_dir: Path, until: float | None = None
) -> float:
    """Wall-clock seconds for the variant's commands, run back to back; a failure raises."""
    log = log_dir / (variant.key.replace("/", "_") + ".log")
    with log.open("w", encoding="utf-8") as out:
        started = time.perf_counter()
        for command in variant.commands:
            limit = COMMAND_TIMEOUT if until is None else until - time.monotonic()
            code = _call(command, env, out, max(0.0, min(COMMAND_TIMEOUT, limit)))
            if code is None and until is not None and time.monotonic() >= until:
                raise OutOfTime(f"{variant.label}: stopped at the time limit; log {log}")
            if code not in variant.ok_returncodes:
                out.flush()
                tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise VariantFailed(
                    f"{variant.label}: `{' '.join(command.argv)}` in {command.cwd} "
                    f"{'timed out' if code is None else f'exited {code}'}; log {log}:\n{tail}"
                )
        return time.perf_counter() - started


def _call(command: Command, env: Mapping[str, str], out: IO[str], timeout: float) -> int | None:
    """The command's exit code, or None when it ran out of time (then all it started is killed).

    Its own session makes it a process group: kernels and xdist workers go with it.
    """
    process = subprocess.Popen(
        command.argv, cwd=command.cwd, env={**env, **dict(command.env)}, stdout=out, stderr=out,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def interleaved(
    variants: Sequence[Variant],
    env: Mapping[str, str],
    log_dir: Path,
    repeats: int,
    warmup: bool,
    deadlines: Deadlines | None = None,
) -> dict[str, Samples]:
    """Every round runs every variant once, each round in a rotated order.

    The warm-up runs each tool once (the variants marked ``warmup``) so that no timed round
    pays for compiling bytecode, reading packages from disk or creating the MLflow store for
    the first time.

    Other load on the machine drifts over minutes; interleaving spreads it over all variants
    instead of charging it to whichever ran during the busy spell, and the rotation keeps any
    one variant from always following the same neighbour.

    With ``deadlines``, a busy machine yields fewer samples instead of a longer run: a variant
    is skipped in a round when its slowest sample so far says it would end after the soft
    deadline, and one still running at the hard deadline is stopped and not counted. (Seen
    here: 4 training copies that take 16 s took 204 s once, while other jobs shared the
    2 cores with xgboost's spinning OpenMP threads.)
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    until = deadlines.hard if deadlines else None
    if warmup:
        for variant in (v for v in variants if v.warmup):
            # One command is enough to load what a tool loads (N papermill runs: the first).
            first = replace(variant, commands=variant.commands[:1])
            seconds = run_variant(first, env, log_dir, until)
            _progress(f"[warm-up] {variant.label}: {seconds:.2f} s")
    samples: dict[str, list[float]] = {v.key: [] for v in variants}
    step = max(1, len(variants) // max(1, repeats))
    for round_ in range(repeats):
        shift = (round_ * step) % len(variants)
        for variant in [*variants[shift:], *variants[:shift]]:
            expected = max(samples[variant.key], default=0.0)
            if deadlines and time.monotonic() + expected > deadlines.soft:
                _progress(f"[{round_ + 1}/{repeats}] {variant.label}: skipped (time limit)")
                continue
            try:
                seconds = run_variant(variant, env, log_dir, until)
            except OutOfTime as exc:
                _progress(f"[{round_ + 1}/{repeats}] {exc}")
                continue
            samples[variant.key].append(seconds)
            _progress(f"[{round_ + 1}/{repeats}] {variant.label}: {seconds:.2f} s")
    return {key: Samples(tuple(values)) for key, values in samples.items()}


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- the collection probe ----------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    items: int
    at_plugin_load: tuple[str, ...]
    during_collection: tuple[str, ...]


def probe_collection(root: Path, env: Mapping[str, str], log_dir: Path) -> Probe:
    """One more, untimed collection with ``bench.probe`` loaded: which heavy modules it imported."""
    result = log_dir / "probe.json"
    result.unlink(missing_ok=True)
    probe_env = {
        **env,
        "BENCH_PROBE_OUT": str(result),
        # The probe plugin is imported by name, from this checkout.
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
    }
    argv = (*tool("pytest"), "--collect-only", *PYTEST_FLAGS, *WITHOUT_NBMAKE,
            "-p", "bench.probe")
    probe = Variant("probe", "collection probe", (Command(argv, root),))
    run_variant(probe, probe_env, log_dir)
    data = json.loads(result.read_text(encoding="utf-8"))
    return Probe(data["items"], tuple(data["at_plugin_load"]), tuple(data["during_collection"]))


# -- the environment and the machine ------------------------------------------------------
def measured_env(bytecode_cache: Path | None) -> dict[str, str]:
    """The caller's environment without what would leak an outer pytest run into the variants.

    An outer pytest-xdist worker (the smoke test under ``make test``) exports its worker count,
    which nbgate reads to split the cores between kernels; serial variants must not see it.

    ``bytecode_cache``: a private ``PYTHONPYCACHEPREFIX``, for a venv without .pyc files where
    ``PYTHONDONTWRITEBYTECODE`` is set (see ``bytecode_state``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_CORE_"))}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # A round takes minutes: the budget rows measure a session that finds the helper warm, as
    # a user's next session within the default minute does.
    env.setdefault("NBGATE_MLFLOW_HELPER_IDLE", "600")
    if bytecode_cache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(bytecode_cache)
    return env


def bytecode_state(bytecode_cache: Path | None) -> str:
    """Whether the measured processes load compiled bytecode, for the report.

    Without .pyc files and with ``PYTHONDONTWRITEBYTECODE`` set, every process compiles all it
    imports: a kernel took ~3 s to start instead of ~0.5 s, and every variant measured the
    compiler. ``make install`` compiles the venv (uv --compile-bytecode) for that reason.
    """
    if bytecode_cache is not None:
        return f"private cache {bytecode_cache} (PYTHONPYCACHEPREFIX)"
    spec = importlib.util.find_spec("ipykernel.kernelapp")
    compiled = bool(spec and spec.origin and Path(
        importlib.util.cache_from_source(spec.origin)).is_file())
    if not compiled and os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return ("NOT compiled and PYTHONDONTWRITEBYTECODE is set: every process compiles what it "
                "imports, so these numbers are inflated; run `make install` again or pass "
                "--bytecode-cache DIR")
    state = "compiled in the venv" if compiled else "written on first import"
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return state
    # pytest keeps its assert-rewritten copies of plugin modules apart and, with
    # PYTHONDONTWRITEBYTECODE set, never writes them; make install writes them once.
    import pytest

    plugin = importlib.util.find_spec("nbgate.pytest_plugin.plugin")
    tail = f".{sys.implementation.cache_tag}-pytest-{pytest.__version__}.pyc"
    rewritten = bool(plugin and plugin.origin and (
        Path(plugin.origin).parent / "__pycache__" / f"plugin{tail}").is_file())
    return f"{state}; pytest's rewritten plugin modules " + (
        "compiled by make install" if rewritten else
        "NOT compiled (PYTHONDONTWRITEBYTECODE is set): every pytest process recompiles them; "
        "run `make install` again")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> dict[str, str]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": str(os.cpu_count() or 1),
        "cpu": model,
        "system": f"{platform.system()} {platform.release()}",
        "interpreter": sys.executable,
    }


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -- the idle MLflow helper's memory -------------------------------------------------------------
IDLE_HELPER_BUDGET_MB = 150.0  # SPEC §11


def idle_helper_mb(project: Path, variant: Variant, env: Mapping[str, str],
                   log_dir: Path) -> float | None:
    """Resident memory (MB) of the warm MLflow helper of ``project``'s store, idle after a
    session (``variant`` runs one if none is warm); None where it cannot be found (not Linux)."""
    from nbgate.tracking.files import digest, private_folder
    from nbgate.tracking.helper import resident_mb

    folder = private_folder()
    if folder is None:
        return None
    path = folder / f"helper-{digest(str(project.resolve()))}.sock"
    pid = _listening_pid(path)
    if pid is None:
        run_variant(variant, env, log_dir)
        pid = _listening_pid(path)
    if pid is None:
        return None
    time.sleep(2.0)  # idle: its last session has gone, memory handed back
    return resident_mb(pid)


def stop_warm_helpers(projects: Sequence[Path]) -> None:
    """SIGTERM the warm helpers of the benchmark's stores: its 600 s idle would leave each
    holding ~220 MB for ten minutes after the report."""
    from nbgate.tracking.files import digest, private_folder

    folder = private_folder()
    if folder is None:
        return
    for project in projects:
        pid = _listening_pid(folder / f"helper-{digest(str(project.resolve()))}.sock")
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)


def _listening_pid(path: Path) -> int | None:
    """The process with the Unix socket bound at ``path`` (Linux's /proc)."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return None
    inodes = {f"socket:[{line.split()[6]}]" for line in lines
              if len(line.split()) > 7 and line.split()[7] == str(path)}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None
