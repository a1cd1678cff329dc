"""How a publish command ends; the CLI maps each to an exit code."""

from __future__ import annotations


class PublishSkipped(Exception):
    """Nothing to do here (not in CI, no token, no merge request): one line, exit 0."""


class PublishUsageError(Exception):
    """Bad input on our side (missing reports, bad option): exit 2."""


class PublishRefused(Exception):
    """Nothing was sent, but passing quietly would hide a broken set-up (in CI on a merge
    request's branch, no token that can post the comment): one line with the fix, exit 1."""


class ReportsIncomplete(Exception):
    """Merged reports that miss cases (a shard left no reports): written, but exit 1."""


class PublishError(Exception):
    """GitLab said no, or could not be reached after retrying: exit 1.

    ``status`` is the final HTTP status (None when no answer came), ``endpoint`` the request
    ("POST /projects/42/merge_requests/7/notes") and ``hint`` what to check.
    """

    def __init__(self, status: int | None, endpoint: str, hint: str, detail: str = "") -> None:
        self.status = status
        self.endpoint = endpoint
        self.hint = hint
        self.detail = detail
        if status is None:
            head = f"no answer from GitLab for {endpoint}"
        else:
            head = f"GitLab answered {status} for {endpoint}"
        if detail:
            head += f" ({detail})"
        super().__init__(f"{head}: {hint}")


class VerificationError(PublishError):
    """A published file does not match its manifest (exit 1): GitLab answered, the bytes are
    wrong. The message names the package, version and file."""

    def __init__(self, endpoint: str, message: str) -> None:
        Exception.__init__(self, message)
        self.status = None
        self.endpoint = endpoint
        self.hint = message
        self.detail = "checksum mismatch"
