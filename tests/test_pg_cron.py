"""The pg_cron entry points give the same result as `maintctl run` on the same data."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from maintctl.migrations import migrate
from maintctl.settings import Settings
from tests.conftest import Cli
from tests.data import Conn, count, hold_run_lease, load_sample, slow_down_deletes


def outcome(conn: Conn) -> dict[str, Any]:
    """What a run decided, without the clock readings that differ between two runs."""
    return {
        "runs": conn.execute(
            "select id, status, finished_at is null, left(error_message, 9) "
            "from import_runs order by id"
        ).fetchall(),
        "items": conn.execute("select id, run_id from raw_import_items order by id").fetchall(),
        "uploads": conn.execute("select id from temp_uploads order by id").fetchall(),
        "jobs": conn.execute(
            "select id, status, payload, log is null, result, compacted_at is null "
            "from import_jobs order by id"
        ).fetchall(),
    }


def rows_by_task(tasks: list[dict[str, Any]]) -> dict[str, int]:
    return {task["task"]: task["rows"] for task in tasks}


def test_run_maintenance_cleanup_matches_maintctl_run(
    cli: Cli, conn: Conn, bare_db_url: str
) -> None:
    # Two databases with the same rows: the sample is placed relative to now(), a moment apart,
    # and no row sits within seconds of a threshold.
    load_sample(conn)
    with psycopg.connect(bare_db_url, autocommit=True) as twin:
        load_sample(twin)
        migrate(twin, Settings(database_url=SecretStr(bare_db_url)))

        report = json.loads(cli("run", "--json").stdout)
        summary = twin.execute("call maintenance.run_maintenance_cleanup()").fetchone()

        assert summary is not None
        assert outcome(twin) == outcome(conn)
        ledger = twin.execute("select command, status, host from maintenance.runs").fetchall()
    rows = rows_by_task(summary[0]["tasks"])
    assert rows == rows_by_task(report["tasks"])
    assert rows == {"stuck": 15, "temp": 289, "compact": 210, "raw": 250}
    assert ledger == [("run_maintenance_cleanup", "succeeded", "database")]


def test_procedure_with_thresholds_and_small_batches(conn: Conn) -> None:
    load_sample(conn)

    row = conn.execute(
        "call maintenance.run_maintenance_cleanup(temp_upload_ttl => interval '48 hours', "
        "batch_size => 7)"
    ).fetchone()

    assert row is not None
    rows = rows_by_task(row[0]["tasks"])
    assert rows == {"stuck": 15, "temp": 145, "compact": 210, "raw": 250}


def test_procedure_respects_the_pause_and_the_run_lease(cli: Cli, conn: Conn, db_url: str) -> None:
    load_sample(conn)
    cli("pause", "--reason", "restoring a backup")
    paused = conn.execute("call maintenance.run_maintenance_cleanup()").fetchone()
    refused = cli("run")  # the CLI, stopped by the same pause
    cli("resume")
    with psycopg.connect(db_url, autocommit=True) as other:
        hold_run_lease(other, "cron-host-a")
        locked = conn.execute("call maintenance.run_maintenance_cleanup()").fetchone()

    assert paused is not None
    assert paused[0]["skipped"].startswith("maintenance is paused since ")
    assert paused[0]["skipped"].endswith(": restoring a backup (maintctl resume)")
    assert refused.stderr.splitlines()[-1] == f"maintctl: error: {paused[0]['skipped']}"
    assert locked is not None
    assert locked[0]["skipped"].startswith(
        "another maintenance run is in progress (host cron-host-a, started "
    )
    remaining = conn.execute("select * from maintenance.maintenance_status").fetchone()
    assert remaining == (15, 289, 250, 210)


def test_compact_old_import_jobs_function(conn: Conn) -> None:
    load_sample(conn)

    compacted = conn.execute("select maintenance.compact_old_import_jobs()").fetchone()
    again = conn.execute(
        "select maintenance.compact_old_import_jobs(interval '7 days', 10)"
    ).fetchone()

    assert compacted == (210,)
    assert again == (0,)


def test_procedure_inside_a_transaction_block_fails_before_touching_anything(
    conn: Conn, cli: Cli
) -> None:
    load_sample(conn)

    with pytest.raises(psycopg.errors.InvalidTransactionTermination), conn.transaction():
        conn.execute("call maintenance.run_maintenance_cleanup()")

    assert count(conn, "select count(*) from maintenance.runs") == 0
    # The run lock was never taken: the CLI runs at once.
    document = json.loads(cli("run", "--json").stdout)
    assert document["skipped"] is None
    assert document["tempUploadsPurged"] == 289


def test_procedure_ledger_rows_read_like_the_cli(conn: Conn, cli: Cli) -> None:
    load_sample(conn)
    conn.execute("call maintenance.run_maintenance_cleanup(stuck_after => interval '36 hours')")

    (run,) = json.loads(cli("history", "--json").stdout)

    assert run["thresholds"] == {
        "stuckAfter": "1d12h",
        "tempUploadTtl": "1d",
        "compactAfter": "7d",
        "rawItemsTtl": "30d",
        "batchSize": 5000,
    }
    for task in run["tasks"]:
        assert set(task) == {"task", "status", "rows", "batches", "durationMs", "cutoff", "error"}
        assert task["cutoff"].endswith("Z")
        assert len(task["cutoff"]) == 24
    assert [task["batches"] for task in run["tasks"]] == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            "call maintenance.run_maintenance_cleanup(batch_size => 0)",
            "batch_size must be at least 1",
        ),
        (
            "call maintenance.run_maintenance_cleanup(batch_size => null)",
            "batch_size must be at least 1",
        ),
        (
            "call maintenance.run_maintenance_cleanup(temp_upload_ttl => interval '-1 day')",
            "every threshold must be a positive interval",
        ),
        (
            "call maintenance.run_maintenance_cleanup(stuck_after => interval '30 minutes')",
            "a threshold under 1 hour needs force => true",
        ),
        ("select maintenance.compact_old_import_jobs(interval '7 days', 0)", "batch_size must be"),
        ("select maintenance.compact_old_import_jobs(null)", "every threshold must be a positive"),
    ],
)
def test_the_entry_points_refuse_bad_arguments_and_change_nothing(
    conn: Conn, call: str, message: str
) -> None:
    load_sample(conn)

    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        conn.execute(call)

    assert count(conn, "select count(*) from maintenance.runs") == 0
    assert conn.execute("select * from maintenance.maintenance_status").fetchone() == (
        15,
        289,
        250,
        210,
    )
    held = "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"
    assert count(conn, held) == 0


def test_forced_short_thresholds_are_allowed(conn: Conn) -> None:
    load_sample(conn)

    row = conn.execute(
        "call maintenance.run_maintenance_cleanup(temp_upload_ttl => interval '30 minutes', "
        "force => true)"
    ).fetchone()

    assert row is not None
    # Uploads every 9m30s from 9m30s ago, then older, and one at 23h: all but three are past 30m.
    assert rows_by_task(row[0]["tasks"])["temp"] == 430


def test_a_cancelled_call_releases_the_run_lock(conn: Conn, db_url: str, cli: Cli) -> None:
    load_sample(conn)
    slow_down_deletes(conn, 0.05)
    with psycopg.connect(db_url, autocommit=True) as caller:
        pid = caller.info.backend_pid
        caller.execute("set statement_timeout = '1s'")

        with pytest.raises(psycopg.errors.QueryCanceled):
            caller.execute("call maintenance.run_maintenance_cleanup(batch_size => 10)")

        held = count(
            conn,
            "select count(*) from pg_locks where locktype = 'advisory' and pid = %s",
            [pid],
        )
        conn.execute("drop trigger slow on temp_uploads")
        document = json.loads(cli("run", "--json").stdout)

    assert held == 0
    assert document["skipped"] is None
    assert document["tempUploadsPurged"] > 0


def test_the_cli_is_skipped_while_the_procedure_holds_the_lease(
    conn: Conn, db_url: str, cli: Cli
) -> None:
    load_sample(conn)
    slow_down_deletes(conn, 0.02)
    with psycopg.connect(db_url, autocommit=True) as caller:
        # The procedure purges 289 slow uploads in batches of 10: several seconds of holding.
        worker = threading.Thread(
            target=caller.execute,
            args=("call maintenance.run_maintenance_cleanup(batch_size => 10)",),
        )
        worker.start()
        try:
            deadline = time.monotonic() + 10
            running = "select count(*) from maintenance.runs where status = 'running'"
            while count(conn, running) == 0:
                assert time.monotonic() < deadline, "the procedure never started"
                time.sleep(0.05)
            skipped = json.loads(cli("run", "--json").stdout)["skipped"]
        finally:
            worker.join(timeout=60)

    assert skipped.startswith("another maintenance run is in progress (host database, started ")
    assert count(conn, "select count(*) from temp_uploads") == 433 - 289
