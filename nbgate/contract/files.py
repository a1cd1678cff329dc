"""Writing report files and naming paths for people."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FILE_MODE = 0o644  # reports are read by other users and by the CI's artifact upload


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` through a temporary file, so a reader (or an interrupted session) never
    sees half a file. mkstemp creates files 0600; reports are 0644."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def display_path(path: Path | str, cwd: Path | str | None = None) -> str:
    """``path`` relative to ``cwd`` (default: the working directory) when it lies inside it,
    else as it is, with POSIX separators."""
    path = Path(path)
    try:
        rel = os.path.relpath(path, cwd if cwd is not None else os.getcwd())
    except ValueError:  # another drive on Windows
        return path.as_posix()
    return Path(rel).as_posix() if not rel.startswith("..") else path.as_posix()
