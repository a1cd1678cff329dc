"""The environment every measured process runs in, and what the report says about the machine."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("nbgate", "pytest", "papermill", "nbmake", "nbclient", "nbformat", "ipykernel",
            "jupyter_client", "pytest-xdist", "xgboost", "optuna")


def measured_env(bytecode_cache: Path | None) -> dict[str, str]:
    """The caller's environment without what would leak an outer pytest run into the variants.

    An outer pytest-xdist worker (the smoke test under ``make test``) exports its worker count,
    which nbgate reads to split the cores between kernels; serial variants must not see it.

    ``bytecode_cache``: a private ``PYTHONPYCACHEPREFIX``, for a venv without .pyc files where
    ``PYTHONDONTWRITEBYTECODE`` is set (see ``bytecode_state``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_CORE_"))}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
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
    if compiled or not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "compiled in the venv" if compiled else "written on first import"
    return ("NOT compiled and PYTHONDONTWRITEBYTECODE is set: every process compiles what it "
            "imports, so these numbers are inflated; run `make install` again or pass "
            "--bytecode-cache DIR")


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
