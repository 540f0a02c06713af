"""A real PgBouncer in transaction mode between maintctl and the test server, started by the
tests themselves (Debian's `pgbouncer`; the tests that need it skip, saying so, without it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def socket_owner(host: str, port: int) -> str:
    import pwd

    path = Path(host) / f".s.PGSQL.{port}"
    if host.startswith("/") and path.exists():
        return pwd.getpwuid(path.stat().st_uid).pw_name
    return "nobody"


@dataclass(frozen=True)
class Pooler:
    port: int
    server_port: int
    log: Path

    def url(self, db_url: str) -> str:
        """The same database as `db_url`, dialled through the pooler."""
        return make_conninfo(db_url, host="127.0.0.1", port=str(self.port))


StartPooler = Callable[..., Pooler]


@pytest.fixture
def start_pgbouncer(server_url: str, tmp_path: Path) -> Iterator[StartPooler]:
    """Starts PgBouncer in transaction mode in front of the test server; stopped at the end.

    `pool_size` server connections per database: 1 makes every client share one server session
    between its transactions, which is what breaks anything that relies on session state.
    """
    if not Path(PGBOUNCER).exists():
        pytest.skip(f"needs Debian's pgbouncer ({PGBOUNCER} not found: apt-get install pgbouncer)")
    processes: list[subprocess.Popen[bytes]] = []
    target = conninfo_to_dict(server_url)
    # The embedded server listens on a unix socket only (host is its directory); 5432 on TCP.
    host = str(target.get("host") or "127.0.0.1")
    server_port = int(str(target.get("port") or 5432))
    user = str(target.get("user") or "postgres")

    def start(pool_size: int = 2) -> Pooler:
        port = free_port()
        directory = tmp_path / f"pgbouncer-{port}"
        directory.mkdir()
        ini = directory / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={host} port={server_port} user={user}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 100\n"
            "ignore_startup_parameters = extra_float_digits\n",
            encoding="utf-8",
        )
        log = directory / "pgbouncer.log"
        # PgBouncer refuses to run as root; -u drops to an ordinary user after reading the ini:
        # the owner of the server's socket (embedded server), who can reach it, else nobody.
        as_user = ["-u", socket_owner(host, server_port)] if os.geteuid() == 0 else []
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [PGBOUNCER, *as_user, str(ini)], stdout=sink, stderr=subprocess.STDOUT
            )
        processes.append(process)
        pooler = Pooler(port, server_port, log)
        deadline = time.monotonic() + 15
        while True:
            try:
                url = make_conninfo(server_url, host="127.0.0.1", port=str(port))
                with psycopg.connect(url, connect_timeout=2) as probe:
                    probe.execute("select 1")
                return pooler
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"pgbouncer did not start: {log.read_text(errors='replace')[-2000:]}"
                    ) from None
                time.sleep(0.1)

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
