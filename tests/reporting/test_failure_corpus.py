"""A corpus of failures, run for real and read back from every place a reviewer reads them.

One pytest session in a throwaway project runs six notebooks on real kernels: a cell that raises,
a typo'd pipeline parameter, missed thresholds (three gated metrics and a baseline), a timeout,
a dead kernel, and a passing notebook whose baseline rule cannot be checked. Each failure's cause
must be in every one-line reason: the terminal's nbgate block, pytest's own short summary
(``-rA``), the summary.md table and its ``<details>`` titles, JUnit's ``message``, and the MR
comment (``nbgate publish mr --dry-run``), headline included. The rule that was not checked must
read as not checked in all five outputs and as passed in none. The failing comment's preview is
laid out by a real browser and its tables measured against GitLab's 1000 px note column.
"""

from __future__ import annotations

import html
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nbgate.cli import main
from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import dumps_metrics, load_metrics, metrics_document
from nbgate.contract.model import CaseResult
from tests.support.browser import chromium, measure_tables
from tests.support.builders import build_metrics, write_metrics_json
from tests.support.nbproject import run_pytest, write_notebook, write_pyproject

# mlflow's sqlite store warns about its own use of sqlalchemy when the tests read runs back.
pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")

NOTE_COLUMN_PX = 1000  # GitLab's note column; reporting/files/preview.py gives the note that width

NOTEBOOKS: dict[str, tuple[list[str], str]] = {
    # Records one gated metric, then fails before the other: "accuracy not recorded" is a side
    # effect and must never stand in for the cause.
    "cellerr": (["from nbgate import record\nrecord('auc', 0.5)",
                 "raise ValueError('deliberate failure in the data step')"],
                "alpha = 1\ndevice = 'cpu'"),
    "typo": (["from nbgate import record\nrecord('auc', 0.9)"],
             "learning_rate = 0.1\ndevice = 'cpu'"),
    "wine_random_forest": (["from nbgate import record\nrecord('auc', 0.91)\n"
                            "record('log_loss', 0.2)\nrecord('f1', 0.8)\nrecord('accuracy', 0.9)"],
                           "device = 'cpu'\nis_ci = False"),
    "slow": (["import time\ntime.sleep(60)"], "x = 1"),
    "dead": (["import os\nos._exit(1)"], "x = 1"),
    "unchecked": (["from nbgate import record\nrecord('auc', 0.99)\nrecord('log_loss', 0.1)"],
                  "device = 'cpu'\nis_ci = False"),
}
PIPELINES = {
    "cellerr": 'thresholds = { auc = ">= 0.4", accuracy = ">= 0.9" }',
    "typo": "parameters = { learning_rat = 0.2 }",
    "wine_random_forest": 'thresholds = { auc = ">= 0.95", log_loss = "<= 0.25", '
                          'f1 = ">= baseline - 0.01" }',
    "slow": "timeout = 3",
    "dead": "",
    "unchecked": 'thresholds = { auc = ">= 0.95", log_loss = "<= baseline * 1.1" }',
}
# The cause each failure must show wherever it is said in one line.
CAUSES = {
    "cellerr": "ValueError in cell 3: deliberate failure in the data step",
    "typo": "unknown pipeline parameter learning_rat (did you mean learning_rate?)",
    "wine_random_forest": "auc 0.9100 < 0.9500 (short by 0.0400)",
    "slow": "timed out after 3 s in cell 2",
    "dead": "kernel died in cell 2",
}
UNCHECKED = "unchecked"
NOT_CHECKED_WHY = "the baseline has no case of this notebook"


def case_id(name: str) -> str:
    return f"notebooks/{name}.ipynb::train[cpu]"


@dataclass
class Corpus:
    root: Path
    terminal: str
    summary: str
    junit: ET.Element
    metrics: dict[str, Any]

    def terminal_line(self, name: str) -> str:
        [line] = [line for line in self.terminal.splitlines()
                  if line.startswith(case_id(name) + " ")]
        return line

    def short_summary(self, name: str) -> str:
        """pytest's own ``-rA`` line for the case."""
        part = self.terminal.split("short test summary info", 1)[1]
        [line] = [line for line in part.splitlines() if f" {case_id(name)}" in line]
        return line

    def summary_row(self, name: str) -> list[str]:
        [row] = [line for line in self.summary.splitlines()
                 if line.startswith(f"| {name} · train[cpu] ")]
        return [html.unescape(c.strip().replace("\\|", "|")) for c in
                re.split(r"(?<!\\)\|", row.replace("\u00a0", " "))[1:-1]]

    def testcase(self, name: str) -> ET.Element:
        [case] = [c for c in self.junit.iter("testcase") if c.get("name") == case_id(name)]
        return case

    def case_json(self, name: str) -> dict[str, Any]:
        [case] = [c for c in self.metrics["cases"] if c["id"] == case_id(name)]
        return case


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner session must not see the outer job's CI or tracking server."""
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "CI_", "NBGATE_")) or name in ("CI", "GITLAB_CI"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NBGATE_MLFLOW_HELPER_IDLE", "3")
    monkeypatch.setenv("COLUMNS", "250")  # pytest's -r lines are cut at the terminal's width


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    root = tmp_path_factory.mktemp("corpus")
    table = ('[tool.nbgate.runners.cpu]\nparameters = { device = "cpu" }\n'
             "[tool.nbgate.ci]\nparameters = { is_ci = true }\n")
    for name, (cells, parameters) in NOTEBOOKS.items():
        write_notebook(root / "notebooks" / f"{name}.ipynb", cells, parameters=parameters)
        table += (f'\n[[tool.nbgate.pipelines]]\nnotebook = "notebooks/{name}.ipynb"\n'
                  f'kind = "train"\nrunners = ["cpu"]\n{PIPELINES[name]}\n')
    write_pyproject(root, table)
    # The baseline: an earlier run of the missed-threshold notebook only.
    base = CaseResult(case_id("wine_random_forest"), "notebooks/wine_random_forest.ipynb",
                      "train", "cpu", "passed",
                      metrics={"auc": 0.93, "log_loss": 0.21, "f1": 0.82, "accuracy": 0.92})
    write_metrics_json(root / "base.json", build_metrics(
        [base], CIContext.from_env({"CI": "1", "CI_COMMIT_SHA": "89abcdef00",
                                    "CI_PIPELINE_ID": "990", "CI_COMMIT_REF_NAME": "main"})))
    with pytest.MonkeyPatch.context() as monkeypatch:
        clean_env(monkeypatch)
        # In CI, so the ci parameters are injected too (is_ci where a notebook defines it).
        done = run_pytest(root, "-rA", "--nbgate-baseline", "base.json", env={"CI": "true"})
    terminal = done.stdout + done.stderr
    assert done.returncode == 1, terminal
    reports = root / "reports"
    yield Corpus(root, terminal, (reports / "summary.md").read_text(encoding="utf-8"),
                 ET.parse(reports / "junit.xml").getroot(),
                 json.loads((reports / "metrics.json").read_text(encoding="utf-8")))


def dry_run_comment(root: Path, reports: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The body ``nbgate publish mr --dry-run`` prints, outside CI."""
    capsys.readouterr()
    code = main(["publish", "mr", "--dry-run", "--reports", str(reports),
                 "--pyproject", str(root / "pyproject.toml")], {})
    out = capsys.readouterr().out
    assert code == 0, out
    return out.split("body: ---\n", 1)[1].split("\n--- end of body ---", 1)[0]


def reports_of(corpus: Corpus, names: list[str], folder: str) -> Path:
    """A reports folder holding only these cases of the corpus run (its files are the run's)."""
    document = load_metrics(corpus.root / "reports" / "metrics.json")
    wanted = {case_id(n) for n in names}
    target = corpus.root / folder
    target.mkdir(exist_ok=True)
    (target / "metrics.json").write_text(dumps_metrics(metrics_document(
        [c for c in document.cases if c.case_id in wanted], pipeline=document.pipeline,
        baseline=document.baseline,
        case_baselines={k: v for k, v in document.case_baselines.items() if k in wanted})),
        encoding="utf-8")
    return target


# -- the cause, in every one-line reason -------------------------------------------------------


@pytest.mark.parametrize("name", list(CAUSES))
def test_each_cause_is_in_every_one_line_reason(
    corpus: Corpus, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cause = CAUSES[name]
    said = {
        "terminal": corpus.terminal_line(name),
        "pytest -r": corpus.short_summary(name),
        "summary.md table": corpus.summary_row(name)[1],
        "summary.md details": html.unescape(re.search(
            rf"<summary>❌ {re.escape(case_id(name))} — (.*?)</summary>", corpus.summary)[1]),
        "junit message": corpus.testcase(name).find("failure").get("message"),
    }
    # The comment for a run where this case failed: its headline names this case's cause.
    body = html.unescape(dry_run_comment(corpus.root, reports_of(corpus, [name], f"only-{name}"),
                                         capsys))
    said["comment headline"] = body.split("\n")[1]
    said["comment cause line"] = next(line for line in body.splitlines()
                                      if line.startswith(f"- ❌ {name} · train[cpu]: "))
    said["comment details"] = re.search(r"<summary>❌ .*? — (.*?)</summary>", body)[1]
    missing = {where: text for where, text in said.items() if cause not in text}
    assert not missing, f"{cause!r} missing from: {json.dumps(missing, indent=1)}"
    # pytest's short summary leads with the cause, not with the case id again.
    assert said["pytest -r"].startswith(f"FAILED {case_id(name)} - {cause}")
    assert said["comment headline"].startswith(f"### ❌ Training failed — 1 of 1 case failed: "
                                               f"{cause}")


def test_a_side_effect_never_stands_in_for_the_cause(
    corpus: Corpus, capsys: pytest.CaptureFixture[str]
) -> None:
    """The failing cell never recorded accuracy: the reports say the cell's error, and the
    missed metric only among the gates."""
    case = corpus.case_json("cellerr")
    assert case["thresholds"]["accuracy"]["passed"] is False  # a consequence, still a gate
    assert case["failure"]["message"] == CAUSES["cellerr"]
    assert case["failure"]["cell"] == "cell 3 (counting from 1, injected cell excluded; In [4])"
    body = dry_run_comment(corpus.root, corpus.root / "reports", capsys)
    headline = body.split("\n")[1]
    assert "not recorded" not in headline
    assert headline == ("### ❌ Training failed — 5 of 6 cases failed, first cellerr · "
                        f"train[cpu]: {CAUSES['cellerr']}")


def test_the_whole_corpus_comment_lists_every_cause_under_its_table(
    corpus: Corpus, capsys: pytest.CaptureFixture[str]
) -> None:
    body = html.unescape(dry_run_comment(corpus.root, corpus.root / "reports", capsys))
    for name, cause in CAUSES.items():
        assert f"- ❌ {name} · train[cpu]: {cause}" in body
        assert re.search(rf"<summary>❌ {re.escape(case_id(name))} — {re.escape(cause)}", body)
    # The run compared with base.json, and the comment says so (it used to say "No baseline").
    assert "Baseline: base.json (main @ `89abcdef`, pipeline #990)." in body
    assert "No baseline" not in body
    assert "(−0.0200 ▼)" in body.replace("\u00a0", " ")  # auc 0.91 against 0.93: a change


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (.ci/install-tools.sh)")
def test_the_failing_comment_fits_gitlabs_note_column(
    corpus: Corpus, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rendered by a real browser: no table of the failing comment (three gated metrics with a
    baseline among them) is wider than GitLab's 1000 px note column."""
    dry_run_comment(corpus.root, corpus.root / "reports", capsys)
    measured = measure_tables(corpus.root / "reports" / "comment-train.html")
    assert measured.column == NOTE_COLUMN_PX
    too_wide = [(t.header, t.width) for t in measured.tables
                if t.width > measured.column or t.scrolls]
    assert not too_wide, f"wider than the {measured.column} px column: {too_wide}"
    [three] = [t for t in measured.tables if len(t.header) >= 6]
    assert three.header[3:6] == ["auc ≥ 0.95", "log_loss ≤ 0.25", "f1 ≥ baseline − 0.01"]


# -- a rule that was not checked ----------------------------------------------------------------


def shown_as_passed(corpus: Corpus, comment: str) -> dict[str, str]:
    """Every output that shows the unchecked rule (log_loss <= baseline * 1.1) as passed."""
    found = {}
    line = corpus.terminal_line(UNCHECKED)
    rule = "log_loss 0.1000 ≤ baseline × 1.1"
    if rule not in line or f"{rule} – not checked" not in line:
        found["terminal"] = line
    cell = corpus.summary_row(UNCHECKED)[4]
    if "✅" in cell or "➖" not in cell:
        found["summary.md"] = cell
    testcase = corpus.testcase(UNCHECKED)
    prop = next(p.get("value") for p in testcase.iter("property")
                if p.get("name") == "threshold.log_loss")
    if "passed" in prop or testcase.find("failure") is not None:
        found["junit"] = prop
    flat = html.unescape(comment.replace("\u00a0", " "))
    cells = [c.strip() for line in flat.splitlines() if line.startswith("| unchecked")
             for c in line.split("|")[1:-1]]
    if not cells or "✅" in cells[4] or "➖" not in cells[4]:
        found["comment table"] = str(cells)
    if "not checked" not in flat.split("\n")[1]:
        found["comment headline"] = flat.split("\n")[1]
    check = corpus.case_json(UNCHECKED)["thresholds"]["log_loss"]
    if check["passed"] is not None or check["checks"][0]["passed"] is not None:
        found["metrics.json"] = json.dumps(check)
    return found


def test_a_rule_not_checked_says_so_in_all_five_outputs(
    corpus: Corpus, capsys: pytest.CaptureFixture[str]
) -> None:
    why = NOT_CHECKED_WHY
    body = dry_run_comment(corpus.root, reports_of(corpus, [UNCHECKED], "only-unchecked"), capsys)
    assert shown_as_passed(corpus, body) == {}
    assert corpus.terminal_line(UNCHECKED).endswith(
        f"auc 0.9900 ≥ 0.95  log_loss 0.1000 ≤ baseline × 1.1 – not checked ({why})")
    assert f"- ➖ log_loss ≤ baseline × 1.1: not checked ({why})" in corpus.summary
    testcase = corpus.testcase(UNCHECKED)
    assert testcase.find("failure") is None and testcase.find("skipped") is None
    assert f"log_loss ≤ baseline × 1.1: not checked ({why})" in testcase.findtext("system-out")
    check = corpus.case_json(UNCHECKED)["thresholds"]["log_loss"]["checks"][0]
    assert check["passed"] is None and check["reason"] == f"not checked: {why}"
    assert body.split("\n")[1] == (f"### ✅ Training passed — 1 case, 1 gate passed, 1 not checked "
                                   f"({why}); auc 0.9900 (≥ 0.95)")
    assert f"- ➖ log_loss ≤ baseline × 1.1: not checked ({why})" in body


def test_require_baseline_still_fails_the_unchecked_rule(corpus: Corpus) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        clean_env(monkeypatch)
        done = run_pytest(corpus.root, "-rA", "-p", "no:nbgate-tracking", "-k", UNCHECKED,
                          "--nbgate-require-baseline", "--nbgate-reports=required")
    assert done.returncode == 1, done.stdout
    reason = "not checked: no baseline given (--nbgate-require-baseline)"
    assert f"FAILED {case_id(UNCHECKED)} - log_loss {reason}" in done.stdout
    case = json.loads((corpus.root / "required" / "metrics.json").read_text())["cases"][0]
    assert case["thresholds"]["log_loss"]["checks"][0] == {**case["thresholds"]["log_loss"][
        "checks"][0], "passed": False, "reason": reason}


# -- MLflow params: exactly what was injected ---------------------------------------------------


def test_mlflow_params_are_exactly_what_each_case_injected(corpus: Corpus) -> None:
    """Pipeline, runner (device) and CI (is_ci) parameters, as each case lists them; every run
    after the first is created ahead of its case, before anyone knew what it would inject."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(corpus.root / 'mlflow.db').as_posix()}")
    injected = {}
    for case in corpus.metrics["cases"]:
        run = client.get_run(case["tracking"]["run_id"])
        injected[case["id"]] = case["parameters"]
        assert run.data.params == {k: str(v) for k, v in case["parameters"].items()}, case["id"]
    assert injected[case_id("wine_random_forest")] == {"device": "cpu", "is_ci": True}
    assert injected[case_id("cellerr")] == {"device": "cpu"}  # defines no is_ci
    assert injected[case_id("slow")] == {}  # defines neither: nothing injected, nothing logged
