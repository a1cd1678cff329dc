"""Merged shard reports are complete or say loudly that they are not (issue 20, item 1).

Three real shard runs of one project (``pytest`` with GitLab's ``CI_NODE_INDEX/CI_NODE_TOTAL``
and ``CI_JOB_NAME "train-cpu K/3"``), kept under ``nbgate-jobs/train-cpu-K-of-3/`` as the CI's
``.nbgate-run`` after_script keeps them; then the notify job's ``nbgate merge-reports`` and
``nbgate publish mr --dry-run`` read them with a shard gone, from another pipeline, commit or
split, or beside a conflicting copy.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nbgate.cli import main
from nbgate.contract.codec import dumps_metrics, load_metrics, metrics_document
from tests.support.nbproject import run_pytest, write_indexed_training_project

NOTEBOOKS = 9
SHA = "0123456789abcdef0123456789abcdef01234567"
FAST = ("-p", "no:nbgate-tracking")  # tracking is beside the point and costs an MLflow import


def ci(index: int, *, pipeline: str = "700", sha: str = SHA) -> dict[str, str]:
    return {"CI_NODE_INDEX": str(index), "CI_NODE_TOTAL": "3",
            "CI_JOB_NAME": f"train-cpu {index}/3",
            "CI_PIPELINE_ID": pipeline, "CI_COMMIT_SHA": sha}


def keep(root: Path, index: int, jobs: Path, name: str | None = None) -> Path:
    """What .gitlab-ci.yml's after_script does: the shard's folder to nbgate-jobs/<job>-K-of-N."""
    target = jobs / (name or f"train-cpu-{index}-of-3")
    shutil.copytree(root / "reports" / f"shard-{index}-of-3", target)
    return target


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nine one-cell notebooks and the three shards of one pipeline, kept as CI keeps them."""
    root = tmp_path_factory.mktemp("sharded")
    write_indexed_training_project(root, NOTEBOOKS)
    for index in (1, 2, 3):
        done = run_pytest(root, *FAST, env=ci(index))
        assert done.returncode == 0, done.stdout + done.stderr
        keep(root, index, root / "kept")
    return root


def owned(jobs: Path, index: int) -> list[str]:
    """The case ids a shard ran, from its own reports."""
    return json.loads((jobs / f"train-cpu-{index}-of-3" / "shard.json").read_text())["cases"]


def jobs_folder(project: Path, tmp_path: Path, *indices: int) -> Path:
    jobs = tmp_path / "nbgate-jobs"
    for index in indices:
        shutil.copytree(project / "kept" / f"train-cpu-{index}-of-3",
                        jobs / f"train-cpu-{index}-of-3")
    return jobs


def merge(capsys: pytest.CaptureFixture[str], project: Path, into: Path, *folders: Path,
          allow: bool = False) -> tuple[int, str]:
    argv = ["merge-reports", *(a for f in folders for a in ("--reports", str(f))),
            "--into", str(into), "--pyproject", str(project / "pyproject.toml")]
    code = main(argv + (["--allow-incomplete"] if allow else []), {})
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_three_shards_merge_complete(capsys: pytest.CaptureFixture[str], project: Path,
                                     tmp_path: Path) -> None:
    jobs = jobs_folder(project, tmp_path, 1, 2, 3)
    shard = json.loads((jobs / "train-cpu-2-of-3" / "shard.json").read_text())
    # Every shard records the whole split, the job without GitLab's " K/N", pipeline, commit.
    assert shard["schema"] == 2 and shard["job"] == "train-cpu"
    assert (shard["pipeline_id"], shard["commit_sha"]) == ("700", SHA)
    assert sorted(c for ids in shard["split_cases"] for c in ids) == sorted(
        f"notebooks/n{i}.ipynb::train[cpu]" for i in range(NOTEBOOKS))
    assert shard["split_cases"][1] == shard["cases"]
    code, out = merge(capsys, project, tmp_path / "merged", jobs)
    assert code == 0, out
    document = json.loads((tmp_path / "merged" / "metrics.json").read_text())
    assert len(document["cases"]) == NOTEBOOKS
    assert document["not_run"] == [] and document["missing_shards"] == []
    assert "incomplete" not in (tmp_path / "merged" / "summary.md").read_text()
    assert "incomplete" not in (tmp_path / "merged" / "metrics.txt").read_text()


@pytest.mark.parametrize("gone", [2, 3], ids=["middle", "last"])
def test_a_missing_shard_is_named_with_its_cases_in_every_file(
    capsys: pytest.CaptureFixture[str], project: Path, tmp_path: Path, gone: int
) -> None:
    """Its job failed or was cancelled before keeping its reports: the others' shard.json name
    its cases, which every merged file lists as not run; merge-reports exits 1."""
    all_jobs = jobs_folder(project, tmp_path / "all", 1, 2, 3)
    lost = owned(all_jobs, gone)
    assert lost
    jobs = jobs_folder(project, tmp_path, *(i for i in (1, 2, 3) if i != gone))
    headline = f"incomplete: train-cpu shard {gone}/3 missing, {len(lost)} " \
               f"case{'s' if len(lost) != 1 else ''} not run"
    into = tmp_path / "merged"
    code, out = merge(capsys, project, into, jobs)
    assert code == 1, out
    assert f"nbgate merge-reports: error: {headline}: {', '.join(lost)}" in out

    document = json.loads((into / "metrics.json").read_text())
    assert document["not_run"] == lost
    assert document["missing_shards"] == [
        {"job": "train-cpu", "index": gone, "total": 3, "cases": lost}]
    assert len(document["cases"]) == NOTEBOOKS - len(lost)
    assert load_metrics(into / "metrics.json").not_run == lost  # and it reads back

    summary = (into / "summary.md").read_text()
    assert f"⚠️ **{headline}**" in summary
    assert all(case in summary for case in lost)

    metrics_txt = (into / "metrics.txt").read_text().splitlines()
    assert metrics_txt[:2] == [f"# nbgate: {headline}", f"nbgate.cases_not_run {len(lost)}"]

    suite = ET.parse(into / "junit.xml").getroot()
    assert suite.get("tests") == str(NOTEBOOKS) and suite.get("errors") == str(len(lost))
    errors = {case.get("name"): case.find("error") for case in suite.iter("testcase")
              if case.find("error") is not None}
    assert sorted(errors) == sorted(lost)
    assert {e.get("message") for e in errors.values()} == {
        f"not run: train-cpu shard {gone}/3 missing (its job left no reports)"}

    # The MR comment's headline says it too (publish reads the jobs folder itself).
    code = main(["publish", "mr", "--dry-run", "--reports", str(jobs),
                 "--pyproject", str(project / "pyproject.toml")], {})
    body = capsys.readouterr().out
    assert code == 0, body
    assert f"### ⚠️ Training {headline} — {NOTEBOOKS - len(lost)} cases" in body
    assert all(case in body for case in lost)

    # The notify jobs that post whatever ran: the same files, exit 0.
    again = tmp_path / "allowed"
    code, out = merge(capsys, project, again, jobs, allow=True)
    assert code == 0, out
    assert f"warning: {headline}" in out
    assert json.loads((again / "metrics.json").read_text())["not_run"] == lost


@pytest.mark.parametrize("other", ["pipeline", "commit"])
def test_shards_of_another_pipeline_or_commit_are_refused_naming_both(
    capsys: pytest.CaptureFixture[str], project: Path, tmp_path: Path, other: str
) -> None:
    env = ci(2, pipeline="699") if other == "pipeline" else ci(2, sha="f" * 40)
    done = run_pytest(project, *FAST, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = jobs_folder(project, tmp_path, 1, 3)
    keep(project, 2, jobs)
    code, out = merge(capsys, project, tmp_path / "merged", jobs)
    assert code == 2, out
    assert f"are shards of different {other}s" in out
    assert "train-cpu-1-of-3/shard.json and " in out and "train-cpu-2-of-3" in out
    assert not (tmp_path / "merged").exists()  # nothing written from shards that disagree


def test_shards_that_computed_different_splits_are_refused_naming_both(
    capsys: pytest.CaptureFixture[str], project: Path, tmp_path: Path
) -> None:
    """Shard 2's job saw one notebook fewer (another commit's checkout, a stale baseline)."""
    done = run_pytest(project, *FAST, "-k", "not n8", env=ci(2))
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = jobs_folder(project, tmp_path, 1, 3)
    keep(project, 2, jobs)
    code, out = merge(capsys, project, tmp_path / "merged", jobs)
    assert code == 2, out
    assert "train-cpu-1-of-3/shard.json and" in out and "train-cpu-2-of-3/shard.json" in out
    assert "the shards computed different splits" in out


def test_two_different_results_for_one_case_are_refused_identical_copies_merge(
    capsys: pytest.CaptureFixture[str], project: Path, tmp_path: Path
) -> None:
    jobs = jobs_folder(project, tmp_path, 1, 2, 3)
    # An identical copy (reports/ kept twice) is the same result: merged once.
    shutil.copytree(jobs / "train-cpu-1-of-3", tmp_path / "copy" / "aa-copy")
    code, out = merge(capsys, project, tmp_path / "merged", jobs, tmp_path / "copy")
    assert code == 0, out
    assert len(json.loads((tmp_path / "merged" / "metrics.json").read_text())["cases"]) == \
        NOTEBOOKS

    # An older run's copy that failed the same case: which one is true? Refused, both named.
    document = load_metrics(jobs / "train-cpu-1-of-3" / "metrics.json")
    document.cases[0].outcome = "failed"
    old = tmp_path / "old" / "zz-old"
    old.mkdir(parents=True)
    (old / "metrics.json").write_text(dumps_metrics(metrics_document(
        document.cases, pipeline=document.pipeline)))
    code, out = merge(capsys, project, tmp_path / "merged-2", jobs, tmp_path / "old")
    assert code == 2, out
    assert (f"train-cpu-1-of-3/metrics.json and {old}/metrics.json hold different results "
            f"for {document.cases[0].case_id} (passed and failed)") in out


def test_a_shard_json_of_an_older_nbgate_is_refused_naming_it(
    capsys: pytest.CaptureFixture[str], project: Path, tmp_path: Path
) -> None:
    """Schema 1 named only the shard's own cases: a merge could not say what a missing shard
    was to run, so it is refused rather than merged as if whole."""
    jobs = jobs_folder(project, tmp_path, 1, 2, 3)
    path = jobs / "train-cpu-2-of-3" / "shard.json"
    old = json.loads(path.read_text())
    del old["split_cases"]
    path.write_text(json.dumps({**old, "schema": 1}))
    code, out = merge(capsys, project, tmp_path / "merged", jobs)
    assert code == 2, out
    assert ("train-cpu-2-of-3/shard.json: schema: 1 is not a shard.json schema this nbgate "
            "reads (2): run every shard of the job with this nbgate") in out
