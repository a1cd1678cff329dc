from __future__ import annotations

import math

import pytest

from nbgate.contract.model import Rule
from nbgate.running.thresholds import evaluate, parse_threshold


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (">= 0.95", Rule(">=", 0.95)),
        ("<=0.25", Rule("<=", 0.25)),
        ("> -1e-3", Rule(">", -0.001)),
        ("< 10", Rule("<", 10.0)),
        ("== 1", Rule("==", 1.0)),
        ("  >=.5 ", Rule(">=", 0.5)),
        (">= baseline - 0.005", Rule(">=", 0.005, "-")),
        ("<= baseline * 1.02", Rule("<=", 1.02, "*")),
        (">=baseline", Rule(">=", 0.0, "+")),
        ("< baseline + 2", Rule("<", 2.0, "+")),
    ],
)
def test_rules_parse_into_data(text: str, rule: Rule) -> None:
    assert parse_threshold("m", text).rule == rule
    assert Rule.parse(rule.text) == rule  # the normalised text reads back the same


@pytest.mark.parametrize("text", ["", ">=", "0.9", "=> 0.9", ">= abc", "!= 1", ">= 1 2", 0.9,
                                  None, ">= baseline -", ">= base - 1", ">= baseline / 2",
                                  ">= inf", ">= nan"])
def test_bad_rules_say_what_is_expected(text: object) -> None:
    with pytest.raises(ValueError, match=r"OP NUMBER.*>=, >, <=, <, =="):
        parse_threshold("m", text)


@pytest.mark.parametrize(
    ("rule", "value", "passed"),
    [
        # Every operator exactly at its bound, and a hair to either side: a rule read as its
        # neighbour (>= as >, <= as <, == as >=) fails one of these.
        (">= 0.95", 0.95, True), (">= 0.95", 0.9499999, False), (">= 0.95", 0.9500001, True),
        ("> 0.95", 0.95, False), ("> 0.95", 0.9500001, True), ("> 0.95", 0.9499999, False),
        ("<= 0.25", 0.25, True), ("<= 0.25", 0.2500001, False), ("<= 0.25", 0.2499999, True),
        ("< 0.25", 0.25, False), ("< 0.25", 0.2499999, True), ("< 0.25", 0.2500001, False),
        ("== 1", 1.0, True), ("== 1", 1.0000001, False), ("== 1", 0.9999999, False),
    ],
)
def test_each_operator_holds_exactly_at_its_bound(rule: str, value: float, passed: bool) -> None:
    [result] = evaluate([parse_threshold("m", rule)], {"m": value})
    assert result.passed is passed and result.checked


def test_evaluation_reports_value_rule_and_reason() -> None:
    rules = [
        parse_threshold("auc", ">= 0.95"),
        parse_threshold("loss", "<= 0.25"),
        parse_threshold("f1", "> 0.5"),
        parse_threshold("acc", "== 1"),
        parse_threshold("big", "< 10"),
    ]
    checks = evaluate(rules, {"auc": 0.91, "loss": 0.2, "f1": math.nan, "big": math.inf})
    by_metric = {c.metric: c for c in checks}
    assert not by_metric["auc"].passed
    assert by_metric["auc"].reason == "0.9100 < 0.9500 (short by 0.0400)"
    assert by_metric["loss"].passed and by_metric["loss"].reason == ""
    assert not by_metric["f1"].passed and by_metric["f1"].reason == "is not finite (nan)"
    assert not by_metric["big"].passed and by_metric["big"].reason == "is not finite (inf)"
    missing = by_metric["acc"]
    assert not missing.passed and missing.value is None
    assert missing.reason == "not recorded (recorded: auc, big, f1, loss)"


def test_baseline_rules_compare_with_the_production_value() -> None:
    drop = parse_threshold("auc", ">= baseline - 0.005")
    grow = parse_threshold("loss", "<= baseline * 1.02")
    production = {"auc": 0.99, "loss": 0.10}
    ok, worse = evaluate([drop, grow], {"auc": 0.9851, "loss": 0.1021}, production)
    assert ok.passed and ok.bound == pytest.approx(0.985) and ok.baseline == 0.99
    assert not worse.passed and worse.bound == pytest.approx(0.102)
    assert worse.reason == ("0.1021 > 0.1020 (over by 1.000e-04, rule <= baseline * 1.02, "
                            "baseline 0.1000)")
    [off] = evaluate([parse_threshold("n", "== 3")], {"n": 5.0})
    assert off.reason == "5 != 3 (off by 2)"
    [over] = evaluate([parse_threshold("loss", "< 0.25")], {"loss": 0.3})
    assert over.reason == "0.3000 >= 0.2500 (over by 0.0500)"
    # Not checked is its own state: neither passed nor failed, with why.
    [unchecked] = evaluate([drop], {"auc": 0.5}, None)
    assert unchecked.passed is None and unchecked.state == "not checked"
    assert not unchecked.failed and not unchecked.checked
    assert unchecked.reason == "not checked: no baseline given"
    [release] = evaluate([drop], {"auc": 0.5}, None, no_baseline="no release yet")
    assert release.passed is None and release.reason == "not checked: no release yet"
    [absent] = evaluate([drop], {"auc": 0.5}, {"loss": 0.1})
    assert absent.passed is None and absent.reason == "not checked: the baseline did not record it"
    # --nbgate-require-baseline: the same gate fails, saying why.
    [required] = evaluate([drop], {"auc": 0.5}, None, require_baseline=True)
    assert required.passed is False and required.state == "failed"
    assert required.reason == "not checked: no baseline given (--nbgate-require-baseline)"


@pytest.mark.parametrize(
    ("value", "shown"), [(math.inf, "inf"), (-math.inf, "-inf"), (math.nan, "nan")]
)
@pytest.mark.parametrize("rule", [">= 0", "> 0", "<= 0", "< 0", "== 0"])
def test_non_finite_values_fail_every_rule(value: float, shown: str, rule: str) -> None:
    # inf satisfies ">= 0" and -inf "<= 0" as numbers; neither is a measurement.
    [result] = evaluate([parse_threshold("x", rule)], {"x": value})
    assert not result.passed
    assert result.reason == f"is not finite ({shown})"
