"""Sharding: the pure split (nbgate/pytest_plugin/shard.py) and --nbgate-shard / CI_NODE_* in
real pytest runs."""

from __future__ import annotations

import json
import random
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from nbgate.cli import main as nbgate_main
from nbgate.contract.model import CaseResult
from nbgate.pytest_plugin.shard import (
    Shard,
    ShardError,
    assign,
    durations_from_metrics,
    fingerprint,
    shard_from,
    split,
)
from tests.support.builders import build_metrics, write_metrics_json
from tests.support.nbproject import (
    run_pytest,
    write_indexed_training_project,
    write_notebook,
    write_pyproject,
)

# -- the setting ------------------------------------------------------------------------------


def test_shard_spec_parses_k_of_n_counting_from_one() -> None:
    assert Shard.parse("2/4", "--nbgate-shard") == Shard(2, 4)
    assert Shard.parse(" 1 / 3 ", "x").name == "shard-1-of-3"
    for bad, says in (("0/4", "count from 1"), ("5/4", "does not exist in 1..4"),
                      ("1/0", "must be 1 to"), ("two/four", "is not K/N"), ("2", "is not K/N"),
                      ("-1/4", "is not K/N")):
        with pytest.raises(ShardError, match=says) as info:
            Shard.parse(bad, "--nbgate-shard")
        assert str(info.value).startswith("--nbgate-shard:")


def test_where_the_shard_comes_from() -> None:
    ci = {"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "4"}
    assert shard_from(None, ci) == (Shard(3, 4), "CI_NODE_INDEX/CI_NODE_TOTAL")
    # The flag wins over the environment, NBGATE_SHARD over GitLab's variables.
    assert shard_from("1/2", {**ci, "NBGATE_SHARD": "2/2"}) == (Shard(1, 2), "--nbgate-shard")
    assert shard_from(None, {**ci, "NBGATE_SHARD": "2/2"}) == (Shard(2, 2), "NBGATE_SHARD")
    # 'off' runs everything in a parallel job (N workers of one Optuna study).
    assert shard_from("off", ci) == (None, "--nbgate-shard")
    assert shard_from(None, {**ci, "NBGATE_SHARD": "off"}) == (None, "NBGATE_SHARD")
    # Not sharded: a job without parallel (GitLab sets CI_NODE_TOTAL=1 and no index), 1 of 1.
    assert shard_from(None, {"CI_NODE_TOTAL": "1"}) == (None, "")
    assert shard_from(None, {"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "1"})[0] is None
    assert shard_from(None, {}) == (None, "")
    with pytest.raises(ShardError, match=r"CI_NODE_INDEX/CI_NODE_TOTAL \('x'/'4'\)"):
        shard_from(None, {"CI_NODE_INDEX": "x", "CI_NODE_TOTAL": "4"})


# -- durations --------------------------------------------------------------------------------


def test_durations_read_schema_1_and_schema_2_ids() -> None:
    document = {"schema": 1, "cases": [
        {"case_id": "a.ipynb::train[cpu]", "outcome": "passed", "duration_s": 12.5},
        {"id": "b.ipynb::train[cpu]", "outcome": "failed", "duration_s": 3},  # schema 2's key
        {"case_id": "c.ipynb::train[gpu]", "outcome": "skipped", "duration_s": 0.0},
        {"case_id": "d.ipynb::train[cpu]", "outcome": "passed", "duration_s": None},
        {"case_id": "e.ipynb::train[cpu]", "outcome": "passed", "duration_s": True},
        {"case_id": "f.ipynb::train[cpu]", "outcome": "passed", "duration_s": float("nan")},
        {"case_id": "tests/test_x.py::test_two", "outcome": "passed", "duration_s": 2.0},
        {"case_id": "tests/test_x.py::test_two#2", "outcome": "passed", "duration_s": 1.5},
        "not a case",
    ]}
    assert durations_from_metrics(document) == {
        "a.ipynb::train[cpu]": 12.5, "b.ipynb::train[cpu]": 3.0, "tests/test_x.py::test_two": 3.5}
    assert durations_from_metrics({"cases": "nope"}) == {}
    assert durations_from_metrics([]) == {}


# -- the split --------------------------------------------------------------------------------


def declared(pipelines: int, prefix: str = "p") -> list[str]:
    return [f"notebooks/{prefix}{i:04d}.ipynb::train[{runner}]"
            for i in range(pipelines) for runner in ("cpu", "gpu")]


SKEWS: dict[str, Callable[[random.Random], float]] = {
    # seconds; each far from uniform
    "lognormal": lambda r: r.lognormvariate(4, 1.5),
    "pareto": lambda r: 30 * r.paretovariate(1.3),
    "bimodal": lambda r: r.uniform(600, 1800) if r.random() < 0.05 else r.uniform(20, 90),
}


def shard_sums(shards: list[list[str]], durations: dict[str, float]) -> list[float]:
    return [sum(durations[c] for c in shard) for shard in shards]


@pytest.mark.parametrize("skew", sorted(SKEWS))
def test_3000_cases_in_4_shards_disjoint_complete_and_balanced(skew: str) -> None:
    rng = random.Random(13)
    ids = declared(1500)
    durations = {c: SKEWS[skew](rng) for c in ids}
    shards = split(ids, durations, 4)
    flat = [c for shard in shards for c in shard]
    assert len(flat) == len(set(flat)) == len(ids) and set(flat) == set(ids)
    for shard in shards:  # each in collection order
        assert shard == [c for c in ids if c in set(shard)]
    sums = shard_sums(shards, durations)
    assert max(sums) <= 1.10 * min(sums), sums
    # The bound the design gives: within the longest case below 1/20 of a share.
    assert max(sums) <= 1.05 * min(sums), sums


def test_unknown_cases_count_as_the_mean_and_no_durations_split_by_count() -> None:
    ids = declared(1500)
    rng = random.Random(5)
    known = {c: SKEWS["lognormal"](rng) for c in ids[::2]}  # half the cases never recorded
    mean = statistics.fmean(known.values())
    sums = shard_sums(split(ids, known, 4), {c: known.get(c, mean) for c in ids})
    assert max(sums) <= 1.05 * min(sums), sums
    counts = [len(s) for s in split(ids, {}, 4)]
    assert sum(counts) == 3000 and max(counts) - min(counts) <= 1, counts


def test_every_job_computes_the_same_split_whatever_the_order() -> None:
    ids = declared(400)
    rng = random.Random(2)
    durations = {c: SKEWS["pareto"](rng) for c in ids}
    shuffled = ids[:]
    random.Random(9).shuffle(shuffled)
    assert assign(shuffled, durations, 4) == assign(ids, durations, 4)
    assert fingerprint(assign(shuffled, durations, 4)) == fingerprint(assign(ids, durations, 4))


def test_adding_one_pipeline_moves_few_other_cases() -> None:
    """Measured on 3000 cases and 30 new pipelines (a cpu and a gpu case each, durations from the
    same skewed distribution): a greedy longest-first packing moves about half of all cases here;
    this split moves the new cases' neighbours at the cuts."""
    rng = random.Random(7)
    ids = declared(1500)
    durations = {c: SKEWS["pareto"](rng) for c in ids}
    before = assign(ids, durations, 4)
    moved = []
    for n in range(30):
        new = declared(1, prefix=f"new{n}-")
        grown = {**durations, **{c: SKEWS["pareto"](rng) for c in new}}
        after = assign(ids + new, grown, 4)
        moved.append(sum(before[c] != after[c] for c in ids) / len(ids))
        # Removing it again restores the old split exactly.
        assert assign(ids, durations, 4) == before
    assert max(moved) <= 0.02, moved
    assert statistics.fmean(moved) <= 0.005, moved


def test_more_shards_than_cases_and_a_case_longer_than_a_share() -> None:
    assert [len(s) for s in split(["a", "b"], {}, 4)].count(0) == 2
    ids = declared(50)
    durations = dict.fromkeys(ids, 10.0)
    durations[ids[0]] = 10_000.0  # longer than everything else together
    shards = split(ids, durations, 4)
    alone = next(s for s in shards if ids[0] in s)
    assert alone == [ids[0]]
    assert sorted(c for s in shards for c in s) == sorted(ids)
    others = [shard_sums([s], durations)[0] for s in shards if s is not alone]
    assert max(others) - min(others) <= 10.0


# -- real pytest runs -------------------------------------------------------------------------

NOTEBOOKS = 6


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six tiny declared training notebooks and the durations a previous unsharded run recorded
    (one notebook much longer than the rest)."""
    root = tmp_path_factory.mktemp("shards")
    write_indexed_training_project(root, NOTEBOOKS)
    recorded = [CaseResult(case_id(i), f"notebooks/n{i}.ipynb", "train", "cpu", "passed",
                           600.0 if i == 0 else 60.0) for i in range(NOTEBOOKS)]
    write_metrics_json(root / "reports" / "metrics.json", build_metrics(recorded))
    return root


def case_id(i: int) -> str:
    return f"notebooks/n{i}.ipynb::train[cpu]"


# Tracking is beside the point here and costs an MLflow import per run.
FAST = ("-p", "no:nbgate-tracking")


def ran(root: Path, folder: str) -> list[str]:
    metrics = json.loads((root / "reports" / folder / "metrics.json").read_text())
    assert all(c["outcome"] == "passed" for c in metrics["cases"]), metrics["cases"]
    return [c["id"] for c in metrics["cases"]]


def test_ci_node_variables_pick_the_shard_with_no_flag(project: Path) -> None:
    expected = split([case_id(i) for i in range(NOTEBOOKS)], {
        case_id(i): 600.0 if i == 0 else 60.0 for i in range(NOTEBOOKS)}, 2)
    assert expected[0] and expected[1]
    runs = []
    for index in (1, 2):
        done = run_pytest(project, *FAST, env={"CI_NODE_INDEX": str(index), "CI_NODE_TOTAL": "2"})
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert (f"nbgate: shard {index}/2 runs {len(expected[index - 1])} of {NOTEBOOKS} selected "
                "cases (balanced by durations in reports/metrics.json; split ") in out
        assert sorted(ran(project, f"shard-{index}-of-2")) == sorted(expected[index - 1])
        assert f"{NOTEBOOKS - len(expected[index - 1])} deselected" in out
        shard = json.loads((project / "reports" / f"shard-{index}-of-2" / "shard.json").read_text())
        assert (shard["index"], shard["total"], shard["selected"]) == (index, 2, NOTEBOOKS)
        assert shard["chosen_by"] == "CI_NODE_INDEX/CI_NODE_TOTAL"
        assert sorted(shard["cases"]) == sorted(expected[index - 1])
        runs.append(shard)
    assert runs[0]["split"] == runs[1]["split"]  # both jobs agreed on the split
    # The long notebook sits alone against the five short ones.
    assert [case_id(0)] in expected
    # The shards left the unsharded run's metrics.json (their durations source) alone.
    assert len(json.loads((project / "reports" / "metrics.json").read_text())["cases"]) == NOTEBOOKS


def test_flag_overrides_ci_and_selection_comes_first(project: Path) -> None:
    # -k keeps two notebooks; the split is of those two only, so 2 shards run one each.
    done = run_pytest(project, *FAST, "--collect-only", "-q", "-k", "n1 or n2",
                      "--nbgate-shard", "2/2", env={"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "9"})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "nbgate: shard 2/2 runs 1 of 2 selected cases" in out
    listed = [line for line in done.stdout.splitlines() if ".ipynb::" in line]
    assert len(listed) == 1 and ("n1.ipynb" in listed[0] or "n2.ipynb" in listed[0]), listed
    # 'off' ignores CI_NODE_*: every selected case runs.
    done = run_pytest(project, *FAST, "--collect-only", "-q", "--nbgate-shard", "off",
                      env={"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "3"})
    assert done.returncode == 0 and done.stdout.count(".ipynb::") == NOTEBOOKS, done.stdout


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_shard_with_nothing_to_run_says_so_and_passes(project: Path, workers: list[str]) -> None:
    # -k keeps one notebook: of 2 shards, one of them has nothing.
    outcomes = {}
    for index in (1, 2):
        done = run_pytest(project, *FAST, *workers, "-k", "n3", "--nbgate-shard", f"{index}/2")
        outcomes[index] = done
    empty = next(i for i, d in outcomes.items() if "passed" not in d.stdout.splitlines()[-1])
    done = outcomes[empty]
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    lines = [line for line in out.splitlines() if line.startswith("nbgate: shard")]
    assert lines == [f"nbgate: shard {empty}/2 has nothing to run: all 1 selected cases belong "
                     f"to other shards (split {lines[0].rsplit(' ', 1)[1]}"], lines
    full = outcomes[3 - empty]
    assert full.returncode == 0 and "1 passed" in full.stdout, full.stdout + full.stderr
    shard = json.loads((project / "reports" / f"shard-{empty}-of-2" / "shard.json").read_text())
    assert shard["cases"] == [] and shard["selected"] == 1


def test_an_empty_selection_still_exits_5_and_a_bad_shard_is_a_usage_error(project: Path) -> None:
    done = run_pytest(project, *FAST, "-k", "no_such_notebook", "--nbgate-shard", "1/2")
    assert done.returncode == 5, done.stdout + done.stderr
    assert "nothing to run" not in done.stdout
    done = run_pytest(project, *FAST, "--collect-only", "--nbgate-shard", "3/2")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "--nbgate-shard: shard 3 does not exist in 1..2" in done.stderr
    done = run_pytest(project, *FAST, "--collect-only", env={"NBGATE_SHARD": "half"})
    assert done.returncode == 4 and "NBGATE_SHARD: 'half' is not K/N" in done.stderr


def test_four_shards_together_are_the_unsharded_run(tmp_path: Path) -> None:
    """Four shard runs, side by side, hold the same case ids and outcomes as one unsharded run
    (what a merge of their reports starts from). One notebook fails; a GPU case is skipped on a
    machine without a GPU."""
    root = tmp_path / "four"
    table = "[tool.nbgate.runners.cpu]\n[tool.nbgate.runners.gpu]\ngpu = true\n"
    for i in range(5):
        cell = f"from nbgate import record\nrecord('i', {i})"
        if i == 4:
            cell = "raise ValueError('broken')"
        write_notebook(root / "notebooks" / f"m{i}.ipynb", [cell])
        runners = '["cpu", "gpu"]' if i == 0 else '["cpu"]'  # gpu: skipped without a GPU
        table += (f'[[tool.nbgate.pipelines]]\nnotebook = "notebooks/m{i}.ipynb"\n'
                  f'kind = "train"\nrunners = {runners}\n')
    write_pyproject(root, table)

    def outcomes(folder: Path) -> dict[str, str]:
        cases = json.loads((folder / "metrics.json").read_text())["cases"]
        return {c["id"]: c["outcome"] for c in cases}

    whole = run_pytest(root, *FAST)
    assert whole.returncode == 1, whole.stdout + whole.stderr  # the broken notebook
    unsharded = outcomes(root / "reports")
    assert len(unsharded) == 6 and {"failed", "passed"} <= set(unsharded.values()), unsharded
    combined: dict[str, str] = {}
    for index in range(1, 5):
        done = run_pytest(root, *FAST, "--nbgate-shard", f"{index}/4")
        assert done.returncode in (0, 1), done.stdout + done.stderr
        shard = outcomes(root / "reports" / f"shard-{index}-of-4")
        assert not set(shard) & set(combined), "a case ran in two shards"
        combined.update(shard)
    assert combined == unsharded

    # The publish jobs merge the shards' reports into one set: the same cases and outcomes.
    shards = [str(root / "reports" / f"shard-{i}-of-4") for i in range(1, 5)]
    merged = tmp_path / "merged"
    code = nbgate_main(["merge-reports", *(a for s in shards for a in ("--reports", s)),
                        "--into", str(merged), "--pyproject", str(root / "pyproject.toml")], {})
    assert code == 0
    assert outcomes(merged) == unsharded
    document = json.loads((merged / "metrics.json").read_text())
    assert document["shard"] is None  # the merged set is the whole run
    assert {line.split(".i ")[0] for line in (merged / "metrics.txt").read_text().splitlines()}
    assert len(list(ET.parse(merged / "junit.xml").getroot().iter("testcase"))) == 6
    for i in range(1, 5):  # each shard recorded which shard it was
        shard_doc = json.loads((root / "reports" / f"shard-{i}-of-4" / "metrics.json").read_text())
        assert shard_doc["shard"] == {"index": i, "total": 4}
