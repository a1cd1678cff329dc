"""``--nbgate-*`` options in the space form with an existing path, and a reports folder outside
the project read back by ``publish`` and ``merge-reports`` (issue 20, items 2 and 3).

pytest determines its rootdir and configuration file from the free arguments before it loads
``pytest11`` plugins (``_pytest/config/__init__.py``, ``Config.parse``), so before the fix
``pytest --nbgate-reports /tmp/x`` rooted the session at ``/tmp/x``, never read the project's
``pyproject.toml`` and collected nothing (exit 5); ``nbgate/pytest_plugin/option_paths.py`` is
the fix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nbgate.cli import main
from nbgate.contract.model import CaseResult
from tests.support.builders import build_metrics, write_metrics_json
from tests.support.nbproject import run_pytest, write_notebook, write_pyproject

FAST = ("-p", "no:nbgate-tracking")
CASE = "notebooks/a.ipynb::train[cpu]"
# A stand-in for a matplotlib figure (savefig is all record_figure asks for): no matplotlib
# import in the kernel.
FIGURE = """
from nbgate import record, record_figure
class Figure:
    def savefig(self, buffer, **options):
        buffer.write(b"\\x89PNG\\r\\n\\x1a\\n")
record_figure("curve", Figure())
record("m", 0.5)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    write_notebook(root / "notebooks" / "a.ipynb", [FIGURE])
    write_pyproject(root, """
        [tool.nbgate.runners.cpu]
        [[tool.nbgate.pipelines]]
        notebook = "notebooks/a.ipynb"
        kind = "train"
        runners = ["cpu"]
        thresholds = { m = ">= baseline - 0.1" }
        """)
    return root


def test_reports_and_baseline_outside_the_project_in_the_space_form(
    project: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented option, typed as pytest users type it, with paths that exist outside the
    project: the session is the project's, the reports are written there with paths relative
    to the folder, and the folder publishes and merges like reports/."""
    outside = tmp_path_factory.mktemp("outside")
    reports = outside / "reports"
    reports.mkdir()
    released = CaseResult(CASE, "notebooks/a.ipynb", "train", "cpu", "passed", 1.0,
                          metrics={"m": 0.55})
    baseline = write_metrics_json(outside / "baseline.json", build_metrics([released]))
    done = run_pytest(project, *FAST, "--nbgate-reports", str(reports),
                      "--nbgate-baseline", str(baseline))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert f"rootdir: {project}" in out and "configfile: pyproject.toml" in out
    assert "1 passed" in out

    document = json.loads((reports / "metrics.json").read_text())
    assert document["schema"] == 3 and document["reports_dir"] is None
    (case,) = document["cases"]
    assert case["thresholds"]["m"]["checks"][0]["baseline"] == 0.55  # the baseline was read
    notebook, figure = case["executed_notebook"], case["figures"]["curve"]
    assert notebook.startswith("notebooks/") and figure.startswith("figures/")
    assert (reports / notebook).is_file() and (reports / figure).is_file()

    code = main(["publish", "mr", "--dry-run", "--reports", str(reports),
                 "--pyproject", str(project / "pyproject.toml")], {})
    shown = capsys.readouterr()
    assert code == 0, shown.err
    assert "### ✅ Training passed — 1 case" in shown.out
    assert re.search(r"!\[curve\]\([^)]*figures/[^)]+\.png\)", shown.out), shown.out

    merged = outside / "merged"
    code = main(["merge-reports", "--reports", str(reports), "--into", str(merged),
                 "--pyproject", str(project / "pyproject.toml")], {})
    shown = capsys.readouterr()
    assert code == 0, shown.err
    assert [c["id"] for c in json.loads((merged / "metrics.json").read_text())["cases"]] == [CASE]


def test_reports_inside_the_project_keep_repository_paths(project: Path) -> None:
    done = run_pytest(project, *FAST, "--nbgate-reports", "reports")
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads((project / "reports" / "metrics.json").read_text())
    assert document["reports_dir"] == "reports"
    assert document["cases"][0]["executed_notebook"].startswith("reports/notebooks/")


# Each option that takes a value, with an existing path outside the project as that value, and
# what shows that the value reached the option (rather than becoming a test path).
REACHED = {
    "--nbgate-reports": "collected 1 item",
    "--nbgate-baseline": "collected 1 item",
    "--nbgate-commit": "is not a train/score trigger",
    "--nbgate-shard": "is not K/N",
}


def test_every_value_option_is_covered(project: Path) -> None:
    listed = run_pytest(project, *FAST, "--help").stdout
    options = set(re.findall(r"^\s+(--nbgate-[a-z-]+)[= ]\[?[A-Z/]+", listed, re.MULTILINE))
    assert options == set(REACHED), "a --nbgate-* option that takes a value has no case below"


@pytest.mark.parametrize("option", sorted(REACHED))
def test_each_value_option_in_the_space_form_with_an_existing_path(
    project: Path, tmp_path: Path, option: str
) -> None:
    value = tmp_path / "exists"
    value.mkdir()
    done = run_pytest(project, *FAST, "--collect-only", option, str(value))
    out = done.stdout + done.stderr
    assert REACHED[option] in out, out
    if "ERROR" not in out:  # a usage error comes before the session's header
        assert f"rootdir: {project}" in out and "configfile: pyproject.toml" in out, out
