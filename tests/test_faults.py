"""Faults, with real processes and sessions: a server restarted mid-run, a server that is not up
yet, the application holding locks, and a worker finishing a run while maintctl looks at it."""

from __future__ import annotations

import json
import subprocess
import time

import psycopg

from tests.conftest import Cli
from tests.data import Conn, add_run, count, load_sample, slow_down_deletes
from tests.pooler import free_port
from tests.private_server import PrivateServer
from tests.test_commands import cron_environment, maintctl_command
from tests.test_guard import launch


def wait_for(conn: Conn, sql: str, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not count(conn, sql):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_server_restart_mid_run_exits_69_in_one_line_and_the_next_run_finishes(
    private_server: PrivateServer,
) -> None:
    private_server.start()
    url = private_server.migrated_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into temp_uploads (created_at, storage_path) "
            "select now() - interval '2 days', 'f' || n from generate_series(1, 40) n"
        )
        slow_down_deletes(conn, 0.2)
    process = launch(url, "purge-temp", "--batch-size", "2")
    deadline = time.monotonic() + 30
    while True:
        with psycopg.connect(url) as probe:
            if count(probe, "select count(*) from temp_uploads") <= 36:
                break
        assert time.monotonic() < deadline, "the purge never got going"
        time.sleep(0.05)

    private_server.restart()
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 69, stderr
    assert stderr.startswith("maintctl: error: lost the connection to the database: ")
    assert stderr.count("\n") == 1
    assert "Traceback" not in stderr
    with psycopg.connect(url, autocommit=True) as conn:
        remaining = count(conn, "select count(*) from temp_uploads")
        assert remaining % 2 == 0, "only whole batches were committed"
        ledger = conn.execute("select status, errors from maintenance.runs").fetchone()
        assert ledger is not None
        assert ledger[0] == "failed"
        assert "lost the connection" in ledger[1][0]
        conn.execute("drop trigger slow on temp_uploads")
        finished = subprocess.run(
            [*maintctl_command(), "purge-temp", "--json"],
            env=cron_environment(url),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert finished.returncode == 0, finished.stderr
        assert json.loads(finished.stdout)["tempUploadsPurged"] == remaining
        assert count(conn, "select count(*) from temp_uploads") == 0


def test_failing_to_connect_is_retried_for_about_10_seconds_then_exits_69() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/imports"  # nothing listens there
    started = time.monotonic()
    completed = subprocess.run(
        [*maintctl_command(), "run"],
        env=cron_environment(url),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    elapsed = time.monotonic() - started

    assert completed.returncode == 69
    assert completed.stderr.startswith("maintctl: error: cannot connect to postgres@127.0.0.1:")
    assert completed.stderr.count("\n") == 1
    assert 7 < elapsed < 15, f"retried with backoff for about 10 s, not {elapsed:.1f} s"


def test_a_server_that_comes_up_during_the_connect_retries_is_reached(
    private_server: PrivateServer,
) -> None:
    private_server.start()
    url = private_server.migrated_database()
    private_server.stop()

    started = time.monotonic()
    process = launch(url, "run", "--json")
    time.sleep(3)
    private_server.start()
    stdout, stderr = process.communicate(timeout=60)
    elapsed = time.monotonic() - started

    assert process.returncode == 0, stderr
    assert json.loads(stdout)["errors"] == []
    assert elapsed > 3, "it waited for the server"
