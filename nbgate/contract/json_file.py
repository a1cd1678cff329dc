"""Reading a JSON file nbgate did not write itself (metrics.json, baselines, shard.json, release
metrics, notebooks, a comment's state): one function, so every reader refuses the same way.

Python's parser recurses once per nesting level: a document nested 200,000 deep raises
``RecursionError``, and one just under that limit still breaks every recursive reader after it
(schema validation, copying). Both become one error naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Far deeper than any file nbgate writes or reads (a notebook output is about 6 levels); deep
# enough for the parameters users record.
MAX_DEPTH = 100


class JSONFileError(ValueError):
    """A JSON file that cannot be read; the message names the file and why."""


def parse_json(data: str | bytes, source: str) -> Any:
    """The JSON value of ``data`` (the contents of ``source``), or ``JSONFileError``."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise JSONFileError(f"{source}: not valid JSON: nested deeper than {MAX_DEPTH} "
                            "levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JSONFileError(f"{source}: not valid JSON: {exc}") from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise JSONFileError(f"{source}: not valid JSON: nested deeper than {MAX_DEPTH} levels")
    return value


def read_json(path: Path, shown: str | None = None) -> Any:
    """The JSON value of the file at ``path`` (named ``shown`` in messages), or
    ``JSONFileError`` when it cannot be read or parsed."""
    source = shown or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JSONFileError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return parse_json(data, source)


def schema_violation(data: Any, schema: dict[str, Any]) -> str | None:
    """The most telling way ``data`` breaks ``schema``, as ``<JSON path>: <why>``
    (``cases[0].duration_s: -1 is less than the minimum of 0``), or None when it conforms."""
    import jsonschema  # nbformat's dependency; only readers of files import it

    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{where.lstrip('.') or 'document'}: {error.message}"


def _depth_exceeds(value: Any, limit: int) -> bool:
    # Iterative: the check itself must not recurse.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return False
