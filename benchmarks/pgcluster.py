"""A throw-away PostgreSQL cluster: made by ``initdb`` in a temporary folder, run by ``pg_ctl`` on a free port.

The plant store's tests (``tests/conftest.py``: ``postgres_server``) and benchmarks (``benchmarks/plant.py review``)
both start one here, so nothing outside that folder is touched and several can run side by side: trust
authentication, user ``crackscope``, UTF-8, C locale, listening on 127.0.0.1 only, its unix socket in the folder.
The binaries are taken from PATH, else from Debian's /usr/lib/postgresql/<version>/bin (the ``postgresql`` package
does not put them on PATH).

PostgreSQL refuses to run as root: run as root, ``initdb`` and ``pg_ctl`` run as the unprivileged user ``nobody``
through ``runuser -u nobody --`` (util-linux, on every Debian), in a folder made by :func:`tempfile.mkdtemp` in /tmp
(mode 0700) and handed to ``nobody``.

Example:
    >>> with start_cluster() as cluster:                              # doctest: +SKIP
    ...     url = cluster.new_database()                              # postgresql://crackscope@127.0.0.1:PORT/test_1
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


class ClusterUnavailable(RuntimeError):
    """PostgreSQL's binaries or psycopg are not installed here: no cluster can be made."""


@dataclass
class PostgresServer:
    """A PostgreSQL cluster made and run by this process (see :func:`start_cluster`); a context manager that stops
    it and removes its folder."""

    bin: Path  # where initdb, pg_ctl and postgres are
    root: Path  # the temporary folder: data/, the log and the unix socket
    port: int
    as_user: tuple[str, ...]  # the command prefix that runs them unprivileged (empty when not root)
    databases: int = 0

    @property
    def url(self) -> str:
        """The URL of the cluster's database ``crackscope``."""
        return self.database_url("crackscope")

    def database_url(self, name: str) -> str:
        return f"postgresql://crackscope@127.0.0.1:{self.port}/{name}"

    def pg_ctl(self, *args: str, check: bool = True) -> None:
        command = [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            log = (self.root / "postgres.log").read_text(errors="replace")[-2000:] if self.root.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
            # a throw-away cluster need not survive a power cut, so no waiting for the disk; but it must survive its
            # own crash (restart()): synchronous_commit stays on, so a commit is in the WAL (the OS's cache) first
            " -c fsync=off -c full_page_writes=off"
        )
        self.pg_ctl("-l", str(self.root / "postgres.log"), "-w", "-t", "60", "-o", options, "start")

    def restart(self) -> None:
        """Stop the server at once (as a crash would) and start it again on the same port."""
        self.pg_ctl("-m", "immediate", "-w", "stop")
        self.start()

    def new_database(self) -> str:
        """The URL of a new, empty database (each test gets its own store)."""
        import psycopg

        self.databases += 1
        name = f"test_{self.databases}"
        with psycopg.connect(self.database_url("postgres"), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.database_url(name)

    def remove(self) -> None:
        """Stop the server at once (nothing in it is kept) and delete its folder."""
        if (self.root / "data" / "postmaster.pid").exists():
            self.pg_ctl("-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: int(Path(f).parent.name), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_cluster() -> PostgresServer:
    """A new cluster, started, with an empty database ``crackscope``; :meth:`PostgresServer.remove` ends it.

    Raises :class:`ClusterUnavailable` without PostgreSQL's binaries or psycopg, RuntimeError when initdb or pg_ctl
    fails (with their output and the server's log).
    """
    bin_folder = postgres_bin()
    if bin_folder is None:
        raise ClusterUnavailable(
            "PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)"
        )
    try:
        import psycopg
    except ModuleNotFoundError:
        raise ClusterUnavailable("psycopg is not installed: pip install 'crackscope[plant]'") from None
    # /tmp: a short path (a unix socket's is limited to 107 bytes) that nobody can reach, whatever TMPDIR says
    root = Path(tempfile.mkdtemp(prefix="crackscope-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    as_user: tuple[str, ...] = ()
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        as_user = ("runuser", "-u", "nobody", "--")
    server = PostgresServer(bin_folder, root, free_port(), as_user)
    try:
        initdb = [*as_user, str(bin_folder / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "crackscope"]
        initdb += ["-E", "UTF8", "--locale=C", "--no-sync"]
        done = subprocess.run(initdb, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        server.start()
        with psycopg.connect(server.database_url("postgres"), autocommit=True) as db:
            db.execute("CREATE DATABASE crackscope")
    except BaseException:
        server.remove()
        raise
    return server
