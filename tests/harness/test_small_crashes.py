"""Bad input nbgate reads is a message naming the file or key, never a traceback (issue 20,
item 7): JSON nested 200,000 deep in every file nbgate reads, durations of 1e308, parameters
``run_notebook`` cannot inject, shard numbers in other scripts' digits."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import pytest

from nbgate.cli import main
from nbgate.contract.baselines import load_baselines
from nbgate.contract.codec import ResultsFileError, load_metrics, read_metrics
from nbgate.contract.json_file import JSONFileError, read_json
from nbgate.contract.model import CaseResult
from nbgate.pytest_plugin.shard import Shard, ShardError, shard_from
from nbgate.running.notebook import NotebookProblem, read_notebook
from reporting.gitlab.comment import decode_state
from tests.support.builders import build_metrics, write_metrics_json
from tests.support.nbproject import run_pytest, write_notebook, write_pyproject

DEEP = "[" * 200_000 + "]" * 200_000
NESTED = '{"a":' * 150 + "1" + "}" * 150  # parses, but deeper than any file nbgate reads
FAST = ("-p", "no:nbgate-tracking")


@pytest.mark.parametrize("text", [DEEP, NESTED], ids=["200000-deep", "150-deep"])
def test_deep_json_is_one_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(JSONFileError, match=rf"^{path}: not valid JSON: nested deeper than"):
        read_json(path)
    # Every reader: a metrics.json, a baseline file and a folder of release metrics, a download.
    with pytest.raises(ResultsFileError, match=rf"^{path}: not valid JSON: nested deeper"):
        load_metrics(path)
    with pytest.raises(ResultsFileError, match=rf"^{path}: not valid JSON: nested deeper"):
        load_baselines(path)
    release = tmp_path / "releases"
    release.mkdir()
    (release / "training_example@1.0.0.json").write_text(text)
    with pytest.raises(ResultsFileError, match=r"training_example@1\.0\.0\.json: not valid JSON"):
        load_baselines(release)
    with pytest.raises(ResultsFileError, match=r"^release metrics: not valid JSON: nested"):
        read_metrics(text.encode(), "release metrics")
    # A notebook: the case fails "not a notebook", naming why.
    with pytest.raises(NotebookProblem, match=r"not a notebook: invalid JSON \(nested deeper"):
        read_notebook(path)
    # A previous comment's hidden state (a GitLab note anyone could edit): starts over.
    packed = base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    assert decode_state(f"body\n<!-- nbgate-state:{packed} -->") is None


def test_deep_metrics_json_and_shard_json_refused_by_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "invalid-reports"  # "invalid": conftest's schema check skips it
    reports.mkdir()
    (reports / "metrics.json").write_text(DEEP)
    assert main(["publish", "mr", "--dry-run", "--reports", str(reports)], {}) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"nbgate publish mr: error: {reports}/metrics.json: not valid JSON: "
                           "nested deeper than 100 levels")
    jobs = tmp_path / "jobs"
    write_metrics_json(jobs / "train-1-of-2" / "metrics.json", build_metrics([]))
    (jobs / "train-1-of-2" / "shard.json").write_text(DEEP)
    assert main(["merge-reports", "--reports", str(jobs), "--into", str(tmp_path / "m")], {}) == 2
    err = capsys.readouterr().err
    assert "train-1-of-2/shard.json: not valid JSON: nested deeper than 100 levels" in err
    assert "Traceback" not in err


def test_huge_recorded_durations_are_ignored_with_a_note(tmp_path: Path) -> None:
    """1e308 s is a float, finite and positive; a sum of two overflowed fsum (INTERNALERROR)."""
    root = tmp_path / "p"
    table = "[tool.nbgate.runners.cpu]\n"
    for i in range(3):
        write_notebook(root / "notebooks" / f"n{i}.ipynb", ["x = 1"])
        table += (f'[[tool.nbgate.pipelines]]\nnotebook = "notebooks/n{i}.ipynb"\n'
                  'kind = "train"\nrunners = ["cpu"]\n')
    write_pyproject(root, table)
    recorded = [CaseResult(f"notebooks/n{i}.ipynb::train[cpu]", f"notebooks/n{i}.ipynb", "train",
                           "cpu", "passed", 1e308 if i < 2 else 30.0) for i in range(3)]
    write_metrics_json(root / "reports" / "metrics.json", build_metrics(recorded))
    done = run_pytest(root, *FAST, "--collect-only", "-q", "--nbgate-shard", "1/2")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "INTERNALERROR" not in out and "OverflowError" not in out
    assert ("ignored 2 recorded duration(s) that are not a number of seconds up to 1e+07: "
            "notebooks/n0.ipynb::train[cpu]: 1e+308 s, notebooks/n1.ipynb::train[cpu]: 1e+308 s"
            ) in out


PARAMETER_TESTS = '''
import numpy as np
from pathlib import Path

def test_tuple(run_notebook):
    run_notebook("notebooks/a.ipynb", parameters={"x": (1, 2)})

def test_nested_object(run_notebook):
    run_notebook("notebooks/a.ipynb", parameters={"x": {"deep": [1, object()]}})

def test_numpy_scalars(run_notebook):
    result = run_notebook("notebooks/a.ipynb", parameters={"x": np.int64(3), "y": np.float32(0.5)})
    assert result.parameters == {"x": 3, "y": 0.5}
    assert type(result.parameters["x"]) is int
'''


def test_run_notebook_parameters_are_checked_like_the_toml_path_before_the_kernel(
    tmp_path: Path
) -> None:
    root = tmp_path / "p"
    # The notebook leaves a mark when it runs: a refused call must never start it.
    write_notebook(root / "notebooks" / "a.ipynb", [
        "from pathlib import Path\nPath('ran-' + str(x).replace(' ', '')).write_text('')\n"
        "from nbgate import record\nrecord('x_seen', x)"], parameters="x = 1\ny = 0")
    write_pyproject(root, "[tool.nbgate.runners.cpu]\n", testpaths='["tests"]')
    (root / "tests").mkdir()
    (root / "tests" / "test_params.py").write_text(PARAMETER_TESTS)
    done = run_pytest(root, *FAST, "-p", "no:randomly")
    out = done.stdout + done.stderr
    assert "1 passed" in out and "2 failed" in out, out
    assert ("run_notebook('notebooks/a.ipynb'): parameters.x: tuple (1, 2) is not a JSON value "
            "(string, number, boolean, null, list or table); use a list") in out
    assert "run_notebook('notebooks/a.ipynb'): parameters.x.deep[1]: object <object" in out
    assert sorted(p.name for p in root.glob("ran-*")) == ["ran-3"]  # only the numpy call ran
    recorded = json.loads((root / "reports" / "metrics.json").read_text())["cases"]
    assert [c["parameters"] for c in recorded] == [{"x": 3, "y": 0.5}]


def test_shard_numbers_are_ascii_digits() -> None:
    for text in ("٢/٣", "２/４", "1/\u0664"):  # Arabic-Indic, fullwidth: int() takes both
        with pytest.raises(ShardError, match="is not K/N"):
            Shard.parse(text, "--nbgate-shard")
    with pytest.raises(ShardError, match=r"CI_NODE_INDEX/CI_NODE_TOTAL \('١'/'3'\)"):
        shard_from(None, {"CI_NODE_INDEX": "١", "CI_NODE_TOTAL": "3"})
    with pytest.raises(ShardError, match="NBGATE_SHARD"):
        shard_from(None, {"NBGATE_SHARD": "１/2"})
    assert shard_from(None, {"NBGATE_SHARD": " 2 / 3 "})[0] == Shard(2, 3)
