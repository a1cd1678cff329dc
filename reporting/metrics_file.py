"""``metrics.json`` (SPEC §6: the machine-readable record of a run) and ``metrics.txt`` (GitLab's
metrics report): writing them, and reading ``metrics.json`` back for publishing and baselines.

metrics.json::

    {"schema": 1, "generated_at": "2026-11-27T06:00:00Z", "interrupted": false,
     "pipeline": {...CIContext.to_dict()...},
     "baseline": {"source", "commit", "pipeline_id", "ref", "pipeline_url"} | null,
     "cases": [{...CaseResult.to_dict()...,
                "thresholds": {name: {"rule", "passed", "value", "reason"}}}]}

Exact values live here (NaN and infinities as null); every other report rounds for reading.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from nbgate.result import CaseResult, ThresholdCheck
from reporting.format import clean_text, fmt_number

SCHEMA = 1
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class MetricsFileError(ValueError):
    """A metrics.json that cannot be read; the message names the file and what is wrong."""


# -- metrics.json ----------------------------------------------------------------------------


def case_to_json(result: CaseResult) -> dict[str, Any]:
    """One case as stored in metrics.json: ``CaseResult.to_dict()`` with the thresholds as a
    mapping ``{metric: {"rule", "passed", "value", "reason"}}`` (SPEC §6). Failure texts and the
    skip reason are cleaned of ANSI codes and control characters, like every other report."""
    data = result.to_dict()
    data["thresholds"] = {check.pop("metric"): check for check in data["thresholds"]}
    if data["failure"]:
        data["failure"] = {
            k: clean_text(v) if isinstance(v, str) else v for k, v in data["failure"].items()
        }
    if data["skip_reason"]:
        data["skip_reason"] = clean_text(data["skip_reason"])
    return _json_safe(data)


def case_from_json(data: Mapping[str, Any]) -> CaseResult:
    """The inverse of ``case_to_json`` (the list form of ``CaseResult.to_dict`` is accepted too)."""
    data = dict(data)
    thresholds = data.get("thresholds") or {}
    if isinstance(thresholds, Mapping):
        data["thresholds"] = [{"metric": name, **check} for name, check in thresholds.items()]
    data["thresholds"] = [
        {k: v for k, v in check.items() if k in ThresholdCheck.__dataclass_fields__}
        for check in data["thresholds"]
    ]
    return CaseResult.from_dict(data)


def build_metrics(
    results: Sequence[CaseResult],
    pipeline: Mapping[str, Any],
    baseline: Mapping[str, Any] | None = None,
    *,
    interrupted: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The metrics.json document for ``results``; ``pipeline`` is ``CIContext.to_dict()`` and
    ``baseline`` the ``BaselineInfo.to_dict()`` of the baseline compared against (or None)."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "schema": SCHEMA,
        "generated_at": stamp,
        "interrupted": interrupted,
        "pipeline": _json_safe(dict(pipeline)),
        "baseline": _json_safe(dict(baseline)) if baseline else None,
        "cases": [case_to_json(r) for r in results],
    }


def parse_metrics(
    data: Mapping[str, Any] | str | bytes, source: str = "metrics.json"
) -> tuple[dict[str, Any], list[CaseResult], dict[str, Any] | None]:
    """Read a metrics.json document (parsed, or its text/bytes, e.g. from the job-artifacts API).

    Returns ``(pipeline, cases, baseline)``: the CI context dict of the run that wrote it, its
    case results, and the baseline it was compared against (None when none). Raises
    ``MetricsFileError`` naming ``source`` when it is not a metrics.json nbgate can read.
    """
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MetricsFileError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(data, Mapping) or "cases" not in data:
        raise MetricsFileError(f"{source}: not an nbgate metrics.json (no 'cases' list)")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise MetricsFileError(
            f"{source}: metrics.json schema {schema!r} is not supported "
            f"(this nbgate reads {SCHEMA})"
        )
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list):
        raise MetricsFileError(f"{source}: 'cases' must be a list")
    cases = []
    for i, raw in enumerate(raw_cases):
        try:
            cases.append(case_from_json(raw))
        except (TypeError, ValueError, AttributeError) as exc:
            raise MetricsFileError(f"{source}: cases[{i}] is not a case result: {exc}") from None
    pipeline = data.get("pipeline") if isinstance(data.get("pipeline"), Mapping) else {}
    baseline = data.get("baseline") if isinstance(data.get("baseline"), Mapping) else None
    return dict(pipeline), cases, (dict(baseline) if baseline else None)


def load_metrics(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], list[CaseResult], dict[str, Any] | None]:
    """Read a metrics.json file: ``(pipeline, cases, baseline)`` as in ``parse_metrics``.

    Raises ``MetricsFileError`` (a ValueError) when the file is missing or unreadable.
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise MetricsFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_metrics(text, str(path))


def write_metrics_json(path: Path, document: Mapping[str, Any]) -> Path:
    """Write a metrics.json document (from ``build_metrics``) atomically."""
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(path, text + "\n")


# -- metrics.txt -----------------------------------------------------------------------------


def case_prefixes(results: Sequence[CaseResult]) -> dict[str, str]:
    """A unique, safe metric-name prefix per case id: ``training_example.train.cpu``.

    Declared cases use notebook stem, kind and runner; when two notebooks share a stem the
    notebook path is used instead (``notebooks.training_example.train.cpu``); fixture runs use
    their test id. Only ``A-Z a-z 0-9 _ . -`` appear in a prefix.
    """

    def safe(text: str) -> str:
        return _UNSAFE_NAME.sub("_", text).strip("_.") or "case"

    def short(r: CaseResult) -> str:
        if r.kind in ("train", "score") and r.notebook:
            return safe(f"{PurePosixPath(r.notebook).stem}.{r.kind}.{r.runner}")
        return safe(r.case_id.replace("::", ".").replace("/", "."))

    def long(r: CaseResult) -> str:
        notebook = str(PurePosixPath(r.notebook).with_suffix("")).replace("/", ".")
        return safe(f"{notebook}.{r.kind}.{r.runner}")

    ids = list(dict.fromkeys(r.case_id for r in results))
    by_id = {r.case_id: r for r in results}
    prefixes = {cid: short(by_id[cid]) for cid in ids}
    clashing = {p for p in prefixes.values() if list(prefixes.values()).count(p) > 1}
    for cid in ids:
        if prefixes[cid] in clashing:
            prefixes[cid] = long(by_id[cid])
    seen: dict[str, int] = {}
    for cid in ids:  # a last resort that keeps names unique whatever the ids look like
        n = seen[prefixes[cid]] = seen.get(prefixes[cid], 0) + 1
        if n > 1:
            prefixes[cid] = f"{prefixes[cid]}.{n}"
    return prefixes


def metrics_txt(results: Sequence[CaseResult]) -> str:
    """GitLab's metrics report: one ``name value`` line per recorded metric of every case,
    ``<case prefix>.<metric> <value>`` with the value at 4 significant digits (GitLab compares
    the text with the target branch, so noise below that would show as a change)."""
    prefixes = case_prefixes(results)
    lines = []
    for result in results:
        for name, value in result.metrics.items():
            metric = _UNSAFE_NAME.sub("_", name)
            lines.append(f"{prefixes[result.case_id]}.{metric} {fmt_number(value)}")
    return "".join(line + "\n" for line in lines)


# -- helpers ---------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file, so a reader (or an interrupted
    session) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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

