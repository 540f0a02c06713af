"""Batches commit asynchronously, the ledger synchronously: a server crash (pg_ctl stop -m
immediate, on a private server whose WAL writer waits 10 s) may lose the last batches, which the
next run redoes, but never the ledger's record of a finished run, nor an upload: each one is in
temp_uploads or in the storage outbox, never both and never neither."""

from __future__ import annotations

import json
import subprocess
import time

import psycopg

from tests.data import count
from tests.private_server import PrivateServer
from tests.test_commands import cron_environment, maintctl_command, run_like_cron

UPLOADS = 4000
OLD = "select count(*) from temp_uploads"
IN_OUTBOX = "select count(*) from maintenance.storage_outbox_files"
IN_BOTH = (
    "select count(*) from temp_uploads t "
    "join maintenance.storage_outbox_files f on f.upload_id = t.id::text"
)


def lazy_wal_writer(server: PrivateServer) -> str:
    """Start the server with a WAL writer that flushes asynchronous commits only every 10 s, and
    return the URL of a migrated database holding UPLOADS expired uploads."""
    server.options = ["-c wal_writer_delay=10000ms", "-c wal_writer_flush_after=1GB"]
    server.start()
    url = server.migrated_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into temp_uploads (created_at, storage_path) "
            "select now() - interval '2 days', 'uploads/' || n from generate_series(1, %s) n",
            [UPLOADS],
        )
        conn.execute("checkpoint")
    return url


def test_a_crash_right_after_a_run_keeps_its_ledger_row_and_every_batch(
    private_server: PrivateServer,
) -> None:
    url = lazy_wal_writer(private_server)

    finished = run_like_cron(url, "purge-temp", "--json", "--batch-size", "200", timeout=120)
    private_server.stop("immediate")
    private_server.start()

    assert finished.returncode == 0, finished.stderr
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select status, tasks from maintenance.runs").fetchone()
        assert row is not None
        status, tasks = row
        assert status == "succeeded"
        assert tasks[0]["rows"] == UPLOADS
        # The ledger's synchronous commit flushed the WAL of every batch before it.
        assert count(conn, OLD) == 0
        assert count(conn, IN_OUTBOX) == UPLOADS


def test_a_crash_during_a_run_loses_at_most_whole_batches_and_the_next_run_finishes(
    private_server: PrivateServer,
) -> None:
    url = lazy_wal_writer(private_server)
    process = subprocess.Popen(
        [*maintctl_command(), "purge-temp", "--batch-size", "100", "--quiet"],
        env={**cron_environment(url), "MAINTCTL_MAX_WAL_RATE": "200kB/s"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    with psycopg.connect(url, autocommit=True) as probe:
        while count(probe, IN_OUTBOX) < 500:
            assert time.monotonic() < deadline, "the purge never got going"
            time.sleep(0.05)

    private_server.stop("immediate")
    private_server.start()
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 69, stderr
    with psycopg.connect(url, autocommit=True) as conn:
        left, handed_over = count(conn, OLD), count(conn, IN_OUTBOX)
        assert left + handed_over == UPLOADS
        assert count(conn, IN_BOTH) == 0
        assert left > 0

        again = run_like_cron(url, "purge-temp", "--json", timeout=120)

        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["tempUploadsPurged"] == left
        assert count(conn, OLD) == 0
        assert count(conn, IN_OUTBOX) == UPLOADS
        distinct = "select count(distinct upload_id) from maintenance.storage_outbox_files"
        assert count(conn, distinct) == UPLOADS
