"""``nbgate publish artifacts`` / ``nbgate fetch-artifact`` against the loopback GitLab stand-in."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from nbgate.config import NbgateConfig, load_config
from nbgate.contract.codec import read_metrics
from reporting.errors import PublishError, PublishSkipped, PublishUsageError
from reporting.gitlab.manifest import MANIFEST_FILE, Manifest
from reporting.gitlab.packages import candidate_version, package_name, release_version
from reporting.gitlab.publish_artifacts import (
    Declared,
    fetch_artifact,
    publish_artifacts,
    resolve_pipeline,
)
from tests.reporting.test_publish_mr import Output, ci_env, skipped_case, train_case, write_reports
from tests.support.gitlab_standin import GitLabStandIn
from tests.support.packages import seed_version

MODEL = b'{"learner": {"gradient_booster": "tree"}}'
ON_MAIN = {"CI_COMMIT_REF_NAME": "main"}  # a default-branch pipeline publishes releases
RELEASE = "01234567.1002"  # the release version a default-branch pipeline 1002 publishes
PACKAGE = "notebooks-training_example"  # notebooks/training_example.ipynb's release package
CANDIDATES = PACKAGE + "-candidate"


def make_project(root: Path, *, version: str | None = None) -> NbgateConfig:
    """A project whose training pipeline declares models/xgb_model.json as its output."""
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    (root / "notebooks" / "training_example.ipynb").write_text("{}", encoding="utf-8")
    extra = f'version = "{version}"\n' if version else ""
    (root / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.nbgate]
        [[tool.nbgate.pipelines]]
        notebook = "notebooks/training_example.ipynb"
        kind = "train"
        outputs = ["models/xgb_model.json"]
        """) + extra, encoding="utf-8")
    config = load_config(root / "pyproject.toml")
    assert config is not None
    return config


def trained(root: Path, *results: Any, model: bytes | None = MODEL) -> Path:
    if model is not None:
        (root / "models").mkdir(exist_ok=True)
        (root / "models" / "xgb_model.json").write_bytes(model)
    return write_reports(root / "reports", list(results) or [train_case()])


def declared(config: NbgateConfig | None) -> list[Declared]:
    pipelines = config.pipelines if config is not None else ()
    return [Declared(p.notebook, p.kind, tuple(p.outputs), p.version) for p in pipelines]


def upload(standin: GitLabStandIn, root: Path, config: NbgateConfig, *,
           env: dict[str, str] | None = None, **kwargs: Any) -> Output:
    out = Output(standin.private_token, standin.job_token)
    publish_artifacts([root / "reports"], env or ci_env(standin), declared=declared(config),
                      root=root,
                      echo=out, **kwargs)
    return out


def fetch(standin: GitLabStandIn, dest: Path, config: NbgateConfig | None, *,
          env: dict[str, str] | None = None, **kwargs: Any) -> Output:
    out = Output(standin.private_token, standin.job_token)
    fetch_artifact("training_example", dest, env or ci_env(standin), declared=declared(config),
                   echo=out,
                   **kwargs)
    return out


def test_names_and_versions() -> None:
    assert package_name("notebooks/training_example.ipynb") == PACKAGE
    assert package_name("a/train.ipynb") != package_name("b/train.ipynb")
    assert package_name("my model (v2).ipynb") == "my_model_v2"
    assert release_version("01234567.1002", "1.0.0") == "1.0.0+01234567.1002"
    assert release_version("01234567.1002", None) == "01234567.1002"
    candidate = candidate_version("01234567.1002", "1.0.0", "7", "feature/new model")
    assert candidate == "1.0.0-mr7.feature-new-model+01234567.1002"


def test_pipeline_accepts_a_path_a_package_or_a_unique_stem() -> None:
    declared = [Declared("a/train.ipynb", "train", ("m.json",)),
                Declared("b/train.ipynb", "train", ("m.json",)),
                Declared("notebooks/score.ipynb", "score")]
    assert resolve_pipeline("a/train.ipynb", declared)[0] == "a-train"
    assert resolve_pipeline("b-train", declared)[0] == "b-train"
    assert resolve_pipeline("score", declared)[0] == "notebooks-score"
    with pytest.raises(PublishUsageError, match=r"--pipeline 'train' names 2 pipelines: "
                                                r"a/train.ipynb, b/train.ipynb"):
        resolve_pipeline("train", declared)


def test_a_branch_publishes_a_candidate_that_names_branch_and_mr(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    config = make_project(tmp_path, version="1.0.0")
    (tmp_path / "requirements.txt").write_text("xgboost==3.2.0\n")
    trained(tmp_path)
    env = ci_env(gitlab_standin, CI_COMMIT_REF_NAME="feature",
                 CI_OPEN_MERGE_REQUESTS="group/project!7")
    out = upload(gitlab_standin, tmp_path, config, env=env)
    version = "1.0.0-mr7.feature+01234567.1002"
    assert f"uploaded candidate {CANDIDATES} {version}" in out.text
    package = (CANDIDATES, version)
    assert gitlab_standin.package_file(*package, "xgb_model.json") == MODEL
    assert gitlab_standin.package_file(*package, "requirements.txt") == b"xgboost==3.2.0\n"
    metrics = read_metrics(gitlab_standin.package_file(*package, "metrics.json") or b"")
    assert [c.case_id for c in metrics.cases] == ["notebooks/training_example.ipynb::train[cpu]"]
    assert metrics.cases[0].metrics["roc_auc"] == 0.9931
    assert gitlab_standin.package_file(PACKAGE, version, "xgb_model.json") is None
    # The manifest, uploaded last, says what the version holds and where it came from.
    manifest = Manifest.loads(gitlab_standin.package_file(*package, MANIFEST_FILE) or b"", "m")
    assert [f.name for f in manifest.files] == ["xgb_model.json", "metrics.json",
                                                "requirements.txt"]
    assert manifest.file("xgb_model.json") is not None
    assert manifest.commit == "0123456789abcdef0123456789abcdef01234567" and manifest.mr_iid == "7"
    assert manifest.ref == "feature" and not manifest.release and manifest.passing
    [stored] = [p for p in gitlab_standin.packages() if p.name == CANDIDATES]
    assert [f.file_name for f in stored.files][-1] == MANIFEST_FILE
    assert stored.status == "default"
    puts = gitlab_standin.requests_to("/packages/generic/", "PUT")
    assert [r.query.get("status") for r in puts] == ["hidden"] * 3 + ["default"]


@pytest.mark.parametrize(("listed", "named"), [
    ("group/project!7", "1.0.0-feature+"),  # the upstream project's MR: not ours
    ("group/project!7,fork/project!3", "1.0.0-mr3.feature+"),
])
def test_a_forks_candidate_names_only_an_mr_of_its_own_project(
    gitlab_standin: GitLabStandIn, tmp_path: Path, listed: str, named: str
) -> None:
    """A branch of a fork lists the upstream project's open MRs in CI_OPEN_MERGE_REQUESTS
    ("upstream/project!7"); that iid numbers another project's MRs, so a candidate of the fork
    (CI_PROJECT_PATH fork/project) takes only an entry that names its own project."""
    config = make_project(tmp_path, version="1.0.0")
    trained(tmp_path)
    env = ci_env(gitlab_standin, CI_COMMIT_REF_NAME="feature", CI_PROJECT_PATH="fork/project",
                 CI_OPEN_MERGE_REQUESTS=listed)
    out = upload(gitlab_standin, tmp_path, config, env=env)
    [package] = gitlab_standin.packages()
    assert package.version.startswith(named), out.text


def test_the_default_branch_publishes_a_release(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    config = make_project(tmp_path, version="1.0.0")
    trained(tmp_path)
    out = upload(gitlab_standin, tmp_path, config, env=ci_env(gitlab_standin, **ON_MAIN))
    assert f"uploaded release {PACKAGE} 1.0.0+01234567.1002" in out.text
    assert gitlab_standin.package_file(PACKAGE, "1.0.0+01234567.1002",
                                       "xgb_model.json") == MODEL


def test_a_job_token_may_upload_and_fetch(gitlab_standin: GitLabStandIn, tmp_path: Path) -> None:
    config = make_project(tmp_path)
    trained(tmp_path)
    env = ci_env(gitlab_standin, REPO_TOKEN="", CI_JOB_TOKEN=gitlab_standin.job_token, **ON_MAIN)
    upload(gitlab_standin, tmp_path, config, env=env)
    fetch(gitlab_standin, tmp_path / "scoring" / "model.json", config, env=env)
    assert (tmp_path / "scoring" / "model.json").read_bytes() == MODEL
    assert {r.token_header for r in gitlab_standin.request_log} == {"JOB-TOKEN"}


def test_fetch_takes_the_newest_version_with_the_exact_name(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    config = make_project(tmp_path)
    seed_version(gitlab_standin, PACKAGE, "aaaa1111.1", {"xgb_model.json": b"old"})
    seed_version(gitlab_standin, PACKAGE, "bbbb2222.2", {"xgb_model.json": b"new"})
    # Created later and matched by GitLab's loose name filter, but a candidate (never taken
    # unless named), another pipeline's model, and a version from before manifests.
    seed_version(gitlab_standin, CANDIDATES, "0.0.0-mr7.x+cccc3333.3",
                 {"xgb_model.json": b"unreviewed"})
    seed_version(gitlab_standin, PACKAGE + "_v2", "dddd4444.4", {"xgb_model.json": b"v2"})
    gitlab_standin.add_package_file(PACKAGE, "eeee5555.5", "xgb_model.json", b"no manifest")
    gitlab_standin.add_package_file(PACKAGE, "ffff6666.6", "xgb_model.json", b"bad manifest")
    gitlab_standin.add_package_file(PACKAGE, "ffff6666.6", MANIFEST_FILE, b'{"schema": 1}',
                                    status="default")
    out = fetch(gitlab_standin, tmp_path / "models" / "xgb_model.json", config)
    assert (tmp_path / "models" / "xgb_model.json").read_bytes() == b"new"
    assert f"fetched {PACKAGE} bbbb2222.2 xgb_model.json" in out.text
    listing = gitlab_standin.requests_to("/packages", "GET")[0]
    assert listing.query["package_type"] == "generic"
    assert listing.query["order_by"] == "created_at" and listing.query["sort"] == "desc"


def test_fetch_a_given_version_into_a_folder(gitlab_standin: GitLabStandIn, tmp_path: Path) -> None:
    config = make_project(tmp_path)
    seed_version(gitlab_standin, PACKAGE, "aaaa1111.1", {"xgb_model.json": b"old"})
    seed_version(gitlab_standin, PACKAGE, "bbbb2222.2", {"xgb_model.json": b"new"})
    seed_version(gitlab_standin, CANDIDATES, "0.0.0-mr7.x+cccc3333.3",
                 {"xgb_model.json": b"candidate"})
    (tmp_path / "into").mkdir()
    fetch(gitlab_standin, tmp_path / "into", config, version="aaaa1111.1")
    assert (tmp_path / "into" / "xgb_model.json").read_bytes() == b"old"
    fetch(gitlab_standin, tmp_path / "into", config, version="0.0.0-mr7.x+cccc3333.3")
    assert (tmp_path / "into" / "xgb_model.json").read_bytes() == b"candidate"
    with pytest.raises(PublishUsageError, match="no complete release or candidate has version"):
        fetch(gitlab_standin, tmp_path / "into", config, version="9.9.9")


def test_fetch_without_config_uses_the_destination_name(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    seed_version(gitlab_standin, PACKAGE, "1", {"xgb_model.json": MODEL})
    out = Output(gitlab_standin.private_token, gitlab_standin.job_token)
    fetch_artifact(PACKAGE, tmp_path / "xgb_model.json", ci_env(gitlab_standin), declared=[],
                   echo=out)
    assert (tmp_path / "xgb_model.json").read_bytes() == MODEL


def test_upload_then_fetch_survive_transient_faults(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    config = make_project(tmp_path)
    trained(tmp_path)
    put = gitlab_standin.fail_next(2, 503, "/packages/generic/", method="PUT")
    upload(gitlab_standin, tmp_path, config, env=ci_env(gitlab_standin, **ON_MAIN))
    listing = gitlab_standin.drop_next(1, "/packages?", method="GET")
    download = gitlab_standin.drop_next(2, "/packages/generic/", method="GET")
    fetch(gitlab_standin, tmp_path / "fetched.json", config)
    assert put.remaining == listing.remaining == download.remaining == 0
    assert (tmp_path / "fetched.json").read_bytes() == MODEL


def test_fetch_with_nothing_published_fails_clearly(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    config = make_project(tmp_path)
    seed_version(gitlab_standin, PACKAGE + "_old", "1", {"xgb_model.json": b"x"})
    seed_version(gitlab_standin, CANDIDATES, "0.0.0-mr1.x+a.1", {"xgb_model.json": b"x"})
    with pytest.raises(PublishError, match=f"no release of '{PACKAGE}' yet: a release is "
                                           "published by `nbgate publish artifacts` from the "
                                           "default branch"):
        fetch(gitlab_standin, tmp_path / "model.json", config)
    assert not (tmp_path / "model.json").exists()


def test_a_missing_file_leaves_the_destination_untouched(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    config = make_project(tmp_path)
    seed_version(gitlab_standin, PACKAGE, "1", {"other.bin": b"x"})
    (tmp_path / "xgb_model.json").write_bytes(b"previous")
    with pytest.raises(PublishUsageError,
                       match=f"{PACKAGE} 1 has no file 'xgb_model.json'; its manifest lists "
                             "other.bin"):
        fetch(gitlab_standin, tmp_path / "xgb_model.json", config)
    assert (tmp_path / "xgb_model.json").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_gate_publishes_no_model(gitlab_standin: GitLabStandIn, tmp_path: Path) -> None:
    config = make_project(tmp_path)
    trained(tmp_path, train_case("cpu", roc_auc=0.91, outcome="failed"), skipped_case())
    held = r"1 case\(s\) failed .*a failed gate publishes no model"
    with pytest.raises(PublishSkipped, match=held):
        upload(gitlab_standin, tmp_path, config)
    assert gitlab_standin.packages() == []


def test_a_declared_output_that_was_not_written_is_an_error(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    config = make_project(tmp_path)
    trained(tmp_path, model=None)
    with pytest.raises(PublishUsageError, match=r"declares output 'models/xgb_model\.json'"):
        upload(gitlab_standin, tmp_path, config)
    assert gitlab_standin.request_log == []


def test_dry_run_says_what_would_be_uploaded(gitlab_standin: GitLabStandIn, tmp_path: Path) -> None:
    config = make_project(tmp_path)
    trained(tmp_path)
    out = upload(gitlab_standin, tmp_path, config, dry_run=True,
                 env=ci_env(gitlab_standin, **ON_MAIN))
    assert (f"dry run: would upload release {PACKAGE} 01234567.1002: xgb_model.json "
            "(models/xgb_model.json, 41 bytes), metrics.json (the metrics of 1 case(s)"
            in out.text), out.text
    assert gitlab_standin.packages() == []


def test_refused_upload_names_status_and_endpoint(
    gitlab_standin: GitLabStandIn, tmp_path: Path
) -> None:
    config = make_project(tmp_path)
    trained(tmp_path)
    gitlab_standin.fail_next(1, 403, "/packages/generic/", method="PUT")
    with pytest.raises(PublishError) as caught:
        upload(gitlab_standin, tmp_path, config)
    assert caught.value.status == 403
    assert caught.value.endpoint == (f"PUT /projects/42/packages/generic/{CANDIDATES}"
                                     "/0.0.0-feature+01234567.1002/xgb_model.json?status=hidden")
    assert "may not publish packages" in str(caught.value)
