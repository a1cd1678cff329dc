"""The files cases write under the reports folder: executed notebooks and figures.

Each run's reports describe that run only. The first file a session writes clears the files
earlier sessions wrote into ``notebooks/`` and ``figures/``, so a narrower run (``make score``
after ``make train``) leaves no stale notebook behind. Only files nbgate wrote are removed:
they are listed in a manifest (``.nbgate-files``), so a reports folder that is shared with
other files (``reports = "."``) loses nothing else.

Under pytest-xdist every worker writes its own cases' files. The controller hands its session
id to the workers; the manifest records the session that wrote it, and a lock on it makes the
first writer of a session the only one that clears.

Files are written whole (a temporary file renamed into place) with mode 0644, whatever the
umask or the temporary file's own 0600, so CI artifacts and web servers can read them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from nbgate.contract.files import write_bytes_atomic

MANIFEST = ".nbgate-files"
SUBFOLDERS = ("notebooks", "figures")
_SESSION_PREFIX = "session "


class ReportFiles:
    """Writes one session's files into ``reports`` and forgets earlier sessions' files."""

    def __init__(self, reports: Path, session_id: str) -> None:
        self.reports = reports
        self.session_id = session_id

    def write(self, relative: str, data: bytes) -> Path:
        """Write ``data`` to ``reports/relative`` (``notebooks/x.ipynb``, ``figures/x.png``)."""
        if _managed(relative) is None:
            raise ValueError(f"{relative!r} is not under {' or '.join(SUBFOLDERS)}/")
        path = self.reports / relative
        with self._manifest() as manifest:
            self._claim(manifest)
            write_bytes_atomic(path, data)
            manifest.seek(0, os.SEEK_END)
            manifest.write(relative + "\n")
        return path

    def claim(self) -> None:
        """Start this session's reports: clear what earlier sessions wrote (once per session).

        Writing does this by itself; a session that writes reports but no notebook (every case
        skipped) calls it so the previous run's notebooks do not outlive it.
        """
        with self._manifest() as manifest:
            self._claim(manifest)

    @contextlib.contextmanager
    def _manifest(self) -> Iterator[IO[str]]:
        self.reports.mkdir(parents=True, exist_ok=True)
        with open(self.reports / MANIFEST, "a+", encoding="utf-8") as manifest, _locked(manifest):
            yield manifest

    def _claim(self, manifest: IO[str]) -> None:
        manifest.seek(0)
        lines = manifest.read().splitlines()
        if lines and lines[0] == _SESSION_PREFIX + self.session_id:
            return
        for line in lines[1:] if lines and lines[0].startswith(_SESSION_PREFIX) else lines:
            relative = _managed(line)
            if relative is None:
                continue  # never touch anything the manifest could name outside our folders
            path = self.reports / relative
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                if path.is_symlink() or path.is_file():
                    path.unlink()
        manifest.seek(0)
        manifest.truncate()
        manifest.write(_SESSION_PREFIX + self.session_id + "\n")
        manifest.flush()


def _managed(relative: str) -> str | None:
    """``relative`` if it names a file directly inside one of nbgate's subfolders."""
    path = PurePosixPath(relative)
    if len(path.parts) != 2 or path.parts[0] not in SUBFOLDERS or path.name in ("", ".", ".."):
        return None
    return path.as_posix()


@contextlib.contextmanager
def _locked(handle: IO[str]) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no parallel workers to coordinate with in practice
        yield
        return
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_UN)
