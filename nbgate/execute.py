"""Executing one notebook on a pooled kernel, turning every way it can go wrong into a Failure."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbgate.contract.model import Failure
from nbgate.contract.text import strip_ansi
from nbgate.kernels import Kernel, KernelPool, KernelStartError
from nbgate.notebook import (
    NotebookProblem,
    Recorded,
    check_parameters,
    inject_parameters,
    read_notebook,
    read_recorded,
)

if TYPE_CHECKING:
    from nbformat import NotebookNode

EXCERPT_LINES = 8
_CELL_LINE = re.compile(r"Cell In\[\d+\], line (\d+)")


@dataclass
class RunRequest:
    notebook: Path  # absolute path of the source notebook
    label: str  # how messages name it (repository-relative path)
    parameters: dict[str, Any]
    cwd: Path
    timeout: float  # seconds for the whole notebook
    kernel_env: Mapping[str, str]  # the environment the kernel process starts with
    case_env: Mapping[str, str] = field(default_factory=dict)  # set inside the kernel per case


@dataclass
class Execution:
    nb: NotebookNode | None  # the executed notebook, None when it could not even be read
    recorded: Recorded
    failure: Failure | None
    duration_s: float


def execute(
    request: RunRequest, pool: KernelPool, prestart_next: Callable[[], None] | None = None
) -> Execution:
    started = time.monotonic()

    def done(nb: NotebookNode | None, failure: Failure | None) -> Execution:
        recorded = read_recorded(nb) if nb is not None else Recorded()
        return Execution(nb, recorded, failure, time.monotonic() - started)

    try:
        nb = read_notebook(request.notebook)
        check_parameters(nb, request.label, request.parameters)
        nb = inject_parameters(nb, request.parameters)
    except NotebookProblem as problem:
        return done(None, Failure(problem.kind, str(problem)))

    try:
        kernel = pool.acquire(request.cwd, request.kernel_env)
    except KernelStartError as exc:
        return done(nb, Failure("harness", str(exc)))
    if prestart_next is not None:
        prestart_next()
    try:
        # The in-kernel deadline is the real one; this outer limit only guards against a
        # kernel that neither answers nor dies.
        failure = pool.call(_run_cells(nb, kernel, request), timeout=request.timeout + 60)
    except FutureTimeout:
        failure = Failure("timeout", f"timed out after {request.timeout:g} s")
    finally:
        pool.release(kernel)
    return done(nb, failure)


async def _run_cells(nb: NotebookNode, kernel: Kernel, request: RunRequest) -> Failure | None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    client = NotebookClient(
        nb,
        km=kernel.manager,
        kernel_name="python3",
        resources={"metadata": {"path": str(request.cwd)}},
        allow_errors=False,
        shutdown_kernel="immediate",
    )
    client.kc = kernel.client
    client.reset_execution_trackers()
    deadline = time.monotonic() + request.timeout
    index = -1
    try:
        if request.case_env:
            client.timeout = math.ceil(request.timeout)
            await _set_environment(client, request.case_env)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CellTimeoutError("notebook deadline passed")
            client.timeout = max(1, math.ceil(remaining))
            await client.async_execute_cell(cell, index)
    except CellExecutionError:
        return cell_failure(nb, index)
    except CellTimeoutError:
        return _located(
            nb, index, "timeout", f"timed out after {request.timeout:g} s in cell {index}"
        )
    except DeadKernelError:
        return _located(
            nb,
            index,
            "kernel_died",
            f"kernel died in cell {index} (the process exited: os._exit, a crash or out of memory)",
        )
    return None


async def _set_environment(client: Any, env: Mapping[str, str]) -> None:
    # The kernel may have been started before this case was known (KernelPool.prestart), so
    # per-case variables such as MLFLOW_RUN_ID are set inside it, before the first cell.
    code = f"import os as _o; _o.environ.update({json.dumps(dict(env))}); del _o"
    msg_id = client.kc.execute(code, silent=True, store_history=False)
    await client.async_wait_for_reply(msg_id)


def cell_failure(nb: NotebookNode, index: int) -> Failure:
    cell = nb.cells[index]
    error = next((o for o in reversed(cell.get("outputs", [])) if o.output_type == "error"), None)
    if error is None:
        return _located(nb, index, "cell_error", f"cell {index} failed")
    ename = strip_ansi(error.get("ename", "Error"))
    evalue = strip_ansi(error.get("evalue", ""))
    traceback = strip_ansi("\n".join(error.get("traceback", [])))
    first_line = evalue.splitlines()[0] if evalue else ""
    return Failure(
        kind="cell_error",
        message=f"{ename} in cell {index}: {first_line}".rstrip(": "),
        cell_index=index,
        source=source_excerpt(cell.source, _failing_line(traceback, cell.source)),
        exception=f"{ename}: {evalue}" if evalue else ename,
        traceback=traceback,
    )


def _located(nb: NotebookNode, index: int, kind: str, message: str) -> Failure:
    source = nb.cells[index].source if 0 <= index < len(nb.cells) else None
    return Failure(
        kind=kind,
        message=message,
        cell_index=index if index >= 0 else None,
        source=source_excerpt(source) if source else None,
    )


def _failing_line(traceback: str, source: str) -> int | None:
    """The failing line in the cell's own numbering.

    IPython drops a cell's leading blank lines before compiling, so its "line N" counts from
    the first non-blank line.
    """
    matches = _CELL_LINE.findall(traceback)
    if not matches:
        return None
    lines = source.splitlines()
    leading_blank = next((i for i, text in enumerate(lines) if text.strip()), len(lines))
    return int(matches[-1]) + leading_blank


def source_excerpt(source: str, line: int | None = None) -> str:
    """A few numbered lines of the cell, centred on the failing line when known."""
    lines = source.splitlines() or [""]
    known = line is not None and 1 <= line <= len(lines)
    first = max(1, line - EXCERPT_LINES // 2) if known and line else 1
    shown = lines[first - 1 : first - 1 + EXCERPT_LINES]
    width = len(str(first + len(shown) - 1))
    out = [
        f"{'>' if n == line else ' '}{n:>{width}} | {text}" for n, text in enumerate(shown, first)
    ]
    if first - 1 + len(shown) < len(lines):
        out.append(f" {'':>{width}} | ... ({len(lines) - (first - 1 + len(shown))} more lines)")
    return "\n".join(out)
