"""A hot standby of a private server (tests/private_server.py): pg_basebackup -R of the primary
into a directory of its own, started on a free port, streaming from the primary. Never of the
shared server."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator

import psycopg

from tests.private_server import PrivateServer, private_root


@contextlib.contextmanager
def hot_standby(primary: PrivateServer) -> Iterator[PrivateServer]:
    """A started standby of the (started) primary, replaying what the primary had committed
    when it was made; stopped and removed at the end."""
    root = private_root()
    standby = primary.standby(root)
    try:
        standby.start()
        _wait_for_recovery(standby)
        yield standby
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            standby.stop()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_recovery(standby: PrivateServer) -> None:
    """Until the standby answers, in recovery (pg_ctl -w returns once it accepts connections)."""
    for _ in range(100):
        with (
            contextlib.suppress(psycopg.OperationalError),
            psycopg.connect(standby.url(), connect_timeout=2) as conn,
        ):
            row = conn.execute("select pg_is_in_recovery()").fetchone()
            assert row == (True,), "a standby made by pg_basebackup -R is in recovery"
            return
        time.sleep(0.1)
    raise AssertionError("the standby never accepted connections")
