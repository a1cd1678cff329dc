"""Executing one notebook on a pooled kernel, turning every way it can go wrong into a Failure."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbgate.config import ParameterSource
from nbgate.contract.model import Failure
from nbgate.contract.text import strip_ansi
from nbgate.running.injection import INJECTED_TAG, has_tag, inject_parameters
from nbgate.running.kernels import Kernel, KernelPool, KernelStartError
from nbgate.running.notebook import (
    NotebookProblem,
    Recorded,
    check_kernel,
    read_notebook,
    read_recorded,
    resolve_parameters,
)

if TYPE_CHECKING:
    from nbformat import NotebookNode

EXCERPT_LINES = 8
_CELL_LINE = re.compile(r"Cell In\[\d+\], line (\d+)")


@dataclass
class RunRequest:
    notebook: Path  # absolute path of the source notebook
    label: str  # how messages name it (repository-relative path)
    parameter_sources: Sequence[ParameterSource]  # in precedence order, later ones win
    cwd: Path
    timeout: float  # seconds for the whole notebook
    kernel_env: Mapping[str, str]  # the environment the kernel process starts with
    case_env: Mapping[str, str] = field(default_factory=dict)  # set inside the kernel per case


@dataclass
class Prepared:
    """The notebook read, its kernel checked and its parameters injected, before it runs."""

    nb: NotebookNode | None  # None when it cannot run (``failure`` says why)
    parameters: dict[str, Any]  # exactly what is injected
    failure: Failure | None
    started: float  # time.monotonic() when preparing began


@dataclass
class Execution:
    nb: NotebookNode | None  # the executed notebook, None when it could not even be read
    recorded: Recorded
    failure: Failure | None
    duration_s: float


def prepare(request: RunRequest) -> Prepared:
    started = time.monotonic()
    try:
        nb = read_notebook(request.notebook)
        check_kernel(nb, request.label)
        parameters = resolve_parameters(nb, request.label, request.parameter_sources)
        nb = inject_parameters(nb, parameters)
    except NotebookProblem as problem:
        return Prepared(None, {}, Failure(problem.kind, str(problem)), started)
    return Prepared(nb, parameters, None, started)


def execute(
    request: RunRequest,
    pool: KernelPool,
    prestart_next: Callable[[], None] | None = None,
    prepared: Prepared | None = None,
) -> Execution:
    prepared = prepared or prepare(request)

    def done(nb: NotebookNode | None, failure: Failure | None) -> Execution:
        recorded = read_recorded(nb) if nb is not None else Recorded()
        return Execution(nb, recorded, failure, time.monotonic() - prepared.started)

    nb = prepared.nb
    if nb is None:
        return done(None, prepared.failure)
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
            try:
                await client.async_execute_cell(cell, index)
            except CellExecutionError as exc:
                if _exited_cleanly(cell):
                    return None  # sys.exit(0): the notebook stopped early on purpose
                return cell_failure(nb, index, exc)
            if _errors(cell):
                # The code finished, but an error output came later (IPython's post-execute
                # hooks, e.g. matplotlib drawing a figure): papermill and nbmake fail on it.
                return cell_failure(nb, index, after_code=True)
    except CellTimeoutError:
        return _located(
            nb, index, "timeout",
            f"timed out after {request.timeout:g} s in {cell_name(nb, index)}",
        )
    except DeadKernelError:
        return _located(
            nb,
            index,
            "kernel_died",
            f"kernel died in {cell_name(nb, index)} "
            "(the process exited by os._exit, a crash or out of memory)",
        )
    return None


async def _set_environment(client: Any, env: Mapping[str, str]) -> None:
    # The kernel may have been started before this case was known (KernelPool.prestart), so
    # per-case variables such as MLFLOW_RUN_ID are set inside it, before the first cell.
    code = f"import os as _o; _o.environ.update({json.dumps(dict(env))}); del _o"
    msg_id = client.kc.execute(code, silent=True, store_history=False)
    await client.async_wait_for_reply(msg_id)


def _is_clean_exit(output: Any) -> bool:
    """``sys.exit()``, ``sys.exit(0)``, ``sys.exit(None)``: papermill's clean early stop."""
    return output.get("ename") == "SystemExit" and output.get("evalue", "") in ("", "0", "None")


def _errors(cell: Any) -> list[Any]:
    """The cell's error outputs that fail it (a clean SystemExit does not)."""
    return [
        o
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error" and not _is_clean_exit(o)
    ]


def _exited_cleanly(cell: Any) -> bool:
    outputs = cell.get("outputs", [])
    return not _errors(cell) and any(
        o.get("output_type") == "error" and _is_clean_exit(o) for o in outputs
    )


def cell_name(nb: NotebookNode, index: int) -> str:
    """The cell in a one-line cause: ``cell 3`` (``cell_label`` explains how it is counted)."""
    return cell_label(nb, index).split(" (", 1)[0]


def cell_label(nb: NotebookNode, index: int) -> str:
    """How a user finds cell ``index`` of the executed notebook: ``cell 3 (counting from 1,
    injected cell excluded; In [2])``.

    Cells count from 1 over the notebook's own cells, markdown included, as they appear in
    Jupyter; papermill's injected-parameters cell is not one of them. ``In [N]`` (the
    execution count Jupyter and the traceback show) is added when it differs.
    """
    if not 0 <= index < len(nb.cells):
        return "a cell"
    cells = nb.cells
    if _is_injected(cells[index]):
        return "the injected parameters cell"
    number = 1 + sum(1 for c in cells[:index] if not _is_injected(c))
    notes = ["counting from 1"]
    if any(_is_injected(c) for c in cells):
        notes[0] += ", injected cell excluded"
    count = cells[index].get("execution_count")
    if isinstance(count, int) and count != number:
        notes.append(f"In [{count}]")
    return f"cell {number} ({'; '.join(notes)})"


def _is_injected(cell: Any) -> bool:
    return has_tag(cell, INJECTED_TAG)


def cell_failure(
    nb: NotebookNode, index: int, reply: Any | None = None, *, after_code: bool = False
) -> Failure:
    """The failure of cell ``index``: its first failing error output, else the execute reply's
    error (``reply``, a CellExecutionError); a UsageError from a %magic has only the latter.
    ``after_code``: the code itself finished and the error output came afterwards."""
    cell = nb.cells[index]
    where = cell_name(nb, index)
    errors = _errors(cell)
    if errors:
        error = errors[0]
        ename = strip_ansi(error.get("ename", "Error"))
        evalue = strip_ansi(error.get("evalue", ""))
        traceback = strip_ansi("\n".join(error.get("traceback", [])))
    elif reply is not None and getattr(reply, "ename", None):
        ename = strip_ansi(str(reply.ename))
        evalue = strip_ansi(str(getattr(reply, "evalue", "") or ""))
        traceback = ""
    else:
        return _located(nb, index, "cell_error", f"{where} failed")
    after = ", after its code finished (in a display or post-execute hook)" if after_code else ""
    first_line = next((line for line in evalue.splitlines() if line.strip()), "")
    if ename == "SystemExit":
        first_line = f"exited with {evalue} (only sys.exit(0) ends a notebook cleanly)"
    return Failure(
        kind="cell_error",
        message=f"{ename} in {where}{after}: {first_line}".rstrip(": "),
        cell_index=index,
        cell=cell_label(nb, index),
        source=source_excerpt(cell.source, _failing_line(traceback, cell.source)),
        exception=f"{ename}: {evalue}" if evalue else ename,
        traceback=traceback or None,
    )


def _located(nb: NotebookNode, index: int, kind: str, message: str) -> Failure:
    source = nb.cells[index].source if 0 <= index < len(nb.cells) else None
    return Failure(
        kind=kind,
        message=message,
        cell_index=index if index >= 0 else None,
        cell=cell_label(nb, index),
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
