"""Status columns of an enum type (DESIGN.md, "Real databases"): the rules' statuses are the
enum's labels, statuses the rules do not name are left alone; a status the rules name that the
enum lacks is refused by migrate before it changes anything (the catalog as it was)."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from maintctl.sqlfiles import read_sql
from tests.conftest import Cli
from tests.data import Conn

# Every object of the database that is not the system's, with its definition where it has one.
SNAPSHOT = """
select 'namespace', nspname, '' from pg_namespace where nspname not like 'pg\\_%'
union all
select 'relation', c.oid::regclass::text,
       concat_ws(' | ', c.relkind, array_to_string(c.relacl, ','), pg_get_viewdef(c.oid))
from pg_class c where c.relnamespace not in ('pg_catalog'::regnamespace,
  'information_schema'::regnamespace, 'pg_toast'::regnamespace)
union all
select 'column', attrelid::regclass::text || '.' || attname, format_type(atttypid, atttypmod)
from pg_attribute where attnum > 0 and attrelid in (select oid from pg_class
  where relnamespace = 'public'::regnamespace)
union all
select 'function', p.oid::regprocedure::text, md5(p.prosrc) from pg_proc p
where p.pronamespace not in ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
order by 1, 2
"""


def catalog(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(SNAPSHOT).fetchall()


RUN_STATUSES = ("pending", "processing", "completed", "failed", "cancelled", "paused")
JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled", "archived")


def rebuild_with_enums(conn: Conn, run_labels: tuple[str, ...]) -> None:
    """The reference tables with enum status columns (the runs' of the given labels)."""
    conn.execute("drop table import_jobs, temp_uploads, raw_import_items, import_runs")
    labels = ", ".join(f"'{label}'" for label in run_labels)
    conn.execute(f"create type run_status as enum ({labels})")
    conn.execute(f"create type job_status as enum ({', '.join(repr(s) for s in JOB_STATUSES)})")
    schema = read_sql("application_schema.sql")
    runs = "('pending','processing','completed','failed','cancelled')"
    jobs = "('queued','running','completed','failed','cancelled')"
    schema = schema.replace(
        f"status        text not null default 'pending'\n                check (status in {runs}),",
        "status        run_status not null,",
    ).replace(
        f"status      text not null default 'queued'\n              check (status in {jobs}),",
        "status      job_status not null,",
    )
    assert "run_status not null" in schema
    assert "job_status not null" in schema
    conn.execute(schema)


def one(conn: Conn, statement: str, params: list[Any]) -> Any:
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return row[0]


def test_enum_statuses_are_compared_as_the_enum_s_labels(bare_cli: Cli, bare_db_url: str) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        rebuild_with_enums(conn, RUN_STATUSES)
        runs = {
            status: one(
                conn,
                "insert into import_runs (status, heartbeat_at, finished_at) values "
                "(%s, now() - interval '2 days', now() - interval '40 days') returning id",
                [status],
            )
            for status in ("processing", "paused", "failed")
        }
        conn.execute(
            "insert into raw_import_items (run_id) select id from import_runs where status in "
            "('failed', 'paused')"
        )
        jobs = {
            status: one(
                conn,
                "insert into import_jobs (status, finished_at, payload) values "
                "(%s, now() - interval '10 days', '{}') returning id",
                [status],
            )
            for status in ("completed", "failed", "archived")
        }

        assert bare_cli("migrate").exit_code == 0
        doctor = bare_cli("doctor")
        assert doctor.exit_code == 0, doctor.stdout
        dry = json.loads(bare_cli("run", "--dry-run", "--json").stdout)
        assert {t["task"]: t["rows"] for t in dry["tasks"]} == {
            "stuck": 1,
            "temp": 0,
            "compact": 2,
            "raw": 1,
        }
        result = bare_cli("run", "--json")

        assert result.exit_code == 0, result.stdout + result.stderr
        statuses: dict[int, str] = dict(
            conn.execute("select id, status::text from import_runs").fetchall()
        )
        assert statuses == {
            runs["processing"]: "failed",  # stuck
            runs["paused"]: "paused",  # a status the rules do not name: left alone
            runs["failed"]: "failed",
        }
        compacted = {
            row[0]
            for row in conn.execute("select id from import_jobs where compacted_at is not null")
        }
        assert compacted == {jobs["completed"], jobs["failed"]}  # not the archived one
        items = conn.execute("select run_id from raw_import_items").fetchall()
        assert items == [(runs["paused"],)]


def test_a_status_the_enum_lacks_is_refused_before_migrate_changes_anything(
    bare_cli: Cli, bare_db_url: str
) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        # The application's runs are 'running', never 'processing' (the stuck rule's default).
        rebuild_with_enums(conn, ("pending", "running", "completed", "failed"))
    before = catalog(bare_db_url)

    result = bare_cli("migrate")

    assert result.exit_code == 78
    assert result.stderr == (
        "maintctl: error: in schema 'public', import_runs.status (an enum run_status: pending, "
        "running, completed, failed) has no status 'processing' (stuck's running); "
        "name the application's own in maintctl.toml (see maintctl config)\n"
    )
    assert catalog(bare_db_url) == before
