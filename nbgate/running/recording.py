"""The notebook side: ``record`` metrics and ``record_figure`` figures.

Values travel inside the notebook's own outputs under versioned vendor MIME types, so a
notebook run by plain Jupyter shows them and a notebook run by nbgate hands them back without
any side channel (files, sockets) that could get out of step with the executed notebook.
"""

from __future__ import annotations

import base64
import io
import math
import numbers
import re
from typing import Any

METRIC_MIME = "application/vnd.nbgate.metric.v1+json"
FIGURE_MIME = "application/vnd.nbgate.figure.v1+json"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,99}$")


def record(name: str, value: Any) -> None:
    """Record metric ``name`` so nbgate can check it against the pipeline's thresholds.

    ``value`` must be a plain number; numpy scalars (and 0-d arrays) are converted.
    """
    _check_name("record", name)
    number = _as_number(name, value)
    payload = {
        "name": name,
        "value": number if math.isfinite(number) else None,
        "text": repr(number),
    }
    _display({METRIC_MIME: payload, "text/plain": f"{name} = {number:.6g}"})


def record_figure(name: str, fig: Any, *, dpi: int = 100) -> None:
    """Record a matplotlib figure as PNG under ``name`` (shown inline and saved in the reports)."""
    _check_name("record_figure", name)
    if not hasattr(fig, "savefig"):
        raise TypeError(
            f"nbgate.record_figure({name!r}, ...) needs a matplotlib Figure; "
            f"got {type(fig).__name__}"
        )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    _display(
        {
            FIGURE_MIME: {"name": name, "png": png},
            "image/png": png,
            "text/plain": f"<figure {name}>",
        }
    )


def _check_name(function: str, name: object) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"nbgate.{function}: name {name!r} must start with a letter or '_' and contain only "
            "letters, digits, '_', '.', '-' (at most 100 characters)"
        )


def _as_number(name: str, value: Any) -> float:
    # Reject bools explicitly: True is an int in Python but never a meaningful metric.
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise TypeError(
            f"nbgate.record({name!r}, {value!r}): a boolean is not a metric; use 0 or 1"
        )
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy scalar or 0-d array -> Python number
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(
        f"nbgate.record({name!r}, ...) needs a plain number (int or float, numpy scalars are "
        f"converted); got {type(value).__name__} {value!r:.80}"
    )


def _display(bundle: dict[str, Any]) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python without IPython installed
        print(bundle["text/plain"])
        return
    if get_ipython() is None:  # a script: there is no frontend to receive rich output
        print(bundle["text/plain"])
        return
    display(bundle, raw=True)
