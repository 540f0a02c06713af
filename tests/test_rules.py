"""Each rule on both sides of its threshold, through the real CLI against a real PostgreSQL."""

from __future__ import annotations

import calendar
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from maintctl.cli import app
from tests.conftest import Cli
from tests.data import (
    Conn,
    add_items,
    add_job,
    add_run,
    add_temp_upload,
    count,
    set_database_default,
)


def run_json(cli: Cli, *args: str) -> dict[str, object]:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def summary_of(conn: Conn, job: int) -> tuple[dict[str, Any], int]:
    """A compacted job's summary and its size as JSON text, in bytes."""
    row = conn.execute(
        "select result, octet_length(result::text) from import_jobs where id = %s", [job]
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def status_of(conn: Conn, run_id: int) -> str:
    row = conn.execute("select status from import_runs where id = %s", [run_id]).fetchone()
    assert row is not None
    return str(row[0])


def test_stuck_marks_only_runs_silent_past_the_threshold(cli: Cli, conn: Conn) -> None:
    past = add_run(
        conn, "processing", created="3 days", started="3 days", heartbeat="24 hours 1 minute"
    )
    inside = add_run(
        conn, "processing", created="3 days", started="3 days", heartbeat="23 hours 59 minutes"
    )
    other_status = add_run(conn, "pending", created="3 days")

    report = run_json(cli, "stuck")

    assert report["stuckRunsMarked"] == 1
    assert status_of(conn, past) == "failed"
    assert status_of(conn, inside) == "processing"
    assert status_of(conn, other_status) == "pending"


def test_stuck_heartbeat_wins_over_an_old_start(cli: Cli, conn: Conn) -> None:
    # Started three days ago but heartbeating: alive. No heartbeat at all: judged by started_at,
    # then by created_at.
    alive = add_run(conn, "processing", created="3 days", started="3 days", heartbeat="5 minutes")
    silent = add_run(conn, "processing", created="3 days", started="25 hours")
    never_started = add_run(conn, "processing", created="25 hours")
    just_started = add_run(conn, "processing", created="3 days", started="1 hour")

    run_json(cli, "stuck")

    assert status_of(conn, alive) == "processing"
    assert status_of(conn, silent) == "failed"
    assert status_of(conn, never_started) == "failed"
    assert status_of(conn, just_started) == "processing"


def test_stuck_run_gets_finished_at_and_a_timeout_message_naming_the_threshold(
    cli: Cli, conn: Conn
) -> None:
    # The message must not depend on how the session prints intervals.
    set_database_default(conn, "intervalstyle", "sql_standard")
    run_id = add_run(conn, "processing", created="3 days", started="3 days", heartbeat="40 hours")

    run_json(cli, "stuck", "--older-than", "36h")

    row = conn.execute(
        "select error_message, now() - finished_at < interval '1 minute' from import_runs "
        "where id = %s",
        [run_id],
    ).fetchone()
    assert row is not None
    message, finished_just_now = row
    assert message == "Timed out: no sign of life for more than 1d12h (maintctl stuck_after)"
    assert finished_just_now


def test_purge_temp_deletes_uploads_past_the_ttl(cli: Cli, conn: Conn) -> None:
    add_temp_upload(conn, "24 hours 1 minute")
    add_temp_upload(conn, "10 days")
    kept = add_temp_upload(conn, "23 hours 59 minutes")

    report = run_json(cli, "purge-temp")

    assert report["tempUploadsPurged"] == 2
    assert conn.execute("select id from temp_uploads").fetchall() == [(kept,)]


def test_compact_empties_old_finished_jobs_and_keeps_the_audit_columns(
    cli: Cli, conn: Conn
) -> None:
    run_id = add_run(conn, "completed", created="9 days")
    past = add_job(conn, "completed", created="9 days", finished="7 days 1 minute", run_id=run_id)
    before = conn.execute(
        "select id, run_id, status, created_at, finished_at from import_jobs where id = %s", [past]
    ).fetchone()

    report = run_json(cli, "compact")

    assert report["importJobsCompacted"] == 1
    after = conn.execute(
        "select id, run_id, status, created_at, finished_at from import_jobs where id = %s", [past]
    ).fetchone()
    assert after == before
    row = conn.execute(
        "select payload, log, result, compacted_at is not null from import_jobs where id = %s",
        [past],
    ).fetchone()
    assert row is not None
    payload, log, result, compacted = row
    assert (payload, log, compacted) == (None, None, True)
    assert result["compacted"] is True
    assert result["totals"] == {"rowsImported": 10, "rowsRejected": 1}
    assert result["payloadBytes"] > 0
    assert result["logBytes"] == len("line 1\nline 2")


def test_compact_leaves_recent_and_unfinished_jobs(cli: Cli, conn: Conn) -> None:
    inside = add_job(conn, "completed", created="8 days", finished="6 days 23 hours 59 minutes")
    running = add_job(conn, "running", created="30 days")
    queued = add_job(conn, "queued", created="30 days")
    # No finished_at: judged by created_at.
    cancelled = add_job(conn, "cancelled", created="7 days 1 minute")

    report = run_json(cli, "compact")

    assert report["importJobsCompacted"] == 1
    compacted = conn.execute(
        "select id from import_jobs where compacted_at is not null order by id"
    ).fetchall()
    assert compacted == [(cancelled,)]
    for job in (inside, running, queued):
        assert (
            count(
                conn,
                "select count(*) from import_jobs where id = %s and payload is not null",
                [job],
            )
            == 1
        )


def test_compact_summary_stays_under_1kb_and_keeps_the_error(cli: Cli, conn: Conn) -> None:
    huge_result = json.dumps(
        {"error": "x" * 5000, **{f"counter_{n:02d}": n for n in range(50)}, "blob": "y" * 100000}
    )
    log = "\n".join(f"step {n}" for n in range(10000)) + "\nFATAL: disk full\n"
    job = add_job(
        conn, "failed", created="40 days", finished="40 days", result=huge_result, log=log
    )

    run_json(cli, "compact")

    summary, size = summary_of(conn, job)
    assert size <= 1024
    assert summary["error"].startswith("xxx")
    assert summary["lastLogLine"] == "FATAL: disk full"
    assert summary["resultBytes"] > 100000
    assert len(summary["totals"]) == 12


def test_compact_is_idempotent(cli: Cli, conn: Conn) -> None:
    job = add_job(conn, "completed", created="30 days", finished="30 days")
    run_json(cli, "compact")
    first = conn.execute(
        "select result, compacted_at from import_jobs where id = %s", [job]
    ).fetchone()

    report = run_json(cli, "compact")

    assert report["importJobsCompacted"] == 0
    assert (
        conn.execute("select result, compacted_at from import_jobs where id = %s", [job]).fetchone()
        == first
    )


def test_purge_raw_deletes_items_of_old_failed_runs_and_keeps_the_runs(
    cli: Cli, conn: Conn
) -> None:
    old_failed = add_run(conn, "failed", created="40 days", finished="30 days 1 minute")
    recent_failed = add_run(
        conn, "failed", created="40 days", finished="29 days 23 hours 59 minutes"
    )
    # Never finished: judged by started_at.
    unfinished_failed = add_run(conn, "failed", created="40 days", started="31 days")
    old_completed = add_run(conn, "completed", created="90 days", finished="90 days")
    for run_id in (old_failed, recent_failed, unfinished_failed, old_completed):
        add_items(conn, run_id, 7)

    report = run_json(cli, "purge-raw")

    assert report["rawItemsPurged"] == 14
    remaining = conn.execute(
        "select run_id, count(*) from raw_import_items group by run_id order by run_id"
    ).fetchall()
    assert remaining == [(recent_failed, 7), (old_completed, 7)]
    assert count(conn, "select count(*) from import_runs") == 4


def test_each_cutoff_is_the_database_now_minus_the_threshold(cli: Cli, conn: Conn) -> None:
    report = run_json(cli, "run", "--dry-run")
    row = conn.execute("select now()").fetchone()
    assert row is not None
    server_now = row[0]
    tasks = {task["task"]: task for task in report["tasks"]}  # type: ignore[attr-defined]
    from datetime import datetime, timedelta

    expected = {"stuck": 1, "temp": 1, "compact": 7, "raw": 30}
    for name, days in expected.items():
        cutoff = datetime.fromisoformat(tasks[name]["cutoff"].replace("Z", "+00:00"))
        assert abs((server_now - timedelta(days=days)) - cutoff) < timedelta(seconds=30)


def test_a_run_its_worker_holds_is_left_alone_and_stays_completed(
    cli: Cli, conn: Conn, db_url: str
) -> None:
    run_id = add_run(conn, "processing", created="3 days", started="3 days", heartbeat="2 days")
    with psycopg.connect(db_url) as worker:
        # The worker is finishing this run right now: it holds the row...
        worker.execute("select 1 from import_runs where id = %s for update", [run_id])

        report = run_json(cli, "stuck")

        # ...and then commits it as completed.
        worker.execute(
            "update import_runs set status = 'completed', finished_at = now() where id = %s",
            [run_id],
        )
        worker.commit()

    assert report["stuckRunsMarked"] == 0
    assert status_of(conn, run_id) == "completed"
    assert run_json(cli, "stuck")["stuckRunsMarked"] == 0


def test_compact_summary_fits_1kb_with_escaped_and_multibyte_text(cli: Cli, conn: Conn) -> None:
    # Control characters take six bytes once escaped in JSON text, emoji four in UTF-8.
    nasty = json.dumps({"error": "\u0001" * 400, "message": "x"})
    log = "\n".join(["ok"] * 10) + "\n" + "\U0001f4a5\u0002" * 400
    job = add_job(conn, "failed", created="40 days", finished="40 days", result=nasty, log=log)

    run_json(cli, "compact")

    summary, size = summary_of(conn, job)
    assert size <= 1024
    assert summary["compacted"] is True
    assert summary["resultBytes"] > 2000


def test_purge_raw_skips_a_run_that_its_worker_holds(cli: Cli, conn: Conn, db_url: str) -> None:
    run_id = add_run(conn, "failed", created="40 days", finished="35 days")
    add_items(conn, run_id, 3)
    with psycopg.connect(db_url) as worker:
        # A worker re-queueing the run holds its row until it commits.
        worker.execute("update import_runs set status = 'pending' where id = %s", [run_id])

        report = run_json(cli, "purge-raw")

        worker.commit()

    assert report["rawItemsPurged"] == 0
    assert count(conn, "select count(*) from raw_import_items") == 3


def test_thresholds_are_hours_whatever_the_session_time_zone(conn: Conn, db_url: str) -> None:
    # A time zone whose daylight-saving time began ten days ago (POSIX rule, Julian days), so the
    # 30-day window crosses the change: 30 days must still mean 720 hours.
    today = datetime.now(UTC).date()

    def julian(day: date) -> int:  # POSIX Jn: 1..365, February 29 never counted
        leap_shift = calendar.isleap(day.year) and day.month > 2
        return day.timetuple().tm_yday - leap_shift

    zone = (
        f"AAA0BBB,J{julian(today - timedelta(days=10))}/0,J{julian(today + timedelta(days=100))}/0"
    )
    local = make_conninfo(db_url, options=f"-c TimeZone={zone}")

    result = CliRunner().invoke(
        app, ["run", "--dry-run", "--json"], env={"MAINTCTL_DATABASE_URL": local}
    )

    assert result.exit_code == 0, result.stderr
    row = conn.execute("select now()").fetchone()
    assert row is not None
    cutoffs = {
        task["task"]: datetime.fromisoformat(task["cutoff"].replace("Z", "+00:00"))
        for task in json.loads(result.stdout)["tasks"]
    }
    assert abs(cutoffs["raw"] - (row[0] - timedelta(hours=720))) < timedelta(seconds=30)
    assert abs(cutoffs["compact"] - (row[0] - timedelta(hours=168))) < timedelta(seconds=30)
