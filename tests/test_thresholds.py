from __future__ import annotations

import math

import pytest

from nbgate.thresholds import evaluate, parse_rule


@pytest.mark.parametrize(
    ("text", "op", "bound"),
    [
        (">= 0.95", ">=", 0.95),
        ("<=0.25", "<=", 0.25),
        ("> -1e-3", ">", -0.001),
        ("< 10", "<", 10.0),
        ("== 1", "==", 1.0),
        ("  >=.5 ", ">=", 0.5),
    ],
)
def test_rules_parse(text: str, op: str, bound: float) -> None:
    rule = parse_rule("m", text)
    assert (rule.op, rule.bound) == (op, bound)


@pytest.mark.parametrize("text", ["", ">=", "0.9", "=> 0.9", ">= abc", "!= 1", ">= 1 2", 0.9, None])
def test_bad_rules_say_what_is_expected(text: object) -> None:
    with pytest.raises(ValueError, match=r"OP NUMBER.*>=, >, <=, <, =="):
        parse_rule("m", text)


def test_evaluation_reports_value_rule_and_reason() -> None:
    rules = [
        parse_rule("auc", ">= 0.95"),
        parse_rule("loss", "<= 0.25"),
        parse_rule("f1", "> 0.5"),
        parse_rule("acc", "== 1"),
    ]
    checks = evaluate(rules, {"auc": 0.91, "loss": 0.2, "f1": math.nan})
    by_metric = {c.metric: c for c in checks}
    assert not by_metric["auc"].passed and by_metric["auc"].reason == "0.91 < 0.95"
    assert by_metric["loss"].passed and by_metric["loss"].reason == ""
    assert not by_metric["f1"].passed and by_metric["f1"].reason == "is not finite (nan)"
    missing = by_metric["acc"]
    assert not missing.passed and missing.value is None
    assert missing.reason == "not recorded (recorded: auc, f1, loss)"


@pytest.mark.parametrize(
    ("value", "shown"), [(math.inf, "inf"), (-math.inf, "-inf"), (math.nan, "nan")]
)
@pytest.mark.parametrize("rule", [">= 0", "> 0", "<= 0", "< 0", "== 0"])
def test_non_finite_values_fail_every_rule(value: float, shown: str, rule: str) -> None:
    # inf satisfies ">= 0" and -inf "<= 0" as numbers; neither is a measurement.
    check = parse_rule("x", rule).check({"x": value})
    assert not check.passed
    assert check.reason == f"is not finite ({shown})"


@pytest.mark.parametrize(
    ("rule", "value", "passed"),
    [
        (">= 0.95", 0.95, True),
        (">= 0.95", 0.9499, False),
        ("> 0.95", 0.95, False),
        ("> 0.95", 0.9501, True),
        ("<= 0.25", 0.25, True),
        ("<= 0.25", 0.2501, False),
        ("< 0.25", 0.25, False),
        ("< 0.25", 0.2499, True),
        ("== 1", 1.0, True),
        ("== 1", 0.9999, False),
    ],
)
def test_each_operator_at_and_beside_its_bound(rule: str, value: float, passed: bool) -> None:
    # A rule evaluated with the wrong operator ('>=' as '>') must not pass this table.
    assert parse_rule("m", rule).check({"m": value}).passed is passed
