"""``nbgate publish wiki`` against the loopback GitLab stand-in."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from reporting.errors import PublishError, PublishSkipped
from reporting.files.reports_folder import load_reports
from reporting.gitlab.client import connect
from reporting.gitlab.publish_wiki import (
    WikiSettings,
    _write_page,
    case_labels,
    new_rows,
    parse_page,
    plan_write,
    publish_wiki,
    split_row,
)
from tests.reporting.test_publish_mr import (
    Output,
    ci_env,
    pipeline_ctx,
    train_case,
    write_reports,
)
from tests.support.gitlab_standin import GitLabStandIn

SLUG = "nbgate/train-history"


def score_case(runner: str = "cpu", *, rows: float = 114, mean: float = 0.621,
               roc_auc: float = 0.9915) -> Any:
    case = train_case(runner, kind="score", notebook="notebooks/scoring_example.ipynb",
                      roc_auc=roc_auc)
    case.metrics = {"rows": rows, "mean score": mean, "roc_auc": roc_auc}
    case.thresholds = []
    return case


def publish(standin: GitLabStandIn, folders: list[Path], env: dict[str, str] | None = None,
            **kwargs: Any) -> Output:
    out = Output(standin.private_token, standin.job_token)
    publish_wiki(folders, env or ci_env(standin, CI_JOB_NAME="publish-wiki"), echo=out,
                 **kwargs)
    return out


def table_rows(content: str) -> list[dict[str, str]]:
    table = parse_page(content)
    assert table.found, content
    return table.rows


def page(standin: GitLabStandIn, slug: str = SLUG) -> str:
    found = standin.wiki_page(slug)
    assert found is not None, f"no wiki page {slug}; pages: {list(standin.wiki_pages())}"
    return found.content


def test_page_is_created_then_the_same_pipeline_leaves_one_row(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    reports = write_reports(tmp_path / "reports", [train_case()])
    out = publish(gitlab_standin, [reports])
    assert "created wiki page nbgate/train-history: 1 row(s)" in out.text
    first = page(gitlab_standin)
    out = publish(gitlab_standin, [reports])
    assert "already has this pipeline's rows: nothing to change" in out.text
    assert page(gitlab_standin) == first
    rows = table_rows(first)
    assert rows == [{
        "date (UTC)": "2026-11-27 06:00",
        "pipeline": "[#1002](https://gitlab.example.com/group/project/-/pipelines/1002)",
        "commit": "`01234567`",
        "case": "training_example · train[cpu]",
        "outcome": "✅ passed",
        "roc_auc": "0.9931",
        "accuracy": "0.9580",
        "log_loss": "0.1211",
    }]
    # python-gitlab sends the slug %2F-encoded; the page was created once, never rewritten.
    assert len(gitlab_standin.requests_to("/wikis/nbgate%2Ftrain-history", "GET")) == 2
    assert len(gitlab_standin.requests_to("/wikis", "POST")) == 1
    assert gitlab_standin.requests_to("/wikis/", "PUT") == []
    later = write_reports(tmp_path / "later", [train_case(roc_auc=0.97)], pipeline_ctx("1003"))
    out = publish(gitlab_standin, [later])
    assert "updated wiki page nbgate/train-history: 1 row(s) for this pipeline, 2 in all" \
        in out.text
    assert len(gitlab_standin.requests_to("/wikis/nbgate%2Ftrain-history", "PUT")) == 1


def test_newer_pipelines_go_on_top_and_columns_are_the_union(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    old = write_reports(tmp_path / "old", [score_case()], pipeline_ctx("2001"),
                        generated_at="2026-11-26T06:00:00Z")
    new_case = score_case(rows=120, mean=0.63)
    new_case.metrics["auc_pr"] = 0.88
    new = write_reports(tmp_path / "new", [new_case], pipeline_ctx("2002"),
                        generated_at="2026-11-27T06:00:00Z")
    publish(gitlab_standin, [old])
    publish(gitlab_standin, [new])
    publish(gitlab_standin, [old])  # a re-run of the older pipeline keeps its place
    content = page(gitlab_standin, "nbgate/score-history")
    rows = table_rows(content)
    assert [r["pipeline"].split("]")[0] for r in rows] == ["[#2002", "[#2001"]
    assert list(rows[0])[5:] == ["rows", "mean score", "roc_auc", "auc_pr"]
    assert rows[0]["auc_pr"] == "0.8800" and rows[1]["auc_pr"] == "–"
    assert rows[0]["rows"] == "120" and rows[1]["mean score"] == "0.6210"


def test_cpu_and_gpu_jobs_of_one_pipeline_each_add_their_rows(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    cpu = write_reports(tmp_path / "jobs" / "train-cpu", [train_case("cpu")],
                        pipeline_ctx(job="train-cpu"))
    gpu = write_reports(tmp_path / "jobs" / "train-gpu", [train_case("gpu", roc_auc=0.995)],
                        pipeline_ctx(job="train-gpu"))
    publish(gitlab_standin, [cpu])
    publish(gitlab_standin, [gpu])
    publish(gitlab_standin, [tmp_path / "jobs"])  # the folder of job folders, all at once
    rows = table_rows(page(gitlab_standin))
    assert sorted(r["case"] for r in rows) == ["training_example · train[cpu]",
                                               "training_example · train[gpu]"]
    assert {r["roc_auc"] for r in rows} == {"0.9931", "0.9950"}


def test_case_labels_are_short_unless_two_notebooks_share_a_stem() -> None:
    same = [train_case("cpu"), train_case("gpu")]
    assert sorted(case_labels(same).values()) == ["training_example · train[cpu]",
                                                  "training_example · train[gpu]"]
    clash = [train_case(), train_case(notebook="other/training_example.ipynb")]
    assert sorted(case_labels(clash).values()) == [
        "notebooks/training_example.ipynb · train[cpu]",
        "other/training_example.ipynb · train[cpu]"]


def test_history_is_cut_to_max_rows(gitlab_standin: GitLabStandIn, tmp_path: Path) -> None:
    for n in range(5):
        reports = write_reports(tmp_path / f"r{n}", [train_case()], pipeline_ctx(str(3000 + n)),
                                generated_at=f"2026-11-2{n}T06:00:00Z")
        publish(gitlab_standin, [reports], settings=WikiSettings(max_rows=3))
    rows = table_rows(page(gitlab_standin))
    assert [r["pipeline"][:6] for r in rows] == ["[#3004", "[#3003", "[#3002"]


def test_rows_and_text_nbgate_did_not_write_are_kept(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    gitlab_standin.add_wiki_page(SLUG, "\n".join([
        "Our training log. Ask #ml before retraining.",
        "",
        "| date (UTC) | pipeline | commit | case | outcome | roc_auc |",
        "|:---|---|---|---|---|---:|",
        "| 2026-01-02 10:00 | manual | `deadbeef` | laptop run \\| Jo | ✅ passed | 0.97 |",
        "",
        "Rows above are appended by CI.",
    ]))
    reports = write_reports(tmp_path / "reports", [train_case()])
    publish(gitlab_standin, [reports])
    content = page(gitlab_standin)
    assert content.startswith("Our training log. Ask #ml before retraining.\n")
    assert content.rstrip().endswith("Rows above are appended by CI.")
    rows = table_rows(content)
    assert [r["case"] for r in rows] == ["training_example · train[cpu]", "laptop run \\| Jo"]
    assert rows[1]["roc_auc"] == "0.97" and rows[1]["log_loss"] == "–"


def test_a_page_without_a_history_table_is_not_destroyed(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    gitlab_standin.add_wiki_page(SLUG, "# Notes\n\nSomeone wrote this by hand.\n")
    reports = write_reports(tmp_path / "reports", [train_case()])
    out = publish(gitlab_standin, [reports])
    assert "has no nbgate history table; its text is kept" in out.text
    content = page(gitlab_standin)
    assert content.startswith("# Notes\n\nSomeone wrote this by hand.\n")
    assert len(table_rows(content)) == 1
    publish(gitlab_standin, [reports])
    assert page(gitlab_standin) == content  # from then on the table is found


@pytest.mark.parametrize(
    ("fault", "method", "path"),
    [
        ("500", "GET", "/wikis/"),
        ("reset", "GET", "/wikis/"),
        ("502", "POST", "/wikis"),
        ("reset", "POST", "/wikis"),
        ("429", "POST", "/wikis"),
    ],
)
def test_transient_faults_leave_one_row(
    gitlab_standin: GitLabStandIn, tmp_path: Path, fault: str, method: str, path: str
) -> None:
    reports = write_reports(tmp_path / "reports", [train_case()])
    injected = _inject(gitlab_standin, fault, method, path)
    publish(gitlab_standin, [reports])
    assert injected.remaining == 0
    assert len(table_rows(page(gitlab_standin))) == 1
    # The same pipeline again, then a new one (which rewrites the page with PUT).
    again = _inject(gitlab_standin, fault, "GET", "/wikis/")
    publish(gitlab_standin, [reports])
    later = write_reports(tmp_path / "later", [train_case()], pipeline_ctx("1003"))
    put = _inject(gitlab_standin, fault, "PUT", "/wikis/")
    publish(gitlab_standin, [later])
    assert again.remaining == 0 and put.remaining == 0
    assert [r["pipeline"][:6] for r in table_rows(page(gitlab_standin))] == ["[#1003", "[#1002"]


def test_create_whose_answer_was_lost_leaves_one_page(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    """The first POST is held past the client's timeout and python-gitlab posts again; whichever
    lands second is refused as a duplicate title, and the page holds one row."""
    reports = write_reports(tmp_path / "reports", [train_case()])
    gitlab_standin.delay_next(1, 0.6, "/wikis", method="POST")
    env = ci_env(gitlab_standin, NBGATE_GITLAB_TIMEOUT="0.3")
    publish(gitlab_standin, [reports], env=env)
    deadline = time.monotonic() + 5
    while len(gitlab_standin.requests_to("/wikis", "POST")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the held request is logged once the stand-in lets it through
    assert sorted(r.status for r in gitlab_standin.requests_to("/wikis", "POST")) == [201, 400]
    assert len(table_rows(page(gitlab_standin))) == 1


def test_duplicate_title_on_create_merges_into_the_existing_page(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    """Another job created the page between our GET (404) and our POST."""
    first = write_reports(tmp_path / "a", [train_case("cpu")], pipeline_ctx(job="train-cpu"))
    publish(gitlab_standin, [first])
    run = load_reports([write_reports(tmp_path / "b", [train_case("gpu")],
                                      pipeline_ctx(job="train-gpu"))])[0]
    rows = new_rows(run, run.results, run.pipeline)
    session = connect(ci_env(gitlab_standin), "test", write=True)

    def replan(current: Any) -> Any:
        return plan_write(SLUG, current, rows, "train", 200)

    _write_page(session, replan(None), None, replan)  # as if GET had said 404
    assert [r.status for r in gitlab_standin.requests_to("/wikis", "POST")] == [201, 400]
    cases = sorted(r["case"] for r in table_rows(page(gitlab_standin)))
    assert cases == ["training_example · train[cpu]", "training_example · train[gpu]"]


def _inject(standin: GitLabStandIn, fault: str, method: str, path: str) -> Any:
    if fault == "reset":
        return standin.drop_next(2, path, method=method)
    if fault == "429":
        return standin.fail_next(2, 429, path, retry_after=0, method=method)
    return standin.fail_next(2, int(fault), path, method=method)


def test_dry_run_prints_the_page_and_writes_nothing(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    reports = write_reports(tmp_path / "reports", [train_case(), score_case()])
    out = publish(gitlab_standin, [reports], dry_run=True)
    assert "would create wiki page nbgate/train-history (1 rows)" in out.text
    assert "would create wiki page nbgate/score-history (1 rows)" in out.text
    assert "| date (UTC)" in out.text
    assert [r for r in gitlab_standin.request_log if r.method != "GET"] == []
    assert gitlab_standin.wiki_pages() == {}


def test_titles_come_from_the_settings(gitlab_standin: GitLabStandIn, tmp_path: Path) -> None:
    reports = write_reports(tmp_path / "reports", [train_case()])
    publish(gitlab_standin, [reports], settings=WikiSettings(train_title="ML/Training runs"))
    assert "ML/Training-runs" in gitlab_standin.wiki_pages()


def test_job_token_and_refusals(gitlab_standin: GitLabStandIn, tmp_path: Path) -> None:
    reports = write_reports(tmp_path / "reports", [train_case()])
    env = ci_env(gitlab_standin, REPO_TOKEN="", CI_JOB_TOKEN=gitlab_standin.job_token)
    with pytest.raises(PublishSkipped, match="cannot post merge request notes or write wiki"):
        publish(gitlab_standin, [reports], env=env)
    gitlab_standin.fail_next(1, 403, "/wikis", method="POST")
    with pytest.raises(PublishError) as caught:
        publish(gitlab_standin, [reports])
    assert caught.value.status == 403
    assert caught.value.endpoint == "POST /projects/42/wikis"
    assert "wiki must be enabled" in str(caught.value)


def test_split_row_keeps_escaped_pipes() -> None:
    assert split_row("| a \\| b | `c` |  |") == ["a \\| b", "`c`", ""]
    assert split_row("x | y") == ["x", "y"]
