"""What would make a run do nothing, see only some rows or fail (DESIGN.md, "Real databases"),
named by doctor first: Row Level Security that applies to maintctl's role (the role `maintctl
grant` sets up, with no policy or a read-only one; FORCE for the owner), a column compact clears
that is NOT NULL, a table a FOR ALL TABLES publication replicates without a replica identity."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.conftest import Cli, make_cli
from tests.data import Conn, add_temp_upload, count


def doctor_failure(cli: Cli) -> str:
    result = cli("doctor", "--json")
    assert result.exit_code == 78, result.stdout
    failed: dict[str, Any] = json.loads(result.stdout)["checks"][-1]
    assert failed["check"] == "safety"
    return str(failed["detail"])


@pytest.fixture
def role(conn: Conn) -> Iterator[str]:
    name = f"maintctl_rls_{os.getpid()}"
    conn.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def test_row_level_security_that_applies_to_the_granted_role_is_named_by_doctor(
    cli: Cli, conn: Conn, db_url: str, role: str
) -> None:
    add_temp_upload(conn, "25 hours")
    assert cli("grant", role).exit_code == 0
    as_role = make_cli(make_conninfo(db_url, user=role))
    conn.execute("alter table temp_uploads enable row level security")

    hidden = doctor_failure(as_role)
    conn.execute(
        sql.SQL("create policy reads on temp_uploads for select to {} using (true)").format(
            sql.Identifier(role)
        )
    )
    read_only = doctor_failure(as_role)
    as_owner = cli("doctor", "--json")  # the owner (here a superuser) is not affected

    assert hidden == (
        "row level security on temp_uploads applies to this role (policies: none: it hides "
        "every row): temp needs every row for SELECT, UPDATE, DELETE, but no policy of this "
        "role lets every row through for SELECT, UPDATE, DELETE, so it would see and change "
        f"only the rows those allow; run maintctl grant {role} as the table's owner (it adds a "
        "policy letting the role see every row), run maintctl as the table's owner, or give "
        "the role BYPASSRLS"
    )
    assert (
        "(policies: reads (SELECT)): temp needs every row for SELECT, UPDATE, DELETE, but no "
        "policy of this role lets every row through for UPDATE, DELETE, so"
    ) in read_only
    assert as_owner.exit_code == 0, as_owner.stdout
    notes = {c["check"]: c["detail"] for c in json.loads(as_owner.stdout)["checks"]}
    assert notes["row security"].split("; ") == [
        "import_runs: off",
        "temp_uploads: enabled, not applied to this role (owner or BYPASSRLS)",
        "import_jobs: off",
        "raw_import_items: off",
    ]
    assert count(conn, "select count(*) from temp_uploads") == 1


def test_forced_row_level_security_applies_to_the_owner_too(
    cli: Cli, conn: Conn, db_url: str, role: str
) -> None:
    assert cli("grant", role).exit_code == 0
    conn.execute(sql.SQL("alter table temp_uploads owner to {}").format(sql.Identifier(role)))
    conn.execute("alter table temp_uploads enable row level security")
    owner = make_cli(make_conninfo(db_url, user=role))
    assert owner("doctor").exit_code == 0  # the owner bypasses it...

    conn.execute("alter table temp_uploads force row level security")

    assert doctor_failure(owner).startswith(  # ...unless it is forced
        "row level security (FORCE) on temp_uploads applies to this role"
    )


def test_a_not_null_column_compact_clears_is_named(cli: Cli, conn: Conn) -> None:
    conn.execute("update import_jobs set payload = '{}' where payload is null")
    conn.execute("alter table import_jobs alter column payload set not null")

    assert doctor_failure(cli) == (
        "compact clears import_jobs.payload, which is NOT NULL; set [rules.compact] clear to "
        "the columns that may be null"
    )


def test_a_table_replicated_without_a_replica_identity_is_named(cli: Cli, conn: Conn) -> None:
    conn.execute("alter table temp_uploads replica identity nothing")
    assert cli("doctor").exit_code == 0  # no publication: nothing to replicate
    conn.execute("create publication everything for all tables")
    try:
        assert doctor_failure(cli) == (
            "temp_uploads has no replica identity and a publication replicates its updates and "
            "deletes: temp's would fail; give it a primary key or ALTER TABLE ... REPLICA "
            "IDENTITY"
        )
    finally:
        conn.execute("drop publication everything")


def test_a_run_as_the_affected_role_fails_that_rule_untouched_and_runs_the_others(
    cli: Cli, conn: Conn, db_url: str, role: str
) -> None:
    old = add_temp_upload(conn, "25 hours")
    stuck = conn.execute(
        "insert into import_runs (status, heartbeat_at) values "
        "('processing', now() - interval '25 hours') returning id"
    ).fetchone()
    assert cli("grant", role).exit_code == 0
    conn.execute("alter table temp_uploads enable row level security")
    as_role = make_cli(make_conninfo(db_url, user=role))

    result = as_role("run", "--json")

    assert result.exit_code == 1, result.stdout + result.stderr
    tasks = {task["task"]: task for task in json.loads(result.stdout)["tasks"]}
    assert (tasks["temp"]["status"], tasks["temp"]["rows"]) == ("failed", 0)
    assert tasks["temp"]["error"].startswith("row level security on temp_uploads applies")
    assert (tasks["stuck"]["status"], tasks["stuck"]["rows"]) == ("ok", 1)
    assert count(conn, "select count(*) from temp_uploads where id = %s", [old]) == 1
    assert stuck is not None
    failed = "select count(*) from import_runs where id = %s and status = 'failed'"
    assert count(conn, failed, [stuck[0]]) == 1
