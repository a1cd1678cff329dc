"""The reviewed model is provably the shipped model (SPEC §8, Provenance and What promote may
ship), each story played once against the loopback GitLab through the ``nbgate`` CLI.

GitLab behaviour relied on, read in GitLab's source (the stand-in does the same):
- ``app/services/packages/generic/create_package_file_service.rb``: the first file creates the
  package, and an upload that gives ``status`` sets it; ``lib/api/generic_packages.rb`` takes
  ``status`` = ``default`` or ``hidden``.
- ``app/models/packages/package.rb``: the list shows ``DISPLAYABLE_STATUSES`` only; hidden files
  still download (``INSTALLABLE_STATUSES``).
- ``lib/api/merge_requests.rb``: ``GET merge_requests/:iid/commits``, paginated, newest first;
  an MR's ``merged_at``.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import nbformat
import pytest

from nbgate.contract.model import CaseResult
from nbgate.contract.names import package_name
from reporting.gitlab.manifest import MANIFEST_FILE, Manifest
from tests.reporting.test_model_life import (
    BRANCH_SHA,
    CANDIDATES,
    MAIN_SHA,
    MERGE_SHA,
    PACKAGE,
    R1,
    R2,
    fetch_model,
    fingerprint_here,
    fingerprinted,
    job_env,
    nbgate,
    project,
    train,
)
from tests.reporting.test_publish_mr import pipeline_ctx, train_case, write_reports
from tests.support.gitlab_standin import GitLabStandIn
from tests.support.nbproject import run_pytest, write_notebook, write_pyproject

HEAD_SHA = "dddddddd" + "3" * 32  # a later commit on the MR's branch
NOTEBOOK = "notebooks/training_example.ipynb"


def released(standin: GitLabStandIn, version: str = R2) -> list[str]:
    """The visible (complete) packages of the release with ``version``."""
    return [p.status for p in standin.packages() if p.name == PACKAGE and p.version == version]


def release_r1(root: Path, standin: GitLabStandIn, capsys: pytest.CaptureFixture[str]) -> None:
    standin.add_commit(MAIN_SHA)
    train(root, b"model R1", "990", MAIN_SHA, "main")
    code, out = nbgate(root, job_env(standin, "990", MAIN_SHA, "main"), "publish", "artifacts",
                       capsys=capsys)
    assert code == 0 and f"uploaded release {PACKAGE} {R1}" in out, out


def candidate(root: Path, standin: GitLabStandIn, capsys: pytest.CaptureFixture[str], *,
              sha: str = BRANCH_SHA, pipeline: str = "1002", ref: str = "feature",
              model: bytes = b"model C1", **extra: str) -> str:
    """A branch pipeline trains the project as it is now and publishes a candidate."""
    standin.add_commit(sha)
    train(root, model, pipeline, sha, ref)
    code, out = nbgate(root, job_env(standin, pipeline, sha, ref, **extra), "publish",
                       "artifacts", capsys=capsys)
    assert code == 0 and "uploaded candidate" in out, out
    return out.split("uploaded candidate ", 1)[1].split(":", 1)[0].split(" ", 1)[1]


def merge(standin: GitLabStandIn, iid: int, commits: list[str], merge_sha: str = MERGE_SHA,
          source_branch: str = "feature", merged_at: str | None = None) -> dict[str, str]:
    """!iid (commits newest first) merged by ``merge_sha``; the promote job's environment."""
    standin.add_merge_request(iid, source_branch=source_branch, sha=commits[0],
                              commits=commits[1:], state="merged", merge_commit_sha=merge_sha,
                              merged_at=merged_at)
    return job_env(standin, f"3{iid}", merge_sha, "main", CI_PIPELINE_SOURCE="push")


def edit_notebook(root: Path) -> None:
    path = root / NOTEBOOK
    nb = nbformat.read(path, as_version=4)
    nb.cells[-1].source += "\nrecord('log_loss', 0.12)"
    nbformat.write(nb, path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    os.chdir(tmp_path)
    return project(tmp_path)


def test_a_backport_branch_named_like_the_mr_is_never_promoted_for_it(
    gitlab_standin: GitLabStandIn, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``backport-mr7`` has no merge request; its version text says "mr7", its commits are not
    !7's. Promote trusts the commits."""
    release_r1(root, gitlab_standin, capsys)
    version = candidate(root, gitlab_standin, capsys, sha="e" * 40, ref="backport-mr7",
                        model=b"never reviewed")
    assert "backport-mr7" in version
    code, out = nbgate(root, merge(gitlab_standin, 7, [BRANCH_SHA]), "promote", capsys=capsys)
    assert code == 0, out
    assert (f"nbgate promote: nothing to promote for {PACKAGE}: no commit of !7 published a "
            "candidate") in out
    assert fetch_model(root, gitlab_standin, capsys) == b"model R1"


def test_a_last_commit_that_changed_the_notebook_and_never_trained_releases_nothing(
    gitlab_standin: GitLabStandIn, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    release_r1(root, gitlab_standin, capsys)
    candidate(root, gitlab_standin, capsys)
    edit_notebook(root)  # HEAD_SHA, the MR's last commit; its training never ran
    code, out = nbgate(root, merge(gitlab_standin, 7, [HEAD_SHA, BRANCH_SHA]), "promote",
                       capsys=capsys)
    assert code == 0, out
    assert out.strip().splitlines()[-1] == (
        f"nbgate promote: nothing to promote for {PACKAGE}: !7's head {HEAD_SHA[:8]} changed "
        "what the model is made of (code) and has no passing candidate; retrain it with a "
        f"`train {NOTEBOOK}` commit")
    assert released(gitlab_standin) == []
    assert fetch_model(root, gitlab_standin, capsys) == b"model R1"


def test_a_last_commit_that_only_touched_the_readme_ships_the_reviewed_model(
    gitlab_standin: GitLabStandIn, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """!7 trained twice: an older candidate on the first version of the notebook, the reviewed
    one after an edit; then a README commit. The reviewed one ships, not the older."""
    release_r1(root, gitlab_standin, capsys)
    older = candidate(root, gitlab_standin, capsys, sha="a1" * 20, pipeline="1001",
                      model=b"first try")
    edit_notebook(root)
    reviewed = candidate(root, gitlab_standin, capsys, model=b"model C1")
    (root / "README.md").write_text("# docs only\n", encoding="utf-8")  # HEAD_SHA
    env = merge(gitlab_standin, 7, [HEAD_SHA, BRANCH_SHA, "a1" * 20])
    code, out = nbgate(root, env, "promote", capsys=capsys)
    assert code == 0 and f"released {PACKAGE} {R2} from candidate {reviewed} (!7" in out, out
    assert older != reviewed and fetch_model(root, gitlab_standin, capsys) == b"model C1"


def test_an_mr_opened_after_the_push_is_promoted(
    gitlab_standin: GitLabStandIn, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    release_r1(root, gitlab_standin, capsys)
    version = candidate(root, gitlab_standin, capsys)  # no merge request exists yet
    assert version == "1.0.0-feature+bbbbbbbb.1002"
    code, out = nbgate(root, merge(gitlab_standin, 7, [BRANCH_SHA]), "promote", capsys=capsys)
    assert code == 0 and f"released {PACKAGE} {R2} from candidate {version} (!7" in out, out
    assert fetch_model(root, gitlab_standin, capsys) == b"model C1"


def test_a_fetch_before_the_manifest_gets_the_previous_release(
    gitlab_standin: GitLabStandIn, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A release whose files are up but whose manifest is not is invisible: the list never
    shows it, and scoring keeps production."""
    release_r1(root, gitlab_standin, capsys)
    train(root, b"model R3", "1100", "f" * 40, "main")
    gitlab_standin.add_commit("f" * 40)
    env = job_env(gitlab_standin, "1100", "f" * 40, "main", CI_PIPELINE_SOURCE="schedule")
    gitlab_standin.fail_next(1, 403, MANIFEST_FILE, method="PUT")  # the job dies right there
    code, out = nbgate(root, env, "publish", "artifacts", capsys=capsys)
    assert code == 1 and "403" in out, out
    [half] = [p for p in gitlab_standin.packages() if p.version == "1.0.0+ffffffff.1100"]
    assert half.status == "hidden" and [f.file_name for f in half.files] == [
        "xgb_model.json", "metrics.json", "requirements.txt"]
    assert fetch_model(root, gitlab_standin, capsys) == b"model R1"
    code, out = nbgate(root, env, "publish", "artifacts", capsys=capsys)  # the job's retry
    assert code == 0 and fetch_model(root, gitlab_standin, capsys) == b"model R3"


def test_a_promote_that_fails_after_the_first_file_is_completed_by_a_rerun(
    gitlab_standin: GitLabStandIn, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    release_r1(root, gitlab_standin, capsys)
    reviewed = candidate(root, gitlab_standin, capsys)
    env = merge(gitlab_standin, 7, [BRANCH_SHA])
    gitlab_standin.fail_next(1, 403, "/metrics.json?status=hidden", method="PUT")
    code, out = nbgate(root, env, "promote", capsys=capsys)
    assert code == 1 and "403" in out, out
    assert released(gitlab_standin) == ["hidden"]  # the model went up, nothing shows it
    assert fetch_model(root, gitlab_standin, capsys) == b"model R1"
    code, out = nbgate(root, env, "promote", capsys=capsys)
    assert code == 0 and f"released {PACKAGE} {R2} from candidate {reviewed}" in out, out
    assert released(gitlab_standin) == ["default"]  # one release, complete
    assert fetch_model(root, gitlab_standin, capsys) == b"model C1"
    code, out = nbgate(root, env, "promote", capsys=capsys)
    assert code == 0 and "already exists" in out and released(gitlab_standin) == ["default"]


def test_promotes_in_reverse_merge_order_keep_the_later_merge_in_production(
    gitlab_standin: GitLabStandIn, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    release_r1(root, gitlab_standin, capsys)
    seven = candidate(root, gitlab_standin, capsys, model=b"model of !7")
    eight = candidate(root, gitlab_standin, capsys, sha="8" * 40, pipeline="1008", ref="other",
                      model=b"model of !8")
    env7 = merge(gitlab_standin, 7, [BRANCH_SHA], merged_at="2026-12-05T10:00:00.000Z")
    env8 = merge(gitlab_standin, 8, ["8" * 40], merge_sha="9" * 40, source_branch="other",
                 merged_at="2026-12-05T10:00:05.000Z")
    code, out = nbgate(root, env8, "promote", capsys=capsys)  # !8's job finishes first
    assert code == 0 and f"from candidate {eight} (!8" in out, out
    code, out = nbgate(root, env7, "promote", capsys=capsys)
    assert code == 0, out
    assert out.strip().splitlines()[-1] == (
        f"nbgate promote: nothing to promote for {PACKAGE}: !7 was merged at "
        "2026-12-05T10:00:00.000Z, and production 1.0.0+88888888.1008 comes from a later merge "
        "(!8, merged at 2026-12-05T10:00:05.000Z)")
    assert seven != eight and fetch_model(root, gitlab_standin, capsys) == b"model of !8"


def test_a_schedule_on_a_merge_commit_releases(
    gitlab_standin: GitLabStandIn, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidate(root, gitlab_standin, capsys)
    merge(gitlab_standin, 7, [BRANCH_SHA])  # main's HEAD is !7's merge commit
    train(root, b"retrained", "4000", MERGE_SHA, "main")
    env = job_env(gitlab_standin, "4000", MERGE_SHA, "main", CI_PIPELINE_SOURCE="schedule")
    code, out = nbgate(root, env, "publish", "artifacts", capsys=capsys)
    assert code == 0 and f"uploaded release {PACKAGE} 1.0.0+cccccccc.4000" in out, out
    assert fetch_model(root, gitlab_standin, capsys) == b"retrained"


def test_a_tampered_file_is_refused_by_fetch_artifact_and_verify(
    gitlab_standin: GitLabStandIn, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    release_r1(root, gitlab_standin, capsys)
    reviewed = candidate(root, gitlab_standin, capsys)
    code, out = nbgate(root, merge(gitlab_standin, 7, [BRANCH_SHA]), "promote", capsys=capsys)
    assert code == 0, out
    env = job_env(gitlab_standin, "2001", MERGE_SHA, "main")
    code, out = nbgate(root, env, "verify", capsys=capsys)
    assert code == 0, out
    manifest = Manifest.loads(gitlab_standin.package_file(PACKAGE, R2, MANIFEST_FILE) or b"", "m")
    fingerprint = fingerprinted(root).fingerprint
    assert fingerprint is not None
    model = manifest.file("xgb_model.json")
    assert model is not None
    for line in (f"{PACKAGE} {R2} (release, published ",
                 f"  commit     {MERGE_SHA} (main)",
                 "  merge request !7, merged ",
                 f"  promoted from candidate {CANDIDATES} {reviewed} (commit bbbbbbbb), "
                 "unchanged",
                 f"  case       {NOTEBOOK}::train[cpu]: passed, fingerprint "
                 f"{fingerprint.sha256[:12]} (code {str(fingerprint.parts['code'])[:12]}",
                 f"  file       xgb_model.json  8 bytes  sha256 {model.sha256}  ok"):
        assert line in out, out

    gitlab_standin.replace_package_file(PACKAGE, R2, "xgb_model.json", b"model C2")
    dest = root / "scoring" / "model.json"
    dest.parent.mkdir()
    dest.write_bytes(b"yesterday's model")
    code, out = nbgate(root, env, "fetch-artifact", "--pipeline", NOTEBOOK, "--dest", str(dest),
                       capsys=capsys)
    assert code == 1, out
    assert (f"nbgate fetch-artifact: error: {PACKAGE} {R2}: xgb_model.json: 8 bytes with sha256 "
            in out and "but the manifest records 8 bytes" in out and "nothing was written" in out)
    assert dest.read_bytes() == b"yesterday's model"
    code, out = nbgate(root, env, "verify", "--pipeline", "training_example", capsys=capsys)
    assert code == 1
    assert f"xgb_model.json  8 bytes  sha256 {model.sha256}  DOES NOT MATCH" in out
    assert f"nbgate verify: error: {PACKAGE} {R2}: xgb_model.json: " in out


def test_two_train_notebooks_in_different_folders_publish_two_packages(
    gitlab_standin: GitLabStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in ("a", "b"):
        write_notebook(tmp_path / folder / "train.ipynb", ["pass"])
        (tmp_path / "models").mkdir(exist_ok=True)
        (tmp_path / "models" / f"{folder}.json").write_bytes(f"model {folder}".encode())
    write_pyproject(tmp_path, textwrap.dedent("""
        [[tool.nbgate.pipelines]]
        notebook = "a/train.ipynb"
        kind = "train"
        outputs = ["models/a.json"]
        [[tool.nbgate.pipelines]]
        notebook = "b/train.ipynb"
        kind = "train"
        outputs = ["models/b.json"]
        """))
    cases = [fingerprinted_case(tmp_path, folder) for folder in ("a", "b")]
    write_reports(tmp_path / "reports", cases, pipeline_ctx("990", sha=MAIN_SHA, ref="main"))
    env = job_env(gitlab_standin, "990", MAIN_SHA, "main")
    gitlab_standin.add_commit(MAIN_SHA)
    code, out = nbgate(tmp_path, env, "publish", "artifacts", capsys=capsys)
    assert code == 0 and "uploaded release a-train" in out and "uploaded release b-train" in out
    assert {p.name for p in gitlab_standin.packages()} == {"a-train", "b-train"}
    for folder in ("a", "b"):
        dest = tmp_path / f"fetched-{folder}.json"
        code, out = nbgate(tmp_path, env, "fetch-artifact", "--pipeline", f"{folder}/train.ipynb",
                           "--dest", str(dest), capsys=capsys)
        assert code == 0 and dest.read_bytes() == f"model {folder}".encode(), out
    code, out = nbgate(tmp_path, env, "fetch-artifact", "--pipeline", "train", "--dest",
                       str(tmp_path / "x.json"), capsys=capsys)
    assert code == 2 and ("--pipeline 'train' names 2 pipelines: a/train.ipynb, b/train.ipynb; "
                          "give the notebook path") in out


def fingerprinted_case(root: Path, folder: str) -> CaseResult:
    case = train_case(notebook=f"{folder}/train.ipynb", outputs=[f"models/{folder}.json"])
    case.fingerprint = fingerprint_here(root, case.case_id)
    assert package_name(case.notebook) == f"{folder}-train"
    return case


def test_an_output_name_gitlab_refuses_is_a_config_error_before_anything_runs(
    tmp_path: Path,
) -> None:
    write_notebook(tmp_path / "notebooks" / "train.ipynb",
                   ["open('ran.txt', 'w').write('the notebook ran')"])
    write_pyproject(tmp_path, '[[tool.nbgate.pipelines]]\nnotebook = "notebooks/train.ipynb"\n'
                              'kind = "train"\noutputs = ["model v2.pkl"]\n')
    run = run_pytest(tmp_path, "-p", "no:nbgate-tracking")
    assert run.returncode == 4, run.stdout + run.stderr
    why = ("[[tool.nbgate.pipelines]] #1 (notebooks/train.ipynb).outputs[0]: 'model v2.pkl' is "
           "not a file name GitLab's package registry accepts")
    assert why in run.stdout + run.stderr
    assert not (tmp_path / "ran.txt").exists() and not (tmp_path / "reports").exists()


def test_a_manifest_nested_200000_deep_is_an_error_naming_it() -> None:
    """Deep JSON in a file nbgate reads is a clear error naming the file (issue 20), the
    manifest of a package version included: never a RecursionError traceback."""
    from reporting.gitlab.manifest import ManifestError

    deep = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(ManifestError, match=r"^x 1\.0\.0/nbgate-manifest\.json: .*nested deeper"):
        Manifest.loads(deep, f"x 1.0.0/{MANIFEST_FILE}")
