"""Row Level Security (DESIGN.md, "Real databases"): `maintctl grant` gives the maintenance role a
policy letting it see every row of each rule's table where RLS is on, and a run as that role then
changes exactly what a run unaffected by RLS would; a policy that lets the role see only some rows
(a read-only one, a restrictive one) is refused by doctor and by the run, before anything changes.
Never an `ok` with 0 rows."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.conftest import Cli, make_cli
from tests.data import Conn, load_sample, snapshot

TABLES = ("import_runs", "raw_import_items", "temp_uploads", "import_jobs")
# What each table's rule does to it, and its count in the run's JSON.
COUNTS = {
    "import_runs": "stuckRunsMarked",
    "temp_uploads": "tempUploadsPurged",
    "import_jobs": "importJobsCompacted",
    "raw_import_items": "rawItemsPurged",
}


@pytest.fixture
def role(conn: Conn) -> Iterator[str]:
    name = f"maintctl_rls_{os.getpid()}"
    conn.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        for table in TABLES:  # given back, so that the role owns nothing when dropped
            conn.execute(
                sql.SQL("alter table {} owner to current_user").format(sql.Identifier(table))
            )
        conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def enable_row_security(conn: Conn, *, force: bool = False) -> None:
    """RLS on every table, no policy (as Supabase's linter asks of every public table)."""
    for table in TABLES:
        conn.execute(
            sql.SQL("alter table {} enable row level security").format(sql.Identifier(table))
        )
        if force:
            conn.execute(
                sql.SQL("alter table {} force row level security").format(sql.Identifier(table))
            )


def policies(conn: Conn) -> list[tuple[str, str, str, str, str | None]]:
    return [
        tuple(row)
        for row in conn.execute(
            "select tablename::text, policyname::text, cmd, qual, with_check from pg_policies "
            "where schemaname = 'public' order by 1, 2"
        ).fetchall()
    ]


def changed(
    before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]
) -> dict[str, tuple[list[Any], list[Any]]]:
    """Per table, the ids of the rows deleted and of the rows changed."""
    found = {}
    for table in TABLES:
        old = {row[0]: row for row in before[table]}
        new = {row[0]: row for row in after[table]}
        assert set(new) <= set(old), table  # maintctl inserts no application row
        deleted = sorted(set(old) - set(new))
        updated = sorted(key for key in new if new[key] != old[key])
        found[table] = (deleted, updated)
    return found


def doctor_checks(cli: Cli) -> tuple[int, dict[str, str]]:
    result = cli("doctor", "--json")
    checks = {c["check"]: c["detail"] for c in json.loads(result.stdout)["checks"]}
    return result.exit_code, checks


def test_grant_adds_a_policy_where_rls_is_on_and_a_run_as_the_role_changes_exactly_the_rules_rows(
    cli: Cli, conn: Conn, db_url: str, role: str
) -> None:
    load_sample(conn)
    enable_row_security(conn)
    as_role = make_cli(make_conninfo(db_url, user=role))
    dry = json.loads(cli("run", "--dry-run", "--json").stdout)  # the owner: RLS does not apply
    assert all(dry[key] > 0 for key in COUNTS.values()), dry
    before = snapshot(conn)

    granted = cli("grant", role)
    as_json = json.loads(cli("grant", role, "--json").stdout)  # again: the same, idempotent
    doctor_code, checks = doctor_checks(as_role)
    result = as_role("run", "--json")

    assert granted.exit_code == 0, granted.stdout + granted.stderr
    assert (
        "row level security is enabled on import_runs, temp_uploads, import_jobs, "
        f"raw_import_items: created policy maintctl_{role} on each, for role {role}, using (true) "
        "with check (true)"
    ) in " ".join(granted.stdout.split())
    assert as_json["rowSecurityPolicy"] == f"maintctl_{role}"
    assert sorted(as_json["rowSecurityTables"]) == sorted(TABLES)
    assert policies(conn) == [
        (table, f"maintctl_{role}", "ALL", "true", "true") for table in sorted(TABLES)
    ]
    assert doctor_code == 0, checks
    assert checks["row security"].split("; ") == [
        f"{table}: enabled, applies to this role, whose policies let every row through for "
        "DELETE, SELECT, UPDATE"
        for table in ("import_runs", "temp_uploads", "import_jobs", "raw_import_items")
    ]
    assert result.exit_code == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert [task["status"] for task in document["tasks"]] == ["ok"] * 4
    assert {key: document[key] for key in COUNTS.values()} == {
        key: dry[key] for key in COUNTS.values()
    }
    # Exactly the rows the owner's dry run counted: deleted where the rule deletes, updated
    # where it updates, nothing else.
    found = changed(before, snapshot(conn))
    assert {table: (len(d), len(u)) for table, (d, u) in found.items()} == {
        "import_runs": (0, dry["stuckRunsMarked"]),
        "temp_uploads": (dry["tempUploadsPurged"], 0),
        "import_jobs": (0, dry["importJobsCompacted"]),
        "raw_import_items": (dry["rawItemsPurged"], 0),
    }
    after = json.loads(cli("status", "--json").stdout)  # the owner sees every row
    assert (after["stuckRuns"], after["oldTempUploads"], after["oldRawItems"]) == (0, 0, 0)
    assert after["oldImportJobs"] == 0


def test_revoke_drops_the_policy_grant_created(cli: Cli, conn: Conn, role: str) -> None:
    enable_row_security(conn)
    conn.execute("create policy app_reads on temp_uploads for select using (true)")
    assert cli("grant", role).exit_code == 0

    revoked = cli("grant", role, "--revoke")

    assert revoked.exit_code == 0, revoked.stdout + revoked.stderr
    assert "dropped policy maintctl_" in revoked.stdout
    assert policies(conn) == [("temp_uploads", "app_reads", "SELECT", "true", None)]


def test_forced_rls_for_the_owner_works_through_the_policy_grant_creates(
    cli: Cli, conn: Conn, db_url: str, role: str
) -> None:
    load_sample(conn)
    for table in TABLES:
        conn.execute(
            sql.SQL("alter table {} owner to {}").format(
                sql.Identifier(table), sql.Identifier(role)
            )
        )
    assert cli("grant", role).exit_code == 0  # RLS is off yet: no policy
    enable_row_security(conn, force=True)
    owner = make_cli(make_conninfo(db_url, user=role))
    dry = json.loads(cli("run", "--dry-run", "--json").stdout)  # the superuser: not affected
    refused_code, refused = doctor_checks(owner)
    refused_run = json.loads(owner("run", "--dry-run", "--json").stdout)
    before = snapshot(conn)

    assert cli("grant", role).exit_code == 0  # again, now that RLS is on
    doctor_code, checks = doctor_checks(owner)
    result = owner("run", "--json")

    assert refused_code == 78
    assert refused["safety"].startswith("row level security (FORCE) on import_runs applies")
    assert [task["status"] for task in refused_run["tasks"]] == ["failed"] * 4
    assert doctor_code == 0, checks
    assert "temp_uploads: enabled (FORCE), applies to this role, whose" in checks["row security"]
    assert result.exit_code == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert {key: document[key] for key in COUNTS.values()} == {
        key: dry[key] for key in COUNTS.values()
    }
    found = changed(before, snapshot(conn))
    assert len(found["temp_uploads"][0]) == dry["tempUploadsPurged"] > 0
    assert len(found["import_runs"][1]) == dry["stuckRunsMarked"] > 0


@pytest.mark.parametrize(
    "policy",
    [
        # Reads every row, changes none: UPDATE and DELETE would find nothing.
        "create policy reads on temp_uploads for select to {role} using (true)",
        # Every command, but only some rows.
        "create policy some_rows on temp_uploads for all to {role} "
        "using (storage_path like 'keep/%')",
    ],
)
def test_a_policy_that_hides_rows_from_the_role_is_refused_by_doctor_and_run_nothing_changed(
    cli: Cli, conn: Conn, db_url: str, role: str, policy: str
) -> None:
    load_sample(conn)
    assert cli("grant", role).exit_code == 0  # before RLS is on: grant creates no policy
    enable_row_security(conn)
    conn.execute(sql.SQL(policy).format(role=sql.Identifier(role)))
    as_role = make_cli(make_conninfo(db_url, user=role))
    before = snapshot(conn)

    doctor_code, checks = doctor_checks(as_role)
    result = as_role("run", "--json")

    assert doctor_code == 78
    assert checks["safety"].startswith("row level security on import_runs applies to this role")
    assert (
        "temp needs every row for SELECT, UPDATE, DELETE, but no policy of this role"
        in (checks["safety"])
    )
    assert result.exit_code == 1, result.stdout + result.stderr
    tasks = json.loads(result.stdout)["tasks"]
    assert [(task["status"], task["rows"]) for task in tasks] == [("failed", 0)] * 4
    temp = next(task for task in tasks if task["task"] == "temp")
    assert temp["error"].startswith("row level security on temp_uploads applies to this role")
    assert snapshot(conn) == before


def test_a_restrictive_policy_narrowing_the_grant_policy_is_refused(
    cli: Cli, conn: Conn, db_url: str, role: str
) -> None:
    load_sample(conn)
    enable_row_security(conn)
    assert cli("grant", role).exit_code == 0
    conn.execute(
        sql.SQL(
            "create policy tenant on temp_uploads as restrictive for all to {} "
            "using (storage_path like 'keep/%')"
        ).format(sql.Identifier(role))
    )
    as_role = make_cli(make_conninfo(db_url, user=role))
    before = snapshot(conn)

    doctor_code, checks = doctor_checks(as_role)
    result = as_role("run", "--json")

    assert doctor_code == 78
    assert checks["safety"].startswith(
        f"row level security on temp_uploads applies to this role (policies: maintctl_{role} "
        "(ALL), tenant (ALL)): temp needs every row for SELECT, UPDATE, DELETE, but restrictive "
        "tenant hide rows"
    )
    tasks = {task["task"]: task for task in json.loads(result.stdout)["tasks"]}
    assert (tasks["temp"]["status"], tasks["temp"]["rows"]) == ("failed", 0)
    assert [tasks[name]["status"] for name in ("stuck", "compact", "raw")] == ["ok"] * 3
    assert snapshot(conn)["temp_uploads"] == before["temp_uploads"]
