"""``python -m bench [--smoke]``: build the projects, time every variant, write the report.

What is compared, and the budgets (SPEC §11, for the default configuration: tracking on), are
in ``plan``; how big each part is, in ``FULL`` and ``SMOKE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import measure, projects
from bench.measure import Deadlines, VariantFailed, interleaved, probe_collection
from bench.projects import Variant
from bench.report import Comparison, render

HERE = Path(__file__).resolve().parent
# `make bench` should finish within 10 minutes on 2 cores. A round took 2.5-3 minutes on a
# 2-core machine shared with other work, so the third one may not fit: no variant starts that
# its earlier samples say would end after SOFT_LIMIT_S, none runs past HARD_LIMIT_S (the probe
# and the report take seconds).
SOFT_LIMIT_S = 540.0
HARD_LIMIT_S = 580.0


@dataclass(frozen=True)
class Settings:
    small_sizes: tuple[int, ...]  # N small notebooks run by nbgate, papermill CLI and nbmake
    tracking_size: int  # the small set timed with and without tracking (a budget in seconds)
    collection_sizes: tuple[int, ...]  # declared cases collected
    collection_budget_cases: int  # the size the per-case collection budget is checked at
    xdist_small: int  # small notebooks run serially and with -n 2
    xdist_training: int  # copies of the training example run serially and with -n 2
    n_trials: int  # optuna trials of every training run, the same in every variant
    repeats: int  # timed rounds; every round runs every variant once, in a rotated order
    warmup: bool  # run each tool once, untimed, first (page cache, bytecode, MLflow store)


FULL = Settings(
    small_sizes=(4, 16), tracking_size=4, collection_sizes=(30, 300, 3000),
    collection_budget_cases=3000, xdist_small=8, xdist_training=4,
    n_trials=15,  # config.yaml's own value: the training example as `make train` runs it
    repeats=3, warmup=True,
)
# Every row of the full report, each part as small as it can be: for the test suite.
SMOKE = Settings(
    small_sizes=(1,), tracking_size=1, collection_sizes=(6,), collection_budget_cases=6,
    xdist_small=2, xdist_training=2, n_trials=1, repeats=1, warmup=False,
)

NOTES = {
    "budget rows": "nbgate as a user gets it: MLflow tracking on (one run per case in the "
    "local sqlite store, the store created by the warm-up). papermill and nbmake record "
    "nothing, so the rows `without tracking` show the notebook-running part alone",
    "tracking": "seconds the default tracking adds to one session of small notebooks (the "
    "same project with `-p no:nbgate-tracking`). MLflow calls go through a helper process "
    "that stays warm between a user's sessions (NBGATE_MLFLOW_HELPER_IDLE, default 60 s; set "
    "to 600 s here, since a round takes minutes): the budget "
    "rows measure a second or later session, as a user running pytest again gets it; the "
    "cold-helper row is a session that starts its own helper and imports mlflow meanwhile "
    "(~3 s of CPU), as every CI job and a first session do",
    "idle MLflow helper": "resident memory (VmRSS) of the warm helper of the small-notebooks "
    "store, 2 s after its last session left (gc and malloc_trim have run); SPEC §11 allows "
    "150 MB, and a helper over it stops one minute after its last session by default",
    "small notebooks": "a parameters cell and three trivial cells each, one cpu case each",
    "plugins": "nbgate and nbmake are both installed in this venv; each runs as its own users "
    "have it, with the other's pytest plugins disabled (`-p no:...`)",
    "collection": "N cases = N/2 notebooks, each one pipeline on the cpu and gpu runners; "
    "per case: (nbgate's collection - a bare `pytest --collect-only` in an empty folder, with "
    "nbgate's plugins) / N, against (nbmake's `--nbmake --collect-only` of the same N/2 "
    "notebooks - the bare run with nbmake's plugins) per notebook",
    "-n 2": "the same project and command, serial and with `-n 2` (speedup = serial / -n 2). "
    "A serial nbgate run already boots two kernels at a time on 2 cores; `-n 2` adds two "
    "pytest workers' start-up, and pays off where the notebooks compute",
}


def plan(chosen: Settings, root: Path) -> tuple[list[Variant], list[Comparison]]:
    """Build the projects under ``root``; the variants in base order and the comparisons."""
    out = root / "papermill-out"
    out.mkdir(parents=True)
    planned: list[Variant] = []
    rows: list[Comparison] = []
    budgets_small = {16: (0.6, 0.75), 4: (0.75, 1.0)}  # vs N papermill runs, vs nbmake

    for n in chosen.small_sizes:
        project = projects.small_project(root / f"small-{n}", n)
        k, what = f"small-{n}", f"{n} small notebooks"
        first = n == min(chosen.small_sizes)
        planned += [
            projects.nbgate(f"{k}/nbgate", f"{what}: nbgate", project, warmup=first),
            projects.papermill(f"{k}/papermill", f"{what}: papermill CLI ×{n}", project, out,
                               warmup=first),
            projects.nbmake(f"{k}/nbmake", f"{what}: pytest --nbmake", project, warmup=first),
        ]
        vs_papermill, vs_nbmake = budgets_small.get(n, (None, None))
        rows += [
            Comparison(f"{what}: nbgate / {n} papermill CLI runs", f"{k}/nbgate",
                       f"{k}/papermill", vs_papermill),
            Comparison(f"{what}: nbgate / pytest --nbmake", f"{k}/nbgate", f"{k}/nbmake",
                       vs_nbmake),
        ]
        if n == chosen.tracking_size:
            # Without tracking only here (it is the tracking row's baseline): a round of the
            # full run must leave time for three rounds in `make bench`'s ten minutes.
            planned.append(projects.nbgate(f"{k}/no-tracking", f"{what}: nbgate without "
                                           "tracking", project, tracking=False))
            rows += [
                Comparison(f"{what}, without tracking: nbgate / {n} papermill CLI runs",
                           f"{k}/no-tracking", f"{k}/papermill"),
                Comparison(f"{what}, without tracking: nbgate / pytest --nbmake",
                           f"{k}/no-tracking", f"{k}/nbmake"),
            ]
            # A session's own helper, as every CI job and a first session have (mlflow imported
            # while the session runs), for information beside the budget's warm one.
            planned.append(projects.nbgate(
                f"{k}/cold-helper", f"{what}: nbgate, MLflow helper started cold", project,
                env=(("NBGATE_MLFLOW_HELPER_IDLE", "0"),)))
            rows += [
                Comparison(f"{what}: seconds MLflow tracking adds (with - without)",
                           f"{k}/nbgate", f"{k}/no-tracking", 1.0, kind="added"),
                Comparison(f"{what}: seconds it adds with a cold helper (CI, a first session)",
                           f"{k}/cold-helper", f"{k}/no-tracking", kind="added"),
            ]

    project = projects.training_project(root / "training-1", 1, chosen.n_trials)
    parameters = [("n_trials", str(chosen.n_trials)), ("config_path", "config_0.yaml")]
    planned += [
        projects.nbgate("training/nbgate", "training example: nbgate", project),
        projects.nbgate("training/no-tracking", "training example: nbgate without tracking",
                        project, tracking=False),
        projects.papermill("training/papermill", "training example: papermill CLI", project,
                           out, parameters),
        # The script loads the notebook's libraries once, untimed.
        projects.script("training/script", "training example: plain Python script", project,
                        warmup=True),
    ]
    rows += [
        Comparison("training example: nbgate / plain script (no kernel)", "training/nbgate",
                   "training/script", 1.3),
        Comparison("training example, without tracking: nbgate / plain script",
                   "training/no-tracking", "training/script"),
        Comparison("training example: nbgate / papermill CLI", "training/nbgate",
                   "training/papermill"),
    ]

    # Each tool's per-item cost is measured above a bare run with its own plugins loaded (the
    # other tool's disabled, as in its runs), so neither pays for the other's start-up.
    bare = projects.empty_project(root / "empty")
    planned += [
        projects.collect("collect/bare", "collect: bare pytest (nbgate's plugins), empty folder",
                         bare, *projects.WITHOUT_NBMAKE, warmup=True),
        projects.collect("collect/bare-nbmake",
                         "collect: bare pytest (nbmake's plugins), empty folder", bare,
                         *projects.WITHOUT_NBGATE, warmup=True),
    ]
    for n in chosen.collection_sizes:
        project = projects.collection_project(root / f"collect-{n}", n)
        planned.append(projects.collect(f"collect-{n}/nbgate", f"collect: {n} cases",
                                        project.root, *projects.WITHOUT_NBMAKE))
        rows.append(Comparison(f"collecting {n} cases / bare pytest --collect-only",
                               f"collect-{n}/nbgate", "collect/bare"))
        if n == chosen.collection_budget_cases:
            notebooks = len(project.notebooks)
            planned.append(projects.collect(
                f"collect-{n}/nbmake", f"collect: {notebooks} notebooks, pytest --nbmake",
                project.root, *projects.WITHOUT_NBGATE, "--nbmake", "notebooks", warmup=True))
            rows.append(Comparison(
                f"collection: nbgate per case ({n}) / nbmake per notebook ({notebooks})",
                f"collect-{n}/nbgate", f"collect-{n}/nbmake", 1.0, kind="per item",
                baselines=("collect/bare", "collect/bare-nbmake"), items=(n, notebooks)))

    small = projects.small_project(root / f"xdist-small-{chosen.xdist_small}",
                                   chosen.xdist_small)
    training = projects.training_project(
        root / f"xdist-training-{chosen.xdist_training}", chosen.xdist_training,
        chosen.n_trials)
    for k, what, project, budget in (
        (f"xdist-small-{chosen.xdist_small}", f"{chosen.xdist_small} small notebooks", small,
         1.0),
        (f"xdist-training-{chosen.xdist_training}", f"{chosen.xdist_training} training copies",
         training, 1.4),
    ):
        planned += [
            projects.nbgate(f"{k}/serial", f"{what}: nbgate serial", project),
            projects.nbgate(f"{k}/n2", f"{what}: nbgate -n 2", project, "-n", "2"),
        ]
        rows.append(Comparison(f"-n 2 speedup, {what} (serial / -n 2)", f"{k}/serial",
                               f"{k}/n2", budget, at_least=True))
    # Every project nbgate runs in with tracking: not the collection ones (no case runs there).
    projects.seed_mlflow_store(sorted({
        command.cwd for variant in planned if not variant.key.startswith("collect")
        for command in variant.commands
    }))
    return planned, rows


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
    chosen = SMOKE if args.smoke else FULL
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
    started, load_before = time.monotonic(), measure.load_average()
    root = work / "projects"
    shutil.rmtree(root, ignore_errors=True)
    planned, comparisons = plan(chosen, root)
    if only:
        planned = [v for v in planned if v.key.startswith(only)]
        keys = {v.key for v in planned}
        comparisons = [c for c in comparisons if c.keys <= keys]
    env = measure.measured_env(cache)
    deadlines = Deadlines(started + SOFT_LIMIT_S, started + HARD_LIMIT_S)
    samples = interleaved(planned, env, work / "logs", chosen.repeats, chosen.warmup, deadlines)
    complete = all(len(s.seconds) == chosen.repeats for s in samples.values())
    probe = None if only else probe_collection(
        root / f"collect-{max(chosen.collection_sizes)}", env, work / "logs"
    )
    context = {
        "How to read it": NOTES,
        "Machine": {**measure.machine(), "load average (1, 5, 15 min) before / after":
                    f"{load_before} / {measure.load_average()}"},
        "Versions": measure.versions(),
        "Settings": {
            "rounds": f"{chosen.repeats} timed, interleaved (rotated order)"
                      + ("" if complete else "; some runs skipped at the time limit (see samples)")
                      + (", after an untimed warm-up of each tool" if chosen.warmup else ""),
            "training runs": f"n_trials={chosen.n_trials} in every variant",
            "bytecode": measure.bytecode_state(cache),
            "benchmark wall time": f"{time.monotonic() - started:.0f} s",
        },
    }
    labels = {v.key: v.label for v in planned}
    warm = next((v for v in planned if v.key == f"small-{chosen.tracking_size}/nbgate"), None)
    helper_mb = None if warm is None else measure.idle_helper_mb(
        root / f"small-{chosen.tracking_size}", warm, env, work / "logs")
    measure.stop_warm_helpers(sorted({Path(c.cwd) for v in planned for c in v.commands}))
    return render(comparisons, samples, labels, probe, context, helper_mb)


if __name__ == "__main__":
    sys.exit(main())
