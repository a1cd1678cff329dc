"""Keep secrets from the environment out of executed notebooks and report files.

A value is masked when its variable's name looks secret (``*TOKEN*``, ``*SECRET*``,
``*PASSWORD*``, ``*_KEY``, ``*CREDENTIAL*``) and it has at least 8 characters: GitLab's own
minimum for masked CI/CD variables, so a value GitLab would mask in the job log is masked in
the reports too, while short values (``true``, ``1234``) do not blank out ordinary text.

A notebook rarely prints a secret as it is: ``print(config)`` shows its ``repr()``, a JSON
dump escapes quotes, backslashes and non-ASCII, and ``sys.stdout.write`` in two flushed parts
reaches the notebook as two stream outputs. Every such form is masked, and a cell's stream
outputs are masked as the one text they make together.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|_KEY$|^KEY$|CREDENTIALS?", re.IGNORECASE)
MIN_SECRET_LENGTH = 8  # GitLab refuses to mask a CI/CD variable shorter than this
MASK = "[MASKED]"
# Metric and figure names stay within record()'s characters (letters, digits, _ . -), which
# MLflow, GitLab's metrics report and file names all accept; "[MASKED]" would break them.
NAME_MASK = "MASKED"


def written_forms(value: str) -> set[str]:
    """The ways ``value`` shows up in text: as is, and escaped by repr(), json.dumps(),
    bytes' repr(), HTML and URL quoting."""
    forms = {
        value,
        repr(value)[1:-1],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value.encode("utf-8", "surrogateescape"))[2:-1],
        html.escape(value),
        html.escape(value, quote=False),
        quote(value, safe="", errors="surrogateescape"),
        quote_plus(value, safe="", errors="surrogateescape"),
    }
    return {form for form in forms if form}


class Redactor:
    """Replaces the values of secret-looking environment variables with a mask."""

    def __init__(self, env: Mapping[str, str] | None = None, always: Iterable[str] = ()) -> None:
        """``always``: values masked whatever their length (a token known to be one)."""
        env = os.environ if env is None else env
        values = {
            v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH
        } | {v for v in always if v.strip()}
        forms = set().union(*(written_forms(v) for v in values)) if values else set()
        # Longest first so a secret that contains another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def text(self, value: str) -> str:
        return self._pattern.sub(MASK, value) if self._pattern else value

    def name(self, value: str) -> str:
        """A metric or figure name with any secret in it masked, still a valid name."""
        return self._pattern.sub(NAME_MASK, value) if self._pattern else value

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
            return type(value)((self.text(k), self.deep(v)) for k, v in value.items())
        return value

    def notebook(self, nb: Any) -> Any:
        """An executed notebook with every secret masked, also one printed in several writes.

        Each write a kernel flushes becomes its own stream output, so ``abcd`` + ``efgh`` never
        matches ``abcdefgh`` output by output. The stream outputs of one name in a cell are
        matched as the text they make together; the outputs keep their places, and a mask
        stands where the secret starts.
        """
        if self._pattern is None:
            return nb
        for cell in nb.get("cells", []):
            outputs = cell.get("outputs") or []
            for name in {o.get("name") for o in outputs if o.get("output_type") == "stream"}:
                streams = [
                    o for o in outputs if o.get("output_type") == "stream" and o.get("name") == name
                ]
                texts = [_joined(o.get("text", "")) for o in streams]
                for output, masked in zip(streams, self.pieces(texts), strict=True):
                    output["text"] = masked
        return self.deep(nb)

    def pieces(self, texts: list[str]) -> list[str]:
        """Mask ``texts`` as one joined text, then cut it back at the original boundaries.

        A mask goes into the piece where its secret starts; the rest of that secret is
        dropped from the pieces it ran into.
        """
        joined = "".join(texts)
        matches = list(self._pattern.finditer(joined)) if self._pattern else []
        if not matches:
            return list(texts)
        out = []
        start = 0
        for text in texts:
            end = start + len(text)
            piece = []
            position = start
            for match in matches:
                if match.end() <= position or match.start() >= end:
                    continue
                if match.start() >= position:
                    piece.append(joined[position : match.start()])
                    piece.append(MASK)
                position = min(match.end(), end)
            piece.append(joined[position:end])
            out.append("".join(piece))
            start = end
        return out


def _joined(text: Any) -> str:
    # nbformat allows multi-line strings stored as lists of lines.
    return "".join(text) if isinstance(text, list) else str(text)
