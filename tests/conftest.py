from __future__ import annotations

from collections.abc import Iterator

import pytest

try:  # tests/ is imported as a package or as a rootdir folder depending on pytest's mode
    from tests.gitlab_standin import GitLabStandIn
except ImportError:
    from gitlab_standin import GitLabStandIn


@pytest.fixture
def gitlab_standin() -> Iterator[GitLabStandIn]:
    """A fresh loopback GitLab (project 42, group/project) per test; see tests/gitlab_standin/."""
    with GitLabStandIn() as standin:
        yield standin
    # A bug in the stand-in answers 500, which a retrying client could silently absorb.
    assert standin.internal_errors == [], "\n".join(standin.internal_errors)


def pytest_configure(config: pytest.Config) -> None:
    # tests/test_ci_file.py drives gitlab-ci-local, check-jsonschema and hadolint; `-m ci_file`
    # runs just those, `-m "not ci_file"` everything else.
    config.addinivalue_line(
        "markers", "ci_file: checks .gitlab-ci.yml and the Dockerfile with the real CI tools"
    )
