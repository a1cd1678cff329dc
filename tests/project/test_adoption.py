"""A team adopts nbgate in its own repository, from the built package, as the README says.

- the sdist and wheel build and pass `twine check`; the wheel holds every *.schema.json of the
  packages and their py.typed;
- a plain install of the wheel into a fresh venv stays lean (SPEC §11: at most 95 packages, no
  full mlflow, pandas, pyarrow, scikit-learn or matplotlib);
- in a throwaway git repository with two small plain-Python notebooks: `nbgate init --ci
  --tag-parameters`, `pytest -m train` on real kernels of that venv, tracked to the local sqlite
  store and to an `mlflow server` running elsewhere (the project venv's), `nbgate publish mr
  --dry-run`, and gitlab-ci-local listing the component's jobs for a `train ...` title.

The component include `nbgate init` writes names nbgate's own project at the package's version,
which is another project than the adopter's: gitlab-ci-local fetches such a component with git
into its include cache, `.gitlab-ci-local/includes/<host>/<project>/<ref>/templates/` (its
downloadIncludeComponent, which skips the download when the file is there). Offline, the test
puts this checkout's templates/ there: what the nbgate project serves at that version. The
include line itself is the one adopters get, unedited.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.project.test_ci_file import gcl, git, listed  # noqa: F401  (gcl: a fixture)
from tests.support.mlflow_server import MlflowServer
from tests.support.nbproject import write_notebook

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
UV = VENV_BIN / "uv"
MAX_PACKAGES = 95  # SPEC §11
HEAVY = ("mlflow", "pandas", "pyarrow", "scikit-learn", "matplotlib")

TRAIN_A = """
import sys
from nbgate import record
print("prefix:", sys.prefix)
record("accuracy", 0.5 + rate)
"""
# No cell tagged 'parameters': `nbgate init --tag-parameters` tags the assignments cell.
TRAIN_B = ["import math", "depth = 3\nrate = 0.25",
           "from nbgate import record\nrecord('loss', math.exp(-depth * rate))"]


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build`: the sdist and the wheel, once a session."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--installer", "uv", "--outdir",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("nbgate-*.whl")
    return wheel


def test_sdist_and_wheel_pass_twine_check_and_carry_schemas_and_py_typed(dist: Path) -> None:
    files = sorted(dist.iterdir())
    assert sorted(f.suffix for f in files) == [".gz", ".whl"], files
    done = subprocess.run([str(VENV_BIN / "twine"), "check", "--strict", *map(str, files)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2
    names = set(zipfile.ZipFile(wheel_of(dist)).namelist())
    schemas = {p.relative_to(ROOT).as_posix() for folder in ("nbgate", "reporting")
               for p in (ROOT / folder).rglob("*.schema.json")}
    assert schemas and schemas <= names, schemas - names
    assert {"nbgate/py.typed", "reporting/py.typed"} <= names
    entry_points = zipfile.ZipFile(wheel_of(dist)).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "nbgate = nbgate.cli:main" in entry_points and "[pytest11]" in entry_points
    assert not any(n.startswith(("tests/", "notebooks/", "bench/")) for n in names)


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only `pip install nbgate` (the wheel), at the lock's versions, from
    uv's cache or PyPI."""
    venv = tmp_path_factory.mktemp("adopter-venv") / "venv"
    subprocess.run([str(UV), "venv", "-q", "--python", sys.executable, str(venv)], check=True,
                   capture_output=True)
    done = subprocess.run([str(UV), "pip", "install", "-q", "--python", str(venv / "bin/python"),
                           "-c", str(ROOT / "requirements.txt"), str(wheel_of(dist))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return venv


def installed(venv: Path) -> dict[str, str]:
    done = subprocess.run(
        [str(venv / "bin/python"), "-c", "import importlib.metadata as m, json; print(json.dumps("
         "{d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))"],
        capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_a_plain_install_is_lean(venv: Path) -> None:
    packages = installed(venv)
    assert len(packages) <= MAX_PACKAGES, sorted(packages)
    assert not set(HEAVY) & set(packages), set(HEAVY) & set(packages)
    # What the local store needs is there instead.
    assert {"mlflow-skinny", "sqlalchemy", "alembic", "nbgate"} <= set(packages)


def adopter_env(venv: Path, home: Path, **extra: str) -> dict[str, str]:
    """The adopter's shell: the venv first on PATH, nothing of this test run's CI, MLflow or
    pytest settings."""
    env = {k: v for k, v in os.environ.items()
           if not re.match(r"^(CI|GITLAB_CI|CI_.*|MLFLOW_.*|PYTEST_.*|NBGATE_.*|VIRTUAL_ENV)$", k)}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", HOME=str(home),
               MLFLOW_DISABLE_TELEMETRY="true", NBGATE_MLFLOW_HELPER_IDLE="5", **extra)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str],
        timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An `mlflow server` elsewhere: the project venv's full mlflow, booted while the adopter
    installs and trains."""
    server = MlflowServer(tmp_path_factory.mktemp("adopter-mlflow")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def adopted(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The team's repository (two notebooks, its own pyproject.toml, on a branch) after
    `nbgate init --ci --tag-parameters`, committed with a `train ...` title; and init's output."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    repo = tmp_path_factory.mktemp("adopter") / "churn"
    write_notebook(repo / "notebooks" / "train_a.ipynb", [TRAIN_A], parameters="rate = 0.4")
    b = new_notebook(cells=[new_code_cell(s) for s in TRAIN_B])
    b.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                "language": "python"}
    nbformat.write(b, str(repo / "notebooks" / "train_b.ipynb"))
    (repo / "pyproject.toml").write_text('[project]\nname = "churn"\nversion = "1.0.0"\n')
    (repo / ".gitignore").write_text("mlflow.db\nmlruns/\nreports/\n.gitlab-ci-local/\n")
    git(repo.parent, "init", "-q", str(repo))
    git(repo, "remote", "add", "origin", "https://gitlab.example.com/ds/churn.git")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Notebooks")
    git(repo, "checkout", "-q", "-b", "adopt-nbgate")
    init = run(["nbgate", "init", "notebooks/train_a.ipynb", "notebooks/train_b.ipynb",
                "--kind", "train", "--ci", "--tag-parameters"], repo,
               adopter_env(venv, repo.parent / "home"))
    assert init.returncode == 0, init.stdout + init.stderr
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "train notebooks/train_a.ipynb notebooks/train_b.ipynb")
    return repo, init.stdout


def test_a_team_adopts_nbgate(venv: Path, server: MlflowServer, adopted: tuple[Path, str],
                              tmp_path: Path) -> None:
    repo, said = adopted
    env = adopter_env(venv, tmp_path / "home")

    # 1. nbgate init: the table, the parameters tag, the CI file; the next three commands.
    assert "notebooks/train_b.ipynb: tag cell 2 as 'parameters'" in said
    assert "records: accuracy" in said and "records: loss" in said
    assert said.split("next:\n", 1)[1].count("\n") == 3
    assert (repo / ".gitlab-ci.yml").is_file()

    # 2. pytest -m train on the fresh venv's own kernels, tracked to the local sqlite store.
    local = run(["pytest", "-m", "train", "-v", "-p", "no:cacheprovider"], repo, env)
    log = local.stdout + local.stderr
    assert local.returncode == 0, log
    assert "notebooks/train_a.ipynb::train[cpu] PASSED" in log
    assert "notebooks/train_b.ipynb::train[cpu] PASSED" in log
    executed = json.loads(
        (repo / "reports" / "notebooks" / "notebooks-train_a-train-cpu.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"]
                      for o in c.get("outputs", []))
    assert f"prefix: {venv}" in printed, printed  # the kernel is the venv's interpreter
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    cases = {c["id"]: c for c in metrics["cases"]}
    loss = pytest.approx(0.4723665527410147)  # exp(-3 * 0.25): the tagged cell's own values
    assert cases["notebooks/train_b.ipynb::train[cpu]"]["metrics"]["loss"] == loss
    store = f"sqlite:///{(repo / 'mlflow.db').as_posix()}"
    assert runs_in(venv, store) == {"notebooks/train_a.ipynb::train[cpu]": {"accuracy": 0.9},
                                    "notebooks/train_b.ipynb::train[cpu]": {"loss": loss}}

    # 3. The same case tracked to an `mlflow server` running elsewhere.
    server.wait_ready()
    remote = run(["pytest", "-m", "train", "-k", "train_a", "-p", "no:cacheprovider"], repo,
                 {**env, "MLFLOW_TRACKING_URI": server.url})
    assert remote.returncode == 0, remote.stdout + remote.stderr
    assert runs_in(venv, server.url) == {"notebooks/train_a.ipynb::train[cpu]": {"accuracy": 0.9}}

    # 4. The MR comment it would post.
    publish = run(["nbgate", "publish", "mr", "--dry-run"], repo, env)
    assert publish.returncode == 0, publish.stdout + publish.stderr
    assert "<!-- nbgate:train -->" in publish.stdout and "train_a" in publish.stdout


def test_gitlab_ci_local_lists_the_components_jobs_in_the_adopters_pipeline(
        gcl: str, adopted: tuple[Path, str]) -> None:  # noqa: F811
    """The CI file `nbgate init` wrote, unedited, as GitLab reads it with the component of this
    version (put where gitlab-ci-local keeps a fetched component: see the module docstring)."""
    repo, _ = adopted
    include = yaml_include(repo)
    match = re.fullmatch(r"\$CI_SERVER_FQDN/(.+)/pipeline@(.+)", include)
    assert match, include
    cache = (repo / ".gitlab-ci-local" / "includes" / "gitlab.example.com" / match.group(1)
             / match.group(2) / "templates")
    shutil.copytree(ROOT / "templates", cache)
    title = "train notebooks/train_a.ipynb"
    jobs = listed(gcl, repo, {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_MESSAGE": title})
    assert jobs == {"train-cpu: [1/1]", "train-gpu: [1/1]", "publish-mr", "publish-artifacts"}
    assert listed(gcl, repo, {"CI_PIPELINE_SOURCE": "push",
                              "CI_COMMIT_MESSAGE": "Tidy up"}) == set()
    git(repo, "checkout", "-q", "-B", "main")  # merged: the default branch promotes
    assert listed(gcl, repo, {"CI_PIPELINE_SOURCE": "push",
                              "CI_COMMIT_MESSAGE": "Merge branch 'adopt-nbgate'"}) == {
        "promote-model"}


def yaml_include(repo: Path) -> str:
    import yaml

    (include,) = yaml.safe_load((repo / ".gitlab-ci.yml").read_text())["include"]
    return str(include["component"])


def runs_in(venv: Path, uri: str) -> dict[str, dict[str, float]]:
    """Each run's metrics by case, read with the lean venv's own MLflow client."""
    code = ("import json, sys; from mlflow import MlflowClient; c = MlflowClient(sys.argv[1]); "
            "runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])];"
            " print(json.dumps({r.data.tags['nbgate.case_id']: r.data.metrics for r in runs}))")
    done = subprocess.run([str(venv / "bin/python"), "-c", code, uri], capture_output=True,
                          text=True, timeout=120, env=adopter_env(venv, venv))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
