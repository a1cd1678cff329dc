"""The MLflow helper's own files and the local store's lock, and who owns a run.

Everything lives in one folder of the user's, mode 0700 (``private_folder``): never a
predictable name directly in world-writable ``/tmp``, where another local user could create it
first (a directory squatting the lock, or a lock held forever). Standard library only: both
the pytest process and the helper import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_NOTICE_AFTER = 3.0  # a wait this long is said out loud
LOCK_GIVE_UP = 60.0  # creating a store under load takes seconds; a minute is something stuck
SOCKET_PATH_LIMIT = 100  # AF_UNIX paths are limited to 107 bytes


class HelperFilesError(Exception):
    """The folder or the lock cannot be used; the message says which file and what to do."""


def private_folder() -> Path | None:
    """``$TMPDIR/nbgate-<uid>``, made 0700 and checked to be this user's own; None off POSIX.

    Another user can create that name first: then ``~/.cache/nbgate`` (in a home folder no one
    else can write) serves, the same for every session of this user that sees the squatter.
    """
    uid = getattr(os, "getuid", lambda: None)()
    if uid is None or not hasattr(socket, "AF_UNIX"):
        return None
    for folder in (Path(tempfile.gettempdir()) / f"nbgate-{uid}",
                   Path.home() / ".cache" / "nbgate"):
        with contextlib.suppress(OSError):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = folder.lstat()
            if (folder.is_dir() and not folder.is_symlink() and info.st_uid == uid
                    and not info.st_mode & 0o077 and len(str(folder)) < SOCKET_PATH_LIMIT - 30):
                return folder
    return None


def digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def store_lock_path(root: Path) -> Path | None:
    folder = private_folder()
    return None if folder is None else folder / f"store-{digest(str(root.resolve()))}.lock"


@contextlib.contextmanager
def store_lock(
    root: Path, notify: Callable[[str], None] | None = None, give_up: float = LOCK_GIVE_UP
) -> Iterator[None]:
    """Serialise creating the local sqlite store (and its experiments) across sessions.

    Two processes migrating a new sqlite store at once leave it broken for good. A wait is
    said (``notify``) after a few seconds, naming the process that holds the lock, and given
    up after ``give_up`` seconds with an error that says what to do.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: sessions may race on the very first run
        yield
        return
    path = store_lock_path(root)
    if path is None:
        yield
        return
    store = root / "mlflow.db"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        what = "a directory" if path.is_dir() else f"unusable ({exc.strerror})"
        raise HelperFilesError(
            f"the lock of the local MLflow store {store} is {what}: {path}; nothing else should "
            f"be at that path: remove it (rm -r {path}) and run again"
        ) from None
    try:
        started, said = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if waited >= give_up:
                    raise HelperFilesError(
                        f"the local MLflow store {store} stayed locked for {give_up:g} s by "
                        f"{lock_holder(fd)} (lock {path}); if that process is stuck, stop it, "
                        "then run again"
                    ) from None
                if not said and waited >= LOCK_NOTICE_AFTER and notify is not None:
                    said = True
                    notify(f"waiting for the local MLflow store's lock {path}, held by "
                           f"{lock_holder(fd)}; giving up after {give_up:g} s")
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_holder(fd: int) -> str:
    """'pid 123 (python -m x)' for the process holding a flock on ``fd``'s file (Linux)."""
    info = os.fstat(fd)
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            # "1: FLOCK  ADVISORY  WRITE 4242 00:2d:1234 0 EOF" ("->" marks a waiter)
            if "FLOCK" not in fields or "->" in fields:
                continue
            at = fields.index("FLOCK")
            pid, where = fields[at + 3], fields[at + 4]
            if where.rsplit(":", 1)[-1] == str(info.st_ino):
                return f"pid {pid} ({_command(int(pid))})"
    return "another process"


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "another user's process"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    return text if len(text) <= 80 else text[:79] + "…"


# -- who owns a run ---------------------------------------------------------------------------
OWNER_TAG = "nbgate.owner"


def owner() -> str:
    """This process as a run's owner: host, pid and start time (a reused pid is not it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_started(os.getpid())}"


def owner_gone(tag: str) -> bool:
    """Is the process named by an owner tag gone? Only known for processes of this host."""
    try:
        host, pid, started = tag.rsplit(":", 2)
        number = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(number, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    now = _started(number)
    return bool(now and started and now != started)


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), else ''."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
