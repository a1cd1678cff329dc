"""The model's life on GitLab, played as a sequence against the loopback GitLab: a release on
the default branch, a merge request's candidate compared with it, scheduled scoring that keeps
using production, the merge that promotes the reviewed candidate unchanged, and what must not
happen (a second release, a failed candidate shipped)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nbgate.cli import main
from nbgate.config import load_config
from nbgate.contract.codec import read_metrics
from nbgate.contract.model import CaseResult, Fingerprint
from nbgate.running.fingerprint import checkout_fingerprints
from reporting.gitlab.manifest import ManifestCase
from tests.reporting.test_publish_mr import WEB, ci_env, pipeline_ctx, train_case, write_reports
from tests.support.gitlab_standin import GitLabStandIn
from tests.support.nbproject import run_pytest, write_notebook, write_pyproject
from tests.support.packages import seed_version

MAIN_SHA = "aaaaaaaa" + "0" * 32  # the default branch when R1 was trained
BRANCH_SHA = "bbbbbbbb" + "1" * 32  # the MR's head commit
MERGE_SHA = "cccccccc" + "2" * 32  # the merge commit on the default branch
R1 = "1.0.0+aaaaaaaa.990"
C1 = "1.0.0-mr7.feature+bbbbbbbb.1002"
R2 = "1.0.0+bbbbbbbb.1002"  # C1, released
PACKAGE = "notebooks-training_example"  # the release package of notebooks/training_example.ipynb
CANDIDATES = PACKAGE + "-candidate"
CASE = "notebooks/training_example.ipynb::train[cpu]"
TRAINING = ["from nbgate import record\nrecord('roc_auc', 0.99)"]


def project(root: Path) -> Path:
    write_notebook(root / "notebooks" / "training_example.ipynb", TRAINING)
    (root / "requirements.txt").write_text("xgboost==3.2.0\n", encoding="utf-8")
    (root / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.nbgate]
        [[tool.nbgate.pipelines]]
        notebook = "notebooks/training_example.ipynb"
        kind = "train"
        thresholds = { roc_auc = ">= 0.95" }
        outputs = ["models/xgb_model.json"]
        version = "1.0.0"
        """), encoding="utf-8")
    return root


def fingerprint_here(root: Path, case_id: str = CASE) -> Fingerprint:
    """The case's fingerprint in the project as it is now (what a CI job would compute)."""
    config = load_config(root / "pyproject.toml")
    assert config is not None
    found = checkout_fingerprints(config, in_ci=True)[case_id]
    assert isinstance(found, Fingerprint), found
    return found


def fingerprinted(root: Path, **case: object) -> CaseResult:
    result = train_case(**case)  # type: ignore[arg-type]
    result.fingerprint = fingerprint_here(root, result.case_id)
    return result


def train(root: Path, model: bytes, pipeline: str, sha: str, ref: str, **case: object) -> None:
    """What a training job leaves behind: the model file and the reports, the case
    fingerprinted from the project as it is."""
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "xgb_model.json").write_bytes(model)
    write_reports(root / "reports", [fingerprinted(root, **case)],
                  pipeline_ctx(pipeline, sha=sha, ref=ref))


def job_env(standin: GitLabStandIn, pipeline: str, sha: str, ref: str, **extra: str) -> dict:
    return ci_env(standin, CI_PIPELINE_ID=pipeline, CI_COMMIT_SHA=sha, CI_COMMIT_SHORT_SHA=sha[:8],
                  CI_COMMIT_REF_NAME=ref, CI_PIPELINE_URL=f"{WEB}/-/pipelines/{pipeline}",
                  **extra)


def nbgate(root: Path, env: dict[str, str], *args: str,
           capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([*args, "--pyproject", str(root / "pyproject.toml")], env)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def fetch_model(root: Path, standin: GitLabStandIn, capsys: pytest.CaptureFixture[str]) -> bytes:
    """What scheduled scoring does: the newest release of the training pipeline."""
    env = job_env(standin, "2001", MAIN_SHA, "main", CI_PIPELINE_SOURCE="schedule")
    dest = root / "scoring" / "model.json"
    code, out = nbgate(root, env, "fetch-artifact", "--pipeline", "training_example",
                       "--dest", str(dest), capsys=capsys)
    assert code == 0, out
    return dest.read_bytes()


def test_a_candidate_is_reviewed_against_production_then_shipped_unchanged(
    gitlab_standin: GitLabStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path)
    os.chdir(root)
    main_env = job_env(gitlab_standin, "990", MAIN_SHA, "main")
    gitlab_standin.add_commit(MAIN_SHA)

    # 1. Release R1 from the default branch.
    train(root, b"model R1", "990", MAIN_SHA, "main", roc_auc=0.9889, log_loss=0.1311)
    code, out = nbgate(root, main_env, "publish", "artifacts", capsys=capsys)
    assert code == 0 and f"uploaded release {PACKAGE} {R1}" in out, out

    # 2. A branch with an open MR trains and publishes candidate C1.
    gitlab_standin.add_merge_request(7, source_branch="feature", sha=BRANCH_SHA)
    branch_env = job_env(gitlab_standin, "1002", BRANCH_SHA, "feature")
    train(root, b"model C1", "1002", BRANCH_SHA, "feature", roc_auc=0.9931, log_loss=0.1211)
    code, out = nbgate(root, branch_env, "publish", "artifacts", capsys=capsys)
    assert code == 0 and f"uploaded candidate {CANDIDATES} {C1}" in out, out

    # 3. The MR comment compares C1 with R1, and names R1.
    code, out = nbgate(root, branch_env, "publish", "mr", capsys=capsys)
    assert code == 0, out
    [note] = [n for n in gitlab_standin.notes(7) if "nbgate:train" in n.body]
    body = note.body.replace("\u00a0", " ")  # cells keep each value on one line
    assert f"Compared with production: release `{R1}` (main @ `aaaaaaaa`" in body
    assert "+0.0042 ▲" in body  # roc_auc >= rule: up is better
    assert "−0.0100 ▲" in body  # log_loss <= rule: down is better
    # 4. Scheduled scoring still fetches production, R1, not the unreviewed candidate.
    assert fetch_model(root, gitlab_standin, capsys) == b"model R1"

    # 5. The merge commit runs `nbgate promote`: C1 becomes a release, byte for byte.
    gitlab_standin.add_merge_request(7, source_branch="feature", sha=BRANCH_SHA, state="merged",
                                     merge_commit_sha=MERGE_SHA)
    merge_env = job_env(gitlab_standin, "1003", MERGE_SHA, "main", CI_PIPELINE_SOURCE="push")
    # A squash merge keeps the MR's `train ...` title, so the default branch retrains too: that
    # model is not released, the reviewed one is.
    train(root, b"model retrained", "1003", MERGE_SHA, "main", roc_auc=0.9935)
    code, out = nbgate(root, merge_env, "publish", "artifacts", capsys=capsys)
    assert code == 0 and f"not releasing {PACKAGE}: this commit merged !7" in out, out
    code, out = nbgate(root, merge_env, "promote", capsys=capsys)
    assert code == 0 and f"released {PACKAGE} {R2} from candidate {C1} (!7" in out, out
    assert fetch_model(root, gitlab_standin, capsys) == b"model C1"
    for name in ("xgb_model.json", "metrics.json", "requirements.txt"):
        assert (gitlab_standin.package_file(PACKAGE, R2, name)
                == gitlab_standin.package_file(CANDIDATES, C1, name))

    # 6. A second promote changes nothing, and says so in one line.
    before = len(gitlab_standin.packages())
    code, out = nbgate(root, merge_env, "promote", capsys=capsys)
    assert code == 0 and len(gitlab_standin.packages()) == before
    assert out.strip().splitlines()[-1].startswith("nbgate promote: nothing to promote"), out

    # 7. A failing candidate is never promoted, even when its MR is merged: not one whose
    # only case failed, nor one whose GPU case failed beside a passed CPU case.
    fingerprint = fingerprint_here(root)
    for sha, cases in (("d" * 40, [ManifestCase(CASE, "failed", fingerprint)]),
                       ("f" * 40, [ManifestCase(CASE, "passed", fingerprint),
                                   ManifestCase(CASE.replace("cpu", "gpu"), "failed",
                                                fingerprint)])):
        seed_version(gitlab_standin, CANDIDATES, f"1.0.0-mr8.bad+{sha[:8]}.1004",
                     {"xgb_model.json": b"model bad"}, commit=sha, ref="bad", cases=cases)
    gitlab_standin.add_merge_request(8, source_branch="bad", sha="f" * 40, commits=["d" * 40],
                                     state="merged", merge_commit_sha="e" * 40)
    code, out = nbgate(root, job_env(gitlab_standin, "1005", "e" * 40, "main"), "promote",
                       capsys=capsys)
    assert code == 0 and f"nothing to promote for {PACKAGE}: !8 has no passing candidate" in out
    assert fetch_model(root, gitlab_standin, capsys) == b"model C1"


def test_promote_tags_the_promoted_mlflow_run(
    gitlab_standin: GitLabStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path)
    os.chdir(root)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    created = subprocess.run(
        [sys.executable, "-c", "import mlflow, sys; c = mlflow.MlflowClient(sys.argv[1]); "
         "e = c.create_experiment('x'); print(c.create_run(e).info.run_id)", uri],
        capture_output=True, text=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    run_id = created.stdout.strip().splitlines()[-1]
    gitlab_standin.add_merge_request(7, source_branch="feature", sha=BRANCH_SHA)
    case = fingerprinted(root)
    assert case.tracking is not None
    case.tracking.run_id = run_id
    (root / "models").mkdir()
    (root / "models" / "xgb_model.json").write_bytes(b"m")
    write_reports(root / "reports", [case], pipeline_ctx("1002", sha=BRANCH_SHA))
    code, out = nbgate(root, job_env(gitlab_standin, "1002", BRANCH_SHA, "feature"),
                       "publish", "artifacts", capsys=capsys)
    assert code == 0, out
    gitlab_standin.add_merge_request(7, source_branch="feature", sha=BRANCH_SHA, state="merged",
                                     merge_commit_sha=MERGE_SHA)
    env = job_env(gitlab_standin, "1003", MERGE_SHA, "main", MLFLOW_TRACKING_URI=uri,
                  MLFLOW_DISABLE_TELEMETRY="true")
    code, out = nbgate(root, env, "promote", capsys=capsys)
    assert code == 0 and f"MLflow run {run_id} tagged nbgate.release={R2}" in out, out
    tags = subprocess.run(
        [sys.executable, "-c", "import mlflow, sys; "
         "print(mlflow.MlflowClient(sys.argv[1]).get_run(sys.argv[2]).data.tags['nbgate.release'])",
         uri, run_id], capture_output=True, text=True)
    assert tags.stdout.strip() == R2, tags.stderr


def test_no_release_yet_says_how_to_make_one(
    gitlab_standin: GitLabStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path)
    env = job_env(gitlab_standin, "2001", MAIN_SHA, "main")
    code, out = nbgate(root, env, "fetch-artifact", "--pipeline", "training_example",
                       "--dest", str(root / "m.json"), capsys=capsys)
    assert code == 1
    assert f"no release of '{PACKAGE}' yet" in out and "nbgate promote" in out


def test_a_baseline_rule_fails_against_the_named_release(
    gitlab_standin: GitLabStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Production's metrics are fetched before pytest; a drop beyond the allowed change fails
    the case in the terminal, summary.md, junit.xml and the MR comment, naming the release."""
    root = tmp_path / "p"
    write_notebook(root / "notebooks" / "train.ipynb",
                   ["from nbgate import record\nrecord('auc', 0.90)"])
    write_pyproject(root, 'timeout = 60\n[[tool.nbgate.pipelines]]\n'
                          'notebook = "notebooks/train.ipynb"\nkind = "train"\n'
                          'thresholds = { auc = ">= baseline - 0.005" }\n')
    release = "0.3.0+aaaaaaaa.990"
    production = train_case(notebook="notebooks/train.ipynb", roc_auc=0.95)
    production.metrics = {"auc": 0.95}
    published = write_reports(tmp_path / "release", [production],
                              pipeline_ctx("990", sha=MAIN_SHA, ref="main"))
    seed_version(gitlab_standin, "notebooks-train", release,
                 {"metrics.json": (published / "metrics.json").read_bytes()})
    env = job_env(gitlab_standin, "1002", BRANCH_SHA, "feature")
    code, out = nbgate(root, env, "fetch-baseline", capsys=capsys)
    assert code == 0 and f"baseline: notebooks-train {release}" in out, out

    run = run_pytest(root, "-p", "no:nbgate-tracking",
                     env={"NBGATE_BASELINE": "reports/baseline", "CI": ""})
    assert run.returncode == 1, run.stdout
    why = "auc 0.9000 < 0.9450 (short by 0.0450, rule >= baseline - 0.005, baseline 0.9500)"
    assert why in run.stdout
    assert f"baseline: release {release}" in run.stdout
    summary = (root / "reports" / "summary.md").read_text().replace("\u00a0", " ")
    assert f"Compared with production: release `{release}`" in summary
    assert "auc ≥ baseline − 0.005" in summary and "**0.9000** ❌" in summary
    assert "auc 0.9000 &lt; 0.9450 (short by 0.0450" in summary
    junit = ET.parse(root / "reports" / "junit.xml").getroot()
    failure = next(junit.iter("failure"))
    assert why in (failure.text or "") and why in failure.get("message", "")
    document = read_metrics((root / "reports" / "metrics.json").read_bytes())
    check = document.cases[0].thresholds[0]
    assert not check.passed and check.baseline == 0.95 and check.rule.change == "-"
    assert document.baseline is not None and document.baseline["version"] == release

    gitlab_standin.add_merge_request(7, source_branch="feature", sha=BRANCH_SHA)
    code, out = nbgate(root, env, "publish", "mr", capsys=capsys)
    assert code == 0, out
    [note] = [n for n in gitlab_standin.notes(7) if "nbgate:train" in n.body]
    body = note.body.replace("\u00a0", " ")
    assert f"Compared with production: release `{release}`" in body
    assert "auc ≥ baseline − 0.005" in body and "**0.9000** ❌ (−0.0500 ▼)" in body
    assert body.split("\n")[1].startswith(f"### ❌ Training failed — 1 of 1 case failed: "
                                           f"{why.replace('<', '&lt;')}")



def test_promote_with_a_job_token_on_an_older_gitlab_says_why_it_got_404(
    gitlab_standin: GitLabStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GitLab takes CI_JOB_TOKEN on GET /repository/commits/:sha/merge_requests only since 2025
    (job_token_allowed in lib/api/commits.rb; doc/ci/jobs/ci_job_token.md lists it); older
    instances answer 404 "Project Not Found", which is no reason to check CI_PROJECT_ID."""
    root = project(tmp_path)
    gitlab_standin.add_merge_request(7, sha=BRANCH_SHA, state="merged", merge_commit_sha=MERGE_SHA)
    env = job_env(gitlab_standin, "1003", MERGE_SHA, "main", REPO_TOKEN="",
                  CI_JOB_TOKEN=gitlab_standin.job_token)
    code, out = nbgate(root, env, "promote", capsys=capsys)
    assert code == 1
    [line] = out.splitlines()
    assert line.startswith(f"nbgate promote: error: GitLab answered 404 for GET /projects/42/"
                           f"repository/commits/{MERGE_SHA}/merge_requests (404 Project Not "
                           "Found): a job token may list a commit's merge requests only on "
                           "GitLab versions from 2025 on")
    assert "CI_PROJECT_ID" not in line and line.endswith("set REPO_TOKEN (scope api, role "
                                                         "Developer) for this job")
    # A GitLab that takes the job token there gets one step further, to the merge request's
    # commits (which candidates belong to !7), and a job token cannot list those: promote needs
    # REPO_TOKEN, and says so.
    gitlab_standin.job_token_lists_commit_merge_requests = True
    code, out = nbgate(root, env, "promote", capsys=capsys)
    [line] = out.splitlines()
    assert code == 1 and line.startswith("nbgate promote: error: GitLab answered 403 for GET "
                                         "/projects/42/merge_requests/7/commits"), out
    assert "set REPO_TOKEN" in line
