"""The one JSON shape of a case result, and the ``metrics.json`` document that holds them.

The same ``case_to_json`` shape travels from pytest-xdist workers to the controller, is written
to ``metrics.json`` and is carried by the MR comment's hidden state, so a result reads back the
same wherever it was stored. ``metrics.schema.json`` beside this module is the published JSON
Schema of the document; readers validate against it, so a bad file is refused naming the field.

Schema history: 1 keyed cases by ``case_id`` and kept each threshold as rule text; 2 names the
key ``id`` (as the product contract does) and keeps each rule as data (operator, amount,
baseline form); 3 gives a gate three states, ``passed`` true, false or null (not checked, with
its ``reason``) where 2 had ``passed: true, checked: false``, records per case the baseline it
was compared with (``baseline``: where from, and its metrics), a failure's ``cell`` (how to
find the failing cell) each case's ``fingerprint`` (what determined its model, with the
parts), ``reports_dir`` (where the reports folder was; null when outside the repository, and
then the paths of the files written there are relative to it) and, in merged reports,
``missing_shards``. Versions 1 and 2 are still read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from nbgate.contract.ci_context import CIContext
from nbgate.contract.json_file import JSONFileError, parse_json, read_json, schema_violation
from nbgate.contract.model import (
    CaseResult,
    Failure,
    Fingerprint,
    Rule,
    ThresholdCheck,
    Tracking,
)
from nbgate.contract.text import clean_text

SCHEMA = 3
READABLE_SCHEMAS = (1, 2, 3)
SCHEMA_FILE = Path(__file__).with_name("metrics.schema.json")


class ResultsFileError(ValueError):
    """A metrics.json that cannot be read; the message names the file and the field."""


# -- one case --------------------------------------------------------------------------------


def case_to_json(result: CaseResult) -> dict[str, Any]:
    """A case result as JSON-ready data. Numbers JSON cannot hold (NaN, infinities) are null;
    texts are cleaned of ANSI codes and control characters, like every report."""
    checks: dict[str, dict[str, Any]] = {}
    for metric, group in result.checks_by_metric().items():
        checks[metric] = {
            "rule": " and ".join(c.rule.text for c in group),
            "passed": _group_passed(group),
            "value": _finite(group[0].value),
            "checks": [_check_to_json(c) for c in group],
        }
    failure = None
    if result.failure is not None:
        failure = {k: clean_text(v) if isinstance(v, str) else v
                   for k, v in asdict(result.failure).items()}
    return {
        "id": result.case_id,
        "notebook": result.notebook,
        "kind": result.kind,
        "runner": result.runner,
        "outcome": result.outcome,
        "duration_s": _finite(result.duration_s) or 0.0,
        "parameters": _json_safe(result.parameters),
        "metrics": {name: _finite(value) for name, value in result.metrics.items()},
        "thresholds": checks,
        "executed_notebook": result.executed_notebook,
        "figures": dict(result.figures),
        "outputs": list(result.outputs),
        "failure": failure,
        "skip_reason": clean_text(result.skip_reason) if result.skip_reason else None,
        "tracking": asdict(result.tracking) if result.tracking is not None else None,
        "fingerprint": result.fingerprint.to_dict() if result.fingerprint else None,
    }


def _group_passed(group: Sequence[ThresholdCheck]) -> bool | None:
    """A metric's rules together: failed when one failed, else not checked (null) when one was
    not checked: a half-checked metric is not shown as passed."""
    if any(c.failed for c in group):
        return False
    return None if any(not c.checked for c in group) else True


def _check_to_json(check: ThresholdCheck) -> dict[str, Any]:
    return {
        "rule": check.rule.text,
        "op": check.rule.op,
        "amount": check.rule.amount,
        "change": check.rule.change,
        "passed": check.passed,
        "bound": _finite(check.bound),
        "baseline": _finite(check.baseline),
        "reason": check.reason,
    }


def case_from_json(data: Mapping[str, Any]) -> CaseResult:
    """The inverse of ``case_to_json`` (schema 3 shape; schema 2's checks read the same). Unknown
    keys are ignored."""
    thresholds = [
        _check_from_json(metric, raw, group.get("value"))
        for metric, group in (data.get("thresholds") or {}).items()
        for raw in group.get("checks") or []
    ]
    failure = data.get("failure")
    tracking = data.get("tracking")
    fingerprint = data.get("fingerprint")
    return CaseResult(
        case_id=data["id"],
        notebook=data.get("notebook") or "",
        kind=data["kind"],
        runner=data["runner"],
        outcome=data["outcome"],
        duration_s=float(data.get("duration_s") or 0.0),
        parameters=dict(data.get("parameters") or {}),
        metrics={k: _number(v) for k, v in (data.get("metrics") or {}).items()},
        thresholds=thresholds,
        executed_notebook=data.get("executed_notebook"),
        figures=dict(data.get("figures") or {}),
        outputs=list(data.get("outputs") or []),
        failure=Failure(**_known(Failure, failure)) if failure else None,
        skip_reason=data.get("skip_reason"),
        tracking=Tracking(**_known(Tracking, tracking)) if tracking else None,
        fingerprint=Fingerprint.from_dict(fingerprint) if fingerprint else None,
    )


def _check_from_json(metric: str, raw: Mapping[str, Any], value: Any) -> ThresholdCheck:
    rule = Rule(raw["op"], float(raw["amount"]), raw.get("change"))
    passed = raw["passed"]
    if passed is not None:
        passed = bool(passed)
        if passed and raw.get("checked") is False:
            passed = None  # schema 2 wrote a not-checked gate as passed, checked false
    return ThresholdCheck(
        metric=metric,
        rule=rule,
        value=None if value is None else float(value),
        passed=passed,
        reason=raw.get("reason") or "",
        bound=raw.get("bound"),
        baseline=raw.get("baseline"),
    )


def _upgrade_case_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A schema-1 case in the schema-2 shape. Version 1 stored rules as text, so this is the one
    place outside the config that reads rule text (rules written by an older nbgate)."""
    upgraded = {k: v for k, v in data.items() if k not in ("case_id", "thresholds")}
    upgraded["id"] = data["case_id"]
    thresholds = {}
    for metric, check in (data.get("thresholds") or {}).items():
        rule = Rule.parse(check["rule"])
        thresholds[metric] = {
            "value": check.get("value"),
            "checks": [{"op": rule.op, "amount": rule.amount, "change": rule.change,
                        "passed": check["passed"], "reason": check.get("reason") or "",
                        "bound": rule.bound()}],
        }
    upgraded["thresholds"] = thresholds
    return upgraded


# -- the metrics.json document ---------------------------------------------------------------


@dataclass
class MetricsDocument:
    """A read metrics.json: the run's CI context, its cases, and what it was compared with."""

    cases: list[CaseResult]
    pipeline: CIContext = field(default_factory=CIContext)
    baseline: dict[str, Any] | None = None  # where the baseline came from, as written
    interrupted: bool = False
    not_run: list[str] = field(default_factory=list)  # collected case ids that never reported
    shard: dict[str, int] | None = None  # {"index": k, "total": n} for a sharded run
    generated_at: str | None = None
    schema: int = SCHEMA
    # case id -> the baseline that case was compared with, as written: where it came from
    # ("source", "version", "commit", ...) and its "metrics" (schema 3)
    case_baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports_dir: str | None = None  # the reports folder from the repository root; None: outside
    # merged reports: {"job", "index", "total", "cases"} of each shard that left no reports
    missing_shards: list[dict[str, Any]] = field(default_factory=list)


def metrics_document(
    results: Sequence[CaseResult],
    *,
    pipeline: CIContext,
    baseline: Mapping[str, Any] | None = None,
    interrupted: bool = False,
    not_run: Sequence[str] = (),
    shard: Mapping[str, int] | None = None,
    now: datetime | None = None,
    case_baselines: Mapping[str, Mapping[str, Any]] | None = None,
    reports_dir: str | None = None,
    missing_shards: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The metrics.json document for ``results`` (exact values; other reports round).

    ``case_baselines`` (case id -> where from and ``metrics``) records what each case was
    compared with, so that publishing later shows the same baseline the run used."""
    compared = case_baselines or {}
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "schema": SCHEMA,
        "generated_at": stamp,
        "interrupted": interrupted,
        "not_run": list(not_run),
        "missing_shards": [dict(m) for m in missing_shards],
        "shard": dict(shard) if shard else None,
        "reports_dir": reports_dir,
        "pipeline": _json_safe(pipeline.to_dict()),
        "baseline": _json_safe(dict(baseline)) if baseline else None,
        "cases": [{**case_to_json(r), "baseline": _json_safe(dict(compared[r.case_id]))
                   if r.case_id in compared else None} for r in results],
    }


def dumps_metrics(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def read_metrics(data: Mapping[str, Any] | str | bytes, source: str = "metrics.json") -> \
        MetricsDocument:
    """Read a metrics.json document (parsed, or its text or bytes, e.g. from an API download).

    Raises ``ResultsFileError`` naming ``source`` and the offending field when it is not a
    metrics.json of a schema this nbgate reads.
    """
    if isinstance(data, (str, bytes)):
        try:
            data = parse_json(data, source)
        except JSONFileError as exc:
            raise ResultsFileError(str(exc)) from None
    if not isinstance(data, Mapping):
        raise ResultsFileError(f"{source}: not an nbgate metrics.json (expected a JSON object)")
    schema = data.get("schema")
    if schema not in READABLE_SCHEMAS or isinstance(schema, bool):
        readable = ", ".join(map(str, READABLE_SCHEMAS))
        raise ResultsFileError(
            f"{source}: schema: {schema!r} is not a metrics.json schema this nbgate reads "
            f"({readable})"
        )
    validate_document(data, source)
    raw_cases = data["cases"]
    if schema == 1:
        raw_cases = [_upgrade_case_v1(c) for c in raw_cases]
    cases = []
    for i, raw in enumerate(raw_cases):
        try:
            cases.append(case_from_json(raw))
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultsFileError(f"{source}: cases[{i}]: {exc}") from None
    pipeline = data.get("pipeline") or {}
    return MetricsDocument(
        cases=cases,
        pipeline=CIContext.from_dict(pipeline),
        baseline=dict(data["baseline"]) if data.get("baseline") else None,
        interrupted=bool(data.get("interrupted")),
        not_run=list(data.get("not_run") or []),
        shard=dict(data["shard"]) if data.get("shard") else None,
        generated_at=data.get("generated_at"),
        schema=schema,
        case_baselines={str(raw["id"]): dict(raw["baseline"]) for raw in raw_cases
                        if isinstance(raw.get("baseline"), Mapping)},
        reports_dir=data.get("reports_dir"),
        missing_shards=[dict(m) for m in data.get("missing_shards") or []],
    )


def load_metrics(path: str | Path) -> MetricsDocument:
    """Read a metrics.json file; ``ResultsFileError`` when missing, unreadable or invalid."""
    path = Path(path)
    try:
        document = read_json(path)
    except JSONFileError as exc:
        raise ResultsFileError(str(exc)) from None
    return read_metrics(document, str(path))


def validate_document(data: Mapping[str, Any], source: str) -> None:
    """Check ``data`` against the published schema of its version; the first error, with its
    JSON path (``cases[0].duration_s``), becomes a ResultsFileError."""
    violation = schema_violation(data, _schema(int(data["schema"])))
    if violation is not None:
        raise ResultsFileError(f"{source}: {violation}")


@cache
def _schema(version: int) -> dict[str, Any]:
    document = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    if version == SCHEMA:
        return document
    # The previous versions are kept inside the published file under $defs, so one file
    # documents what this nbgate reads.
    return {"$schema": document["$schema"], "$defs": document["$defs"],
            **document["$defs"][f"schema{version}"]}


# -- helpers ---------------------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {k: v for k, v in data.items() if k in names}


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: such numbers become null (parameters may hold them too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
