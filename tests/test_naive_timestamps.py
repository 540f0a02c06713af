"""Naive timestamps (DESIGN.md, "Real databases"): the application's time columns are
`timestamp without time zone` and it writes UTC. Whatever TimeZone maintctl's session gets (here
the database's default, east and west of UTC), the rules read them in naive_time_zone (default
UTC): a row a minute inside a threshold stays, a row past it goes, and the finished_at that stuck
writes is UTC too. doctor names the naive columns and the zone."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from maintctl.sqlfiles import read_sql
from tests.conftest import Cli
from tests.data import Conn, keys, one

# An application writing UTC: its own clock, as a naive value.
UTC_NOW = "(now() at time zone 'UTC')"


def rebuild_naive(conn: Conn, dbname: str, time_zone: str) -> None:
    conn.execute("drop table import_jobs, temp_uploads, raw_import_items, import_runs")
    conn.execute(read_sql("application_schema.sql").replace("timestamptz", "timestamp"))
    conn.execute(
        sql.SQL("alter database {} set timezone = {}").format(
            sql.Identifier(dbname), sql.Literal(time_zone)
        )
    )


def pair(conn: Conn, statement: str, inside: str, past: str) -> tuple[int, int]:
    """A row a little inside the threshold and one a little past it (ages before UTC now)."""
    return one(conn, statement, [inside]), one(conn, statement, [past])


@pytest.mark.parametrize("time_zone", ["Asia/Kolkata", "UTC", "America/Los_Angeles"])
def test_naive_columns_are_read_in_utc_whatever_the_session_time_zone(
    bare_cli: Cli, bare_db_url: str, time_zone: str
) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        dbname = one(conn, "select current_database()", [])
        rebuild_naive(conn, dbname, time_zone)
        run = (
            f"insert into import_runs (status, created_at, heartbeat_at) values "
            f"('processing', {UTC_NOW} - interval '3 days', {UTC_NOW} - %s::interval) returning id"
        )
        live, stuck = pair(conn, run, "23 hours", "25 hours")
        failed = (
            f"insert into import_runs (status, finished_at) values "
            f"('failed', {UTC_NOW} - %s::interval) returning id"
        )
        recent_failed, old_failed = pair(conn, failed, "29 days 20 hours", "30 days 4 hours")
        for run_id in (recent_failed, old_failed):
            conn.execute("insert into raw_import_items (run_id) values (%s), (%s)", [run_id] * 2)
        upload = (
            f"insert into temp_uploads (created_at, storage_path) values "
            f"({UTC_NOW} - %s::interval, 'f') returning id"
        )
        fresh_upload, old_upload = pair(conn, upload, "20 hours", "28 hours")
        job = (
            f"insert into import_jobs (status, finished_at, payload) values "
            f"('completed', {UTC_NOW} - %s::interval, '{{}}') returning id"
        )
        recent_job, old_job = pair(conn, job, "6 days 18 hours", "7 days 6 hours")

        assert bare_cli("migrate").exit_code == 0
        doctor = bare_cli("doctor", "--json")
        assert doctor.exit_code == 0, doctor.stdout
        checks = {check["check"]: check["detail"] for check in json.loads(doctor.stdout)["checks"]}
        assert checks["timestamps"] == (
            "import_jobs.created_at, import_jobs.finished_at, import_runs.created_at, "
            "import_runs.finished_at, import_runs.heartbeat_at, import_runs.started_at, "
            "temp_uploads.created_at: timestamp without time zone, read and written in UTC "
            "(naive_time_zone), whatever the session's TimeZone"
        )
        dry = json.loads(bare_cli("run", "--dry-run", "--json").stdout)
        assert {task["task"]: task["rows"] for task in dry["tasks"]} == {
            "stuck": 1,
            "temp": 1,
            "compact": 1,
            "raw": 2,
        }

        result = bare_cli("run", "--json")

        assert result.exit_code == 0, result.stdout + result.stderr
        statuses: dict[int, str] = dict(
            conn.execute("select id, status from import_runs").fetchall()
        )
        assert (statuses[live], statuses[stuck]) == ("processing", "failed")
        assert keys(conn, "select id from temp_uploads") == {fresh_upload}
        assert keys(conn, "select id from import_jobs where compacted_at is null") == {recent_job}
        assert keys(conn, "select run_id from raw_import_items") == {recent_failed}
        age = one(
            conn,
            f"select {UTC_NOW} - finished_at from import_runs where id = %s",
            [stuck],
        )
        assert timedelta(0) <= age < timedelta(minutes=1)  # finished_at written in UTC
        assert old_job not in keys(conn, "select id from import_jobs where compacted_at is null")
        assert old_upload not in keys(conn, "select id from temp_uploads")


def test_a_naive_time_zone_the_server_does_not_know_is_refused_before_migrate_changes_anything(
    bare_cli: Cli, bare_db_url: str
) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute("alter table temp_uploads alter column created_at type timestamp")

        result = bare_cli("migrate", env={"MAINTCTL_NAIVE_TIME_ZONE": "Mars/Olympus"})

        assert result.exit_code == 78
        assert result.stderr.strip().endswith(
            "naive_time_zone 'Mars/Olympus' is not a time zone this server knows "
            "(pg_timezone_names), and temp_uploads.created_at are read in it"
        )
        assert one(conn, "select to_regnamespace('maintenance')", []) is None  # nothing made
