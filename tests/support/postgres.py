"""A throwaway PostgreSQL cluster on loopback for tests: initdb in a temp folder, a random
port on 127.0.0.1, a random password, stopped and deleted at the end.

The server binaries come from Debian's ``postgresql`` package (.ci/install-tools.sh installs
it; Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH) or from PATH. PostgreSQL
refuses to run as root, so under root the cluster runs as the unprivileged ``nobody`` (the
subprocesses drop to that user themselves: no runuser/su, no extra account), in a folder of
its own under the system temp folder (pytest's tmp_path is private to root).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

USER = "nbgate"
UNPRIVILEGED = "nobody"
START_TIMEOUT = 60


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, else Debian's newest version."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        if (candidate / "pg_ctl").is_file() and (candidate / "initdb").is_file():
            number = re.match(r"\d+", candidate.parent.name)
            versions.append((int(number.group()) if number else 0, candidate))
    return max(versions)[1] if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Account:
    uid: int
    gid: int


class PostgresCluster:
    """``start()`` makes and starts the cluster; ``url(db)`` is a SQLAlchemy/libpq URL."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.password = secrets.token_hex(16)
        self.port = 0
        self.workdir: Path | None = None
        self._account: _Account | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam(UNPRIVILEGED)
            self._account = _Account(entry.pw_uid, entry.pw_gid)

    @property
    def data(self) -> Path:
        assert self.workdir is not None, "start() first"
        return self.workdir / "data"

    @property
    def log(self) -> Path:
        assert self.workdir is not None, "start() first"
        return self.workdir / "server.log"

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._account is not None:
            kwargs = {"user": self._account.uid, "group": self._account.gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C",
               "TZ": "UTC"}
        return subprocess.run([str(self.bindir / command[0]), *command[1:]], cwd=self.workdir,
                              env=env, capture_output=True, text=True, timeout=START_TIMEOUT,
                              check=False, **kwargs)

    def _own(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.uid, self._account.gid)

    def start(self) -> PostgresCluster:
        self.workdir = Path(tempfile.mkdtemp(prefix="nbgate-pg-"))
        self._own(self.workdir)
        password_file = self.workdir / "password"
        password_file.write_text(self.password + "\n")
        self._own(password_file)
        # --no-sync and the settings below trade durability for speed: the cluster lives for
        # one test session and is deleted after it.
        done = self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={password_file}",
                         "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
                         "--no-instructions")
        password_file.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        (self.workdir / "socket").mkdir()
        self._own(self.workdir / "socket")
        for _ in range(3):  # the free port may be taken between asking and binding
            self.port = _free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                       f"-c unix_socket_directories={self.workdir / 'socket'} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                       "-c max_connections=100")
            done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                             "-w", "-t", str(START_TIMEOUT), "start")
            if done.returncode == 0:
                return self
        log = self.log.read_text()[-3000:] if self.log.exists() else ""
        raise RuntimeError(f"pg_ctl start failed:\n{done.stdout}{done.stderr}\n{log}")

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _connect(self, database: str, *, autocommit: bool = False) -> Any:
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER,
                               password=self.password, dbname=database, autocommit=autocommit)

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        # CREATE DATABASE cannot run inside a transaction block.
        with self._connect("postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, database: str, sql: str) -> list[tuple[Any, ...]]:
        with self._connect(database) as connection:
            return list(connection.execute(sql).fetchall())

    def stop(self) -> None:
        if self.workdir is None:
            return
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None
