"""Keep secrets from the environment out of executed notebooks and report files."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|_KEY$|^KEY$|CREDENTIALS?", re.IGNORECASE)
# Shorter values would redact common words and digits all over a report.
MIN_SECRET_LENGTH = 6
MASK = "[MASKED]"


class Redactor:
    """Replaces the values of secret-looking environment variables with a mask."""

    def __init__(self, env: Mapping[str, str] | None = None, always: Iterable[str] = ()) -> None:
        """``always``: values masked whatever their length (a token known to be one)."""
        env = os.environ if env is None else env
        values = {
            v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH
        } | {v for v in always if v.strip()}
        # Longest first so a secret that contains another is masked whole.
        ordered = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def text(self, value: str) -> str:
        return self._pattern.sub(MASK, value) if self._pattern else value

    def deep(self, value: Any) -> Any:
        """Redact every string inside nested dicts and lists (a notebook, a result dict)."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.deep(v) for v in value]
        if isinstance(value, dict):
            # type(value) keeps nbformat's NotebookNode (a dict subclass) and its attribute access.
            return type(value)((k, self.deep(v)) for k, v in value.items())
        return value
