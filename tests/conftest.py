from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbgate.contract.codec import SCHEMA_FILE
from tests.support.gitlab_standin import GitLabStandIn


@pytest.fixture
def gitlab_standin() -> Iterator[GitLabStandIn]:
    """A fresh loopback GitLab (project 42, group/project) per test; see tests/gitlab_standin/."""
    with GitLabStandIn() as standin:
        yield standin
    # A bug in the stand-in answers 500, which a retrying client could silently absorb.
    assert standin.internal_errors == [], "\n".join(standin.internal_errors)


def pytest_configure(config: pytest.Config) -> None:
    # tests/project/test_ci_file.py drives gitlab-ci-local, check-jsonschema and hadolint;
    # `-m ci_file` runs just those, `-m "not ci_file"` everything else.
    config.addinivalue_line(
        "markers", "ci_file: checks .gitlab-ci.yml and the Dockerfile with the real CI tools"
    )


@pytest.fixture(scope="session", autouse=True)
def every_metrics_json_matches_the_schema(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """Every metrics.json this test process wrote (test projects live under its base temp
    folder) is checked with check-jsonschema against the published schema at the end."""
    yield
    base = tmp_path_factory.getbasetemp()
    # Folders named "...invalid..." hold files broken on purpose (publish must refuse them).
    files = [str(p) for p in base.rglob("metrics.json") if "invalid" not in p.parent.name]
    if not files:
        return
    tool = str(Path(sys.executable).with_name("check-jsonschema"))
    run = subprocess.run([tool, "--schemafile", str(SCHEMA_FILE), *files],
                         capture_output=True, text=True)
    assert run.returncode == 0, f"{len(files)} metrics.json checked:\n{run.stdout}{run.stderr}"
