"""``python -m bench [--smoke]``: build the projects, time every variant, write the report."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

from bench import environment, settings
from bench.plan import plan
from bench.probing import probe_collection
from bench.report import render
from bench.settings import Settings
from bench.timing import Deadlines, VariantFailed, interleaved

HERE = Path(__file__).resolve().parent
# `make bench` must finish within 10 minutes on 2 cores. A round took 2.5-3 minutes on a 2-core
# machine shared with other work, so the third one may not fit: no variant starts that its
# earlier samples say would end after SOFT_LIMIT_S, none runs past HARD_LIMIT_S (the probe and
# the report take seconds).
SOFT_LIMIT_S = 540.0
HARD_LIMIT_S = 580.0

NOTES = {
    "budget rows": "nbgate runs with `-p no:nbgate-tracking`: papermill and nbmake record "
    "nothing, so the budgets compare running notebooks; the tracking row shows what the "
    "default MLflow tracking (local sqlite store) adds, on the smallest set",
    "small notebooks": "a parameters cell and three trivial cells each, one cpu case each",
    "collection": "N cases = N/2 notebooks, each one pipeline on the cpu and gpu runners; the "
    "baseline is `pytest --collect-only` in a folder with only an empty pytest.ini",
    "-n 2": "the same project and command, serial and with `-n 2`. A serial nbgate run "
    "already boots two kernels at a time on 2 cores, so for small notebooks `-n 2` adds only "
    "its own start-up (workers, collection); it pays off where the notebooks compute",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="every row, each part as small as possible (for the test suite)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default: 3, smoke: 1)")
    parser.add_argument("--work", type=Path, default=HERE / "work",
                        help="folder for the generated projects and logs")
    parser.add_argument("--out", type=Path, help="report file (default: bench/RESULTS.md; "
                        "smoke: WORK/RESULTS.md)")
    parser.add_argument("--bytecode-cache", type=Path, metavar="DIR",
                        help="give every measured process this PYTHONPYCACHEPREFIX (for a venv "
                        "without compiled bytecode where PYTHONDONTWRITEBYTECODE is set)")
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="time only the variants whose key starts with PREFIX (repeatable; "
                        "e.g. small-16, xdist-training); the report keeps the rows they make")
    args = parser.parse_args(argv)
    chosen = settings.SMOKE if args.smoke else settings.FULL
    if args.repeats is not None:
        chosen = dataclasses.replace(chosen, repeats=max(1, args.repeats))
    out = args.out or (args.work / "RESULTS.md" if args.smoke else HERE / "RESULTS.md")
    cache = args.bytecode_cache.resolve() if args.bytecode_cache else None
    try:
        text = run(chosen, args.work.resolve(), cache, tuple(args.only))
    except VariantFailed as exc:
        print(f"bench: a variant failed, no report written\n{exc}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"bench: wrote {out}", file=sys.stderr)
    return 0


def run(chosen: Settings, work: Path, cache: Path | None, only: tuple[str, ...] = ()) -> str:
    started, load_before = time.monotonic(), environment.load_average()
    projects = work / "projects"
    shutil.rmtree(projects, ignore_errors=True)
    planned, comparisons = plan(chosen, projects)
    if only:
        planned = [v for v in planned if v.key.startswith(only)]
        keys = {v.key for v in planned}
        comparisons = [c for c in comparisons if {c.numerator, c.denominator} <= keys]
    env = environment.measured_env(cache)
    deadlines = Deadlines(started + SOFT_LIMIT_S, started + HARD_LIMIT_S)
    samples = interleaved(planned, env, work / "logs", chosen.repeats, chosen.warmup, deadlines)
    complete = all(len(s.seconds) == chosen.repeats for s in samples.values())
    probe = None if only else probe_collection(
        projects / f"collect-{max(chosen.collection_sizes)}", env, work / "logs"
    )
    context = {
        "How to read it": NOTES,
        "Machine": {**environment.machine(), "load average (1, 5, 15 min) before / after":
                    f"{load_before} / {environment.load_average()}"},
        "Versions": environment.versions(),
        "Settings": {
            "rounds": f"{chosen.repeats} timed, interleaved (rotated order)"
                      + ("" if complete else "; some runs skipped at the time limit (see samples)")
                      + (", after an untimed warm-up of each tool" if chosen.warmup else ""),
            "training runs": f"n_trials={chosen.n_trials} in every variant",
            "bytecode": environment.bytecode_state(cache),
            "benchmark wall time": f"{time.monotonic() - started:.0f} s",
        },
    }
    labels = {v.key: v.label for v in planned}
    return render(comparisons, samples, labels, probe, context)


if __name__ == "__main__":
    sys.exit(main())
