"""What the benchmark runs: the projects, the variants timed in them, the ratios reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench import settings, variants, workspace
from bench.report import Comparison
from bench.settings import Settings
from bench.variants import Variant


def plan(chosen: Settings, projects: Path) -> tuple[list[Variant], list[Comparison]]:
    """Build the projects under ``projects``; the variants in base order and the comparisons."""
    planned: list[Variant] = []
    comparisons: list[Comparison] = []
    out = projects / "papermill-out"
    out.mkdir(parents=True)
    parts = (_small, _training, _collection, _xdist)
    for part in parts:
        more_variants, more_comparisons = part(chosen, projects, out)
        planned += more_variants
        comparisons += more_comparisons
    return planned, comparisons


def _small(chosen: Settings, projects: Path, out: Path) -> tuple[list[Variant], list[Comparison]]:
    planned, comparisons = [], []
    smallest = min(chosen.small_sizes)
    for n in chosen.small_sizes:
        project = workspace.small_project(projects / f"small-{n}", n)
        k = f"small-{n}"
        trio = [
            variants.nbgate(f"{k}/nbgate", f"{n} small notebooks: nbgate", project),
            variants.papermill(f"{k}/papermill", f"{n} small notebooks: papermill CLI ×{n}",
                               project, out),
            variants.nbmake(f"{k}/nbmake", f"{n} small notebooks: pytest --nbmake", project),
        ]
        # The nbgate variant needs no warm-up of its own: the tracking one loads all it does.
        planned += [dataclasses.replace(v, warmup=n == smallest and v is not trio[0])
                    for v in trio]
        comparisons += [
            Comparison(f"{n} small notebooks: nbgate / {n} papermill CLI runs",
                       f"{k}/nbgate", f"{k}/papermill", settings.BUDGET_SMALL_VS_PAPERMILL),
            Comparison(f"{n} small notebooks: nbgate / pytest --nbmake",
                       f"{k}/nbgate", f"{k}/nbmake", settings.BUDGET_SMALL_VS_NBMAKE),
        ]
        if n == smallest:  # tracking costs per case and per session: the cheapest set shows both
            planned.append(variants.nbgate(
                f"{k}/tracking", f"{n} small notebooks: nbgate with MLflow tracking", project,
                tracking=True, warmup=True))
            comparisons.append(Comparison(
                f"{n} small notebooks: nbgate with MLflow tracking (the default) / without",
                f"{k}/tracking", f"{k}/nbgate"))
    return planned, comparisons


def _training(
    chosen: Settings, projects: Path, out: Path
) -> tuple[list[Variant], list[Comparison]]:
    project = workspace.training_project(projects / "training-1", 1, chosen.n_trials)
    parameters = [("n_trials", str(chosen.n_trials)), ("config_path", "config_0.yaml")]
    planned = [
        variants.nbgate("training/nbgate", "training example: nbgate", project),
        variants.papermill("training/papermill", "training example: papermill CLI", project,
                           out, parameters),
        variants.script("training/script", "training example: plain Python script", project),
    ]
    comparisons = [
        Comparison("training example: nbgate / papermill CLI", "training/nbgate",
                   "training/papermill"),
        Comparison("training example: nbgate / plain script (no kernel)", "training/nbgate",
                   "training/script"),
    ]
    # The script loads the notebook's libraries; papermill's warm-up loads papermill.
    return [dataclasses.replace(v, warmup=v.key == "training/script") for v in planned], comparisons


def _collection(
    chosen: Settings, projects: Path, out: Path
) -> tuple[list[Variant], list[Comparison]]:
    bare = workspace.empty_project(projects / "empty")
    planned = [variants.collect("collect/bare", "collect: bare pytest, empty folder", bare,
                                warmup=True)]
    comparisons = []
    for n in chosen.collection_sizes:
        project = workspace.collection_project(projects / f"collect-{n}", n)
        planned.append(variants.collect(f"collect-{n}/nbgate", f"collect: {n} cases",
                                        project.root))
        budget = settings.BUDGET_COLLECTION if n == settings.BUDGET_COLLECTION_CASES else None
        comparisons.append(Comparison(f"collecting {n} cases / bare pytest --collect-only",
                                      f"collect-{n}/nbgate", "collect/bare", budget))
    return planned, comparisons


def _xdist(chosen: Settings, projects: Path, out: Path) -> tuple[list[Variant], list[Comparison]]:
    planned, comparisons = [], []
    small = workspace.small_project(projects / f"xdist-small-{chosen.xdist_small}",
                                    chosen.xdist_small)
    training = workspace.training_project(
        projects / f"xdist-training-{chosen.xdist_training}", chosen.xdist_training,
        chosen.n_trials)
    for k, what, project, budget in (
        (f"xdist-small-{chosen.xdist_small}", f"{chosen.xdist_small} small notebooks", small,
         settings.BUDGET_XDIST_SMALL),
        (f"xdist-training-{chosen.xdist_training}", f"{chosen.xdist_training} training copies",
         training, settings.BUDGET_XDIST_TRAINING),
    ):
        planned += [
            variants.nbgate(f"{k}/serial", f"{what}: nbgate serial", project),
            variants.nbgate(f"{k}/n2", f"{what}: nbgate -n 2", project, "-n", "2"),
        ]
        comparisons.append(Comparison(f"-n 2 speedup, {what} (serial / -n 2)", f"{k}/serial",
                                      f"{k}/n2", budget, at_least=True))
    return planned, comparisons
