"""The ``nbgate`` command: in-process through ``main(argv, env)``, and as a real process
(``python -m nbgate.cli``) talking to the loopback GitLab stand-in as CI_API_V4_URL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nbgate.cli import main
from reporting.gitlab.comment import is_comment_for
from reporting.gitlab.publish_wiki import parse_page
from tests.reporting.test_publish_mr import SHA, ci_env, pipeline_ctx, train_case, write_reports
from tests.support.gitlab_standin import GitLabStandIn
from tests.support.packages import seed_version


def project(root: Path) -> Path:
    """A project with one training pipeline and the reports of a finished run."""
    (root / "notebooks").mkdir(parents=True)
    (root / "notebooks" / "training_example.ipynb").write_text("{}", encoding="utf-8")
    (root / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.nbgate]
        [tool.nbgate.runners.cpu]
        [tool.nbgate.runners.gpu]
        gpu = true
        [[tool.nbgate.pipelines]]
        notebook = "notebooks/training_example.ipynb"
        kind = "train"
        runners = ["cpu", "gpu"]
        thresholds = { roc_auc = ">= 0.95" }
        outputs = ["models/xgb_model.json"]
        """), encoding="utf-8")
    write_reports(root / "reports", [train_case()])
    return root


def nbgate(root: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI as a CI job runs it: a fresh interpreter in the project folder."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    return subprocess.run([sys.executable, "-m", "nbgate.cli", *args], cwd=root,
                          env={**keep, **env}, capture_output=True, text=True, timeout=60)


def run_main(capsys: pytest.CaptureFixture[str], root: Path, *args: str,
             env: dict[str, str]) -> tuple[int, str, str]:
    code = main([*args, "--pyproject", str(root / "pyproject.toml")], env)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- the "done when" of issue #4, end to end --------------------------------------------------


def test_publish_mr_twice_leaves_one_comment_showing_the_second_run(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    root = project(tmp_path)
    gitlab_standin.add_merge_request(7, sha=SHA)
    gitlab_standin.seed_notes(7, 150)
    env = ci_env(gitlab_standin)  # a branch pipeline: the MR is found from the commit
    first = nbgate(root, "publish", "mr", env=env)
    assert first.returncode == 0, first.stderr
    assert "created the train comment on !7" in first.stdout
    write_reports(root / "reports", [train_case(roc_auc=0.9777)], pipeline_ctx("1003"))
    second = nbgate(root, "publish", "mr", env={**env, "CI_PIPELINE_ID": "1003"})
    assert second.returncode == 0, second.stderr
    ours = [n for n in gitlab_standin.notes(7) if is_comment_for(n.body, "train")]
    assert len(ours) == 1
    assert "roc_auc 0.9777" in ours[0].body and "last update: pipeline [#1003]" in ours[0].body
    for result in (first, second):
        assert gitlab_standin.private_token not in result.stdout + result.stderr


def test_publish_wiki_twice_for_one_pipeline_leaves_one_row(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    root = project(tmp_path)
    env = ci_env(gitlab_standin)
    for _ in range(2):
        result = nbgate(root, "publish", "wiki", env=env)
        assert result.returncode == 0, result.stderr
    page = gitlab_standin.wiki_page("nbgate/train-history")
    assert page is not None and len(parse_page(page.content).rows) == 1


def test_help_is_fast_and_imports_nothing_heavy(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        from nbgate.cli import main
        assert main(["--help"]) == 0
        heavy = sorted(m for m in ("gitlab", "requests", "tabulate", "mlflow", "reporting")
                       if m in sys.modules)
        print("HEAVY", heavy)
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    for command in ("publish", "fetch-artifact", "cases"):
        assert command in result.stdout


# -- skipping, usage errors, refusals ----------------------------------------------------------


@pytest.mark.parametrize("target", ["mr", "wiki", "artifacts"])
def test_outside_ci_every_publish_is_one_line_and_exit_0(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: str
) -> None:
    root = project(tmp_path)
    code, out, err = run_main(capsys, root, "publish", target, env={})
    assert code == 0 and err == ""
    assert out.count("\n") == 1
    assert f"nbgate publish {target}: skipped" in out and "not in GitLab CI" in out


def test_no_token_is_one_line_and_exit_0(
    capsys: pytest.CaptureFixture[str], gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    root = project(tmp_path)
    code, out, _ = run_main(capsys, root, "publish", "mr",
                            env=ci_env(gitlab_standin, REPO_TOKEN=""))
    assert code == 0
    assert out.strip() == ("nbgate publish mr: skipped the merge request comment: no GitLab "
                           "token; set REPO_TOKEN (a project access token with the api scope and "
                           "the Developer role)")
    assert gitlab_standin.request_log == []


@pytest.mark.parametrize("pipeline", [
    {"CI_MERGE_REQUEST_IID": "7"},  # a merge request pipeline
    {"CI_OPEN_MERGE_REQUESTS": "group/project!7"},  # a branch pipeline of an MR's branch
])
@pytest.mark.parametrize("token", ["job", "none"])
def test_on_an_mr_branch_without_a_note_token_publish_mr_fails_in_one_line(
    capsys: pytest.CaptureFixture[str], gitlab_standin: GitLabStandIn, tmp_path: Path,
    pipeline: dict[str, str], token: str,
) -> None:
    """The usual cause: REPO_TOKEN is a protected variable (GitLab's default for new variables,
    application_settings.protected_ci_variables in db/structure.sql) and the MR branch is not
    protected, so the job sees only CI_JOB_TOKEN. Skipping with exit 0 would hide it on every
    MR; the job's allow_failure turns the exit 1 into a warning, not a red pipeline."""
    root = project(tmp_path)
    gitlab_standin.add_merge_request(7, sha=SHA)
    jobs = {"CI_JOB_TOKEN": gitlab_standin.job_token} if token == "job" else {}
    env = ci_env(gitlab_standin, REPO_TOKEN="", **jobs, **pipeline)
    code, out, err = run_main(capsys, root, "publish", "mr", env=env)
    assert (code, out) == (1, "")
    have = "only CI_JOB_TOKEN, which cannot post notes," if token == "job" else "no GitLab token"
    assert err == (
        f"nbgate publish mr: error: could not post the merge request comment on !7: this job "
        f"has {have}; add REPO_TOKEN (a project access token, scope api, role Developer) as a "
        "CI/CD variable that is not protected (GitLab protects new variables by default, and "
        "protected ones reach protected branches only), or protect the merge request branches\n")
    assert gitlab_standin.request_log == []
    # Outside CI the same command is still one line and exit 0 (nothing is wrong there).
    code, out, err = run_main(capsys, root, "publish", "mr", env={})
    assert (code, err) == (0, "") and out.count("\n") == 1 and "not in GitLab CI" in out


def test_missing_reports_folder_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    root = project(tmp_path)
    code, _, err = run_main(capsys, root, "publish", "wiki", "--reports",
                            str(tmp_path / "nowhere"), env=ci_env(gitlab_standin))
    assert code == 2
    assert f"reports folder {tmp_path / 'nowhere'} does not exist" in err
    assert "must run first" in err


def test_unauthorised_token_exits_1_naming_status_and_endpoint(
    capsys: pytest.CaptureFixture[str], gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    root = project(tmp_path)
    token = "glpat-not-a-valid-token-0000"
    code, out, err = run_main(capsys, root, "publish", "mr",
                              env=ci_env(gitlab_standin, REPO_TOKEN=token,
                                         CI_MERGE_REQUEST_IID="7"))
    assert code == 1
    assert "GitLab answered 401 for GET /user" in err
    assert "REPO_TOKEN was rejected" in err
    assert token not in out + err


def test_dry_run_prints_the_exact_body(
    capsys: pytest.CaptureFixture[str], gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    root = project(tmp_path)
    gitlab_standin.add_merge_request(7, sha=SHA)
    code, out, _ = run_main(capsys, root, "publish", "mr", "--dry-run",
                            env=ci_env(gitlab_standin))
    assert code == 0
    body = out.split("body: ---\n", 1)[1].split("\n--- end of body ---", 1)[0]
    assert body.startswith("<!-- nbgate:train -->\n### ✅ Training passed — 1 case, 2 gates "
                           "passed; roc_auc 0.9931")
    assert [r.method for r in gitlab_standin.request_log if r.method != "GET"] == []


def test_secrets_in_reports_never_leave(
    capsys: pytest.CaptureFixture[str], gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    root = project(tmp_path)
    gitlab_standin.add_merge_request(7, sha=SHA)
    leaky = train_case()
    leaky.skip_reason = None
    leaky.runner = f"cpu {gitlab_standin.private_token}"
    write_reports(root / "reports", [leaky])
    code, out, err = run_main(capsys, root, "publish", "mr", env=ci_env(gitlab_standin))
    assert code == 0, err
    assert gitlab_standin.private_token not in out + err
    sent = b"".join(r.body for r in gitlab_standin.request_log)
    assert gitlab_standin.private_token.encode() not in sent and b"[MASKED]" in sent


def test_bad_retry_setting_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    root = project(tmp_path)
    code, _, err = run_main(capsys, root, "publish", "mr",
                            env=ci_env(gitlab_standin, NBGATE_GITLAB_TIMEOUT="soon"))
    assert code == 2 and "NBGATE_GITLAB_TIMEOUT='soon' is not a valid number" in err


def test_fetch_artifact_writes_the_declared_output(
    capsys: pytest.CaptureFixture[str], gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    root = project(tmp_path)
    seed_version(gitlab_standin, "notebooks-training_example", "01234567-1002",
                 {"xgb_model.json": b"m"})
    code, _, err = run_main(capsys, root, "fetch-artifact", "--pipeline", "training_example",
                              "--dest", str(root / "models" / "xgb_model.json"),
                              env=ci_env(gitlab_standin))
    assert code == 0, err
    assert (root / "models" / "xgb_model.json").read_bytes() == b"m"
    code, _, err = run_main(capsys, root, "fetch-artifact", "--pipeline", "nothing_here",
                            "--dest", str(root / "x.json"), env=ci_env(gitlab_standin))
    assert code == 1 and "no release of 'nothing_here' yet" in err


def test_publish_artifacts_round_trip(
    capsys: pytest.CaptureFixture[str], gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    root = project(tmp_path)
    (root / "models").mkdir()
    (root / "models" / "xgb_model.json").write_bytes(b"model-bytes")
    code, out, err = run_main(capsys, root, "publish", "artifacts", "--reports",
                              str(root / "reports"),
                              env=ci_env(gitlab_standin, CI_COMMIT_REF_NAME="main"))
    assert "uploaded release notebooks-training_example 01234567.1002: xgb_model.json" in out
    assert code == 0, err
    assert gitlab_standin.package_file("notebooks-training_example", "01234567.1002",
                                       "xgb_model.json") == b"model-bytes"


# -- cases -----------------------------------------------------------------------------------


def test_cases_lists_declared_cases(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = project(tmp_path)
    code, out, _ = run_main(capsys, root, "cases", env={})
    assert code == 0
    lines = out.strip().split("\n")
    assert "2 case(s) in 1 pipeline(s)" in lines[0]
    assert lines[1].startswith("notebooks/training_example.ipynb::train[cpu]")
    assert '-m "train and cpu"' in lines[1] and "roc_auc >= 0.95" in lines[1]
    assert "outputs: models/xgb_model.json" in lines[1]
    assert "needs a CUDA GPU" in lines[2]


def test_cases_reports_bad_config_without_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = project(tmp_path)
    (root / "pyproject.toml").write_text(
        '[tool.nbgate]\n[[tool.nbgate.pipelines]]\nnotebook = "notebooks/training_example.ipynb"'
        '\nkind = "train"\nthresholds = { roc_auc = "about 0.9" }\n', encoding="utf-8")
    code, _, err = run_main(capsys, root, "cases", env={})
    assert code == 2
    assert "thresholds.roc_auc" in err and "Traceback" not in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", "nowhere"], {}) == 2
    assert main(["fetch-artifact", "--pipeline", "x"], {}) == 2
    assert "required" in capsys.readouterr().err
