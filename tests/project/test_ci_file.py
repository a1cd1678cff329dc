""".gitlab-ci.yml and Dockerfile, checked with the real tools.

- check-jsonschema with GitLab's CI schema, hadolint on the Dockerfile;
- gitlab-ci-local (a real local evaluator of .gitlab-ci.yml, installed by .ci/install-tools.sh)
  lists which jobs each situation creates: commit titles, schedules, image changes;
- gitlab-ci-local runs the train jobs in this machine's shell against a small repository that
  declares tiny notebooks, through the real pytest harness;
- the CI/CD component (templates/pipeline.yml): GitLab's schema on each of its two documents,
  and gitlab-ci-local including it as this project's .gitlab-ci.yml does, at the same commit;
- training as N parallel jobs (the component's shards input): N jobs
  listed, and N shard jobs that split the cases and still make one MR comment.

Every run happens in a throwaway git repository in tmp_path, so gitlab-ci-local's state folder,
reports and MLflow stores never land in the project.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.support.gitlab_standin import GitLabStandIn
from tests.support.nbproject import write_notebook, write_pyproject

pytestmark = pytest.mark.ci_file

ROOT = Path(__file__).resolve().parents[2]
CI_FILE = ROOT / ".gitlab-ci.yml"
# nbgate's CI/CD component, which CI_FILE includes from this project at this commit.
COMPONENT = ROOT / "templates" / "pipeline.yml"
DOCKERFILE = ROOT / "Dockerfile"
# The venv running these tests holds check-jsonschema, hadolint and the pytest the jobs call.
VENV_BIN = Path(sys.executable).parent
TOOLS_BIN = ROOT / ".tools" / "node_modules" / ".bin"
GCL = TOOLS_BIN / "gitlab-ci-local"

TRAIN_TITLE = "train notebooks/training_example.ipynb"
SCORE_TITLE = "score notebooks/scoring_example.ipynb"


def parallel(job: str, total: int = 1) -> set[str]:
    """gitlab-ci-local's names for the jobs of a `parallel: total` job (GitLab's: "<job> K/N").
    The training jobs are parallel jobs, one of them unless the shards input says more."""
    return {f"{job}: [{index}/{total}]" for index in range(1, total + 1)}


TEST = {"test"}
# One job name per runner whether a branch push or a default-branch schedule trains: GitLab's
# test widget compares suites by job name with the target branch.
TRAIN_CPU = parallel("train-cpu")
TRAIN_GPU = parallel("train-gpu")
TRAIN_COMMIT = TRAIN_CPU | TRAIN_GPU | {"publish-mr", "publish-artifacts"}
SCORE_COMMIT = {"score", "publish-mr"}
TRAIN_SCHEDULE = TRAIN_CPU | TRAIN_GPU | {"publish-wiki", "publish-artifacts"}
SCORE_SCHEDULE = {"score", "publish-wiki"}
PROMOTE = {"promote-model"}
BUILD = {"build-ds-image"}

# What the surrounding environment must not lend a job: in GitLab CI these tests run inside a
# job whose own CI variables, tokens and tracking server would otherwise steer the inner jobs.
_LEAKY = re.compile(r"^(CI|GITLAB_.*|CI_.*|MLFLOW_.*|REPO_TOKEN|TRAINING_NOTEBOOK|SCORING_NOTEBOOK"
                    r"|NBGATE_.*|PYTEST_.*|TRAIN_.*RUNNER|SCORE_RUNNER|DS_IMAGE.*)$")


def tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {VENV_BIN}; install requirements-test.txt")
    return str(path)


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _LEAKY.match(k)}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), str(TOOLS_BIN), env.get("PATH", "")])
    env["HOME"] = str(home)  # gitlab-ci-local reads ~/.gitlab-ci-local/variables.yml
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # gitlab-ci-local warns about overriding these predefined variables; overriding them is the
    # point of these tests.
    env["GCL_IGNORE_PREDEFINED_VARS"] = (
        "CI_COMMIT_MESSAGE,CI_COMMIT_TITLE,CI_PIPELINE_SOURCE,CI_API_V4_URL,CI_PROJECT_ID,"
        "CI_COMMIT_TAG,CI_COMMIT_BRANCH")
    return env


@pytest.fixture(scope="module")
def gcl() -> str:
    missing = [p for p in ("rsync",) if shutil.which(p) is None]
    if not GCL.exists():
        missing.append(f"gitlab-ci-local under {TOOLS_BIN}")
    if missing:
        message = f"{', '.join(missing)} missing: run .ci/install-tools.sh (as root)"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI the tools are part of the job; absence is a bug
        pytest.skip(message)
    return str(GCL)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=nbgate", "-c", "user.email=nbgate@example.com",
         "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args],
        cwd=repo, capture_output=True, text=True, check=True,
    )
    return done.stdout.strip()


def make_repo(path: Path, files: dict[str, str | Path], *, branch: str = "feature",
              change: str = "README.md", message: str = "Work") -> Path:
    """A git repository whose origin/main is a base commit and whose HEAD, on ``branch``, is one
    commit that changes ``change``: what gitlab-ci-local's `rules:changes` compares."""
    path.mkdir(parents=True)
    for rel, content in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copy2(content, target)
        else:
            target.write_text(content, encoding="utf-8")
    (path / "README.md").write_text("# test project\n", encoding="utf-8")
    git(path, "init", "-q")
    git(path, "remote", "add", "origin", "https://gitlab.example.com/group/project.git")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "Base")
    git(path, "update-ref", "refs/remotes/origin/main", "HEAD")
    git(path, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")
    if branch != "main":
        git(path, "checkout", "-q", "-b", branch)
    with (path / change).open("a", encoding="utf-8") as handle:
        handle.write("\n# changed\n")
    git(path, "commit", "-q", "-a", "-m", message)
    return path


def ci_files() -> dict[str, str | Path]:
    """The files a pipeline of this project reads. gitlab-ci-local takes a component of the same
    project (the include's path is the origin remote's group/project) at the same commit
    (@$CI_COMMIT_SHA) from the working tree's templates/ (its parseIncludeComponent: isLocal),
    as GitLab takes it from the commit itself."""
    return {".gitlab-ci.yml": CI_FILE, "templates/pipeline.yml": COMPONENT,
            ".ci/image-venv.sh": ROOT / ".ci" / "image-venv.sh",
            "Dockerfile": DOCKERFILE, "requirements.txt": ROOT / "requirements.txt"}


def run_gcl(gcl: str, repo: Path, *args: str, variables: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [gcl, *args]
    for key, value in (variables or {}).items():
        command += ["--variable", f"{key}={value}"]
    return subprocess.run(command, cwd=repo, env=clean_env(repo.parent / "home"),
                          capture_output=True, text=True, timeout=timeout)


# --- schema and lint --------------------------------------------------------------------------


def test_ci_file_validates_against_gitlab_schema(tmp_path: Path) -> None:
    done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci",
                           str(CI_FILE)], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok -- validation done" in done.stdout
    # The same validator rejects a misspelt keyword, so the pass above means something.
    broken = tmp_path / ".gitlab-ci.yml"
    broken.write_text(CI_FILE.read_text().replace("  script:\n", "  scripts:\n", 1))
    done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci",
                           str(broken)], check=False, capture_output=True, text=True)
    assert done.returncode != 0


def component_parts() -> tuple[str, dict[str, dict], str]:
    """The component's two YAML documents: the spec header (its inputs) and the jobs."""
    header, body = COMPONENT.read_text().split("\n---\n")
    return header, yaml.safe_load(header)["spec"]["inputs"], body


def interpolate(body: str, values: dict[str, object]) -> str:
    """GitLab's `$[[ inputs.x ]]` interpolation: a string goes in as its text, anything else
    (arrays, numbers, booleans) as its JSON, which YAML reads back as the same value."""
    def value(match: re.Match[str]) -> str:
        item = values[match.group(1)]
        return item if isinstance(item, str) else json.dumps(item)

    return re.sub(r"\$\[\[\s*inputs\.(\w+)\s*\]\]", value, body)


def check_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci",
                           str(path)], check=False, capture_output=True, text=True)


def test_component_validates_against_gitlab_schema(tmp_path: Path) -> None:
    """check-jsonschema reads one YAML document a file (two: "expected a single document in the
    stream"), so the spec header and the jobs are checked each on their own, the jobs with every
    input at its default as GitLab interpolates it."""
    assert check_schema(COMPONENT).returncode != 0  # the two-document file as it is
    header, inputs, body = component_parts()
    assert set(inputs) == {
        "image", "install", "cpu_tags", "gpu_tags", "score_tags", "gpu", "shards",
        "schedule_trains", "schedule_scores", "model_pipeline", "model_path", "train_outputs",
        "score_outputs", "publish"}
    assert all("default" in spec and spec.get("description") for spec in inputs.values())
    used = set(re.findall(r"\$\[\[\s*inputs\.(\w+)\s*\]\]", body))
    assert used == set(inputs), "every input is used, and only declared inputs"
    defaults = {name: spec["default"] for name, spec in inputs.items()}
    checked = {
        "header.yml": header,
        "jobs.yml": interpolate(body, defaults),
        "jobs-4-shards.yml": interpolate(body, {**defaults, "shards": 4}),
        # parallel must be 1..200 and `script` is spelt so: the check means something.
        "jobs-0-shards.yml": interpolate(body, {**defaults, "shards": 0}),
        "jobs-misspelt.yml": interpolate(body, defaults).replace("  script:\n", "  scripts:\n", 1),
    }
    for name, text in checked.items():
        (tmp_path / name).write_text(text)
        done = check_schema(tmp_path / name)
        valid = name in ("header.yml", "jobs.yml", "jobs-4-shards.yml")
        assert (done.returncode == 0) == valid, (name, done.stdout + done.stderr)
    # This project includes it from itself at the commit under test, with the shards number.
    (include,) = yaml.safe_load(CI_FILE.read_text())["include"]
    assert include["component"] == "$CI_SERVER_FQDN/$CI_PROJECT_PATH/pipeline@$CI_COMMIT_SHA"
    assert set(include["inputs"]) <= set(inputs) and include["inputs"]["shards"] == 1


def test_dockerfile_is_hadolint_clean(tmp_path: Path) -> None:
    done = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)],
                          check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM ubuntu\nRUN apt-get install -y curl\n")
    done = subprocess.run([tool("hadolint"), "--no-color", str(sloppy)], check=False,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "DL3006" in done.stdout


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\S+)-runtime-ubuntu(\d+)\.(\d+)$", text, re.M)
    assert base, "the image must start from a CUDA runtime base"
    assert (int(base.group(2)), int(base.group(3))) >= (22, 4)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", text, re.M)
    # The project's Python, as pyproject.toml and the locks have it.
    requires = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert requires and f"ARG PYTHON_VERSION={requires.group(1)}" in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # The heavy dependency layer comes from the lock alone, before any project source.
    lock = text.index("-r requirements.txt")
    assert lock < text.index("COPY --chown=nbgate:nbgate nbgate ")
    assert text.index("COPY --chown=nbgate:nbgate requirements.txt") < lock


def test_dockerignore_keeps_what_the_dockerfile_copies_and_nothing_heavy() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "allow-list: the build context is only what the image needs"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            copied.update(p for p in line.split()[1:-1] if not p.startswith("--"))
    assert copied and copied <= allowed, copied - allowed
    assert not allowed & {".venv", ".tools", "models", "reports", "mlruns", "notebooks"}


# --- which jobs each situation creates -----------------------------------------------------------


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ci-repos")
    return {
        "plain": make_repo(base / "plain", ci_files()),
        "dockerfile": make_repo(base / "dockerfile", ci_files(), change="Dockerfile"),
        "lock": make_repo(base / "lock", ci_files(), change="requirements.txt"),
        "dockerfile-main": make_repo(base / "dockerfile-main", ci_files(), branch="main",
                                     change="Dockerfile"),
        "main": make_repo(base / "main", ci_files(), branch="main"),
    }


def listed(gcl: str, repo: Path, variables: dict[str, str]) -> set[str]:
    done = run_gcl(gcl, repo, "--list-csv", "--no-json-schema-validation", variables=variables)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("name;"))
    return {line.split(";")[0] for line in lines[header + 1:] if line.strip()}


PUSH = {"CI_PIPELINE_SOURCE": "push"}
SCHEDULE = {"CI_PIPELINE_SOURCE": "schedule"}

SITUATIONS = [
    # id, repo, variables, jobs
    ("train-title", "plain", {**PUSH, "CI_COMMIT_MESSAGE": TRAIN_TITLE}, TEST | TRAIN_COMMIT),
    ("train-title-two-notebooks-and-body", "plain",
     {**PUSH, "CI_COMMIT_MESSAGE": f"{TRAIN_TITLE} notebooks/other.ipynb\n\nWhy."},
     TEST | TRAIN_COMMIT),
    ("train-title-gpu-runner-off", "plain",
     {**PUSH, "CI_COMMIT_MESSAGE": TRAIN_TITLE, "NBGATE_TRAIN_GPU": "false"},
     TEST | TRAIN_COMMIT - TRAIN_GPU),
    ("score-title", "plain", {**PUSH, "CI_COMMIT_MESSAGE": SCORE_TITLE}, TEST | SCORE_COMMIT),
    ("ordinary-message", "plain", {**PUSH, "CI_COMMIT_MESSAGE": "Fix typo in the README"}, TEST),
    ("trigger-only-in-body", "plain",
     {**PUSH, "CI_COMMIT_MESSAGE": f"Tidy up\n\n{TRAIN_TITLE}"}, TEST),
    ("capitalised-trigger", "plain", {**PUSH, "CI_COMMIT_MESSAGE": f"Train {TRAIN_TITLE[6:]}"},
     TEST),
    ("trigger-word-without-path", "plain", {**PUSH, "CI_COMMIT_MESSAGE": "train"}, TEST),
    ("word-starting-with-trigger", "plain",
     {**PUSH, "CI_COMMIT_MESSAGE": "training data refreshed"}, TEST),
    ("schedule", "plain", {**SCHEDULE, "CI_COMMIT_MESSAGE": "Fix typo"}, SCORE_SCHEDULE),
    ("schedule-training-notebook", "plain",
     {**SCHEDULE, "TRAINING_NOTEBOOK": "notebooks/training_example.ipynb"}, TRAIN_SCHEDULE),
    ("schedule-training-notebook-gpu-off", "plain",
     {**SCHEDULE, "TRAINING_NOTEBOOK": "notebooks/training_example.ipynb",
      "NBGATE_TRAIN_GPU": "false"}, TRAIN_SCHEDULE - TRAIN_GPU),
    ("schedule-scoring-notebook-train-title-at-head", "plain",
     {**SCHEDULE, "SCORING_NOTEBOOK": "notebooks/scoring_example.ipynb",
      "CI_COMMIT_MESSAGE": TRAIN_TITLE}, SCORE_SCHEDULE),
    ("schedule-both-variables", "plain",
     {**SCHEDULE, "TRAINING_NOTEBOOK": "notebooks/training_example.ipynb",
      "SCORING_NOTEBOOK": "notebooks/scoring_example.ipynb"}, TRAIN_SCHEDULE),
    ("schedule-empty-training-notebook", "plain", {**SCHEDULE, "TRAINING_NOTEBOOK": ""},
     SCORE_SCHEDULE),
    ("dockerfile-change", "dockerfile", {**PUSH, "CI_COMMIT_MESSAGE": "Bump base"}, BUILD | TEST),
    ("lock-change", "lock", {**PUSH, "CI_COMMIT_MESSAGE": "Bump xgboost"}, BUILD | TEST),
    ("dockerfile-change-with-train-title", "dockerfile",
     {**PUSH, "CI_COMMIT_MESSAGE": TRAIN_TITLE}, BUILD | TEST | TRAIN_COMMIT),
    ("dockerfile-change-on-default-branch", "dockerfile-main",
     {**PUSH, "CI_COMMIT_MESSAGE": "Bump base"}, BUILD | TEST | {"promote-ds-image"} | PROMOTE),
    # A merge to the default branch promotes the MR's reviewed candidate; a branch push never.
    ("merge-to-default-branch", "main", {**PUSH, "CI_COMMIT_MESSAGE": "Merge branch 'f'"},
     TEST | PROMOTE),
    ("squash-merge-keeping-a-train-title", "main", {**PUSH, "CI_COMMIT_MESSAGE": TRAIN_TITLE},
     TEST | TRAIN_COMMIT | PROMOTE),
    ("schedule-on-default-branch", "main",
     {**SCHEDULE, "TRAINING_NOTEBOOK": "notebooks/training_example.ipynb"}, TRAIN_SCHEDULE),
    # rules:changes is always true on schedules: the build must not follow it there.
    ("dockerfile-change-schedule", "dockerfile", SCHEDULE, SCORE_SCHEDULE),
    ("dockerfile-change-schedule-build-forced", "dockerfile",
     {**SCHEDULE, "BUILD_DS_IMAGE": "true"}, SCORE_SCHEDULE),
    # A tag builds and uploads the package (and tests it); a tag's title trains nothing new.
    ("tag", "plain", {**PUSH, "CI_COMMIT_TAG": "v0.2.0", "CI_COMMIT_MESSAGE": "Release 0.2.0"},
     TEST | {"publish-package"}),
    # A tag pipeline (CI_COMMIT_TAG set, no CI_COMMIT_BRANCH) on a `train …`/`score …` commit
    # runs the tests and builds the package only: no training, scoring or publishing of a
    # model named after the tag.
    ("tag-on-a-train-commit", "plain",
     {**PUSH, "CI_COMMIT_MESSAGE": TRAIN_TITLE, "CI_COMMIT_TAG": "v1.0.0", "CI_COMMIT_BRANCH": ""},
     TEST | {"publish-package"}),
    ("tag-on-a-score-commit", "main",
     {**PUSH, "CI_COMMIT_MESSAGE": SCORE_TITLE, "CI_COMMIT_TAG": "v1.0.0", "CI_COMMIT_BRANCH": ""},
     TEST | {"publish-package"}),
    ("manual-run-building-the-image", "plain",
     {"CI_PIPELINE_SOURCE": "web", "BUILD_DS_IMAGE": "true", "CI_COMMIT_MESSAGE": "Fix typo"},
     BUILD | TEST),
]


@pytest.mark.parametrize(("repo", "variables", "jobs"), [s[1:] for s in SITUATIONS],
                         ids=[s[0] for s in SITUATIONS])
def test_jobs_for_each_situation(gcl: str, repos: dict[str, Path], repo: str,
                                 variables: dict[str, str], jobs: set[str]) -> None:
    assert listed(gcl, repos[repo], variables) == jobs


COMPONENT_ONLY = """
include:
  - component: $CI_SERVER_FQDN/$CI_PROJECT_PATH/pipeline@$CI_COMMIT_SHA
    inputs: {inputs}
stages: [train, score, notify]
"""


@pytest.mark.parametrize(("inputs", "variables", "jobs"), [
    ({}, {**PUSH, "CI_COMMIT_MESSAGE": "train a.ipynb"},
     TRAIN_CPU | TRAIN_GPU | {"publish-mr", "publish-artifacts"}),
    ({"gpu": False}, {**PUSH, "CI_COMMIT_MESSAGE": "train a.ipynb"},
     TRAIN_CPU | {"publish-mr", "publish-artifacts"}),
    ({"publish": False}, {**PUSH, "CI_COMMIT_MESSAGE": "train a.ipynb"}, TRAIN_CPU | TRAIN_GPU),
    ({"publish": False}, {**PUSH, "CI_COMMIT_MESSAGE": "score a.ipynb"}, {"score"}),
    ({"shards": 2, "gpu": False}, {**PUSH, "CI_COMMIT_MESSAGE": "train a.ipynb"},
     parallel("train-cpu", 2) | {"publish-mr", "publish-artifacts"}),
    # A schedule trains the schedule_trains notebooks without TRAINING_NOTEBOOK; without the
    # input it scores.
    ({"schedule_trains": "a.ipynb"}, SCHEDULE,
     TRAIN_CPU | TRAIN_GPU | {"publish-wiki", "publish-artifacts"}),
    ({}, SCHEDULE, {"score", "publish-wiki"}),
    # A CI/CD variable switches the GPU job off at run time.
    ({}, {**PUSH, "CI_COMMIT_MESSAGE": "train a.ipynb", "NBGATE_TRAIN_GPU": "false"},
     TRAIN_CPU | {"publish-mr", "publish-artifacts"}),
], ids=["defaults", "gpu-false", "publish-false-train", "publish-false-score", "shards-2",
        "schedule-trains", "schedule-default", "gpu-variable-off"])
def test_component_inputs_shape_the_jobs(gcl: str, tmp_path: Path, inputs: dict,
                                         variables: dict[str, str], jobs: set[str]) -> None:
    """The component alone, included as an adopter does, each input changing what it says."""
    repo = make_repo(tmp_path / "component", {
        "templates/pipeline.yml": COMPONENT,
        ".gitlab-ci.yml": COMPONENT_ONLY.format(inputs=json.dumps(inputs))})
    assert listed(gcl, repo, variables) == jobs


def with_train_shards(count: int) -> str:
    """The CI file as a user asks for ``count`` parallel training jobs: the one documented number
    in .gitlab-ci.yml (GitLab does not expand variables in `parallel:`)."""
    text, changed = re.subn(r"(?m)^(\s+shards:) 1\b", rf"\g<1> {count}",
                            CI_FILE.read_text())
    assert changed == 1, "the include sets shards once"
    return text


def test_train_shards_makes_n_training_jobs(gcl: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "shards", {**ci_files(), ".gitlab-ci.yml": with_train_shards(3)})
    cpu, gpu = parallel("train-cpu", 3), parallel("train-gpu", 3)
    assert len(cpu | gpu) == 6
    assert listed(gcl, repo, {**PUSH, "CI_COMMIT_MESSAGE": TRAIN_TITLE}) == (
        TEST | cpu | gpu | {"publish-mr", "publish-artifacts"})
    assert listed(gcl, repo, {**SCHEDULE, "TRAINING_NOTEBOOK": "notebooks/training_example.ipynb",
                              "NBGATE_TRAIN_GPU": "false"}) == (
        parallel("train-cpu", 3) | {"publish-wiki", "publish-artifacts"})
    # Scoring stays one job.
    assert listed(gcl, repo, {**PUSH, "CI_COMMIT_MESSAGE": SCORE_TITLE}) == TEST | SCORE_COMMIT


def test_workflow_runs_branch_pipelines_only(gcl: str, tmp_path: Path) -> None:
    # gitlab-ci-local applies workflow:rules only for their variables, so the rules are copied
    # onto a probe job and evaluated by the same engine as every job rule.
    config = yaml.safe_load(CI_FILE.read_text())
    probe = {"stage": "test", "script": ["true"], "rules": config["workflow"]["rules"]}
    repo = make_repo(tmp_path / "workflow", {
        ".gitlab-ci.yml": yaml.safe_dump({"stages": ["test"], "workflow-probe": probe})})
    assert listed(gcl, repo, {"CI_PIPELINE_SOURCE": "merge_request_event"}) == set()
    for source in ("push", "schedule", "web", "api"):
        assert listed(gcl, repo, {"CI_PIPELINE_SOURCE": source}) == {"workflow-probe"}, source


@pytest.fixture(scope="module")
def expanded(gcl: str, repos: dict[str, Path]) -> dict[str, dict]:
    """The CI file with extends, anchors and references expanded, as GitLab sees each job."""
    done = run_gcl(gcl, repos["plain"], "--preview", "--no-json-schema-validation")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_runner_tags_come_from_variables_with_documented_defaults(expanded: dict) -> None:
    variables = expanded["variables"]
    assert variables["TRAIN_RUNNER"] == "saas-linux-small-amd64"
    assert variables["TRAIN_GPU_RUNNER"] == "saas-linux-medium-amd64-gpu-standard"
    assert variables["SCORE_RUNNER"] == "saas-linux-small-amd64"
    assert expanded["train-cpu"]["tags"] == ["$TRAIN_RUNNER"]
    assert expanded["train-gpu"]["tags"] == ["$TRAIN_GPU_RUNNER"]
    assert expanded["score"]["tags"] == ["$SCORE_RUNNER"]


def test_train_and_score_jobs_select_by_marker_and_commit(expanded: dict) -> None:
    markers = {
        "train-cpu": "train and not gpu",
        "train-gpu": "train and gpu",
        "score": "score and not gpu",
    }
    for name, marker in markers.items():
        job = expanded[name]
        assert job["variables"]["NBGATE_MARKERS"] == marker, name
        script = "\n".join(job["script"])
        assert 'pytest -m "$NBGATE_MARKERS" --nbgate-commit -v' in script, name
        assert (job["variables"].get("NBGATE_REQUIRE_GPU") == "1") == name.endswith("-gpu"), name
        artifacts = job["artifacts"]
        assert artifacts["when"] == "always", name
        assert "reports/" in artifacts["paths"], name
        assert artifacts["reports"] == {"junit": "reports/junit.xml",
                                        "metrics": "reports/metrics.txt",
                                        "annotations": "reports/annotations.json"}, name
    script = expanded["score"]["script"]
    fetch = 'nbgate fetch-artifact --pipeline "$MODEL_PIPELINE" --dest "$MODEL_PATH"'
    assert fetch in script[0] and len(script) == 2, "the model is fetched before scoring"
    for name in ("train-cpu", "train-gpu"):  # production's metrics, before pytest checks rules
        script = "\n".join(expanded[name]["script"])
        assert script.index("nbgate fetch-baseline") < script.index("pytest -m"), name
        assert "export NBGATE_BASELINE=reports/baseline" in script, name
    assert expanded["score"]["variables"]["MODEL_PATH"] == "models/xgb_model.json"
    assert expanded["score"]["variables"]["MODEL_PIPELINE"] == "training_example"
    assert "models/" in expanded["train-cpu"]["artifacts"]["paths"]


def test_notify_jobs(expanded: dict) -> None:
    for name, what in (("publish-mr", "mr"), ("publish-wiki", "wiki"),
                       ("publish-artifacts", "artifacts")):
        job = expanded[name]
        assert job["stage"] == "notify"
        assert job["variables"]["PUBLISH"] == what
        assert 'nbgate publish "$PUBLISH" --reports nbgate-jobs' in "\n".join(job["script"])
    # The comment and the wiki row post whatever ran, saying what did not (a missing shard);
    # a model is never published from an incomplete merge.
    assert 'merge-reports --reports nbgate-jobs --into reports-merged ${MERGE_OPTIONS:-}' in \
        "\n".join(expanded["publish-mr"]["script"])
    assert expanded["publish-mr"]["variables"]["MERGE_OPTIONS"] == "--allow-incomplete"
    assert expanded["publish-wiki"]["variables"]["MERGE_OPTIONS"] == "--allow-incomplete"
    assert "MERGE_OPTIONS" not in expanded["publish-artifacts"]["variables"]
    assert expanded["publish-mr"]["allow_failure"] is True
    # Each notify job's first rule is the component's `publish: false` switch.
    off = {"if": '$NBGATE_PUBLISH != "true"', "when": "never"}
    for name in ("publish-mr", "publish-wiki", "publish-artifacts", "promote-model"):
        assert expanded[name]["rules"][0] == off, name
    assert all(rule.get("when") == "always" for rule in expanded["publish-mr"]["rules"][1:])
    assert all(rule.get("when") == "always" for rule in expanded["publish-wiki"]["rules"][1:])
    # A model is published only when every training job it needs succeeded.
    assert all("when" not in rule for rule in expanded["publish-artifacts"]["rules"][1:])
    assert "allow_failure" not in expanded["publish-artifacts"]
    fetched = {n["job"] for n in expanded["publish-artifacts"]["needs"] if n.get("artifacts", True)}
    assert fetched == {"build-ds-image", "train-cpu"}
    promote = expanded["promote-model"]
    assert promote["stage"] == "notify" and promote["script"] == ["nbgate promote"]
    # Two merges close together: their promotes never run at once.
    assert promote["resource_group"] == "promote-model"


def test_test_job_runs_the_suite_and_every_notebook(expanded: dict) -> None:
    job = expanded["test"]
    script = "\n".join(job["script"])
    assert "pytest tests " in script and "ruff check ." in script
    assert "pytest --nbmake notebooks/" in script
    assert ".ci/install-tools.sh" in script
    # A project-wide OPTUNA_STORAGE is for the training jobs: the tests train in memory.
    assert job["script"][0] == "unset OPTUNA_STORAGE OPTUNA_STUDY NBGATE_SHARD"
    assert job["artifacts"]["when"] == "always"
    assert job["artifacts"]["reports"]["junit"] == "test-reports/*.xml"


# --- the train jobs, run for real in this machine's shell ---------------------------------------

JOB_PYPROJECT = """
[tool.nbgate.runners.cpu]
parameters = { device = "cpu" }
[tool.nbgate.runners.gpu]
parameters = { device = "cuda" }
gpu = true

[[tool.nbgate.pipelines]]
notebook = "notebooks/tiny_train.ipynb"
kind = "train"
runners = ["cpu", "gpu"]
thresholds = { accuracy = ">= 0.5" }
outputs = ["models/tiny.txt"]

[[tool.nbgate.pipelines]]
notebook = "notebooks/other_train.ipynb"
kind = "train"
"""

TINY_TRAIN = """
import os
from nbgate import record
os.makedirs("models", exist_ok=True)
with open("models/tiny.txt", "w") as handle:
    handle.write(device)
record("accuracy", 0.9)
"""


@pytest.fixture
def job_repo(tmp_path: Path) -> Callable[[str], Path]:
    """A repository with the real CI file and two tiny declared training notebooks; one of them
    fails if it ever runs, so running it by mistake shows."""

    def make(message: str) -> Path:
        repo = tmp_path / "job"
        files = ci_files()
        make_repo(repo, files, message=message)
        write_notebook(repo / "notebooks/tiny_train.ipynb", [TINY_TRAIN],
                       parameters='device = "none"')
        write_notebook(repo / "notebooks/other_train.ipynb",
                       ['raise RuntimeError("other_train was not selected")'])
        write_pyproject(repo, JOB_PYPROJECT)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "--amend", "-m", message)
        return repo

    return make


def run_job(
    gcl: str, repo: Path, jobs: list[str], variables: dict[str, str], *options: str
) -> subprocess.CompletedProcess[str]:
    """Run ``jobs`` in stage order in this machine's shell, with the venv's pytest on PATH."""
    return run_gcl(gcl, repo, *jobs, "--force-shell-executor", "--no-json-schema-validation",
                   *options, variables=variables, timeout=300)


def artifacts_of(repo: Path, job: str) -> Path:
    """gitlab-ci-local's artifacts folder of a job; it base64-encodes each run of characters
    other than letters, digits, _ and - ("train-cpu: [1/2]" -> "train-cpuOiBb1Lw2XQ")."""
    folder = re.sub(r"[^\w-]+",
                    lambda m: base64.b64encode(m.group().encode()).decode().rstrip("="), job)
    return repo / ".gitlab-ci-local" / "artifacts" / folder


def test_train_pipeline_in_the_shell_trains_comments_and_publishes(
    gcl: str, job_repo: Callable[[str], Path], gitlab_standin: GitLabStandIn
) -> None:
    """The CPU train job on a `train <path>` commit, then the notify jobs it feeds, against the
    loopback GitLab: the real harness, reports hand-over and `nbgate publish` end to end."""
    title = "train notebooks/tiny_train.ipynb"
    repo = job_repo(title)
    gitlab_standin.add_merge_request(7, source_branch="feature", sha=git(repo, "rev-parse", "HEAD"))
    done = run_job(gcl, repo, ["train-cpu", "publish-mr", "publish-artifacts"], {
        "CI_COMMIT_MESSAGE": title, "CI_PIPELINE_SOURCE": "push",
        "CI_API_V4_URL": gitlab_standin.api_url, "CI_PROJECT_ID": str(gitlab_standin.project_id),
        "REPO_TOKEN": gitlab_standin.private_token})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert f"nbgate: commit title '{title}' selects train notebooks/tiny_train.ipynb" in log
    assert "notebooks/tiny_train.ipynb::train[cpu] PASSED" in log
    ran = log.split("collected", 1)[1]
    assert "other_train" not in ran
    assert "train[gpu]" not in ran  # deselected by -m in the CPU job, not skipped

    (job,) = TRAIN_CPU
    artifacts = artifacts_of(repo, job)
    # The CPU runner's parameters reached the notebook, and its declared output is kept.
    assert (artifacts / "models" / "tiny.txt").read_text() == "cpu"
    executed = sorted(p.name for p in (artifacts / "reports" / "notebooks").glob("*.ipynb"))
    assert executed == ["notebooks-tiny_train-train-cpu.ipynb"]
    cases = list(ET.parse(artifacts / "reports" / "junit.xml").getroot().iter("testcase"))
    ids = [f"{c.get('classname', '')} {c.get('name', '')}" for c in cases]
    assert any("tiny_train" in i and "cpu" in i for i in ids), ids
    assert not any("other_train" in i or "gpu" in i for i in ids), ids
    assert all(c.find("failure") is None and c.find("error") is None for c in cases), ids
    # The job's own copy of its reports, which the notify jobs read.
    own = artifacts / "nbgate-jobs" / "train-cpu"
    assert (own / "metrics.json").read_bytes() == (
        artifacts / "reports" / "metrics.json").read_bytes()

    notes = gitlab_standin.notes(7)
    assert len(notes) == 1, [n.body[:200] for n in notes]
    assert notes[0].body.startswith("<!-- nbgate:train -->")
    assert "tiny_train" in notes[0].body and "accuracy" in notes[0].body
    # A branch's model is a candidate (its version names the branch and MR !7), never a release.
    [package] = gitlab_standin.packages()
    assert package.name == "notebooks-tiny_train-candidate" and "-mr7.feature+" in package.version
    # Complete: its files went up hidden, the manifest last made it visible.
    assert package.status == "default" and package.files[-1].file_name == "nbgate-manifest.json"
    files = {f.file_name: f.data for f in package.files}
    assert files["tiny.txt"] == b"cpu" and set(files) >= {"tiny.txt", "metrics.json"}
    assert "production baseline" in log or "no release" in log  # fetch-baseline said why


def test_train_job_fails_before_pytest_when_gitlab_refuses_the_baseline(
    gcl: str, job_repo: Callable[[str], Path], gitlab_standin: GitLabStandIn
) -> None:
    """A 401 from the package registry is not "no baseline": the job stops at fetch-baseline,
    naming status and endpoint, and no case runs. NBGATE_BASELINE_OPTIONAL=1 lets it train."""
    title = "train notebooks/tiny_train.ipynb"
    repo = job_repo(title)
    variables = {"CI_COMMIT_MESSAGE": title, "CI_PIPELINE_SOURCE": "push",
                 "CI_API_V4_URL": gitlab_standin.api_url,
                 "CI_PROJECT_ID": str(gitlab_standin.project_id),
                 "REPO_TOKEN": "glpat-revoked-token-00000"}
    done = run_job(gcl, repo, ["train-cpu"], variables)
    log = done.stdout + done.stderr
    assert done.returncode != 0, log
    assert "nbgate fetch-baseline: error: GitLab answered 401 for GET /projects/42/packages" in log
    assert "collected" not in log and "PASSED" not in log
    done = run_job(gcl, repo, ["train-cpu"], {**variables, "NBGATE_BASELINE_OPTIONAL": "1"})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "nbgate fetch-baseline: GitLab could not be asked (GitLab answered 401" in log
    assert "notebooks/tiny_train.ipynb::train[cpu] PASSED" in log


def test_gpu_train_job_requires_a_gpu(gcl: str, job_repo: Callable[[str], Path]) -> None:
    from nbgate.pytest_plugin.gpu import visible_cuda_devices

    title = "train notebooks/tiny_train.ipynb"
    repo = job_repo(title)
    done = run_job(gcl, repo, ["train-gpu"],
                   {"CI_COMMIT_MESSAGE": title, "CI_PIPELINE_SOURCE": "push"})
    log = done.stdout + done.stderr
    if visible_cuda_devices():
        assert done.returncode == 0, log
        assert "notebooks/tiny_train.ipynb::train[gpu] PASSED" in log
        (job,) = TRAIN_GPU
        artifacts = artifacts_of(repo, job)
        assert (artifacts / "models" / "tiny.txt").read_text() == "cuda"
    else:
        # NBGATE_REQUIRE_GPU=1 on the GPU job: a runner without a GPU fails, it does not skip.
        assert done.returncode != 0, log
        assert "notebooks/tiny_train.ipynb::train[gpu] FAILED" in log
        assert "GPU is required" in log
    assert "train[cpu]" not in log.split("collected", 1)[1]


def test_gpu_job_with_nothing_for_its_runner_passes(gcl: str,
                                                    job_repo: Callable[[str], Path]) -> None:
    title = "train notebooks/other_train.ipynb"  # declared for the cpu runner only
    repo = job_repo(title)
    done = run_job(gcl, repo, ["train-gpu"],
                   {"CI_COMMIT_MESSAGE": title, "CI_PIPELINE_SOURCE": "push"})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "no 'train and gpu' case in this selection: nothing to run" in log


def test_train_job_refuses_a_path_out_of_the_repository(gcl: str,
                                                        job_repo: Callable[[str], Path]) -> None:
    title = "train ../../etc/passwd"
    repo = job_repo(title)
    done = run_job(gcl, repo, ["train-cpu"],
                   {"CI_COMMIT_MESSAGE": title, "CI_PIPELINE_SOURCE": "push"})
    log = done.stdout + done.stderr
    assert done.returncode != 0, log
    assert "'../../etc/passwd' leaves the repository" in log
    assert ("Declared train pipelines: train notebooks/tiny_train.ipynb, "
            "train notebooks/other_train.ipynb") in log
    assert "PASSED" not in log


def test_scheduled_training_job_selects_by_training_notebook(
    gcl: str, job_repo: Callable[[str], Path]
) -> None:
    # The head commit's title is ordinary; only the schedule's variable can name a notebook. An
    # unknown one stops the job before any kernel starts, naming where the path came from.
    repo = job_repo("Nightly")
    done = run_job(gcl, repo, ["train-cpu"], {
        "CI_PIPELINE_SOURCE": "schedule", "CI_COMMIT_MESSAGE": "Nightly",
        "TRAINING_NOTEBOOK": "notebooks/tiny_train.ipynb notebooks/gone.ipynb"})
    log = done.stdout + done.stderr
    assert done.returncode != 0, log
    assert "schedule variable TRAINING_NOTEBOOK: 'notebooks/gone.ipynb' does not exist" in log
    assert "PASSED" not in log


SHARD_PYPROJECT = "[tool.nbgate.runners.cpu]\n" + "".join(
    f'[[tool.nbgate.pipelines]]\nnotebook = "notebooks/{name}.ipynb"\nkind = "train"\n'
    'thresholds = { accuracy = ">= 0.5" }\n' for name in ("alpha", "beta", "gamma"))


def test_sharded_train_jobs_split_the_cases_and_make_one_comment(
    gcl: str, tmp_path: Path, gitlab_standin: GitLabStandIn
) -> None:
    """shards: 2 and a title naming three notebooks: two CPU jobs, each running its own
    share (from CI_NODE_INDEX/CI_NODE_TOTAL, no flag), each keeping its reports under its own
    name; the notify job then posts one comment with all three cases."""
    names = ("alpha", "beta", "gamma")
    title = "train " + " ".join(f"notebooks/{n}.ipynb" for n in names)
    repo = tmp_path / "sharded"
    make_repo(repo, {**ci_files(), ".gitlab-ci.yml": with_train_shards(2)}, message=title)
    for name in names:
        write_notebook(repo / "notebooks" / f"{name}.ipynb",
                       ["from nbgate import record\nrecord('accuracy', 0.9)"])
    write_pyproject(repo, SHARD_PYPROJECT)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--amend", "-m", title)
    gitlab_standin.add_merge_request(7, source_branch="feature", sha=git(repo, "rev-parse", "HEAD"))
    done = run_job(gcl, repo, ["train-cpu", "publish-mr"], {
        "CI_COMMIT_MESSAGE": title, "CI_PIPELINE_SOURCE": "push",
        "CI_API_V4_URL": gitlab_standin.api_url, "CI_PROJECT_ID": str(gitlab_standin.project_id),
        "REPO_TOKEN": gitlab_standin.private_token})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log

    ran: dict[int, list[str]] = {}
    splits = set()
    copied_up: dict[int, bytes] = {}
    shard_junits: dict[int, bytes] = {}
    for index in (1, 2):
        artifacts = artifacts_of(repo, f"train-cpu: [{index}/2]")
        shard = artifacts / "reports" / f"shard-{index}-of-2"
        info = json.loads((shard / "shard.json").read_text())
        assert (info["index"], info["total"], info["selected"]) == (index, 2, 3)
        assert info["job"] == "train-cpu"  # gitlab-ci-local's " [K/N]" taken off, as GitLab's
        splits.add(info["split"])
        metrics = json.loads((shard / "metrics.json").read_text())
        ran[index] = [case["id"] for case in metrics["cases"]]
        assert sorted(ran[index]) == sorted(info["cases"])
        assert f"nbgate: shard {index}/2 runs {len(ran[index])} of 3 selected cases" in log
        # The job's own copy for the notify jobs, and GitLab's widgets' files one level up.
        own = artifacts / "nbgate-jobs" / f"train-cpu-{index}-of-2"
        assert (own / "metrics.json").read_bytes() == (shard / "metrics.json").read_bytes()
        copied_up[index] = (artifacts / "reports" / "junit.xml").read_bytes()
        shard_junits[index] = (shard / "junit.xml").read_bytes()
    # Each job copies its shard's files up into reports/ for GitLab's widgets. The shell jobs
    # here share one checkout and run at once, so which shard's copy a job's artifacts hold
    # depends on timing (on GitLab each job has its own checkout): it is a whole shard's file.
    assert all(copy in shard_junits.values() for copy in copied_up.values())
    assert len(splits) == 1, "both jobs computed the same split"
    assert ran[1] and ran[2] and not set(ran[1]) & set(ran[2])
    assert sorted(ran[1] + ran[2]) == sorted(f"notebooks/{n}.ipynb::train[cpu]" for n in names)

    notes = gitlab_standin.notes(7)
    assert len(notes) == 1, [n.body[:200] for n in notes]
    assert all(name in notes[0].body for name in names), notes[0].body


def test_tag_pipeline_publishes_the_package_to_the_pypi_registry(
    gcl: str, tmp_path: Path, gitlab_standin: GitLabStandIn
) -> None:
    """publish-package on a tag, in this machine's shell: `python -m build`, `twine check` and
    `twine upload` with the job token to the project's PyPI registry (the loopback GitLab takes
    it as GitLab does: Basic auth, user gitlab-ci-token, lib/api/pypi_packages.rb)."""
    sources = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "nbgate",
                              "reporting", "requirements-test.txt"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    repo = make_repo(tmp_path / "release", {**ci_files(), **{rel: ROOT / rel for rel in sources}},
                     branch="main", message="Release 0.1.0")
    done = run_job(gcl, repo, ["publish-package"], {
        "CI_PIPELINE_SOURCE": "push", "CI_COMMIT_TAG": "v0.1.0",
        "CI_API_V4_URL": gitlab_standin.api_url, "CI_PROJECT_ID": str(gitlab_standin.project_id),
        "CI_JOB_TOKEN": gitlab_standin.job_token,
        # The job installs the test extra (build, twine) into the image's venv; here that is
        # the venv running these tests, which already holds the same pins.
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv"))})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert gitlab_standin.job_token not in log
    (package,) = [p for p in gitlab_standin.packages() if p.package_type == "pypi"]
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and (package.name, package.version) == ("nbgate", version.group(1))
    assert sorted(f.file_name for f in package.files) == [
        f"nbgate-{version.group(1)}-py3-none-any.whl", f"nbgate-{version.group(1)}.tar.gz"]
    posts = gitlab_standin.requests_to(f"/projects/{gitlab_standin.project_id}/packages/pypi",
                                       "POST")
    assert len(posts) == 2 and all(p.token_kind == "job" for p in posts)
