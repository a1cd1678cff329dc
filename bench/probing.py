"""One more, untimed collection with ``bench.probe`` loaded: which heavy modules it imported."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from bench import variants
from bench.report import Probe
from bench.timing import run_variant

REPO = Path(__file__).resolve().parent.parent


def probe_collection(root: Path, env: Mapping[str, str], log_dir: Path) -> Probe:
    result = log_dir / "probe.json"
    result.unlink(missing_ok=True)
    probe_env = {
        **env,
        "BENCH_PROBE_OUT": str(result),
        # The probe plugin is imported by name, from this checkout.
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
    }
    argv = (*variants.tool("pytest"), "--collect-only", *variants.PYTEST_FLAGS,
            "-p", "bench.probe")
    probe = variants.Variant("probe", "collection probe", (variants.Command(argv, root),))
    run_variant(probe, probe_env, log_dir)
    data = json.loads(result.read_text(encoding="utf-8"))
    return Probe(data["items"], tuple(data["at_plugin_load"]), tuple(data["during_collection"]))
