"""The one result codec: case results ↔ JSON, metrics.json and its published schema."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import (
    SCHEMA,
    SCHEMA_FILE,
    ResultsFileError,
    case_from_json,
    case_to_json,
    dumps_metrics,
    load_metrics,
    metrics_document,
    read_metrics,
)
from nbgate.contract.model import CaseResult, Failure, Fingerprint, Rule, Tracking
from tests.support.builders import check

DATA = Path(__file__).parents[1] / "support" / "data"


def full_case() -> CaseResult:
    return CaseResult(
        "notebooks/a/train.ipynb::train[cpu]", "notebooks/a/train.ipynb", "train", "cpu",
        "failed", 12.5, {"device": "cpu", "weird": math.inf},
        {"roc_auc": 0.91, "loss": math.nan},
        [check("roc_auc", ">= 0.95", 0.91, False, "0.91 < 0.95"),
         check("roc_auc", ">= baseline - 0.005", 0.91, False, "0.91 < 0.988", bound=0.988,
               baseline=0.993),
         check("loss", "<= baseline * 1.02", math.nan, False, "is not finite (nan)")],
        "reports/notebooks/a-train-train-cpu.ipynb", {"roc": "reports/figures/a-roc.png"},
        ["models/m.json"],
        Failure("thresholds", "\x1b[31mred\x1b[0m failure", 3, "x = 1", "E: e", "tb"),
        None, Tracking("r1", "http://m/#/r1", "3", "http://m"),
        Fingerprint.of({"code": "1" * 64, "parameters": "2" * 64, "lock": None,
                        "inputs": "3" * 64, "python": "3.11.7"}),
    )


def test_a_case_round_trips_through_json_with_rules_as_data() -> None:
    data = json.loads(json.dumps(case_to_json(full_case()), allow_nan=False))
    assert data["id"] == "notebooks/a/train.ipynb::train[cpu]" and "case_id" not in data
    roc = data["thresholds"]["roc_auc"]
    assert roc["rule"] == ">= 0.95 and >= baseline - 0.005" and roc["passed"] is False
    assert roc["checks"][1] == {"rule": ">= baseline - 0.005", "op": ">=", "amount": 0.005,
                                "change": "-", "passed": False,
                                "bound": 0.988, "baseline": 0.993, "reason": "0.91 < 0.988"}
    assert data["metrics"]["loss"] is None and data["parameters"]["weird"] is None
    assert data["failure"]["message"] == "red failure"  # ANSI codes never reach a file
    back = case_from_json(data)
    assert data["fingerprint"]["parts"]["lock"] is None and data["fingerprint"]["sha256"]
    assert back.fingerprint == full_case().fingerprint
    assert back.thresholds[1].rule == Rule(">=", 0.005, "-")
    assert back.thresholds[2].rule.higher_is_better is False
    assert math.isnan(back.metrics["loss"])
    assert case_to_json(back) == data


def test_metrics_json_validates_against_the_published_schema(tmp_path: Path) -> None:
    document = metrics_document(
        [full_case()], pipeline=CIContext.from_env({"CI": "true", "CI_PIPELINE_ID": "7"}),
        baseline={"source": "release 1.0.0", "commit": "89abcdef"}, not_run=["x::train[gpu]"],
        now=datetime(2026, 11, 27, tzinfo=UTC))
    path = tmp_path / "metrics.json"
    path.write_text(dumps_metrics(document), encoding="utf-8")
    run = subprocess.run(
        [str(Path(sys.executable).with_name("check-jsonschema")), "--schemafile",
         str(SCHEMA_FILE), str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    read = load_metrics(path)
    assert read.schema == SCHEMA and read.not_run == ["x::train[gpu]"]
    assert read.pipeline.pipeline_id == "7" and read.baseline == {"source": "release 1.0.0",
                                                                  "commit": "89abcdef"}


def test_a_schema_1_file_written_before_the_change_still_reads() -> None:
    read = load_metrics(DATA / "metrics-schema1.json")  # written by nbgate 0.1 (schema 1)
    assert read.schema == 1 and read.pipeline.ref == "main"
    ok, gpu, bad = read.cases
    assert ok.case_id == "notebooks/training_example.ipynb::train[cpu]"
    assert ok.thresholds[0].rule == Rule(">=", 0.95) and ok.thresholds[0].passed
    assert ok.tracking is not None and ok.tracking.run_id == "abc123"
    assert gpu.outcome == "skipped" and gpu.skip_reason
    assert bad.thresholds[1].rule.text == ">= 100" and math.isnan(bad.metrics["rows"])
    assert bad.failure is not None and bad.failure.kind == "thresholds"


def test_a_schema_2_file_still_reads_and_3_adds_reports_dir_and_missing_shards() -> None:
    document = json.loads(dumps_metrics(metrics_document(
        [full_case()], pipeline=CIContext(), reports_dir=None,
        missing_shards=[{"job": "train-cpu", "index": 2, "total": 3, "cases": ["x::train[cpu]"]}],
        not_run=["x::train[cpu]"])))
    read = read_metrics(document, "in.json")
    assert read.schema == 3 and read.reports_dir is None
    assert read.missing_shards[0]["cases"] == read.not_run == ["x::train[cpu]"]
    # Schema 2, as nbgate wrote it before: no reports_dir, no missing_shards.
    for key in ("reports_dir", "missing_shards"):
        del document[key]
    for case in document["cases"]:  # and no per-case baseline or fingerprint
        del case["baseline"], case["fingerprint"]
    read = read_metrics({**document, "schema": 2}, "in.json")
    assert read.schema == 2 and read.cases[0].case_id == full_case().case_id
    # ... and a schema-2 file with the new fields is not one nbgate wrote.
    with pytest.raises(ResultsFileError, match=r"^in\.json: .*reports_dir"):
        read_metrics({**document, "schema": 2, "reports_dir": "reports"}, "in.json")


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d["cases"][0].update(duration_s="slow"), r"cases\[0\]\.duration_s"),
    (lambda d: d["cases"][0].update(outcome="great"), r"cases\[0\]\.outcome"),
    (lambda d: d["cases"][0]["figures"].update(x="/etc/passwd"), r"cases\[0\]\.figures\.x"),
    (lambda d: d["cases"][0].update(executed_notebook="../../secret.ipynb"),
     r"cases\[0\]\.executed_notebook"),
    (lambda d: d["cases"][0]["metrics"].update(x="high"), r"cases\[0\]\.metrics\.x"),
    (lambda d: d.update(cases={}), r"cases: .* is not of type .array."),
    (lambda d: d.update(schema=4), r"schema: 4 is not a metrics.json schema"),
    (lambda d: d["cases"][0]["thresholds"]["roc_auc"]["checks"][0].update(passed="maybe"),
     r"cases\[0\]\.thresholds\.roc_auc\.checks\[0\]\.passed"),
])
def test_a_bad_file_is_refused_naming_the_field(mutate, field: str) -> None:
    document = json.loads(dumps_metrics(metrics_document([full_case()], pipeline=CIContext())))
    mutate(document)
    with pytest.raises(ResultsFileError, match=rf"^in\.json: (.* )?{field}"):
        read_metrics(document, "in.json")


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ResultsFileError, match=r"nope\.json: cannot read"):
        load_metrics(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ResultsFileError, match=r"broken\.json: not valid JSON"):
        load_metrics(broken)


def not_checked_case() -> CaseResult:
    return CaseResult(
        "nb.ipynb::train[cpu]", "nb.ipynb", "train", "cpu", "passed", 1.0, {},
        {"roc_auc": 0.99, "loss": 0.1},
        [check("roc_auc", ">= 0.95", 0.99, True),
         check("roc_auc", ">= baseline + 0.05", 0.99, None, "not checked: no release yet",
               bound=None),
         check("loss", "<= 0.25", 0.1, True)])


def test_a_gate_not_checked_is_null_with_its_reason_never_true(tmp_path: Path) -> None:
    """Schema 3: a check's ``passed`` is true, false or null (not checked, with why); a metric
    with one rule unchecked is not passed either."""
    document = metrics_document([not_checked_case()], pipeline=CIContext())
    path = tmp_path / "metrics.json"
    path.write_text(dumps_metrics(document), encoding="utf-8")
    data = json.loads(path.read_text())
    assert data["schema"] == 3
    roc = data["cases"][0]["thresholds"]["roc_auc"]
    assert roc["passed"] is None and [c["passed"] for c in roc["checks"]] == [True, None]
    assert roc["checks"][1]["reason"] == "not checked: no release yet"
    assert data["cases"][0]["thresholds"]["loss"]["passed"] is True
    run = subprocess.run(
        [str(Path(sys.executable).with_name("check-jsonschema")), "--schemafile",
         str(SCHEMA_FILE), str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    back = load_metrics(path).cases[0].thresholds
    assert [c.state for c in back] == ["passed", "not checked", "passed"]


def test_a_schema_2_not_checked_gate_reads_as_not_checked() -> None:
    """Schema 2 wrote a not-checked gate as ``passed: true, checked: false``: read back, it is
    not checked, not passed."""
    document = json.loads(dumps_metrics(metrics_document([not_checked_case()],
                                                         pipeline=CIContext())))
    document["schema"] = 2
    del document["reports_dir"], document["missing_shards"]
    case = document["cases"][0]
    case.pop("baseline")
    case.pop("fingerprint")  # schema 3 fields
    for group in case["thresholds"].values():
        for raw in group["checks"]:
            raw["checked"] = raw["passed"] is not None
            raw["passed"] = True if raw["passed"] is None else raw["passed"]
        group["passed"] = all(c["passed"] for c in group["checks"])
    read = read_metrics(document, "old.json")
    assert read.schema == 2
    assert [c.passed for c in read.cases[0].thresholds] == [True, None, True]
    document["cases"][0]["thresholds"]["roc_auc"]["checks"][1]["passed"] = None
    with pytest.raises(ResultsFileError, match=r"old\.json: .*passed"):
        read_metrics(document, "old.json")  # null is schema 3's, not 2's


def test_what_each_case_was_compared_with_is_recorded() -> None:
    compared = {"nb.ipynb::train[cpu]": {"source": "release 1.0.0", "version": "1.0.0",
                                         "commit": "89abcdef", "metrics": {"roc_auc": 0.97,
                                                                           "loss": math.nan}}}
    document = json.loads(dumps_metrics(metrics_document(
        [not_checked_case()], pipeline=CIContext(), case_baselines=compared)))
    assert document["cases"][0]["baseline"]["metrics"] == {"roc_auc": 0.97, "loss": None}
    read = read_metrics(document, "metrics.json")
    assert read.case_baselines["nb.ipynb::train[cpu]"]["version"] == "1.0.0"
