"""The benchmark (`make bench`) runs end to end (the prestart seam it measures: test_kernels).

No timing is asserted anywhere here: the benchmark's numbers are in bench/RESULTS.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.support.nbproject import process_alive, write_notebook

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # `bench` is a top-level package of the checkout, not installed

from bench.measure import Deadlines, Samples, interleaved  # noqa: E402
from bench.projects import Command, Variant, notebook_as_script  # noqa: E402
from bench.report import Comparison  # noqa: E402

# -- the benchmark itself -------------------------------------------------------------------

SMOKE_ROWS = (
    "1 small notebooks: nbgate / 1 papermill CLI runs",
    "1 small notebooks: nbgate / pytest --nbmake",
    "1 small notebooks, without tracking: nbgate / pytest --nbmake",
    "1 small notebooks: seconds MLflow tracking adds (with - without)",
    "1 small notebooks: seconds it adds with a cold helper (CI, a first session)",
    "training example: nbgate / plain script (no kernel)",
    "training example, without tracking: nbgate / plain script",
    "training example: nbgate / papermill CLI",
    "collecting 6 cases / bare pytest --collect-only",
    "collection: nbgate per case (6) / nbmake per notebook (3)",
    "-n 2 speedup, 2 small notebooks (serial / -n 2)",
    "-n 2 speedup, 2 training copies (serial / -n 2)",
    "idle MLflow helper, resident memory (MB)",
)
# Budgeted rows of the smoke run (its sizes are the budgets' only where the full run's are).
SMOKE_BUDGETS = {
    "1 small notebooks: seconds MLflow tracking adds (with - without)": "≤ 1 s",
    "training example: nbgate / plain script (no kernel)": "≤ 1.3×",
    "collection: nbgate per case (6) / nbmake per notebook (3)": "≤ 1×",
    "-n 2 speedup, 2 small notebooks (serial / -n 2)": "≥ 1×",
    "-n 2 speedup, 2 training copies (serial / -n 2)": "≥ 1.4×",
    "idle MLflow helper, resident memory (MB)": "≤ 150 MB",
}
RATIO_ROW = re.compile(
    r"^\| (?P<label>[^|]+) \| (?P<median>-?\d+\.\d\d) \| (?P<min>-?\d+\.\d\d) \| "
    r"(?P<budget>[^|]+) \| (?P<verdict>holds|MISSED|info) \|$"
)


def test_smoke_run_writes_a_report_with_every_row(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--work", str(tmp_path / "work"),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = out.read_text(encoding="utf-8")
    assert report in result.stdout  # printed as well as written
    rows = {m["label"]: m for m in map(RATIO_ROW.match, report.splitlines()) if m}
    # Every row is there; on a loaded machine a tiny smoke sample can be "not measured (noise)".
    labels = {line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ")}
    assert set(SMOKE_ROWS) <= labels, sorted(labels)
    for label, budget in SMOKE_BUDGETS.items():
        line = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
        assert f"| {budget} |" in line, line
    # The report says in words which budgets were missed, or that none was.
    missed = [label for label, row in rows.items() if row["verdict"] == "MISSED"]
    if missed:
        summary = next(line for line in report.splitlines() if line.startswith("**Budgets"))
        assert all(label in summary for label in missed), summary
    else:
        assert "**Every measured budget holds.**" in report
    # The budget rows ran nbgate as a user gets it: tracking on, so each project has runs.
    logs = tmp_path / "work" / "logs"
    # nbgate's closing line names the MLflow store when its cases were tracked.
    assert "MLflow:" in (logs / "small-1_nbgate.log").read_text()
    assert "MLflow:" in (logs / "small-1_cold-helper.log").read_text()
    assert "MLflow:" not in (logs / "small-1_no-tracking.log").read_text()
    assert "MLflow:" not in (logs / "training_no-tracking.log").read_text()
    assert (tmp_path / "work" / "projects" / "small-1" / "mlflow.db").is_file()
    assert "| heavy modules imported while collecting 6 cases | none |" in report
    for section in ("## Timings (s)", "## Machine", "- cores: ", "## Versions", "- papermill: "):
        assert section in report


def test_script_variant_sets_parameters_right_after_the_parameters_cell(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "nb.ipynb", ["print(n_trials)"], parameters="n_trials = 1")
    script = notebook_as_script(notebook, {"n_trials": 7})
    assert script.index("n_trials = 1") < script.index("n_trials = 7") < script.index("print")


def test_verdicts_follow_the_direction_of_each_budget() -> None:
    samples = {"a": Samples((1.0, 2.0, 9.0)), "b": Samples((4.0, 4.0, 4.0)),
               "bare": Samples((0.5, 1.0, 1.0)), "bare-b": Samples((1.5, 2.0, 2.0))}
    cost = Comparison("cost", "a", "b", budget=0.6)
    speedup = Comparison("speedup", "b", "a", budget=1.3, at_least=True)
    assert cost.value(samples) == (0.5, 0.25)  # medians 2 / 4, minimums 1 / 4
    assert cost.value({**samples, "b": Samples(())}) is None  # skipped at the time limit
    assert cost.verdict(0.5) == "holds" and cost.verdict(0.7) == "MISSED"
    assert speedup.verdict(2.0) == "holds" and speedup.verdict(1.0) == "MISSED"
    assert Comparison("info", "a", "b").verdict(99) == "info"
    added = Comparison("added", "b", "a", budget=1.0, kind="added")
    assert added.value(samples) == (2.0, 3.0) and added.verdict(2.0) == "MISSED"
    assert added.budget_text() == "≤ 1 s"
    # Per item above each tool's own bare run: a: (2 - 1) / 10 items, b: (4 - 2) / 5 items.
    per_item = Comparison("per", "a", "b", 1.0, kind="per item", baselines=("bare", "bare-b"),
                          items=(10, 5))
    by_median, _ = per_item.value(samples)
    assert round(by_median, 4) == round((1 / 10) / (2 / 5), 4)
    assert per_item.verdict(by_median) == "holds"
    assert per_item.value({**samples, "b": Samples((2.0,))}) is None  # no cost above bare


def test_time_limit_stops_a_run_with_everything_it_started_and_counts_no_sample(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    slow = (sys.executable, "-c", "import subprocess, sys, time; "
            "p = subprocess.Popen(['sleep', '60']); open(sys.argv[1], 'w').write(str(p.pid)); "
            "time.sleep(60)", str(pid_file))
    quick = (sys.executable, "-c", "pass")
    variants = [Variant("quick", "quick", (Command(quick, tmp_path),)),
                Variant("slow", "slow", (Command(slow, tmp_path),))]
    now = time.monotonic()
    samples = interleaved(variants, os.environ, tmp_path / "logs", repeats=1, warmup=False,
                          deadlines=Deadlines(soft=now + 30, hard=now + 3))
    assert len(samples["quick"].seconds) == 1
    assert not samples["slow"].measured  # stopped at the hard limit, not counted
    # Nor is anything it started left running: SIGKILL to its process group is delivered to the
    # grandchild asynchronously, so it may take a moment under load to be gone.
    grandchild = int(pid_file.read_text())
    gone_by = time.monotonic() + 5
    while process_alive(grandchild) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not process_alive(grandchild)
    # Past the soft limit nothing new starts.
    late = Deadlines(soft=time.monotonic() - 1, hard=time.monotonic() + 30)
    samples = interleaved(variants[:1], os.environ, tmp_path / "logs", 1, False, late)
    assert not samples["quick"].measured
