"""``junit.xml`` for GitLab's test report widget: one testcase per case result.

GitLab reads name/classname/file/time, failure/error/skipped and system-out (where
``[[ATTACHMENT|path]]`` links a file from the job's artifacts, shown for failed tests). It keeps
only the first of same-named tests and breaks on ANSI codes, so names are unique case ids and
every text is cleaned: no ANSI, nothing XML 1.0 cannot hold.
"""

from __future__ import annotations

import math
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from nbgate.contract.failure_text import render_failure
from nbgate.contract.model import CaseResult, not_checked_reason
from nbgate.contract.text import clean_text
from reporting.files.markdown import fmt_rule

SUITE_NAME = "nbgate"
MAX_BODY_CHARS = 64_000  # per failure; GitLab's limit is 30 MB a file, the notebook has the rest
# Characters XML 1.0 cannot hold at all (control characters, surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ERROR_KINDS = ("harness",)  # nbgate itself broke: an <error>, not a <failure> of the notebook


def xml_text(text: object) -> str:
    """Text fit for an XML 1.0 attribute or element: no ANSI codes, no invalid characters."""
    return _NOT_XML.sub("", clean_text(str(text)))


def _number(value: float | None) -> str:
    if value is None:
        return "null"
    return repr(float(value)) if math.isfinite(value) else str(value).replace("nan", "NaN")


def _properties(result: CaseResult) -> list[tuple[str, str]]:
    props = [("nbgate.kind", result.kind), ("nbgate.runner", result.runner),
             ("nbgate.notebook", result.notebook)]
    props += [(f"metric.{name}", _number(value)) for name, value in result.metrics.items()]
    for check in result.thresholds:
        verdict = check.state
        if check.passed is not True and check.reason:
            verdict = f"{check.reason}" if not check.checked else f"{verdict}: {check.reason}"
        props.append((f"threshold.{check.metric}", f"{fmt_rule(check.rule)} ({verdict})"))
    if result.tracking is not None:
        props += result.tracking.properties()
    if result.executed_notebook:
        props.append(("nbgate.executed_notebook", result.executed_notebook))
    props += [(f"figure.{name}", path) for name, path in result.figures.items()]
    return props


def _testcase(result: CaseResult) -> ET.Element:
    case = ET.Element("testcase", {
        "name": xml_text(result.case_id),
        "classname": xml_text(result.notebook.replace("/", ".") or result.case_id),
        "file": xml_text(result.notebook),
        "time": f"{max(result.duration_s, 0.0):.3f}",
    })
    props = _properties(result)
    if props:
        holder = ET.SubElement(case, "properties")
        for name, value in props:
            ET.SubElement(holder, "property", {"name": xml_text(name), "value": xml_text(value)})
    if result.outcome == "failed":
        failure = result.failure
        kind = failure.kind if failure else "failure"
        tag = "error" if kind in _ERROR_KINDS else "failure"
        body = xml_text(render_failure(result))
        if len(body) > MAX_BODY_CHARS:
            body = body[:MAX_BODY_CHARS] + "\n... (cut; see the executed notebook)"
        element = ET.SubElement(case, tag, {
            "message": xml_text(failure.message if failure else "failed"),
            "type": xml_text(kind),
        })
        element.text = body
    elif result.outcome == "skipped":
        # GitLab's parser shows a message-only <skipped/> as a raw JSON object: the reason goes
        # in the element's text too.
        reason = xml_text(result.skip_reason or "skipped")
        ET.SubElement(case, "skipped", {"message": reason}).text = reason
    # GitLab's widget shows system-out beside the case (the failure's text too): a gate that
    # was not checked is said there, never as a failure and never as a pass.
    lines = [f"{check.metric} {fmt_rule(check.rule)}: not checked "
             f"({not_checked_reason(check.reason)})"
             for check in result.thresholds if not check.checked]
    if result.executed_notebook:
        lines.append(f"[[ATTACHMENT|{result.executed_notebook}]]")
    if lines:
        out = ET.SubElement(case, "system-out")
        out.text = xml_text("\n".join(lines))
    return case


def _not_run_testcase(case_id: str, reason: str) -> ET.Element:
    case = ET.Element("testcase", {"name": xml_text(case_id),
                                   "classname": xml_text(case_id.split("::")[0].replace("/", ".")),
                                   "file": xml_text(case_id.split("::")[0]), "time": "0.000"})
    ET.SubElement(case, "error", {"message": xml_text(reason), "type": "not_run"}).text = \
        xml_text(reason)
    return case


def build_junit(
    results: Sequence[CaseResult], *, now: datetime | None = None, hostname: str | None = None,
    not_run: Mapping[str, str] | None = None,
) -> ET.Element:
    """The ``<testsuites>`` element: one testsuite "nbgate", one testcase per result, and an
    error testcase for each case of ``not_run`` (case id -> why it never ran)."""
    not_run = {k: v for k, v in (not_run or {}).items()
               if k not in {r.case_id for r in results}}
    failures = sum(1 for r in results if r.outcome == "failed"
                   and not (r.failure and r.failure.kind in _ERROR_KINDS))
    errors = sum(1 for r in results if r.outcome == "failed") - failures + len(not_run)
    skipped = sum(1 for r in results if r.outcome == "skipped")
    total = f"{sum(max(r.duration_s, 0.0) for r in results):.3f}"
    counts = {"tests": str(len(results) + len(not_run)), "failures": str(failures),
              "errors": str(errors),
              "skipped": str(skipped), "time": total}
    root = ET.Element("testsuites", {"name": SUITE_NAME, **counts})
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    suite = ET.SubElement(root, "testsuite", {
        "name": SUITE_NAME, **counts, "timestamp": stamp,
        "hostname": xml_text(hostname if hostname is not None else socket.gethostname()),
    })
    suite.extend(_testcase(r) for r in results)
    suite.extend(_not_run_testcase(case, reason) for case, reason in not_run.items())
    return root


def junit_xml(results: Sequence[CaseResult], **kwargs: object) -> str:
    """junit.xml as text (UTF-8 declaration, indented)."""
    root = build_junit(results, **kwargs)  # type: ignore[arg-type]
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
