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
        "statsRefused": None,
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
