"""``nbgate publish mr`` against the loopback GitLab stand-in (python-gitlab over real HTTP).

Also home of the small report builders the other publishing tests import: a metrics.json is
written with the reporting plugin's own writer, so these tests read what a real run writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nbgate.contract.ci_context import CIContext
from nbgate.contract.model import CaseResult, Failure, Tracking
from reporting.errors import PublishError, PublishSkipped, PublishUsageError
from reporting.gitlab.comment import decode_state, is_comment_for, marker
from reporting.gitlab.publish_mr import publish_mr
from tests.support.builders import build_metrics, check, write_metrics_json
from tests.support.gitlab_standin import GitLabStandIn
from tests.support.packages import seed_version

SHA = "0123456789abcdef0123456789abcdef01234567"
BASE_SHA = "89abcdef0123456789abcdef0123456789abcdef"
WEB = "https://gitlab.example.com/group/project"
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
       b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00"
       b"\x00\x00IEND\xaeB`\x82")


# -- builders shared with the other publishing tests ----------------------------------------


def train_case(
    runner: str = "cpu",
    *,
    roc_auc: float = 0.9931,
    log_loss: float = 0.1211,
    outcome: str = "passed",
    notebook: str = "notebooks/training_example.ipynb",
    kind: str = "train",
    figures: Mapping[str, str] | None = None,
    **extra: Any,
) -> CaseResult:
    """A training case as the harness reports it (rules roc_auc >= 0.95, log_loss <= 0.25)."""
    checks = [
        check("roc_auc", ">= 0.95", roc_auc, roc_auc >= 0.95,
                       "" if roc_auc >= 0.95 else f"{roc_auc} < 0.95"),
        check("log_loss", "<= 0.25", log_loss, log_loss <= 0.25),
    ]
    failure = None
    if outcome == "failed" and all(c.passed for c in checks):
        failure = Failure("cell_error", "ValueError in cell 7: feature_names mismatch", 7,
                          "model.fit(X_train, y_train)", "ValueError: feature_names mismatch",
                          "Traceback (most recent call last):\n  ...\nValueError: mismatch")
    elif outcome == "failed":
        failure = Failure("thresholds", "1 threshold violated: roc_auc 0.91 < 0.95")
    slug = f"{Path(notebook).stem}-{kind}-{runner}"
    return CaseResult(
        case_id=f"{notebook}::{kind}[{runner}]",
        notebook=notebook,
        kind=kind,
        runner=runner,
        outcome=outcome,  # type: ignore[arg-type]
        duration_s=41.2,
        metrics={"roc_auc": roc_auc, "accuracy": 0.958, "log_loss": log_loss},
        thresholds=checks,
        executed_notebook=f"reports/notebooks/{slug}.ipynb",
        figures=dict(figures or {}),
        failure=failure,
        tracking=Tracking("abc123", "http://127.0.0.1:5000/#/experiments/3/runs/abc123"),
        **extra,
    )


def skipped_case(runner: str = "gpu", kind: str = "train") -> CaseResult:
    return CaseResult(
        case_id=f"notebooks/training_example.ipynb::{kind}[{runner}]",
        notebook="notebooks/training_example.ipynb", kind=kind, runner=runner,
        outcome="skipped", skip_reason="no CUDA GPU visible: run it on a GPU runner",
    )


def pipeline_ctx(pipeline_id: str = "1002", job: str = "train-cpu", sha: str = SHA,
                 ref: str = "feature") -> dict[str, Any]:
    """The "pipeline" block of a metrics.json written by a CI job."""
    return CIContext(
        ci=True, default_branch="main", ref=ref, commit_sha=sha, commit_short_sha=sha[:8],
        pipeline_id=pipeline_id, pipeline_url=f"{WEB}/-/pipelines/{pipeline_id}",
        job_name=job, job_url=f"{WEB}/-/jobs/{pipeline_id}0", project_path="group/project",
    ).to_dict()


def write_reports(
    folder: Path,
    results: Iterable[CaseResult],
    pipeline: Mapping[str, Any] | None = None,
    generated_at: str = "2026-11-27T06:00:00Z",
) -> Path:
    """A reports folder with metrics.json, written by the reporting plugin's writer."""
    from datetime import datetime

    now = datetime.fromisoformat(generated_at.replace("Z", "+00:00"))
    document = build_metrics(list(results), pipeline or pipeline_ctx(), now=now)
    folder.mkdir(parents=True, exist_ok=True)
    write_metrics_json(folder / "metrics.json", document)
    return folder


def metrics_bytes(results: Iterable[CaseResult], pipeline: Mapping[str, Any]) -> bytes:
    return json.dumps(build_metrics(list(results), pipeline)).encode()


def ci_env(standin: GitLabStandIn, **extra: str) -> dict[str, str]:
    """What a notify job on a branch pipeline sees, with fast retry settings."""
    env = {
        "CI": "true",
        "GITLAB_CI": "true",
        "CI_API_V4_URL": standin.api_url,
        "CI_PROJECT_ID": str(standin.project_id),
        "CI_PROJECT_PATH": standin.project_path,
        "CI_DEFAULT_BRANCH": "main",
        "CI_COMMIT_SHA": SHA,
        "CI_COMMIT_SHORT_SHA": SHA[:8],
        "CI_PIPELINE_ID": "1002",
        "CI_PIPELINE_URL": f"{WEB}/-/pipelines/1002",
        "CI_JOB_NAME": "publish-mr",
        "CI_JOB_URL": f"{WEB}/-/jobs/99",
        "REPO_TOKEN": standin.private_token,
        "NBGATE_GITLAB_TIMEOUT": "5",
        "NBGATE_GITLAB_RETRIES": "4",
        "NBGATE_GITLAB_BACKOFF": "0.05",
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


class Output:
    """Collects what a publish call says; asserts no token ever shows up."""

    def __init__(self, *secrets: str) -> None:
        self.lines: list[str] = []
        self.secrets = secrets

    def __call__(self, line: str) -> None:
        for secret in self.secrets:
            assert secret not in line
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def nbgate_notes(standin: GitLabStandIn, iid: int, kind: str = "train") -> list[Any]:
    """nbgate's notes on the MR; no-break spaces (which keep table values on one line) read as
    plain spaces here."""
    return [replace(n, body=n.body.replace("\u00a0", " ")) for n in standin.notes(iid)
            if is_comment_for(n.body, kind)]


def publish(standin: GitLabStandIn, folders: list[Path], env: dict[str, str] | None = None,
            **kwargs: Any) -> Output:
    out = Output(standin.private_token, standin.job_token)
    publish_mr(folders, env or ci_env(standin, CI_MERGE_REQUEST_IID="7"), echo=out,
               root=folders[0].parent, **kwargs)
    return out


# -- tests -----------------------------------------------------------------------------------


@pytest.fixture
def mr(gitlab_standin: GitLabStandIn) -> GitLabStandIn:
    gitlab_standin.add_merge_request(7, source_branch="feature", sha=SHA)
    return gitlab_standin


def test_comment_is_created_once_then_updated_in_place(mr: GitLabStandIn, tmp_path: Path) -> None:
    first = write_reports(tmp_path / "r1", [train_case()], pipeline_ctx("1002"))
    out = publish(mr, [first])
    assert "created the train comment on !7" in out.text
    second = write_reports(tmp_path / "r2", [train_case(roc_auc=0.9712)], pipeline_ctx("1003"))
    out = publish(mr, [second], env=ci_env(mr, CI_MERGE_REQUEST_IID="7", CI_PIPELINE_ID="1003"))
    assert "updated the train comment on !7" in out.text

    notes = nbgate_notes(mr, 7)
    assert len(notes) == 1
    body = notes[0].body
    assert body.startswith(marker("train") + "\n")
    assert "last update: pipeline [#1003]" in body and "0.9712" in body
    assert "#1002" not in body  # a new pipeline starts over, nothing of the first run is left
    assert len(mr.requests_to("/merge_requests/7/notes", "POST")) == 1
    assert len(mr.requests_to("/merge_requests/7/notes/", "PUT")) == 1
    assert mr.quick_actions == []


def test_comment_reads_like_the_design(mr: GitLabStandIn, tmp_path: Path) -> None:
    seed_version(mr, "notebooks-training_example", "1.0.0+89abcdef.990", {
        "metrics.json": metrics_bytes([train_case(roc_auc=0.9889, log_loss=0.1311)],
                                      pipeline_ctx("990", sha=BASE_SHA, ref="main"))})
    reports = write_reports(tmp_path / "reports", [train_case(), skipped_case()])
    publish(mr, [reports])
    body = nbgate_notes(mr, 7)[0].body
    lines = body.split("\n")
    assert lines[1] == ("### ✅ Training passed — 1 passed, 1 skipped, 2 gates passed; roc_auc "
                        "0.9931 (≥ 0.95), +0.0042 ▲ vs release 1.0.0+89abcdef.990")
    table = [line.replace("\u00a0", " ") for line in lines if line.startswith("|")]
    assert table[0].split("|")[1].strip() == "case"
    assert "roc_auc ≥ 0.95" in table[0] and "log_loss ≤ 0.25" in table[0]  # rules: once
    assert "**" not in table[2] and "0.9931 ✅ (+0.0042 ▲)" in table[2]
    assert "0.1211 ✅ (−0.0100 ▲)" in table[2]  # lower is better for a <= rule
    assert "⏭ skipped |" in table[3]  # the outcome column stays narrow; the reason follows
    assert "\n- ⏭ training_example · train[gpu]: no CUDA GPU visible\n" in body
    assert ("Compared with production: release `1.0.0+89abcdef.990` (main @ `89abcdef`, "
            "pipeline [#990]") in body
    assert f"[training_example · train[cpu]]({WEB}/-/jobs/10020/artifacts/file/reports/notebooks/" \
           "training_example-train-cpu.ipynb)" in body
    assert "MLflow run: [training_example · train[cpu]](http://127.0.0.1:5000/" in body
    assert "_Updated by nbgate on every pipeline of this MR; last update: pipeline [#1002]" in body
    # The baseline is production: the newest release's published metrics.
    listing = mr.requests_to("/packages", "GET")[0]
    assert listing.query["package_name"] == "notebooks-training_example"


def test_no_baseline_is_said_once(mr: GitLabStandIn, tmp_path: Path) -> None:
    reports = write_reports(tmp_path / "reports", [train_case()])
    out = publish(mr, [reports])
    body = nbgate_notes(mr, 7)[0].body
    assert body.count("No baseline") == 1
    assert "notebooks-training_example has no release yet" in body
    assert "vs release" not in body and "(+" not in body
    assert sum("baseline" in line for line in out.lines) == 1


def test_failed_run_leads_with_the_failure(mr: GitLabStandIn, tmp_path: Path) -> None:
    reports = write_reports(tmp_path / "reports", [
        train_case("cpu", outcome="failed"), train_case("gpu", roc_auc=0.91, outcome="failed")])
    publish(mr, [reports])
    body = nbgate_notes(mr, 7)[0].body
    # The failing case's cause: the exception and its message, not a side effect.
    assert body.split("\n")[1] == ("### ❌ Training failed — 2 of 2 cases failed, first "
                                   "training_example · train[cpu]: ValueError in cell 7: "
                                   "feature_names mismatch")
    assert "<details><summary>❌ notebooks/training_example.ipynb::train[cpu]" in body
    assert "    ValueError: feature_names mismatch" in body  # indented: code, not markdown
    assert "**0.9100** ❌" in body.replace("\u00a0", " ")


def test_sticky_comment_is_found_past_the_first_page(mr: GitLabStandIn, tmp_path: Path) -> None:
    mr.seed_notes(7, 130, author="alice")
    old = mr.add_note(7, marker("train") + "\n### old comment", author="nbgate-bot")
    mr.seed_notes(7, 130, author="bob", body="LGTM {n}")
    mr.seed_notes(7, 5, author="nbgate-bot", system=True, body=marker("train") + "\nsystem {n}")
    reports = write_reports(tmp_path / "reports", [train_case()])
    publish(mr, [reports])

    notes = nbgate_notes(mr, 7)
    ours = [n for n in notes if not n.system]
    assert [n.id for n in ours] == [old.id]
    assert "Training passed" in ours[0].body
    assert mr.requests_to("/merge_requests/7/notes", "POST") == []
    listed = mr.requests_to("/merge_requests/7/notes", "GET")
    assert {r.query.get("per_page") for r in listed} == {"100"}
    assert {r.query.get("page", "1") for r in listed} == {"1", "2", "3"}  # 266 notes, all read


def test_other_peoples_notes_are_never_edited(mr: GitLabStandIn, tmp_path: Path) -> None:
    copied = mr.add_note(7, marker("train") + "\nI copied your comment", author="alice")
    quoted = mr.add_note(7, "> " + marker("train") + "\n> quoted", author="nbgate-bot")
    reports = write_reports(tmp_path / "reports", [train_case()])
    publish(mr, [reports])
    publish(mr, [reports])
    notes = {n.id: n for n in mr.notes(7)}
    assert notes[copied.id].body.endswith("I copied your comment")
    assert notes[quoted.id].body.endswith("quoted")
    assert len(nbgate_notes(mr, 7)) == 2  # alice's copy and ours
    assert len(mr.requests_to("/merge_requests/7/notes", "POST")) == 1


def test_duplicates_left_by_an_old_failure_heal(mr: GitLabStandIn, tmp_path: Path) -> None:
    older = mr.add_note(7, marker("train") + "\nfirst", author="nbgate-bot")
    newer = mr.add_note(7, marker("train") + "\nsecond", author="nbgate-bot")
    reports = write_reports(tmp_path / "reports", [train_case()])
    out = publish(mr, [reports])
    notes = nbgate_notes(mr, 7)
    assert [n.id for n in notes] == [newer.id]
    assert f"deleted duplicate train comment (note {older.id})" in out.text


def inject(standin: GitLabStandIn, fault: str, method: str, path: str = "/notes") -> Any:
    """One kind of transient fault, twice (429 three times), on ``method`` requests to ``path``."""
    if fault == "reset":
        return standin.drop_next(2, path, method=method)
    if fault == "429":
        return standin.fail_next(3, 429, path, retry_after=0, method=method)
    return standin.fail_next(2, int(fault), path, method=method)


@pytest.mark.parametrize(
    ("fault", "first", "second"),
    [
        ("429", "POST", "PUT"),
        ("500", "POST", "PUT"),
        ("reset", "POST", "PUT"),
        ("502", "GET", "GET"),
        ("reset", "GET", "GET"),
    ],
)
def test_transient_faults_never_duplicate(
    mr: GitLabStandIn, tmp_path: Path, fault: str, first: str, second: str
) -> None:
    mr.seed_notes(7, 120)
    reports = write_reports(tmp_path / "reports", [train_case()])
    injected = inject(mr, fault, first)
    publish(mr, [reports])
    assert injected.remaining == 0  # every fault was hit, and retried past
    assert len(nbgate_notes(mr, 7)) == 1
    changed = write_reports(tmp_path / "r2", [train_case(roc_auc=0.97)], pipeline_ctx("1003"))
    injected = inject(mr, fault, second)  # the second run updates the note
    publish(mr, [changed])
    assert injected.remaining == 0
    notes = nbgate_notes(mr, 7)
    assert len(notes) == 1 and "roc_auc 0.9700" in notes[0].body


def test_user_lookup_faults_are_retried(mr: GitLabStandIn, tmp_path: Path) -> None:
    injected = mr.fail_next(2, 503, "/user")
    publish(mr, [write_reports(tmp_path / "reports", [train_case()])])
    assert injected.remaining == 0 and len(nbgate_notes(mr, 7)) == 1


def test_create_whose_answer_was_lost_is_not_repeated(mr: GitLabStandIn, tmp_path: Path) -> None:
    """GitLab stores the note but the answer never arrives (timeout): re-list before retrying."""
    reports = write_reports(tmp_path / "reports", [train_case()])
    mr.delay_next(1, 0.6, "/notes", method="POST")
    env = ci_env(mr, CI_MERGE_REQUEST_IID="7", NBGATE_GITLAB_TIMEOUT="0.3",
                 NBGATE_GITLAB_BACKOFF="0.8")
    out = publish(mr, [reports], env=env)
    assert "answer to creating the train comment was lost, but the note is there" in out.text
    notes = nbgate_notes(mr, 7)
    assert len(notes) == 1 and "Training passed" in notes[0].body
    assert len(mr.requests_to("/merge_requests/7/notes", "POST")) == 1


def test_retries_are_bounded_and_the_error_names_status_and_endpoint(
    mr: GitLabStandIn, tmp_path: Path
) -> None:
    reports = write_reports(tmp_path / "reports", [train_case()])
    mr.fail_next(50, 502, "/notes", method="POST")
    env = ci_env(mr, CI_MERGE_REQUEST_IID="7", NBGATE_GITLAB_RETRIES="2")
    with pytest.raises(PublishError) as caught:
        publish(mr, [reports], env=env)
    message = str(caught.value)
    assert "GitLab answered 502 for POST /projects/42/merge_requests/7/notes" in message
    assert "after 2 retries" in message
    assert mr.private_token not in message
    assert len(mr.requests_to("/merge_requests/7/notes", "POST")) == 3
    assert nbgate_notes(mr, 7) == []


@pytest.mark.parametrize(
    ("setup", "status", "check"),
    [
        (lambda s: None, 401, "REPO_TOKEN was rejected"),
        (lambda s: s.fail_next(1, 403, "/notes", method="POST"), 403, "Developer role"),
        (lambda s: s.add_token("glpat-outsider-token-123", username="outsider",
                               project_access=False), 404, "CI_PROJECT_ID=42"),
    ],
    ids=["401", "403", "404"],
)
def test_refusals_fail_with_status_endpoint_and_what_to_check(
    mr: GitLabStandIn, tmp_path: Path, setup: Any, status: int, check: str
) -> None:
    setup(mr)
    token = {401: "glpat-wrong-token-value", 404: "glpat-outsider-token-123"}.get(
        status, mr.private_token)
    reports = write_reports(tmp_path / "reports", [train_case()])
    with pytest.raises(PublishError) as caught:
        publish(mr, [reports], env=ci_env(mr, CI_MERGE_REQUEST_IID="7", REPO_TOKEN=token))
    assert caught.value.status == status
    assert check in str(caught.value)
    assert "/projects/42/" in caught.value.endpoint or caught.value.endpoint == "GET /user"
    assert token not in str(caught.value)
    assert nbgate_notes(mr, 7) == []


def test_merge_request_found_from_the_commit(mr: GitLabStandIn, tmp_path: Path) -> None:
    mr.add_merge_request(9, source_branch="feature-2", sha="f" * 40, commits=[SHA])
    mr.add_merge_request(11, source_branch="old", sha=SHA, state="merged")
    reports = write_reports(tmp_path / "reports", [train_case()])
    out = publish(mr, [reports], env=ci_env(mr))  # a branch pipeline: no CI_MERGE_REQUEST_IID
    assert "on !9" in out.text  # open, contains the commit, newest
    assert len(nbgate_notes(mr, 9)) == 1 and nbgate_notes(mr, 7) == []


def test_open_merge_requests_variable_is_the_last_resort(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    gitlab_standin.add_merge_request(3, sha="e" * 40)
    reports = write_reports(tmp_path / "reports", [train_case()])
    env = ci_env(gitlab_standin, CI_COMMIT_SHA="d" * 40,  # a commit GitLab does not know
                 CI_OPEN_MERGE_REQUESTS="other/fork!5,group/project!3")
    out = publish(gitlab_standin, [reports], env=env)
    assert "on !3" in out.text and len(nbgate_notes(gitlab_standin, 3)) == 1
    # A fork's branch lists only the upstream project's MR: that iid is not this project's.
    fork = {**env, "CI_OPEN_MERGE_REQUESTS": "other/fork!5"}
    with pytest.raises(PublishSkipped, match="no open merge request"):
        publish(gitlab_standin, [reports], env=fork)


def test_no_merge_request_is_one_line_and_nothing_posted(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    gitlab_standin.add_commit(SHA)
    reports = write_reports(tmp_path / "reports", [train_case()])
    with pytest.raises(PublishSkipped, match=f"no open merge request for commit {SHA}"):
        publish(gitlab_standin, [reports], env=ci_env(gitlab_standin))
    assert gitlab_standin.requests_to("/notes") == []


def test_names_cannot_break_the_table_or_run_quick_actions(
    mr: GitLabStandIn, tmp_path: Path
) -> None:
    evil = train_case(notebook="/close", runner="cpu|gpu")
    evil.case_id = "/close"
    evil.metrics["/label ~bug"] = 1.0
    evil.skip_reason = None
    evil.failure = None
    reports = write_reports(tmp_path / "reports", [evil, train_case()])
    publish(mr, [reports])
    body = nbgate_notes(mr, 7)[0].body
    assert mr.quick_actions == []
    assert not [line for line in body.split("\n") if line.startswith("/")]
    for block in body.split("\n\n"):
        table = [line for line in block.split("\n") if line.startswith("|")]
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
        assert len(widths) <= 1, table  # every row has as many cells as its header
    assert "\\/label ~bug" in body and "cpu\\|gpu" in body


def test_figures_are_uploaded_and_shown_inline(mr: GitLabStandIn, tmp_path: Path) -> None:
    figure = "reports/figures/training_example-train-cpu-roc_curve.png"
    (tmp_path / "reports" / "figures").mkdir(parents=True)
    (tmp_path / figure).write_bytes(PNG)
    reports = write_reports(tmp_path / "reports", [train_case(figures={"roc_curve": figure})])
    publish(mr, [reports])
    uploads = mr.uploads()
    assert [u.filename for u in uploads] == ["training_example-train-cpu-roc_curve.png"]
    assert uploads[0].data == PNG
    assert f"![roc_curve]({uploads[0].url})" in nbgate_notes(mr, 7)[0].body


def test_a_rerun_of_the_same_job_reuses_its_uploaded_figures(
    mr: GitLabStandIn, tmp_path: Path
) -> None:
    figure = "reports/figures/training_example-train-cpu-roc_curve.png"
    (tmp_path / "reports" / "figures").mkdir(parents=True)
    (tmp_path / figure).write_bytes(PNG)
    reports = write_reports(tmp_path / "reports", [train_case(figures={"roc_curve": figure})])
    publish(mr, [reports])
    out = publish(mr, [reports])
    assert len(mr.uploads()) == 1
    assert "the train comment on !7 already shows this" in out.text
    assert mr.requests_to("/notes/", "PUT") == []


def test_dry_run_prints_the_body_and_posts_nothing(mr: GitLabStandIn, tmp_path: Path) -> None:
    figure = "reports/figures/training_example-train-cpu-roc_curve.png"
    (tmp_path / "reports" / "figures").mkdir(parents=True)
    (tmp_path / figure).write_bytes(PNG)
    reports = write_reports(tmp_path / "reports", [train_case(figures={"roc_curve": figure})])
    out = publish(mr, [reports], dry_run=True)
    assert "would create the train comment on !7" in out.text
    assert marker("train") in out.text and "### ✅ Training passed" in out.text
    assert "training_example-train-cpu-roc_curve.png){width=60%}" in out.text  # the local file
    writes = [r for r in mr.request_log if r.method != "GET"]
    assert writes == [] and mr.uploads() == []
    # A page beside the reports shows the comment as GitLab renders it, figures included.
    preview = (reports / "comment-train.html").read_text(encoding="utf-8")
    assert "<table>" in preview and "<details><summary>" in preview
    assert ('<img src="figures/training_example-train-cpu-roc_curve.png" alt="roc_curve" '
            'style="width:60%">') in preview
    assert "preview: " in out.text and "comment-train.html" in out.text


def test_dry_run_outside_ci_still_renders(tmp_path: Path) -> None:
    reports = write_reports(tmp_path / "reports", [train_case()], CIContext().to_dict())
    out = Output()
    publish_mr([reports], {}, dry_run=True, echo=out, root=tmp_path)
    assert "not in GitLab CI" in out.lines[0]
    assert "### ✅ Training passed — 1 case, 2 gates passed; roc_auc 0.9931 (≥ 0.95)" in out.text
    assert "No baseline: not in GitLab CI and no --baseline given" in out.text
    assert "last update: a local run" in out.text


def test_jobs_of_one_pipeline_add_up_in_one_comment(mr: GitLabStandIn, tmp_path: Path) -> None:
    """The notify job publishes nbgate-jobs/<job>/ one folder at a time."""
    cpu = write_reports(tmp_path / "jobs" / "train-cpu", [train_case("cpu")],
                        pipeline_ctx("1002", job="train-cpu"))
    gpu = write_reports(tmp_path / "jobs" / "train-gpu", [train_case("gpu", roc_auc=0.9950)],
                        pipeline_ctx("1002", job="train-gpu"))
    publish(mr, [cpu])
    publish(mr, [gpu])
    body = nbgate_notes(mr, 7)[0].body
    assert "train[cpu]" in body and "train[gpu]" in body
    assert "2 cases, 4 gates passed; roc_auc 0.9950" in body  # the best case leads
    assert "jobs [train-cpu]" in body and "[train-gpu]" in body
    state = decode_state(body)
    assert state is not None and len(state["cases"]) == 2
    assert len(nbgate_notes(mr, 7)) == 1


def test_score_and_train_get_one_comment_each(mr: GitLabStandIn, tmp_path: Path) -> None:
    score = train_case(kind="score", notebook="notebooks/scoring_example.ipynb")
    reports = write_reports(tmp_path / "reports", [train_case(), score])
    publish(mr, [reports])
    publish(mr, [reports])
    assert len(nbgate_notes(mr, 7, "train")) == 1
    assert len(nbgate_notes(mr, 7, "score")) == 1
    assert "### ✅ Scoring passed" in nbgate_notes(mr, 7, "score")[0].body


def test_many_cases_stay_far_below_the_note_limit(mr: GitLabStandIn, tmp_path: Path) -> None:
    results = [train_case(f"r{i}", outcome="failed" if i % 50 == 0 else "passed")
               for i in range(400)]
    reports = write_reports(tmp_path / "reports", results)
    publish(mr, [reports])
    body = nbgate_notes(mr, 7)[0].body
    assert len(body) < 300_000
    assert "… and 300 more cases (of 400): see [summary.md of train-cpu](" in body
    assert "train[r0]" in body and "train[r350]" in body  # failed cases are always listed


def test_a_5000_case_comment_stays_under_gitlabs_note_limit_with_capped_uploads(
    mr: GitLabStandIn, tmp_path: Path
) -> None:
    """GitLab refuses a note over 1,000,000 characters (``validates :note, length: {maximum:
    Gitlab::Database::MAX_TEXT_SIZE_LIMIT}`` in app/models/concerns/notes/active_record.rb;
    MAX_TEXT_SIZE_LIMIT = 1_000_000 in lib/gitlab/database.rb; the stand-in answers 400 the same
    way). 5,000 cases with two figures each, long causes and tracebacks: the note is posted,
    with at most 100 figures, failed cases' first, and no more uploads than it shows."""
    from reporting.gitlab.comment import MAX_FIGURES, MAX_TABLE_ROWS, NOTE_LIMIT

    figures = tmp_path / "reports" / "figures"
    figures.mkdir(parents=True)
    results = []
    for i in range(5000):
        failed = i % 7 == 3
        names = {}
        for name in ("roc_curve", "feature_importance"):
            path = f"reports/figures/training_example-train-r{i}-{name}.png"
            (tmp_path / path).write_bytes(PNG)
            names[name] = path
        case = train_case(f"r{i}", outcome="failed" if failed else "passed", figures=names)
        if failed:
            case.failure = Failure("cell_error", f"ValueError in cell 7: {'x' * 300} {i}", 7,
                                   "model.fit(X, y)\n" * 40, "ValueError: " + "x" * 2000,
                                   "Traceback:\n" + "  frame\n" * 400)
        results.append(case)
    reports = write_reports(tmp_path / "reports", results)
    publish(mr, [reports])
    [note] = nbgate_notes(mr, 7)
    assert len(note.body) < NOTE_LIMIT // 2, len(note.body)  # by the caps, not by a last cut
    assert "(cut: see summary.md)" not in note.body and "_Updated by nbgate" in note.body
    failed = [r for r in results if r.outcome == "failed"]
    uploads = mr.uploads()
    assert len(uploads) == MAX_FIGURES  # the same cap as the figures shown
    # Failed cases' figures first: 100 figures are the first 50 failed cases' two each.
    assert {u.filename for u in uploads} == {
        Path(p).name for r in failed[:MAX_FIGURES // 2] for p in r.figures.values()}
    assert sum(f"![{n}](/uploads/" in note.body for n in ("roc_curve", "feature_importance")) \
        == 2 and note.body.count("](/uploads/") == MAX_FIGURES
    summary = f"{WEB}/-/jobs/10020/artifacts/file/reports/summary.md"
    assert f"… and {5000 - MAX_TABLE_ROWS} more cases (of 5000): see [summary.md of " \
           f"train-cpu]({summary})." in note.body
    assert f"… {10_000 - MAX_FIGURES} more figures (at most {MAX_FIGURES} are shown, failed " \
           "cases' first)" in note.body
    # The table shows the failed cases first, each once.
    rows = [line for line in note.body.splitlines() if line.startswith("| training_example")]
    assert len(rows) == MAX_TABLE_ROWS and all("❌" in row for row in rows)


def test_only_a_job_token_on_a_branch_without_an_mr_is_a_skip(
    mr: GitLabStandIn, tmp_path: Path
) -> None:
    reports = write_reports(tmp_path / "reports", [train_case()])
    env = ci_env(mr, REPO_TOKEN="", CI_JOB_TOKEN=mr.job_token)  # no MR names this branch
    with pytest.raises(PublishSkipped, match="a job token cannot post merge request notes"):
        publish(mr, [reports], env=env)
    assert mr.request_log == []


def test_a_shared_optuna_study_shows_its_trial_count(mr: GitLabStandIn, tmp_path: Path) -> None:
    cases = [train_case("cpu"), train_case("gpu", roc_auc=0.995)]
    for case, own in zip(cases, (12.0, 10.0), strict=True):
        case.metrics.update(study_n_trials=22.0 if own == 10.0 else 12.0, n_trials_completed=own)
    publish(mr, [write_reports(tmp_path / "reports", cases)])
    body = nbgate_notes(mr, 7)[0].body
    assert "Optuna study: **22** trials in all; these jobs ran 12 + 10." in body



def test_nothing_outside_the_reports_folder_is_read_or_shown(
    mr: GitLabStandIn, tmp_path: Path
) -> None:
    (tmp_path / "secret.txt").write_text("do not upload")
    leaky = train_case(figures={"roc_curve": "secret.txt"})  # inside the repository, not reports/
    publish(mr, [write_reports(tmp_path / "reports", [leaky])])
    assert mr.uploads() == []
    body = nbgate_notes(mr, 7)[0].body
    assert "secret.txt" not in body and "![roc_curve]" not in body

    document = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    document["cases"][0]["figures"] = {"x": "/etc/passwd"}
    invalid = tmp_path / "reports-invalid"
    invalid.mkdir()
    (invalid / "metrics.json").write_text(json.dumps(document))
    with pytest.raises(PublishUsageError, match=r"metrics\.json: cases\[0\]\.figures\.x: "):
        publish(mr, [invalid])
