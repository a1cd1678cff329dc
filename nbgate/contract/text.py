"""Text every report holds: free of ANSI escape codes and of control characters.

Kernels colour their tracebacks; GitLab's JUnit widget, XML 1.0 and markdown all break on those
bytes, so the harness cleans failure text once and the reports clean anything they read back.
"""

from __future__ import annotations

import math
import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")  # ESC ] ... BEL: titles, hyperlinks
MISSING = "–"  # en dash: a value that does not exist (not a zero)
# Control characters XML 1.0 and most renderers reject; \t \n \r are kept.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", _OSC.sub("", text))


def clean_text(text: str) -> str:
    """``text`` without ANSI escape sequences or control characters (tab and newlines stay)."""
    return _CONTROL.sub("", strip_ansi(text))


def fmt_number(value: float | None) -> str:
    """A metric value for reading, with the same decimals everywhere (exact values stay in
    metrics.json): four decimals ("0.9931", "0.0965", "3.1416"), so values line up and compare at
    a glance; whole numbers as integers ("114"), large ones rounded to integers ("12346"), tiny
    ones with an exponent ("1.235e-05"); None is "–", NaN is "NaN", infinities "inf"/"-inf".
    """
    if value is None:
        return MISSING
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if 1e3 <= abs(value) < 1e15:
        return str(round(value))
    if abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4f}"
