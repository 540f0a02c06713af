"""A failed `maintctl migrate` leaves the database as it was (DESIGN.md, "Real databases"): what
would fail once it had begun is checked first (an index name another relation holds), and an index
build (CREATE INDEX CONCURRENTLY, outside any transaction) that fails part way is undone: the
INVALID index it left and the columns it added are dropped, the old rules' functions, indexes and
fingerprint stay, and the next migrate installs the new rules."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import Cli, make_cli
from tests.data import Conn
from tests.test_commands import cron_environment, maintctl_command

# The temp rule reads another column: its index gets a new definition, its functions change,
# and so does the fingerprint.
NEW_COLUMN_POLICY = '[rules.temp]\ncreated_at = "uploaded_at"\n'


def catalog(conn: Conn) -> dict[str, list[tuple[Any, ...]]]:
    """What migrate may change: the application's columns and indexes (valid or not, with their
    comments), maintctl's functions (their whole definitions), the ledger of migrations and the
    record of the installed rules."""
    queries = {
        "columns": "select table_name::text, column_name::text, data_type::text "
        "from information_schema.columns where table_schema = 'public' order by 1, 2",
        "indexes": "select c.relname::text, pg_get_indexdef(c.oid), i.indisvalid, "
        "obj_description(c.oid, 'pg_class') from pg_index i join pg_class c on c.oid = "
        "i.indexrelid join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'public' order by 1",
        "functions": "select p.oid::regprocedure::text, pg_get_functiondef(p.oid) from pg_proc p "
        "join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'maintenance' "
        "and p.prokind in ('f', 'p') order by 1",
        "relations": "select c.relname::text, c.relkind::text from pg_class c join pg_namespace n "
        "on n.oid = c.relnamespace where n.nspname in ('public', 'maintenance') order by 1",
    }
    found = {name: conn.execute(query).fetchall() for name, query in queries.items()}
    if conn.execute("select to_regclass('maintenance.schema_migrations')").fetchone() != (None,):
        found["migrations"] = conn.execute(
            "select version, name from maintenance.schema_migrations order by 1"
        ).fetchall()
        found["installed"] = conn.execute("select * from maintenance.installed_rules").fetchall()
    return found


def backend_waiting(conn: Conn, statement: str) -> int | None:
    """The pid of a backend of this database waiting for a lock in `statement ...`."""
    row = conn.execute(
        "select pid from pg_stat_activity where datname = current_database() "
        "and wait_event_type = 'Lock' and query ilike %s",
        ["%" + statement + "%"],
    ).fetchone()
    return int(row[0]) if row else None


def wait_for(conn: Conn, statement: str, process: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 60  # a bound on a hang, not a timing assertion
    while time.monotonic() < deadline and process.poll() is None:
        pid = backend_waiting(conn, statement)
        if pid is not None:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no backend waited in {statement!r} (migrate: {process.poll()})")


def test_an_index_build_that_fails_part_way_is_undone_and_the_old_rules_stay(
    cli: Cli, conn: Conn, db_url: str, tmp_path: Path
) -> None:
    conn.execute("alter table temp_uploads add column uploaded_at timestamptz")
    # As before the compact rule had its column: this migrate adds it, and must take it back.
    conn.execute("alter table import_jobs drop column compacted_at")
    (tmp_path / "maintctl.toml").write_text(NEW_COLUMN_POLICY)
    before = catalog(conn)
    with psycopg.connect(db_url) as application:
        # A writer's open transaction: the concurrent build creates its (INVALID) index, then
        # waits for it to end; an operator cancels the build there.
        application.execute("lock table temp_uploads in row exclusive mode")
        process = subprocess.Popen(
            [*maintctl_command(), "migrate"],
            env=cron_environment(db_url),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            build = wait_for(conn, "create index concurrently", process)
            invalid = conn.execute(
                "select c.relname::text from pg_index i join pg_class c on c.oid = i.indexrelid "
                "where not i.indisvalid"
            ).fetchall()
            conn.execute("select pg_cancel_backend(%s)", [build])
            # migrate drops the INVALID index, which waits for the writer too.
            wait_for(conn, "drop index concurrently", process)
            application.rollback()
            _, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    after = catalog(conn)
    status = make_cli(db_url)("status")

    assert len(invalid) == 1, invalid
    assert invalid[0][0].startswith("maintctl_new_"), invalid
    assert process.returncode == 1, stderr
    assert stderr == (
        "maintctl: error: migrate did not install the rules: a statement ran longer than "
        "MAINTCTL_STATEMENT_TIMEOUT: canceling statement due to user request; it undid what it "
        f"had made (dropped index {invalid[0][0]}, dropped column import_jobs.compacted_at): the "
        "rules and the application's tables are as they were\n"
    )
    assert after == before
    # The old rules are what is installed: other commands say the policy changed.
    assert status.exit_code == 78
    assert status.stderr.endswith("run: maintctl migrate\n")
    # The next migrate installs the new rules: the new index takes the old one's name.
    migrated = cli("migrate")
    assert migrated.exit_code == 0, migrated.stderr
    indexes = {row[0]: row[1] for row in catalog(conn)["indexes"]}
    assert "(uploaded_at, id)" in indexes["maintctl_temp_uploads_created_at_id"]
    assert not [name for name in indexes if name.startswith("maintctl_new_")]
    assert cli("status").exit_code == 0


def test_an_index_name_another_relation_holds_is_refused_before_anything_is_made(
    bare_cli: Cli, bare_db_url: str
) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute("create view maintctl_temp_uploads_created_at_id as select 1 as one")
        before = catalog(conn)

        refused = bare_cli("migrate")

        after = catalog(conn)
        conn.execute("drop view maintctl_temp_uploads_created_at_id")
        assert bare_cli("migrate").exit_code == 0

    assert refused.exit_code == 78
    assert refused.stderr == (
        "maintctl: error: in schema 'public', the names of the rules' indexes are taken: "
        "maintctl_temp_uploads_created_at_id is a view; rename or drop those, then run "
        "maintctl migrate\n"
    )
    assert after == before
    assert "migrations" not in after  # not even maintctl's own schema


def test_a_time_column_the_rules_cannot_compare_is_refused_before_any_index_is_built(
    cli: Cli, conn: Conn
) -> None:
    # The application keeps its upload times as text: no cutoff compares with them, which the
    # rules' functions show when they are created, after the index builds.
    conn.execute("alter table temp_uploads alter column created_at type text")
    conn.execute("alter table import_jobs drop column compacted_at")
    before = catalog(conn)

    refused = cli("migrate")

    assert refused.exit_code == 78
    assert refused.stderr == (
        "maintctl: error: migrate did not install the rules: the database is not as maintctl "
        "expects: operator does not exist: text < timestamp with time zone; the rules and the "
        "application's tables were left as they were\n"
    )
    assert catalog(conn) == before


def test_a_first_migrate_that_cannot_install_the_rules_leaves_no_maintenance_schema(
    bare_cli: Cli, bare_db_url: str
) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute("alter table temp_uploads alter column created_at type text")
        before = catalog(conn)

        refused = bare_cli("migrate")

        assert refused.exit_code == 78, refused.stderr
        assert catalog(conn) == before
        assert conn.execute("select to_regnamespace('maintenance')").fetchone() == (None,)
    again = bare_cli("doctor")
    assert again.exit_code == 78
