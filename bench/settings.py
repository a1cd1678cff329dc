"""How big each part of the benchmark is: the full run and the smoke run."""

from __future__ import annotations

from dataclasses import dataclass

# The budgets of SPEC §11 (cost ratios at most, speedups at least; see plan.py).
BUDGET_SMALL_VS_PAPERMILL = 0.6
BUDGET_SMALL_VS_NBMAKE = 0.75
BUDGET_COLLECTION = 1.5
BUDGET_XDIST_SMALL = 1.3
BUDGET_XDIST_TRAINING = 1.4
BUDGET_COLLECTION_CASES = 3000  # the collection budget is stated for this many cases


@dataclass(frozen=True)
class Settings:
    small_sizes: tuple[int, ...]  # N small notebooks run by nbgate, papermill CLI and nbmake
    collection_sizes: tuple[int, ...]  # declared cases collected
    xdist_small: int  # small notebooks run serially and with -n 2
    xdist_training: int  # copies of the training example run serially and with -n 2
    n_trials: int  # optuna trials of every training run, the same in every variant
    repeats: int  # timed rounds; every round runs every variant once, in a rotated order
    warmup: bool  # run each tool once, untimed, first (page cache, bytecode, MLflow store)


FULL = Settings(
    small_sizes=(4, 16),
    collection_sizes=(30, 300, 3000),
    xdist_small=8,
    xdist_training=4,
    # config.yaml's own value: the training example as `make train` runs it.
    n_trials=15,
    repeats=3,
    warmup=True,
)

# Every row of the full report, each part as small as it can be: for the test suite.
SMOKE = Settings(
    small_sizes=(1,),
    collection_sizes=(6,),
    xdist_small=2,
    xdist_training=2,
    n_trials=1,
    repeats=1,
    warmup=False,
)
