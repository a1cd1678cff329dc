"""Naming and errors shared by the pytest side and the helper: a URI without credentials,
a failure in one line with its hint, an HTTP status, a clipped text. Standard library only.
"""

from __future__ import annotations

import http
import re
from urllib.parse import urlsplit, urlunsplit

HINT = "check MLFLOW_TRACKING_URI / MLFLOW_TRACKING_TOKEN"
# A 401 on GitLab's MLflow endpoint in CI is usually a protected MLFLOW_TRACKING_TOKEN: GitLab
# protects new CI/CD variables by default, and a protected one never reaches an MR branch.
AUTH_HINT = ("check MLFLOW_TRACKING_TOKEN: it must reach this job (a protected CI/CD variable, "
             "GitLab's default, reaches protected branches only: unprotect it or protect the "
             "branch) and be valid here (on GitLab: a token with the api scope)")


def safe_uri(uri: str) -> str:
    """The URI without credentials (user:password@) or query string."""
    parts = urlsplit(uri)
    if not parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_CONNECTION_REASONS = (
    ("connection refused", "connection refused"),
    ("name or service not known", "unknown host"),
    ("nodename nor servname", "unknown host"),
    ("temporary failure in name resolution", "unknown host"),
    ("timed out", "timed out"),
    ("timeout", "timed out"),
    ("connection reset", "connection reset"),
    ("remote end closed connection", "connection closed by the server"),
    ("certificate verify failed", "TLS certificate not trusted"),
    ("max retries exceeded", "no answer"),
)


def describe_failure(uri: str, exc: BaseException, local: bool = False) -> tuple[str, bool]:
    """One line naming the store, the HTTP status and why; and whether the server answered."""
    text = " ".join(str(exc).split())
    status = http_status(exc, text)
    if status is not None:
        reason = _rest_message(exc) or _phrase(status)
        hint = AUTH_HINT if status in (401, 403) else HINT
        return f"{uri} answered HTTP {status}: {clip(reason, 200)}; {hint}", True
    if local:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the local MLflow store {uri} failed: {clip(first, 200)}", True
    lowered = text.lower()
    for needle, reason in _CONNECTION_REASONS:
        if needle in lowered:
            return f"{uri} could not be reached ({reason}); {HINT}", False
    return f"{uri} failed: {clip(text or type(exc).__name__, 200)}; {HINT}", True


def http_status(exc: BaseException, text: str | None = None) -> int | None:
    text = " ".join(str(exc).split()) if text is None else text
    for pattern in (r"failed with error code (\d{3})\b", r"too many (\d{3}) error responses"):
        match = re.search(pattern, text)
        if match:
            return int(match.group(1))
    body = getattr(exc, "json", None)
    if isinstance(body, dict):
        # GitLab answers {"message": "401 Unauthorized"} without an MLflow error_code.
        match = re.match(r"\s*([1-5]\d\d)\b", str(body.get("message", "")))
        if match:
            return int(match.group(1))
        if body.get("error_code") and hasattr(exc, "get_http_status_code"):
            return int(exc.get_http_status_code())
    return None


def _rest_message(exc: BaseException) -> str | None:
    body = getattr(exc, "json", None)
    if isinstance(body, dict) and body.get("message"):
        message = str(body["message"])
        return re.sub(r"^\s*[1-5]\d\d\s+", "", message) or message
    return None


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "error"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
