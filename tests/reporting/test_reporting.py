"""The reporting plugin: formatting, junit.xml, summary.md, metrics.json/.txt, baselines.

Unit tests build CaseResult objects by hand; integration tests run a small nbgate project (real
kernels) in a pytest subprocess, serially, under ``-n 2`` and interrupted.
"""

from __future__ import annotations

import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest
import xmlschema

from nbgate.contract.baselines import load_baselines, release_file_name
from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import load_metrics
from nbgate.contract.model import CaseResult, Failure, Rule, Tracking, case_labels
from reporting.files import markdown as fmt
from reporting.files.baseline import (
    Baseline,
    BaselineInfo,
    MetricDelta,
    apply_baseline,
    baseline_line,
)
from reporting.files.junit import junit_xml
from reporting.files.report_files import annotations, metric_prefixes, metrics_txt
from reporting.files.summary import render_summary
from reporting.files.terminal import case_lines, files_line
from tests.support.builders import build_metrics, check, write_metrics_json
from tests.support.nbproject import write_notebook, write_pyproject

pytest_plugins = ["pytester"]

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parents[1] / "support" / "data" / "junit.xsd"))
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


# -- building results ------------------------------------------------------------------------


def passed_case(**overrides: object) -> CaseResult:
    result = CaseResult(
        case_id="notebooks/training_example.ipynb::train[cpu]",
        notebook="notebooks/training_example.ipynb",
        kind="train",
        runner="cpu",
        outcome="passed",
        duration_s=41.234,
        metrics={"roc_auc": 0.99312345, "accuracy": 0.958, "log_loss": 0.1211},
        thresholds=[
            check("roc_auc", ">= 0.95", 0.99312345, True),
            check("log_loss", "<= 0.25", 0.1211, True),
        ],
        executed_notebook="reports/notebooks/training_example-train-cpu.ipynb",
        figures={"roc_curve": "reports/figures/training_example-train-cpu-roc_curve.png"},
    )
    for key, value in overrides.items():
        setattr(result, key, value)
    return result


def skipped_case() -> CaseResult:
    return CaseResult(
        "notebooks/training_example.ipynb::train[gpu]", "notebooks/training_example.ipynb",
        "train", "gpu", "skipped",
        skip_reason="no CUDA GPU visible: run it on a GPU runner; --nbgate-require-gpu fails it",
    )


def failed_case() -> CaseResult:
    """A nasty failure: ANSI codes, control characters, pipes and a leading slash everywhere."""
    return CaseResult(
        case_id="/close::score[cpu]",
        notebook="notebooks/sc|ore.ipynb",
        kind="score",
        runner="cpu",
        outcome="failed",
        duration_s=2.5,
        metrics={"a|b": 0.5, "nan_metric": math.nan},
        thresholds=[
            check("nan_metric", ">= 0.9", math.nan, False, "is NaN"),
            check("missing", "> 0", None, False, "not recorded (recorded: a|b)"),
        ],
        executed_notebook="reports/notebooks/score-cpu.ipynb",
        failure=Failure(
            kind="cell_error",
            message="ValueError in cell 3: \x1b[31mbad\x1b[0m | input",
            cell_index=3,
            source="/label ~bug\nraise ValueError('bad')",
            exception="ValueError: \x1b[1;31mbad\x1b[0m\x00\x08 <tag> & more",
            traceback="\x1b[0;31m---------\x1b[0m\n/close\n"
            "\x1b]0;title\x07ValueError\x0b: bad\x1b[0m",
        ),
    )


# -- format.py -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.99312345, "0.9931"),
        (0.958, "0.9580"),
        (114.0, "114"),
        (12345.678, "12346"),
        (1234.5, "1234"),
        (0.000012345, "1.234e-05"),
        (-0.5, "-0.5000"),
        (math.nan, "NaN"),
        (math.inf, "inf"),
        (None, "–"),
    ],
)
def test_fmt_number_rounds_to_four_significant_digits(value: float | None, text: str) -> None:
    assert fmt.fmt_number(value) == text


@pytest.mark.parametrize(
    ("value", "base", "text"),
    [
        (0.9931, 0.9889, "+0.0042"),
        (0.958, 0.959, "−0.0010"),
        (0.9674, 0.9674, "±0"),
        (0.99310001, 0.9931, "±0"),  # below the shown precision
        (0.1111, 0.1211, "−0.0100"),
        (114.0, 110.0, "+4"),
        (0.9, math.nan, "n/a"),
        (None, 0.9, "n/a"),
    ],
)
def test_fmt_delta(value: float | None, base: float | None, text: str) -> None:
    assert fmt.fmt_delta(value, base) == text


def test_durations_rules_marks_and_outcomes() -> None:
    assert fmt.fmt_duration(41.234) == "41.2 s"
    assert fmt.fmt_duration(185) == "3 min 05 s"
    assert fmt.fmt_duration(3725) == "1 h 02 min"
    assert fmt.fmt_rule(Rule.parse(">= 0.95")) == "≥ 0.95"
    assert fmt.fmt_rule(Rule.parse("<= 0.25")) == "≤ 0.25"
    assert fmt.fmt_rule(Rule.parse("== 1")) == "= 1"
    assert fmt.fmt_rule(Rule.parse("> 0")) == "> 0"
    marks = [fmt.threshold_mark(check("a", ">= 0", 1.0, passed)) for passed in (True, False, None)]
    assert marks == ["✅", "❌", "➖"]  # not checked has its own, neutral mark
    assert fmt.outcome_label(passed_case()) == "✅ passed"
    assert fmt.outcome_label(skipped_case()) == "⏭ skipped: no CUDA GPU visible"
    # The cause: the exception's type and its message.
    assert fmt.outcome_label(failed_case()) == "❌ failed: ValueError in cell 3: bad | input"
    assert fmt.outcome_label(failed_case(), reason_limit=0) == "❌ failed"
    assert fmt.short_reason("kernel died in cell 2 (the process exited: os._exit)", 30) == \
        "kernel died in cell 2 (the pr…"
    assert fmt.verdict([passed_case(), skipped_case(), failed_case()]) == (
        "❌ 1 failed · ✅ 1 passed · ⏭ 1 skipped"
    )
    assert fmt.overall_mark([passed_case(), skipped_case()]) == "✅"


def test_md_cell_escapes_pipes_newlines_html_slash_and_ansi() -> None:
    assert fmt.md_cell("a|b\nc") == "a\\|b c"
    assert fmt.md_cell("/close") == "\\/close"
    assert fmt.md_cell("<!-- nbgate:train -->") == "&lt;!-- nbgate:train -->"
    assert fmt.md_cell("\x1b[31mred\x1b[0m\x00") == "red"
    assert fmt.md_cell("a\\|b") == "a\\\\\\|b"  # the backslash cannot un-escape the pipe


def test_md_safe_never_leaves_a_line_starting_with_a_slash() -> None:
    body = "/close\ntext /here\n```\n/merge\n```\n    /indented\n\x1b[31m/label\x1b[0m"
    safe = fmt.md_safe(body)
    assert not [line for line in safe.splitlines() if line.startswith("/")]
    assert "\\/close" in safe and " /merge" in safe and "text /here" in safe
    assert "\x1b" not in safe


def table_rows(table: str) -> list[list[str]]:
    # Cells keep each value on one line with no-break spaces; compare them as plain spaces.
    lines = table.replace(fmt.NBSP, " ").splitlines()
    return [[c.strip() for c in UNESCAPED_PIPE.split(line)[1:-1]] for line in lines]


def test_case_table_is_a_well_formed_markdown_table() -> None:
    results = [passed_case(), skipped_case(), failed_case()]
    table = fmt.case_table(results, metrics=fmt.metric_names(results))
    rows = table_rows(table)
    header = rows[0]
    assert header[:3] == ["case", "outcome", "time"]  # the case id names the runner
    # metrics in first-recorded order, unrecorded threshold metrics last, pipes escaped; a rule
    # every case shares is in the header, once
    assert header[3:] == ["roc_auc ≥ 0.95", "accuracy", "log_loss ≤ 0.25", "a\\|b",
                          "nan_metric ≥ 0.9", "missing > 0"]
    header = ["case", "outcome", "time", "roc_auc", "accuracy", "log_loss", "a\\|b",
              "nan_metric", "missing"]
    assert all(len(row) == len(header) for row in rows), table
    assert not [line for line in table.splitlines() if line.lstrip().startswith("/")]
    body = {row[0]: dict(zip(header, row, strict=True)) for row in rows[2:]}
    good = body["notebooks/training_example.ipynb::train[cpu]"]
    assert good["roc_auc"] == "0.9931 ✅"
    assert good["accuracy"] == "0.9580"
    assert good["time"] == "41.2 s"
    assert good["a\\|b"] == "–"  # not recorded by this case, no rule: nothing to show
    gpu = body["notebooks/training_example.ipynb::train[gpu]"]
    assert gpu["outcome"] == "⏭ skipped: no CUDA GPU visible" and gpu["time"] == "–"
    assert body["\\/close::score[cpu]"]["outcome"] == (
        "❌ failed: ValueError in cell 3: bad \\| input")
    assert set(list(gpu.values())[3:]) == {"–"}
    bad = body["\\/close::score[cpu]"]
    assert bad["nan_metric"] == "**NaN** ❌"
    assert bad["missing"] == "– ❌"
    assert bad["a\\|b"] == "0.5000"
    assert "\x1b" not in table and "|" not in bad["outcome"].replace("\\|", "")


def test_case_table_shows_deltas_against_the_baseline() -> None:
    base = passed_case(
        metrics={"roc_auc": 0.9889, "accuracy": 0.959, "f1": 0.9, "log_loss": 0.1311}
    )
    current = passed_case()
    current.metrics["new_metric"] = 1.0
    baseline = Baseline(((BaselineInfo("base.json"), (base, skipped_case())),))
    comparison = apply_baseline([current, skipped_case(), failed_case()], baseline)
    assert set(comparison) == {current.case_id}  # skipped and unknown cases get no deltas
    deltas = comparison[current.case_id]
    assert deltas["roc_auc"] == MetricDelta(0.99312345, 0.9889, True, True)
    assert deltas["roc_auc"].text == "+0.0042 ▲" and deltas["roc_auc"].better is True
    assert deltas["roc_auc"].delta == pytest.approx(0.00422345)
    assert deltas["new_metric"].text == "new" and deltas["new_metric"].delta is None
    table = fmt.case_table([current, failed_case()], comparison=comparison,
                           metrics=fmt.metric_names([current]))
    row = dict(zip(table_rows(table)[0], table_rows(table)[2], strict=True))
    assert row["roc_auc ≥ 0.95"] == "0.9931 ✅ (+0.0042 ▲)"
    assert row["accuracy"] == "0.9580 (−0.0010)"  # no rule: a change, neither better nor worse
    assert row["log_loss ≤ 0.25"] == "0.1211 ✅ (−0.0100 ▲)"  # lower is better under <=
    assert MetricDelta(0.2, 0.1, True, False).text == "+0.1000 ▼"
    assert MetricDelta(0.1, 0.2, True, True).text == "−0.1000 ▼"
    assert MetricDelta(0.5, 0.5, True, True).text == "±0"
    assert row["new_metric"] == "1 (new)"
    assert MetricDelta(0.5, math.nan).text == "n/a"
    assert MetricDelta(math.nan, 0.5).text == ""


def test_baseline_line_says_so_once_when_there_is_none() -> None:
    assert baseline_line(None).startswith("No baseline: none given (--nbgate-baseline PATH")
    assert baseline_line(None, reason="x.json: cannot read").startswith("No baseline: x.json")
    info = BaselineInfo("base.json", "89abcdef0123", "990", "main", "https://gl/p/-/pipelines/990")
    line = baseline_line(Baseline(((info, ()),)), [passed_case(), skipped_case()])
    assert line.startswith(
        "Baseline: base.json (main @ `89abcdef`, pipeline [#990](https://gl/p/-/pipelines/990))")
    assert "1 case not in the baseline: notebooks/training_example.ipynb::train[cpu]" in line
    assert BaselineInfo("only/a/path.json").describe() == "only/a/path.json"
    release = BaselineInfo("release 1.0.0+89abcdef.990", "89abcdef0123", "990", "main",
                           version="1.0.0+89abcdef.990")
    assert baseline_line(Baseline(((release, (passed_case(),)),)), [passed_case()]) == (
        "Compared with production: release `1.0.0+89abcdef.990` (main @ `89abcdef`, "
        "pipeline #990).")


def test_failure_details_and_figures() -> None:
    details = fmt.failure_details(failed_case())
    assert details.startswith(
        "<details><summary>❌ /close::score[cpu] — ValueError in cell 3: bad | input</summary>"
    )
    assert details.endswith("</details>")
    assert "\x1b" not in details and "\x00" not in details
    inner = details.split("\n")[1:-1]
    assert all(line == "" or line.startswith("    ") for line in inner)  # an indented code block
    assert "    /close" in details  # indented: no quick action
    assert fmt.failure_details(passed_case()) == ""
    images = fmt.figures_markdown([passed_case(), skipped_case()], lambda p: "x/" + Path(p).name)
    assert images == (  # the label on its own line: it must not read like a caption
        "**notebooks/training_example.ipynb::train[cpu]**\n\n"
        "![roc_curve](x/training_example-train-cpu-roc_curve.png){width=60%}"
    )
    two = passed_case(figures={"a": "reports/figures/a.png", "b": "reports/figures/b.png"})
    assert fmt.figures_markdown([two]).endswith(
        "![a](reports/figures/a.png){width=48%} ![b](reports/figures/b.png){width=48%}")


def test_tables_stay_narrow_however_many_metrics_a_notebook_records() -> None:
    scoring = passed_case(case_id="notebooks/scoring_example.ipynb::score[cpu]",
                          notebook="notebooks/scoring_example.ipynb", kind="score",
                          metrics={"rows": 114.0, "mean_score": 0.62104,
                                   **{f"share_decile_{i}": 0.1 for i in range(10)},
                                   "roc_auc": 0.9914},
                          thresholds=[check("roc_auc", ">= 0.95", 0.9914, True),
                                      check("rows", ">= 100", 114.0, True)])
    text = fmt.results_tables([passed_case(), scoring])
    tables = [t for t in text.split("\n\n") if t.startswith("|")]
    widths = [len(table_rows(t)[0]) for t in tables]
    assert max(widths) <= 8, text
    # One table per pipeline: they gate different metrics, a shared table would be mostly "–".
    assert "**notebooks/scoring_example.ipynb**" in text
    main = table_rows(tables[2])
    assert main[0][3:5] == ["roc_auc ≥ 0.95", "rows ≥ 100"]  # every gated metric is there
    assert "<details><summary>All recorded metrics (11 more metrics)</summary>" in text
    detail = table_rows(tables[3])
    assert detail[0][0] == "metric" and len(detail) == 2 + 11
    assert fmt.NBSP in text and "| 0.9914 ✅" in text.replace(fmt.NBSP, " ")
    many = passed_case(thresholds=[check(f"m{i}", ">= 0", 1.0, True) for i in range(7)],
                       metrics={f"m{i}": 1.0 for i in range(7)})
    folded = table_rows(fmt.case_table([many]))
    assert folded[0] == ["case", "outcome", "time", "gates", "MLflow"] or \
        folded[0] == ["case", "outcome", "time", "gates"]


def test_rule_checks_text_for_the_terminal() -> None:
    text = fmt.rule_checks_text(failed_case())
    assert text == "nan_metric NaN ≥ 0.9 ✗  missing – > 0 ✗"
    assert fmt.rule_checks_text(passed_case()) == "roc_auc 0.9931 ≥ 0.95  log_loss 0.1211 ≤ 0.25"
    no_rules = passed_case(thresholds=[])
    assert fmt.rule_checks_text(no_rules) == "roc_auc 0.9931  accuracy 0.9580  log_loss 0.1211"


# -- junit.py --------------------------------------------------------------------------------


def test_junit_is_valid_clean_and_complete() -> None:
    tracked = passed_case(tracking=Tracking("abc123", "https://mlflow/#/runs/abc123", "3",
                                            "https://mlflow"))
    harness = CaseResult("n/h.ipynb::train[cpu]", "n/h.ipynb", "train", "cpu", "failed",
                         failure=Failure("harness", "kernel failed to start"))
    text = junit_xml([tracked, skipped_case(), failed_case(), harness],
                     now=datetime(2026, 11, 27, 6, 0, tzinfo=UTC), hostname="ci")
    SCHEMA.validate(text)
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", text)
    root = ET.fromstring(text)
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "nbgate"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"),
            suite.get("skipped")) == ("4", "1", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert len(cases) == 4
    good = cases[tracked.case_id]
    assert good.get("classname") == "notebooks.training_example.ipynb"
    assert good.get("file") == "notebooks/training_example.ipynb"
    assert good.get("time") == "41.234"
    props = {p.get("name"): p.get("value") for p in good.iter("property")}
    assert props["metric.roc_auc"] == "0.99312345"  # exact, not rounded
    assert props["threshold.roc_auc"] == "≥ 0.95 (passed)"
    assert props["mlflow.run_id"] == "abc123"
    assert props["mlflow.url"] == "https://mlflow/#/runs/abc123"
    assert good.findtext("system-out") == (
        "[[ATTACHMENT|reports/notebooks/training_example-train-cpu.ipynb]]"
    )
    skipped = cases[skipped_case().case_id].find("skipped")
    assert skipped is not None and skipped.get("message", "").startswith("no CUDA GPU visible")
    # GitLab's parser shows a text-less <skipped/> as a raw JSON object: the reason is the text.
    assert (skipped.text or "").startswith("no CUDA GPU visible")
    failure = cases["/close::score[cpu]"].find("failure")
    assert failure is not None
    assert failure.get("message") == "ValueError in cell 3: bad | input"
    assert failure.get("type") == "cell_error"
    assert "cell 3:" in (failure.text or "") and "Traceback:" in (failure.text or "")
    assert "\x1b" not in (failure.text or "") and "<tag> & more" in (failure.text or "")
    bad = cases["/close::score[cpu]"]
    bad_props = {p.get("name"): p.get("value") for p in bad.iter("property")}
    assert bad_props["metric.nan_metric"] == "NaN"
    assert bad_props["threshold.missing"] == "> 0 (failed: not recorded (recorded: a|b))"
    error = cases["n/h.ipynb::train[cpu]"].find("error")
    assert error is not None and error.get("message") == "kernel failed to start"
    assert cases["n/h.ipynb::train[cpu]"].find("system-out") is None


# -- baselines and metrics.txt -------------------------------------------------------------


def test_baselines_from_files_and_bytes(tmp_path: Path) -> None:
    ci = CIContext.from_env({"CI": "1", "CI_COMMIT_SHA": "89abcdef00", "CI_PIPELINE_ID": "990",
                             "CI_COMMIT_REF_NAME": "main"})
    document = build_metrics([passed_case(metrics={"roc_auc": 0.9889})], ci.to_dict())
    path = write_metrics_json(tmp_path / "base.json", document)
    folder = tmp_path / "baseline"
    folder.mkdir()
    write_metrics_json(folder / release_file_name("training_example", "1.0.0+89abcdef.990"),
                       document)
    [loaded] = load_baselines(path)
    baseline = Baseline.from_runs([loaded])
    assert baseline is not None
    assert baseline.infos == [BaselineInfo(str(path), "89abcdef00", "990", "main", None)]
    [release] = load_baselines(folder)
    assert release.version == "1.0.0+89abcdef.990" and release.source.startswith("release ")
    comparison = apply_baseline([passed_case()], Baseline.from_runs([release]))
    assert comparison[passed_case().case_id]["roc_auc"].text == "+0.0042 ▲"
    assert comparison[passed_case().case_id]["accuracy"].text == "new"
    gpu = passed_case(case_id="notebooks/training_example.ipynb::train[gpu]", runner="gpu")
    assert apply_baseline([gpu], baseline)[gpu.case_id]["roc_auc"].text == "+0.0042 ▲"


def test_metrics_txt_names_are_unique_and_safe() -> None:
    other = passed_case(case_id="other/training_example.ipynb::train[cpu]",
                        notebook="other/training_example.ipynb", metrics={"roc_auc": 0.5})
    custom = CaseResult("tests/test_nb.py::test_run[p 1]#2", "notebooks/x.ipynb", "custom", "cpu",
                        "passed", metrics={"score": 1.0})
    lone = passed_case(case_id="notebooks/scoring_example.ipynb::score[cpu]",
                       notebook="notebooks/scoring_example.ipynb", kind="score",
                       metrics={"rows": 114.0, "mean_score": 0.62104})
    results = [passed_case(), other, failed_case(), custom, lone, skipped_case()]
    text = metrics_txt(results)
    lines = text.splitlines()
    names = [line.split(" ")[0] for line in lines]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+ \S+", line) for line in lines), text
    assert "notebooks.training_example.train.cpu.roc_auc 0.9931" in lines  # stems clash
    assert "other.training_example.train.cpu.roc_auc 0.5000" in lines
    assert "scoring_example.score.cpu.rows 114" in lines
    assert "scoring_example.score.cpu.mean_score 0.6210" in lines
    assert "tests.test_nb.py.test_run.p_1_2.score 1" in lines
    assert "sc_ore.score.cpu.a_b 0.5000" in lines
    prefixes = metric_prefixes(results)
    assert len(set(prefixes.values())) == len(prefixes)


# -- summary.py, terminal.py, annotations ---------------------------------------------------


def test_summary_puts_the_verdict_first_and_is_safe_to_post() -> None:
    tracked = passed_case(tracking=Tracking("abc123", "https://mlflow/#/runs/abc123"))
    ci = CIContext.from_env({"CI": "1", "CI_PIPELINE_ID": "1002", "CI_JOB_NAME": "train-cpu",
                             "CI_PIPELINE_URL": "https://gl/p/-/pipelines/1002",
                             "CI_COMMIT_SHA": "0123456789"})
    text = render_summary(
        [tracked, skipped_case(), failed_case()], pipeline=ci, interrupted=True,
        not_run=["notebooks/c.ipynb::train[cpu]"], link_for=lambda p: p.removeprefix("reports/"),
    )
    lines = text.splitlines()
    assert lines[0] == "# nbgate summary"
    assert lines[2] == ("**❌ 1 failed · ✅ 1 passed · ⏭ 1 skipped** — 3 cases; gates: 2 gates "
                        "failed, 2 passed")
    assert "The session was interrupted" in text and "1 did not run: notebooks/c.ipynb" in text
    assert text.count("No baseline:") == 1
    assert "| [run](https://mlflow/#/runs/abc123) |" in text  # the MLflow column
    assert "![roc_curve](figures/training_example-train-cpu-roc_curve.png)" in text
    assert (
        "- Pipeline [#1002](https://gl/p/-/pipelines/1002), job train-cpu, commit `01234567`"
    ) in text
    assert (
        "[notebooks/training_example.ipynb::train[cpu]](notebooks/training_example-train-cpu.ipynb)"
    ) in text
    assert not [line for line in lines if line.startswith("/")]
    assert "\x1b" not in text and "\x00" not in text
    labels = case_labels([tracked, skipped_case(), failed_case()])
    assert len(set(labels.values())) == 3
    for label in labels.values():  # each case once in the main table, by its short label
        assert sum(line.startswith(f"| {fmt.md_cell(label)} ") for line in lines) == 1


def test_terminal_lines_and_mlflow_hint(tmp_path: Path) -> None:
    local = Tracking("r1", None, "1", f"sqlite:///{tmp_path}/mlflow.db")
    lines = case_lines([passed_case(tracking=local), skipped_case(), failed_case()])
    assert lines[0] == ("notebooks/training_example.ipynb::train[cpu]  passed    41.2 s  "
                        "roc_auc 0.9931 ≥ 0.95  log_loss 0.1211 ≤ 0.25")
    assert lines[1].startswith("notebooks/training_example.ipynb::train[gpu]  skipped  no CUDA GPU")
    assert lines[2].startswith("/close::score[cpu]")
    assert lines[2].endswith("nan_metric NaN ≥ 0.9 ✗  missing – > 0 ✗  — ValueError in cell 3: "
                             "bad | input")
    assert "\x1b" not in "".join(lines)
    results = [passed_case(tracking=local)]
    # The environment's own mlflow: a fresh shell without the environment active finds none.
    mlflow = fmt.display_path(Path(sys.executable).with_name("mlflow"), tmp_path)
    assert fmt.mlflow_hint(results, tmp_path) == (
        f"{mlflow} ui --backend-store-uri sqlite:///mlflow.db")
    remote = [passed_case(tracking=Tracking("r2", "https://mlflow/#/r2", None, "https://mlflow"))]
    assert fmt.mlflow_hint(remote, tmp_path) == "https://mlflow/#/r2"
    assert fmt.mlflow_hint([passed_case()], tmp_path) is None
    files = [tmp_path / "reports" / "summary.md", tmp_path / "reports" / "junit.xml"]
    assert files_line(files, tmp_path, results) == (
        "reports: reports/summary.md · reports/junit.xml · "
        f"MLflow: {mlflow} ui --backend-store-uri sqlite:///mlflow.db"
    )
    repo = Path(sys.executable).parents[2]  # run from the project: the path is .venv/bin/mlflow
    if (repo / ".venv").exists():
        assert fmt.mlflow_hint(results, repo).startswith(".venv/bin/mlflow ui ")


def test_annotations_link_mlflow_runs() -> None:
    tracked = passed_case(tracking=Tracking("abc", "https://mlflow/#/runs/abc"))
    assert annotations([tracked, skipped_case()]) == {"mlflow": [{"external_link": {
        "label": "MLflow run: notebooks/training_example.ipynb::train[cpu]",
        "url": "https://mlflow/#/runs/abc"}}]}
    assert annotations([passed_case(tracking=Tracking("abc"))]) is None


# -- the plugin, end to end ------------------------------------------------------------------

PNG_1X1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
# Tracking has its own tests; here it would only add MLflow's start-up to every run.
QUIET = ("-p", "no:cacheprovider", "-p", "no:nbgate-tracking")
CASES = [
    "notebooks/bad.ipynb::score[cpu]",
    "notebooks/good.ipynb::train[cpu]",
    "notebooks/good.ipynb::train[gpu]",
    "notebooks/third.ipynb::train[cpu]",
]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three small notebooks: one passing with a figure (and a GPU variant that skips), one
    whose cell raises with ANSI codes and a pipe, one more passing case."""
    for name in ("NBGATE_BASELINE", "NBGATE_REQUIRE_GPU", "PYTEST_XDIST_WORKER",
                 "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS", "CI", "GITLAB_CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the GPU case skips even on a GPU machine
    root = pytester.path
    # record_figure takes anything with matplotlib's savefig(); a stand-in that writes a 1x1
    # PNG keeps matplotlib's import out of these runs.
    write_notebook(root / "notebooks/good.ipynb", [f"""
        import base64
        from nbgate import record, record_figure
        record("acc", 0.987654)
        record("loss", 0.1)

        class Figure:
            def savefig(self, buffer, **options):
                buffer.write(base64.b64decode("{PNG_1X1}"))

        record_figure("roc", Figure())
    """])
    write_notebook(root / "notebooks/bad.ipynb", ["""
        from nbgate import record
        record("acc", 0.5)
        raise ValueError("bad \\x1b[31mred\\x1b[0m | input")
    """])
    write_notebook(root / "notebooks/third.ipynb", ["import nbgate; nbgate.record('rows', 114)"])
    write_pyproject(root, """
        [tool.nbgate.runners.cpu]
        [tool.nbgate.runners.gpu]
        gpu = true

        [[tool.nbgate.pipelines]]
        notebook = "notebooks/good.ipynb"
        kind = "train"
        runners = ["cpu", "gpu"]
        thresholds = { acc = ">= 0.9", loss = "<= 0.25" }

        [[tool.nbgate.pipelines]]
        notebook = "notebooks/bad.ipynb"
        kind = "score"

        [[tool.nbgate.pipelines]]
        notebook = "notebooks/third.ipynb"
        kind = "train"
    """)
    return root


def check_reports(root: Path, expected: list[str]) -> dict[str, object]:
    """Every expected case exactly once in every report file; junit.xml valid; no ANSI anywhere."""
    reports = root / "reports"
    junit_text = (reports / "junit.xml").read_text(encoding="utf-8")
    SCHEMA.validate(junit_text)
    names = [c.get("name") for c in ET.fromstring(junit_text).iter("testcase")]
    assert sorted(names) == sorted(expected)
    document = load_metrics(reports / "metrics.json")
    cases, baseline = document.cases, document.baseline
    assert sorted(c.case_id for c in cases) == sorted(expected)
    summary = (reports / "summary.md").read_text(encoding="utf-8")
    labels = case_labels(cases)
    rows = [table_rows(line)[0][0] for line in summary.splitlines()
            if line.startswith("| ") and " · " in line.split("|")[1]]
    assert sorted(rows) == sorted(labels[case_id] for case_id in expected)
    metrics_text = (reports / "metrics.txt").read_text(encoding="utf-8")
    names = [line.split(" ")[0] for line in metrics_text.splitlines()]
    assert len(names) == len(set(names)), metrics_text
    metrics_json = (reports / "metrics.json").read_text(encoding="utf-8")
    for text in (junit_text, summary, metrics_text, metrics_json):
        assert "\x1b" not in text and "\\u001b" not in text
    return {"junit": ET.fromstring(junit_text), "cases": {c.case_id: c for c in cases},
            "baseline": baseline, "summary": summary, "metrics_txt": metrics_text}


def test_serial_run_writes_every_report(project: Path, pytester: pytest.Pytester) -> None:
    run = pytester.runpytest_subprocess(*QUIET)
    run.assert_outcomes(passed=2, failed=1, skipped=1)
    found = check_reports(project, CASES)
    cases = found["cases"]
    assert isinstance(cases, dict)
    assert cases["notebooks/good.ipynb::train[gpu]"].outcome == "skipped"
    assert cases["notebooks/good.ipynb::train[gpu]"].skip_reason
    figure = cases["notebooks/good.ipynb::train[cpu]"].figures["roc"]
    assert (project / figure).read_bytes().startswith(b"\x89PNG")
    assert found["baseline"] is None
    summary = found["summary"]
    assert isinstance(summary, str)
    assert summary.count("No baseline:") == 1
    assert "![roc](figures/notebooks-good-train-cpu-roc.png){width=60%}" in summary
    assert (
        "<details><summary>❌ notebooks/bad.ipynb::score[cpu] — ValueError in cell 2: bad red | "
        "input</summary>"
    ) in summary
    assert "good.train.cpu.acc 0.9877" in str(found["metrics_txt"])
    junit = found["junit"]
    assert isinstance(junit, ET.Element)
    bad = next(c for c in junit.iter("testcase") if c.get("name") == CASES[0])
    assert bad.findtext("system-out") == (
        "[[ATTACHMENT|reports/notebooks/notebooks-bad-score-cpu.ipynb]]")
    assert (project / "reports/notebooks/notebooks-bad-score-cpu.ipynb").is_file()
    assert bad.find("failure") is not None
    assert not (project / "reports/annotations.json").exists()  # no MLflow links
    run.stdout.re_match_lines([
        r"─+ nbgate ─+",
        r"notebooks/bad\.ipynb::score\[cpu\]\s+failed\s+\d+\.\d s  .*ValueError in cell 2",
        r"notebooks/good\.ipynb::train\[cpu\]\s+passed\s+\d+\.\d s  "
        r"acc 0\.9877 ≥ 0\.9  loss 0\.1000 ≤ 0\.25",
        r"notebooks/good\.ipynb::train\[gpu\]\s+skipped  no CUDA GPU visible.*",
        r"notebooks/third\.ipynb::train\[cpu\]\s+passed\s+\d+\.\d s  rows 114",
        r"reports: reports/summary\.md · reports/junit\.xml · reports/metrics\.json · "
        r"reports/metrics\.txt",
    ])


def test_xdist_run_reports_each_case_once_with_baseline(
    project: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = CaseResult(CASES[1], "notebooks/good.ipynb", "train", "cpu", "passed",
                      metrics={"acc": 0.98, "loss": 0.1})
    ci = CIContext.from_env({"CI": "1", "CI_COMMIT_SHA": "89abcdef00", "CI_PIPELINE_ID": "990",
                             "CI_COMMIT_REF_NAME": "main"})
    write_metrics_json(project / "base.json", build_metrics([base], ci.to_dict()))
    monkeypatch.setenv("NBGATE_BASELINE", "base.json")
    run = pytester.runpytest_subprocess(*QUIET, "-n", "2")
    run.assert_outcomes(passed=2, failed=1, skipped=1)
    found = check_reports(project, CASES)
    assert found["baseline"] == {"source": "base.json", "commit": "89abcdef00",
                                 "pipeline_id": "990", "ref": "main", "pipeline_url": None,
                                 "version": None}
    summary = str(found["summary"]).replace(fmt.NBSP, " ")
    flat = re.sub(r" +", " ", summary)  # tabulate pads cells
    assert "| acc ≥ 0.9 | loss ≤ 0.25 |" in flat
    assert "| 0.9877 ✅ (+0.0077 ▲) | 0.1000 ✅ (±0) |" in flat
    assert "Baseline: base.json (main @ `89abcdef`, pipeline #990)." in summary
    assert "2 cases not in the baseline: " in summary
    assert "No baseline" not in summary
    run.stdout.fnmatch_lines(["*good.ipynb::train?cpu?*acc 0.9877 ≥ 0.9 (+0.0077 ▲)*"])


def test_interrupted_session_still_writes_reports(project: Path, pytester: pytest.Pytester) -> None:
    # The first case (bad.ipynb, in collection order) fails, then the user hits Ctrl-C.
    pytester.makeconftest("""
        def pytest_runtest_logfinish(nodeid, location):
            raise KeyboardInterrupt
    """)
    run = pytester.runpytest_subprocess(*QUIET)
    assert run.ret == pytest.ExitCode.INTERRUPTED
    found = check_reports(project, [CASES[0]])
    data = json.loads((project / "reports/metrics.json").read_text(encoding="utf-8"))
    assert data["interrupted"] is True
    summary = str(found["summary"])
    assert "The session was interrupted" in summary
    assert "3 did not run: notebooks/good.ipynb::train[cpu], notebooks/good.ipynb::train[gpu], " \
        "notebooks/third.ipynb::train[cpu]" in summary
    run.stdout.fnmatch_lines(["3 not run (the session was interrupted): *"])


def test_no_reports_without_notebook_cases(project: Path, pytester: pytest.Pytester) -> None:
    """`pytest tests/` in a project, or --collect-only, must not replace the last run's reports."""
    pytester.makepyfile(test_plain="def test_ok():\n    assert True\n")
    assert pytester.runpytest_inprocess("test_plain.py", "-p", "no:cacheprovider").ret == 0
    assert pytester.runpytest_inprocess("--collect-only", "-p", "no:cacheprovider").ret == 0
    assert not (project / "reports").exists()
