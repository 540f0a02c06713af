"""Keys of any orderable type (DESIGN.md, "Real databases"): the application's tables keyed by
integer, uuid or text instead of the reference schema's bigint. migrate reads each key's type from
the catalog and generates the walks, positions and the storage outbox in it; doctor, a dry run and
a run (in batches of 2, so that every walk resumes from a position) change exactly the eligible
rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from maintctl.sqlfiles import read_sql
from tests.conftest import Cli
from tests.data import Conn, keys, one, snapshot

# What each key type replaces the reference schema's `bigint generated always as identity` with.
KEYS = {
    "integer": "integer generated always as identity",
    "uuid": "uuid default gen_random_uuid()",
    "text": "text default md5(random()::text)",
}


def rebuild_with_keys(conn: Conn, key_type: str) -> None:
    """The reference tables again, every key and reference to one of the given type."""
    conn.execute("drop table import_jobs, temp_uploads, raw_import_items, import_runs")
    schema = read_sql("application_schema.sql")
    schema = schema.replace("bigint generated always as identity", KEYS[key_type])
    schema = schema.replace("run_id     bigint", f"run_id     {key_type}")
    schema = schema.replace("run_id      bigint", f"run_id      {key_type}")
    conn.execute(schema)


def build_rows(conn: Conn) -> dict[str, Any]:
    """Rows each rule takes and rows each must leave alone."""
    run = "insert into import_runs (status, created_at, heartbeat_at, finished_at) values "
    rows: dict[str, Any] = {
        "stuck": {
            one(
                conn,
                run + "('processing', now() - interval '3 days', now() - %s::interval, "
                "null) returning id",
                [age],
            )
            for age in ("25 hours", "26 hours", "27 hours")
        },
        "live": one(
            conn, run + "('processing', now(), now() - %s::interval, null) returning id", ["1 hour"]
        ),
        "old_failed": [
            one(
                conn,
                run + "('failed', now() - interval '40 days', null, "
                "now() - %s::interval) returning id",
                [age],
            )
            for age in ("31 days", "32 days", "33 days")
        ],
        "new_failed": one(
            conn, run + "('failed', now(), null, now() - %s::interval) returning id", ["1 day"]
        ),
    }
    for run_id in (*rows["old_failed"], rows["new_failed"]):
        conn.execute(
            "insert into raw_import_items (run_id, data) "
            "select %s, '{}' from generate_series(1, 3)",
            [run_id],
        )
    upload = "insert into temp_uploads (created_at, storage_path, size_bytes) values "
    rows["old_uploads"] = {
        one(conn, upload + "(now() - %s::interval, %s, 10) returning id", [f"{n} days", f"o{n}"])
        for n in range(2, 7)
    }
    rows["fresh_uploads"] = {
        one(conn, upload + "(now() - %s::interval, %s, 10) returning id", [age, "fresh"])
        for age in ("1 hour", "2 hours")
    }
    job = (
        "insert into import_jobs (status, created_at, finished_at, payload, log) values "
        "(%s, now() - interval '9 days', now() - %s::interval, '{\"a\": 1}', 'log') returning id"
    )
    rows["old_jobs"] = {one(conn, job, ["completed", f"{n} days"]) for n in (8, 9, 10)}
    rows["new_jobs"] = {one(conn, job, ["completed", "1 day"])}
    return rows


@pytest.mark.parametrize("key_type", sorted(KEYS))
def test_every_rule_walks_keys_of_the_application_s_own_type(
    bare_cli: Cli, bare_db_url: str, key_type: str
) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        rebuild_with_keys(conn, key_type)
        rows = build_rows(conn)
        items_before = keys(conn, "select id from raw_import_items")

        migrate = bare_cli("migrate")
        assert migrate.exit_code == 0, migrate.stderr
        doctor = bare_cli("doctor", "--json")
        assert doctor.exit_code == 0, doctor.stdout + doctor.stderr
        dry = bare_cli("run", "--dry-run", "--json")
        assert dry.exit_code == 0, dry.stderr
        would = {task["task"]: task["rows"] for task in json.loads(dry.stdout)["tasks"]}
        assert would == {"stuck": 3, "temp": 5, "compact": 3, "raw": 9}
        assert keys(conn, "select id from raw_import_items") == items_before  # nothing changed

        run = bare_cli("run", "--batch-size", "2", "--json")

        assert run.exit_code == 0, run.stdout + run.stderr
        done = {
            task["task"]: (task["status"], task["rows"]) for task in json.loads(run.stdout)["tasks"]
        }
        assert done == {
            "stuck": ("ok", 3),
            "temp": ("ok", 5),
            "compact": ("ok", 3),
            "raw": ("ok", 9),
        }
        failed = keys(
            conn,
            "select id from import_runs where status = 'failed' and "
            "error_message like 'Timed out%'",
        )
        assert failed == rows["stuck"]
        assert one(conn, "select status from import_runs where id = %s", [rows["live"]]) == (
            "processing"
        )
        assert keys(conn, "select id from temp_uploads") == rows["fresh_uploads"]
        outboxed = keys(conn, "select upload_id from maintenance.storage_outbox_files")
        assert outboxed == {str(key) for key in rows["old_uploads"]}
        assert (
            keys(conn, "select id from import_jobs where compacted_at is not null")
            == (rows["old_jobs"])
        )
        assert (
            keys(conn, "select id from import_jobs where payload is not null") == (rows["new_jobs"])
        )
        assert keys(conn, "select distinct run_id from raw_import_items") == {rows["new_failed"]}
        assert one(conn, "select count(*) from raw_import_items", []) == 3


@pytest.mark.parametrize("key_type", sorted(KEYS))
def test_restore_puts_back_what_a_run_removed_by_keys_of_the_application_s_own_type(
    bare_cli: Cli, bare_db_url: str, key_type: str, tmp_path: Path
) -> None:
    archive = str(tmp_path / "archive")
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        rebuild_with_keys(conn, key_type)
        build_rows(conn)
        assert bare_cli("migrate").exit_code == 0
        before = snapshot(conn)
        run = bare_cli("run", "--batch-size", "2", "--archive", archive)
        assert run.exit_code == 0, run.stderr
        assert snapshot(conn) != before
        run_id = str(one(conn, "select max(id) from maintenance.runs", []))

        restored = bare_cli("restore", "--run", run_id, "--archive", archive, "--json")

        assert restored.exit_code == 0, restored.stdout + restored.stderr
        assert snapshot(conn) == before
        document = json.loads(restored.stdout)
        assert {t["table"]: t["restored"] for t in document["tables"]} == {
            "import_runs": 3,
            "temp_uploads": 5,
            "import_jobs": 3,
            "raw_import_items": 9,
        }
        # The restored uploads' files were still in the outbox (keys as text): they stay.
        assert (document["filesKept"], document["filesHandedOver"]) == (5, 0)
        assert one(conn, "select count(*) from maintenance.storage_outbox", []) == 0
