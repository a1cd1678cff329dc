"""Loopback stand-in for the slice of GitLab's REST API v4 that nbgate calls.

GitLab itself cannot run on the test machines, so tests point the real python-gitlab client (or
plain ``requests``) at this server over real HTTP. It follows the project's GitLab notes: token
rights (a project/personal token may do everything, a ``CI_JOB_TOKEN`` only what GitLab lets
it), status codes, error bodies and pagination headers. Fault knobs (``fail_next``,
``drop_next``, ``delay_next``) let client tests exercise retries.

- ``state``: the project's data, seeded and inspected by tests;
- ``routes``: the REST routes, one handler function each;
- ``server``: the threaded HTTP server, the request log and the fault plumbing.

Usage::

    with GitLabStandIn() as gl_server:
        gl_server.add_merge_request(1, source_branch="feature", sha="abc123")
        gl = gitlab.Gitlab(gl_server.url, private_token=gl_server.private_token, timeout=5)
"""

from .routes import API_PREFIX, ROUTES
from .server import GitLabStandIn
from .state import (
    Fault,
    GitLabState,
    MergeRequest,
    Note,
    Package,
    PackageFile,
    RequestRecord,
    Token,
    Upload,
    User,
    WikiPage,
)

__all__ = [
    "API_PREFIX",
    "ROUTES",
    "Fault",
    "GitLabStandIn",
    "GitLabState",
    "MergeRequest",
    "Note",
    "Package",
    "PackageFile",
    "RequestRecord",
    "Token",
    "Upload",
    "User",
    "WikiPage",
]
