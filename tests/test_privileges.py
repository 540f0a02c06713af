"""`maintctl grant ROLE`: a least-privilege role runs maintenance, and can do nothing more."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from maintctl.cli import app
from tests.conftest import Cli, CliResult
from tests.data import Conn, count, load_sample

# Everything the role holds in this database: its table, sequence, routine and schema privileges,
# and default privileges in its name. Empty for a role nobody granted anything.
HELD = """
select 'table ' || n.nspname || '.' || c.relname || ' ' || a.privilege_type
  from pg_class c join pg_namespace n on n.oid = c.relnamespace,
       aclexplode(c.relacl) a
 where a.grantee = %(role)s::regrole
union all
select 'routine ' || p.oid::regprocedure::text
  from pg_proc p, aclexplode(p.proacl) a
 where a.grantee = %(role)s::regrole
union all
select 'schema ' || n.nspname || ' ' || a.privilege_type
  from pg_namespace n, aclexplode(n.nspacl) a
 where a.grantee = %(role)s::regrole
union all
select 'default ' || d.defaclobjtype::text || ' ' || a.privilege_type
  from pg_default_acl d, aclexplode(d.defaclacl) a
 where a.grantee = %(role)s::regrole
order by 1
"""


@pytest.fixture
def runner_role(conn: Conn) -> Iterator[str]:
    """A role that owns nothing, made NOLOGIN as a DBA would start it (cluster-wide, so named for
    this process)."""
    name = f"maintctl_runner_{os.getpid()}"
    role = sql.Identifier(name)
    conn.execute(sql.SQL("create role {} nologin").format(role))
    try:
        yield name
    finally:
        conn.execute(sql.SQL("drop owned by {}").format(role))
        conn.execute(sql.SQL("drop role {}").format(role))


def as_role(url: str, *args: str) -> CliResult:
    result = CliRunner().invoke(app, list(args), env={"MAINTCTL_DATABASE_URL": url})
    return CliResult(result.exit_code, result.stdout, result.stderr)


def held(conn: Conn, role: str) -> list[str]:
    return [row[0] for row in conn.execute(HELD, {"role": role}).fetchall()]


def test_a_granted_role_runs_maintenance_and_can_do_nothing_more(
    cli: Cli, conn: Conn, db_url: str, runner_role: str
) -> None:
    load_sample(conn)
    conn.execute("create table customers (id int primary key, email text)")
    conn.execute("insert into customers values (1, 'a@example.com')")
    role = sql.Identifier(runner_role)

    granted = cli("grant", runner_role, "--json")
    conn.execute(sql.SQL("alter role {} login").format(role))
    url = make_conninfo(db_url, user=runner_role)
    healthy = as_role(url, "doctor")
    ran = as_role(url, "run", "--json")
    status = as_role(url, "status", "--json")
    history = as_role(url, "history", "--json")

    assert granted.exit_code == 0, granted.stderr
    assert json.loads(granted.stdout) == {
        "role": runner_role,
        "action": "granted",
        "appSchema": "public",
        "canVacuum": conn.info.server_version >= 170000,
        "statsRefused": None,
        "rowSecurityPolicy": None,  # no table has Row Level Security: no policy
        "rowSecurityTables": [],
    }
    assert healthy.exit_code == 0, healthy.stdout
    assert ran.exit_code == 0, ran.stderr
    document = json.loads(ran.stdout)
    assert {
        key: document[key] for key in document if key.endswith(("Marked", "Purged", "Compacted"))
    } == {
        "stuckRunsMarked": 15,
        "tempUploadsPurged": 289,
        "importJobsCompacted": 210,
        "rawItemsPurged": 250,
    }
    assert status.exit_code == 0, status.stderr
    assert json.loads(status.stdout)["lastRun"]["status"] == "succeeded"
    assert history.exit_code == 0, history.stderr
    assert [run["status"] for run in json.loads(history.stdout)] == ["succeeded"]

    forbidden = {
        "drop an application table": "drop table import_runs",
        "truncate one": "truncate temp_uploads",
        "insert into one": "insert into import_runs (status) values ('pending')",
        "read a table maintctl never touches": "select * from customers",
        "create objects in public": "create table public.mine (id int)",
        "create objects in maintenance": "create table maintenance.mine (id int)",
        "fake a migration": "insert into maintenance.schema_migrations values (99, 'x', 'p', 'v')",
        "fake the generated rules": "update maintenance.installed_rules set fingerprint = 'x'",
        "drop the pause switch's row": "delete from maintenance.pause",
        "drop maintctl's ledger": "drop table maintenance.runs",
    }
    allowed = []
    with psycopg.connect(url, autocommit=True) as session:
        for what, statement in forbidden.items():
            try:
                session.execute(statement)
                allowed.append(what)
            except errors.InsufficientPrivilege:
                pass
    assert allowed == []
    assert count(conn, "select count(*) from customers") == 1


def test_grant_is_idempotent_and_revoke_takes_back_exactly_what_it_gave(
    cli: Cli, conn: Conn, db_url: str, runner_role: str
) -> None:
    conn.execute(sql.SQL("alter role {} login").format(sql.Identifier(runner_role)))
    # Something the role held before, which revoke must leave alone.
    conn.execute("create table reports (id int)")
    conn.execute(sql.SQL("grant select on reports to {}").format(sql.Identifier(runner_role)))
    before = held(conn, runner_role)

    assert cli("grant", runner_role).exit_code == 0
    once = held(conn, runner_role)
    assert cli("grant", runner_role).exit_code == 0
    twice = held(conn, runner_role)
    revoked = cli("grant", runner_role, "--revoke")
    after = held(conn, runner_role)
    refused = as_role(make_conninfo(db_url, user=runner_role), "status")

    assert once == twice
    assert "table public.import_runs UPDATE" in once
    assert "table public.temp_uploads DELETE" in once
    assert "table public.import_runs DELETE" not in once
    assert "table maintenance.schema_migrations SELECT" in once
    assert "table maintenance.schema_migrations INSERT" not in once
    assert "table maintenance.installed_rules SELECT" in once
    assert "table maintenance.installed_rules UPDATE" not in once
    assert any(line.startswith("routine maintenance.mark_stuck_runs_step") for line in once)
    assert revoked.exit_code == 0, revoked.stderr
    assert revoked.stdout == f"revoked maintctl's privileges from role {runner_role}\n"
    assert after == before == ["table public.reports SELECT"]
    assert refused.exit_code == 77


def test_grant_covers_objects_a_later_migration_adds(
    cli: Cli, conn: Conn, db_url: str, runner_role: str
) -> None:
    assert cli("grant", runner_role).exit_code == 0
    # What a later migration would add, created by the same owner after the grant.
    conn.execute("create table maintenance.leases (name text primary key, holder text)")
    conn.execute(
        "create function maintenance.lease_holder() returns text language sql "
        "set search_path = pg_catalog, pg_temp as $$ select 'x' $$"
    )
    conn.execute(sql.SQL("alter role {} login").format(sql.Identifier(runner_role)))

    with psycopg.connect(make_conninfo(db_url, user=runner_role), autocommit=True) as session:
        session.execute("insert into maintenance.leases values ('run', 'me')")
        holder = session.execute("select maintenance.lease_holder()").fetchone()

    assert holder == ("x",)


@pytest.mark.parametrize(
    ("role", "message"),
    [
        ("maintctl_no_such_role", "role 'maintctl_no_such_role' does not exist; create it first"),
        ("anon", "refusing to grant maintenance to 'anon': use a role of its own"),
        ("public", "refusing to grant maintenance to 'public'"),
        ("pg_read_all_data", "refusing to grant maintenance to 'pg_read_all_data'"),
    ],
)
def test_grant_refuses_a_missing_or_shared_role(
    cli: Cli, conn: Conn, role: str, message: str
) -> None:
    acl = conn.execute(
        "select c.relname, c.relacl::text from pg_class c where c.relnamespace in "
        "('maintenance'::regnamespace, 'public'::regnamespace) order by 1"
    ).fetchall()

    result = cli("grant", role)

    assert result.exit_code == 78
    assert result.stderr.startswith(f"maintctl: error: {message}")
    assert result.stderr.count("\n") == 1
    assert (
        conn.execute(
            "select c.relname, c.relacl::text from pg_class c where c.relnamespace in "
            "('maintenance'::regnamespace, 'public'::regnamespace) order by 1"
        ).fetchall()
        == acl
    )


def test_the_granted_role_cannot_delete_the_run_lease_and_a_missing_row_comes_back(
    cli: Cli, conn: Conn, db_url: str, runner_role: str
) -> None:
    assert cli("grant", runner_role).exit_code == 0
    conn.execute(sql.SQL("alter role {} login").format(sql.Identifier(runner_role)))
    url = make_conninfo(db_url, user=runner_role)
    refused = []
    with psycopg.connect(url, autocommit=True) as session:
        for statement in ("delete from maintenance.run_lease", "truncate maintenance.run_lease"):
            try:
                session.execute(statement)
            except errors.InsufficientPrivilege:
                refused.append(statement)
    conn.execute("delete from maintenance.run_lease")  # the owner still can: it comes back
    after_delete = count(conn, "select count(*) from maintenance.run_lease")
    conn.execute("truncate maintenance.run_lease")
    after_truncate = count(conn, "select count(*) from maintenance.run_lease")
    ran = as_role(url, "run", "--json")
    # Gone behind the triggers' back: doctor says so.
    conn.execute("alter table maintenance.run_lease disable trigger user")
    conn.execute("delete from maintenance.run_lease")
    missing = as_role(url, "doctor", "--json")
    refused_run = as_role(url, "run", "--quiet")

    assert len(refused) == 2
    assert after_delete == after_truncate == 1
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout)["skipped"] is None
    sentence = (
        "maintenance.run_lease has no row, so no run can take the lease: as the owner, "
        "insert into maintenance.run_lease default values"
    )
    lease = next(c for c in json.loads(missing.stdout)["checks"] if c["check"] == "run lease")
    assert (missing.exit_code, lease["verdict"], lease["detail"]) == (78, "fail", sentence)
    assert (refused_run.exit_code, refused_run.stderr) == (78, f"maintctl: error: {sentence}\n")


def test_doctor_fails_for_a_role_that_may_delete_the_run_lease_and_migrate_takes_it_back(
    cli: Cli, conn: Conn, db_url: str, runner_role: str
) -> None:
    role = sql.Identifier(runner_role)
    assert cli("grant", runner_role).exit_code == 0
    # What grant gave before migration 0010: DELETE on every table of the schema.
    conn.execute(sql.SQL("grant insert, delete on maintenance.run_lease to {}").format(role))
    conn.execute(sql.SQL("alter role {} login").format(role))
    url = make_conninfo(db_url, user=runner_role)

    flagged = as_role(url, "doctor", "--json")
    conn.execute("delete from maintenance.schema_migrations where version = 10")
    conn.execute("drop function maintenance.restore_run_lease_row() cascade")  # and its triggers
    assert cli("migrate").exit_code == 0
    healthy = as_role(url, "doctor", "--json")

    assert flagged.exit_code == 78
    lease = next(c for c in json.loads(flagged.stdout)["checks"] if c["check"] == "run lease")
    assert lease["ok"] is False
    assert "may delete maintenance.run_lease's row" in lease["detail"]
    assert healthy.exit_code == 0, healthy.stdout
    assert "table maintenance.run_lease DELETE" not in held(conn, runner_role)


def test_vacuum_as_the_granted_role_works_from_17_and_before_doctor_and_grant_say_why_not(
    cli: Cli, conn: Conn, db_url: str, runner_role: str
) -> None:
    conn.execute(
        "insert into temp_uploads (created_at, storage_path) "
        "select now() - interval '2 days', 'f' || n from generate_series(1, 2000) n"
    )
    maintain = conn.info.server_version >= 170000
    granted = cli("grant", runner_role)
    conn.execute(sql.SQL("alter role {} login").format(sql.Identifier(runner_role)))
    url = make_conninfo(db_url, user=runner_role)

    doctor = as_role(url, "doctor", "--json")
    ran = as_role(url, "purge-temp", "--vacuum", "--json")

    assert granted.exit_code == 0, granted.stderr
    line = next(c for c in json.loads(doctor.stdout)["checks"] if c["check"] == "vacuum")
    [vacuumed] = json.loads(ran.stdout)["vacuum"]
    assert ran.exit_code == 0, ran.stderr
    if maintain:
        assert "and MAINTAIN on them, so that run --vacuum can VACUUM them" in granted.stdout
        assert line["verdict"] == "ok"
        assert vacuumed["status"] == "ok", vacuumed
        assert "table public.temp_uploads MAINTAIN" in held(conn, runner_role)
    else:
        assert "note: before PostgreSQL 17 only the tables' owner can VACUUM them" in (
            granted.stdout
        )
        assert line["verdict"] == "warn"
        assert line["detail"] == (
            "run --vacuum cannot VACUUM import_runs, temp_uploads, import_jobs, raw_import_items "
            "as this role (before PostgreSQL 17 only their owner can: run --vacuum as the owner, "
            "or leave it to autovacuum)"
        )
        assert vacuumed["status"] == "failed"
    assert cli("grant", runner_role, "--revoke").exit_code == 0
    assert held(conn, runner_role) == []
