"""A pytest plugin (``-p bench.probe``) that records which heavy modules a collection imports.

Loaded with ``-p`` it is imported before any installed plugin, so it can tell modules that
plugins import when they load from those imported while collecting. It writes JSON to the file
named by ``BENCH_PROBE_OUT``.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

HEAVY = ("mlflow", "xgboost", "pandas", "papermill", "numpy", "optuna", "sklearn", "matplotlib",
         "scipy", "nbformat", "nbclient", "jupyter_client", "ipykernel", "IPython", "zmq",
         "gitlab", "requests", "yaml")


def _heavy_loaded() -> set[str]:
    return {name for name in HEAVY if name in sys.modules}


_AT_IMPORT = _heavy_loaded()
_at_session_start: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _at_session_start.update(_heavy_loaded())


def pytest_collection_finish(session: pytest.Session) -> None:
    at_end = _heavy_loaded()
    report = {
        "items": len(session.items),
        "at_plugin_load": sorted(_at_session_start - _AT_IMPORT),
        "during_collection": sorted(at_end - _at_session_start),
    }
    with open(os.environ["BENCH_PROBE_OUT"], "w", encoding="utf-8") as out:
        json.dump(report, out)
