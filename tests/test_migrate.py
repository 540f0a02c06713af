"""`maintctl migrate`: what it installs, idempotence, concurrency and the hardening."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from maintctl.sqlfiles import migrations
from tests.conftest import Cli
from tests.data import Conn, count


def test_migrate_says_what_it_did_and_a_second_time_nothing(bare_cli: Cli) -> None:
    first = bare_cli("migrate")

    assert first.exit_code == 0, first.stderr
    assert first.stdout.splitlines()[:4] == [
        "applied 0001_maintenance_schema",
        "applied 0002_rules",
        "applied 0003_indexes",
        "applied 0004_run_lease",
    ]
    second = bare_cli("migrate", "--json")
    assert second.exit_code == 0
    assert json.loads(second.stdout) == {
        "applied": [],
        "alreadyApplied": len(migrations()),
        "appSchema": "public",
        "rulesInstalled": False,
    }
    assert bare_cli("status").exit_code == 0


def test_migrate_adds_compacted_at_and_the_indexes(conn: Conn) -> None:
    column = count(
        conn,
        "select count(*) from information_schema.columns "
        "where table_name = 'import_jobs' and column_name = 'compacted_at'",
    )
    indexes = conn.execute(
        "select c.relname, i.indisvalid from pg_index i join pg_class c on c.oid = i.indexrelid "
        "where c.relname like 'maintctl_%' order by 1"
    ).fetchall()
    assert column == 1
    assert indexes == [
        ("maintctl_import_jobs_compactable_key", True),
        ("maintctl_import_runs_failed", True),
        ("maintctl_import_runs_processing", True),
        ("maintctl_raw_import_items_run_id_id", True),
        ("maintctl_temp_uploads_created_at_id", True),
    ]


def test_two_migrates_at_once_apply_each_migration_once(bare_db_url: str) -> None:
    env = {**os.environ, "MAINTCTL_DATABASE_URL": bare_db_url}
    command = [sys.executable, "-m", "maintctl", "migrate", "--json"]
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outcomes = [process.communicate(timeout=120) for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outcomes
    applied = sorted(len(json.loads(stdout)["applied"]) for stdout, _ in outcomes)
    assert applied == [0, len(migrations())]
    with psycopg.connect(bare_db_url) as conn:
        assert count(conn, "select count(*) from maintenance.schema_migrations") == len(
            migrations()
        )


def test_nothing_is_readable_or_callable_by_public(conn: Conn) -> None:
    public_tables = conn.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'maintenance' and c.relkind in ('r', 'v', 'S') "
        "and exists (select 1 from aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a "
        "            where a.grantee = 0)"
    ).fetchall()
    public_routines = conn.execute(
        "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = 'maintenance' "
        "and exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
        "            where a.grantee = 0)"
    ).fetchall()
    schema_public = count(
        conn,
        "select count(*) from pg_namespace n, aclexplode(n.nspacl) a "
        "where n.nspname = 'maintenance' and a.grantee = 0",
    )
    assert public_tables == []
    assert public_routines == []
    assert schema_public == 0


def test_every_function_pins_search_path_and_the_view_is_security_invoker(conn: Conn) -> None:
    unpinned = conn.execute(
        "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = 'maintenance' and p.prokind = 'f' "
        "and not exists (select 1 from unnest(p.proconfig) c where c like 'search_path=%')"
    ).fetchall()
    functions = count(
        conn,
        "select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = 'maintenance' and p.prokind = 'f'",
    )
    options = conn.execute(
        "select reloptions from pg_class where oid = 'maintenance.maintenance_status'::regclass"
    ).fetchone()
    assert functions >= 10
    assert unpinned == []
    assert options == (["security_invoker=true"],)


# Every object of the maintenance schema, from the catalog, with what some role can do to it.
LEAKS = """
select 'schema maintenance', r.rolname from pg_roles r
 where r.rolname = any(%(roles)s)
   and has_schema_privilege(r.oid, 'maintenance'::text, 'USAGE,CREATE')
union all
select c.relkind::text || ' ' || c.relname, r.rolname
  from pg_class c join pg_namespace n on n.oid = c.relnamespace, pg_roles r
 where n.nspname = 'maintenance' and r.rolname = any(%(roles)s) and c.relkind in ('r','v','m','p')
   and has_table_privilege(r.oid, c.oid,
                           'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')
union all
select 'sequence ' || c.relname, r.rolname
  from pg_class c join pg_namespace n on n.oid = c.relnamespace, pg_roles r
 where n.nspname = 'maintenance' and r.rolname = any(%(roles)s) and c.relkind = 'S'
   and has_sequence_privilege(r.oid, c.oid, 'USAGE,SELECT,UPDATE')
union all
select p.prokind::text || ' ' || p.proname, r.rolname
  from pg_proc p join pg_namespace n on n.oid = p.pronamespace, pg_roles r
 where n.nspname = 'maintenance' and r.rolname = any(%(roles)s)
   and has_function_privilege(r.oid, p.oid, 'EXECUTE')
"""
OUTSIDE_FUNCTIONS = """
select n.nspname || '.' || p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace
 where n.nspname not in ('pg_catalog', 'information_schema', 'maintenance')
 order by 1
"""


def test_supabase_api_roles_and_public_get_nothing(bare_db_url: str, bare_cli: Cli) -> None:
    # A role with no grants of its own can do exactly what PUBLIC can.
    nobody = f"maintctl_nobody_{os.getpid()}"
    roles = ["anon", "authenticated", nobody]
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        for role in roles:
            # Roles are cluster-wide: another test session may have made them already.
            conn.execute(
                sql.SQL(
                    "do $$ begin create role {} nologin; "
                    "exception when duplicate_object then null; end $$"
                ).format(sql.Identifier(role))
            )
        # As on Supabase, where new objects are granted to the API roles by default, in schema
        # public and (as some projects add) everywhere.
        supabase_defaults = [
            f"alter default privileges {scope} {{}} all on {kind} {{}} anon, authenticated"
            for scope in ("", "in schema public")
            for kind in ("tables", "functions", "sequences")
        ]
        for statement in supabase_defaults:
            conn.execute(statement.format("grant", "to"))
        functions_before = conn.execute(OUTSIDE_FUNCTIONS).fetchall()
        try:
            assert bare_cli("migrate").exit_code == 0
            objects = count(
                conn,
                "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = 'maintenance'",
            )
            leaks = conn.execute(LEAKS, {"roles": roles}).fetchall()
            functions_after = conn.execute(OUTSIDE_FUNCTIONS).fetchall()
        finally:
            for statement in supabase_defaults:
                conn.execute(statement.format("revoke", "from"))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(nobody)))
    assert objects >= 5
    assert leaks == []
    assert functions_after == functions_before, "maintctl creates functions only in maintenance"


def test_migrate_refuses_a_missing_application_schema(bare_cli: Cli, bare_db_url: str) -> None:
    result = bare_cli("migrate", "--schema", 'imports"; drop table x; --')

    assert result.exit_code == 78
    assert result.stderr == (
        "maintctl: error: application schema 'imports\"; drop table x; --' not found in "
        f"database {conninfo_to_dict(bare_db_url)['dbname']!r} (set MAINTCTL_SCHEMA or --schema, "
        "or check the database in the URL)\n"
    )


def test_migrate_into_another_application_schema(bare_db_url: str, bare_cli: Cli) -> None:
    from maintctl.sqlfiles import application_schema

    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute('create schema "Imports 2"')
        conn.execute('set search_path = "Imports 2"')
        conn.execute(application_schema())
        conn.execute(
            'insert into "Imports 2".temp_uploads (created_at, storage_path) '
            "values (now() - interval '2 days', 'a')"
        )
        conn.execute(
            "insert into public.temp_uploads (created_at, storage_path) "
            "values (now() - interval '2 days', 'b')"
        )
        env = {"MAINTCTL_SCHEMA": "Imports 2"}
        assert bare_cli("migrate", env=env).exit_code == 0
        document = json.loads(bare_cli("purge-temp", "--json", env=env).stdout)
        wrong_schema = bare_cli("status")

        assert document["tempUploadsPurged"] == 1
        assert count(conn, 'select count(*) from "Imports 2".temp_uploads') == 0
        assert count(conn, "select count(*) from public.temp_uploads") == 1
    assert wrong_schema.exit_code == 78
    assert "serves application schema 'Imports 2', not 'public'" in wrong_schema.stderr


def test_migrate_waits_no_longer_than_the_lock_timeout_and_applies_nothing_half(
    bare_cli: Cli, bare_db_url: str
) -> None:
    with psycopg.connect(bare_db_url) as application:
        application.execute("select count(*) from import_jobs")  # holds ACCESS SHARE

        blocked = bare_cli("migrate", env={"MAINTCTL_LOCK_TIMEOUT": "1s"})

        application.rollback()
        # The migrations touch only maintctl's schema; the rules' generated SQL (which adds
        # compacted_at to import_jobs) is what waits, and none of it is installed. On a first
        # migrate the schema it made goes too: the database is as it was.
        installed = count(
            application, "select count(*) from pg_namespace where nspname = 'maintenance'"
        )
        compacted_at = count(
            application,
            "select count(*) from pg_attribute where attrelid = 'import_jobs'::regclass "
            "and attname = 'compacted_at'",
        )

    assert blocked.exit_code == 1
    assert blocked.stderr == (
        "maintctl: error: gave up waiting for a lock after MAINTCTL_LOCK_TIMEOUT: "
        "canceling statement due to lock timeout\n"
    )
    assert (installed, compacted_at) == (0, 0)
    refused = bare_cli("status")
    assert refused.exit_code == 78
    assert refused.stderr.endswith("run: maintctl migrate\n")
    assert bare_cli("migrate").exit_code == 0
    assert bare_cli("status").exit_code == 0
    # What the README promises, which this test shows: writes wait behind the ALTER TABLE for
    # lock_timeout at most, and migrate gives up without installing the rules.
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    promise = "writes to `import_jobs` queue behind it for up to `MAINTCTL_LOCK_TIMEOUT` (5 s)"
    assert promise in readme
    assert (
        "(exit 1, the rules' SQL not installed: other commands exit 78 with "
        "`run: maintctl migrate`)" in readme
    )
