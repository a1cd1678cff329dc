"""Running the variants interleaved and repeated, and summarising the samples."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from bench.variants import Command, Variant

COMMAND_TIMEOUT = 600.0


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
        command.argv, cwd=command.cwd, env=dict(env), stdout=out, stderr=out,
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
