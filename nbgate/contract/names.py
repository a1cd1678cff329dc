"""Names GitLab's generic package registry accepts, and the package name of a notebook.

Both wings use these: the config refuses a name GitLab would refuse (before any notebook runs),
and the reporting wing names packages with the same function, so two declared pipelines can
never share a package.

GitLab's rules (``lib/gitlab/regex.rb``, see the project's GitLab notes, "Names"):
- a file name: ``\\A(?!~)[A-Za-z0-9._+~-]+(?<!~)\\z`` (ASCII, no spaces, not starting or
  ending with ``~``);
- a version: ``\\A(?!.*\\.\\.)[\\w+.-]+\\z`` with ASCII ``\\w``, so no ``..``.
"""

from __future__ import annotations

import re

CANDIDATE_SUFFIX = "-candidate"
_FILE_NAME = re.compile(r"(?!~)[A-Za-z0-9._+~-]+(?<!~)", re.ASCII)
_VERSION = re.compile(r"(?!.*\.\.)[\w+.-]+", re.ASCII)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def package_name(notebook: str) -> str:
    """The release package of a notebook, from its whole path: ``notebooks/train.ipynb`` ->
    ``notebooks-train``, so ``a/train.ipynb`` and ``b/train.ipynb`` publish apart."""
    path = notebook.replace("\\", "/").strip("/")
    path = path.removesuffix(".ipynb")
    return _UNSAFE.sub("_", path.replace("/", "-")).strip("._-") or "model"


def candidate_package(notebook: str) -> str:
    """The package a merge request's candidates of ``notebook`` go to."""
    return package_name(notebook) + CANDIDATE_SUFFIX


def file_name_problem(name: str) -> str | None:
    """Why GitLab would refuse ``name`` as a package file name, or None."""
    if _FILE_NAME.fullmatch(name) and name not in (".", ".."):
        return None
    return (f"{name!r} is not a file name GitLab's package registry accepts: use ASCII "
            "letters, digits, '.', '_', '+', '-' and '~' (not first or last), no spaces")


def version_problem(version: str) -> str | None:
    """Why GitLab would refuse ``version`` as a package version, or None."""
    if _VERSION.fullmatch(version):
        return None
    return (f"{version!r} is not a version GitLab's package registry accepts: use ASCII "
            "letters, digits, '_', '.', '+' and '-', without '..'")
