"""``nbgate fetch-baseline``: what the training job does with each answer GitLab can give.

Exit 0 only with production's metrics, or when GitLab answered that there is no release yet.
Every other outcome (401, 5xx after retries, no answer within the timeout, a release whose
metrics.json is invalid) exits 1 with one line naming the status and the endpoint, so the CI
training job fails before pytest. With NBGATE_BASELINE_OPTIONAL=1 the same outcome is one line,
exit 0, and the reason is left in the baseline folder, where pytest reads it for the "not
checked" baseline rules.

GitLab's side: the package list (``GET /projects/:id/packages``, lib/api/project_packages.rb)
answers an empty list for a package that has none; 401 ``{"message": "401 Unauthorized"}`` for a
token it does not know (lib/api/helpers.rb, ``unauthorized!``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nbgate.cli import main
from nbgate.contract.baselines import NOT_CHECKED_FILE
from nbgate.contract.codec import read_metrics
from tests.reporting.test_publish_mr import ci_env, pipeline_ctx, train_case, write_reports
from tests.support.gitlab_standin import GitLabStandIn
from tests.support.nbproject import run_pytest, write_notebook, write_pyproject
from tests.support.packages import seed_version

RELEASE = "1.0.0+aaaaaaaa.990"
NAME = "notebooks-train"  # the package of notebooks/train.ipynb, named from its path
PACKAGES = f"GET /projects/42/packages?package_type=generic&package_name={NAME}"


def project(root: Path) -> Path:
    """A training notebook with a baseline rule (the notebook records auc 0.90)."""
    write_notebook(root / "notebooks" / "train.ipynb",
                   ["from nbgate import record\nrecord('auc', 0.90)"])
    write_pyproject(root, 'timeout = 60\n[[tool.nbgate.pipelines]]\n'
                          'notebook = "notebooks/train.ipynb"\nkind = "train"\n'
                          'thresholds = { auc = ">= baseline - 0.005" }\n')
    return root


def fetch(root: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]) \
        -> tuple[int, str, str]:
    code = main(["fetch-baseline", "--pyproject", str(root / "pyproject.toml")], env)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def release(standin: GitLabStandIn, tmp_path: Path, data: bytes | None = None) -> None:
    production = train_case(notebook="notebooks/train.ipynb")
    production.metrics = {"auc": 0.95}
    folder = write_reports(tmp_path / "release", [production], pipeline_ctx("990", ref="main"))
    seed_version(standin, NAME, RELEASE,
                 {"metrics.json": data if data is not None else
                  (folder / "metrics.json").read_bytes()}, commit="a" * 40, pipeline="990")


def test_the_newest_release_is_written_and_exit_is_0(
    gitlab_standin: GitLabStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path / "p")
    release(gitlab_standin, tmp_path)
    code, out, err = fetch(root, ci_env(gitlab_standin), capsys)
    assert (code, err) == (0, "")
    assert out == f"baseline: {NAME} {RELEASE} -> {root}/reports/baseline/{NAME}@{RELEASE}.json\n"
    assert sorted(p.name for p in (root / "reports" / "baseline").iterdir()) == [
        f"{NAME}@{RELEASE}.json"]


def test_no_release_yet_is_exit_0_and_the_rules_say_so(
    gitlab_standin: GitLabStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path / "p")
    stale = root / "reports" / "baseline" / "train@0.9.0+00000000.1.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")  # a release deleted since: it must not linger
    code, out, err = fetch(root, ci_env(gitlab_standin), capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"no baseline for {NAME} has no release yet",
        "nbgate fetch-baseline: no release to compare with yet; baseline rules are not checked"]
    folder = root / "reports" / "baseline"
    assert [p.name for p in folder.iterdir()] == [NOT_CHECKED_FILE]
    assert (folder / NOT_CHECKED_FILE).read_text() == "no release yet\n"

    run = run_pytest(root, "-p", "no:nbgate-tracking",
                     env={"NBGATE_BASELINE": "reports/baseline", "CI": ""})
    document = read_metrics((root / "reports" / "metrics.json").read_bytes())
    [check] = document.cases[0].thresholds
    assert check.reason == "not checked: no release yet", run.stdout
    assert "No baseline: no release yet" in run.stdout


@pytest.mark.parametrize("outcome", ["401", "500", "timeout", "invalid"])
def test_gitlab_not_answering_fails_in_one_line_naming_status_and_endpoint(
    gitlab_standin: GitLabStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    outcome: str,
) -> None:
    root = project(tmp_path / "p")
    release(gitlab_standin, tmp_path, b'{"schema": 2, "cases": "nope"}' if outcome == "invalid"
            else None)
    env = ci_env(gitlab_standin, NBGATE_GITLAB_RETRIES="1", NBGATE_GITLAB_TIMEOUT="0.5")
    token = env["REPO_TOKEN"]
    if outcome == "401":
        env["REPO_TOKEN"] = token = "glpat-expired-token-000000"
    elif outcome == "500":
        gitlab_standin.fail_next(10, 500, "/packages")
    elif outcome == "timeout":
        gitlab_standin.delay_next(10, 3.0, "/packages")
    code, out, err = fetch(root, env, capsys)
    assert (code, out) == (1, ""), err
    [line] = err.splitlines()
    expected = {
        "401": f"GitLab answered 401 for {PACKAGES}&order_by=created_at&sort=desc "
               "(401 Unauthorized): the token in REPO_TOKEN was rejected",
        "500": f"GitLab answered 500 for {PACKAGES}&order_by=created_at&sort=desc "
               "(500 Internal Server Error): still failing after 1 retries",
        "timeout": f"no answer from GitLab for {PACKAGES}&order_by=created_at&sort=desc: "
                   "ReadTimeout after 2 tries with a 0.5 s timeout",
        "invalid": f"GitLab answered 200 for GET /projects/42/packages/generic/{NAME}/{RELEASE}/"
                   f"metrics.json ({NAME} {RELEASE}/metrics.json: ",
    }[outcome]
    assert line.startswith(f"nbgate fetch-baseline: error: {expected}"), line
    assert token not in err
    if outcome == "500":  # retried, then given up
        assert len(gitlab_standin.requests_to("/packages", "GET")) == 2
    assert not (root / "reports" / "baseline").exists()  # pytest must not run as if all is well


def test_optional_baseline_lets_training_run_and_says_why_rules_were_not_checked(
    gitlab_standin: GitLabStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path / "p")
    release(gitlab_standin, tmp_path)
    env = ci_env(gitlab_standin, REPO_TOKEN="glpat-expired-token-000000",
                 NBGATE_BASELINE_OPTIONAL="1")
    code, out, err = fetch(root, env, capsys)
    assert (code, err) == (0, "")
    [line] = out.splitlines()
    assert line.startswith("nbgate fetch-baseline: GitLab could not be asked (GitLab answered "
                           f"401 for {PACKAGES}")
    assert line.endswith("; NBGATE_BASELINE_OPTIONAL=1, so baseline rules are not checked")
    why = (root / "reports" / "baseline" / NOT_CHECKED_FILE).read_text().strip()
    assert why.startswith("GitLab could not be asked (GitLab answered 401 for GET /projects/42/")

    run = run_pytest(root, "-p", "no:nbgate-tracking",
                     env={"NBGATE_BASELINE": "reports/baseline", "CI": ""})
    assert run.returncode == 0, run.stdout
    document = read_metrics((root / "reports" / "metrics.json").read_bytes())
    [check] = document.cases[0].thresholds
    assert check.reason == f"not checked: {why}"
    # --nbgate-require-baseline still turns it into a failure.
    strict = run_pytest(root, "-p", "no:nbgate-tracking", "--nbgate-require-baseline",
                        env={"NBGATE_BASELINE": "reports/baseline", "CI": ""})
    assert strict.returncode == 1, strict.stdout
    assert "GitLab could not be asked" in strict.stdout
