"""[[purge]] rules of the policy file: any other table, batched, dry run, ledger, status and
metrics like the four; a `where` checked by migrate and doctor before any run uses it."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Cli
from tests.data import Conn, count

AUDIT_LOG = """
create table audit_log (
  id         bigint generated always as identity primary key,
  created_at timestamptz not null default now(),
  level      text not null,
  message    text
);
"""
POLICY = """
[[purge]]
name = "audit-log"
table = "audit_log"
time_column = "created_at"
older_than = "90d"
where = "level <> 'security'"
"""


def add_entries(conn: Conn) -> None:
    for level, age in (
        ("info", "90 days 1 minute"),
        ("info", "91 days"),
        ("security", "200 days"),  # kept by the where
        ("info", "89 days 23 hours"),  # inside the threshold
    ):
        conn.execute(
            "insert into audit_log (level, created_at) values (%s, now() - %s::interval)",
            [level, age],
        )


@pytest.fixture
def audited(cli: Cli, conn: Conn, tmp_path: Path) -> Cli:
    conn.execute(AUDIT_LOG)
    (tmp_path / "maintctl.toml").write_text(POLICY)
    migrated = cli("migrate")
    assert migrated.exit_code == 0, migrated.stderr
    return cli


def levels(conn: Conn) -> list[tuple[int, str]]:
    return conn.execute("select id, level from audit_log order by id").fetchall()


def test_a_purge_rule_deletes_exactly_what_it_selects_in_run_and_alone(
    audited: Cli, conn: Conn
) -> None:
    add_entries(conn)

    dry = json.loads(audited("purge", "audit-log", "--dry-run", "--json").stdout)
    status = json.loads(audited("status", "--json").stdout)
    run = json.loads(audited("run", "--json", "--batch-size", "1").stdout)
    again = json.loads(audited("purge", "audit-log", "--json").stdout)
    history = json.loads(audited("history", "--json").stdout)

    assert dry["tasks"][0]["task"] == "audit-log"
    assert dry["tasks"][0]["rows"] == 2
    assert status["purge"] == {"audit-log": 2}
    assert status["thresholds"]["purge"] == {"audit-log": "90d"}
    assert [t["task"] for t in run["tasks"]] == ["stuck", "temp", "compact", "raw", "audit-log"]
    assert run["tasks"][-1]["rows"] == 2
    assert run["tasks"][-1]["batches"] >= 2
    assert levels(conn) == [(3, "security"), (4, "info")]
    assert again["tasks"][0]["rows"] == 0
    assert history[0]["command"] == "purge audit-log"
    assert (
        count(
            conn,
            "select count(*) from pg_index where indisvalid "
            "and indexrelid = 'maintctl_audit_log_purge_audit_log'::regclass",
        )
        == 1
    )


def test_older_than_on_the_command_line_beats_the_entry(audited: Cli, conn: Conn) -> None:
    add_entries(conn)

    result = json.loads(audited("purge", "audit-log", "--older-than", "150d", "--json").stdout)

    assert result["tasks"][0]["rows"] == 0
    assert audited("purge", "audit-log", "--older-than", "30m").exit_code == 2


def test_an_unknown_purge_rule_is_refused_naming_the_nearest(audited: Cli) -> None:
    result = audited("purge", "audit-logs")

    assert result.exit_code == 78
    assert result.stderr == (
        "maintctl: error: no [[purge]] rule named 'audit-logs' in the policy file "
        "(did you mean audit-log?)\n"
    )


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("level <> 'x'; drop table audit_log", "where may not hold ;"),
        ("level", "argument of WHERE must be type boolean"),
        ("id in (select id from import_runs)", "cannot use subquery in index predicate"),
        ("created_at < now()", "functions in index predicate must be marked IMMUTABLE"),
        ("colour = 'red'", 'column "colour" does not exist'),
    ],
)
def test_a_bad_where_is_refused_by_migrate_and_doctor_and_nothing_runs(
    cli: Cli, conn: Conn, tmp_path: Path, where: str, message: str
) -> None:
    conn.execute(AUDIT_LOG)
    add_entries(conn)
    policy = POLICY.replace("where = \"level <> 'security'\"", f"where = {json.dumps(where)}")
    (tmp_path / "maintctl.toml").write_text(policy)

    migrated = cli("migrate")
    doctor = cli("doctor", "--json")
    run = cli("run")

    assert migrated.exit_code == 78
    assert message in migrated.stderr
    assert migrated.stderr.count("\n") == 1
    assert doctor.exit_code == 78
    # A check's line, or (a where the policy model refuses) the one error line.
    said = json.loads(doctor.stdout)["checks"][-1]["detail"] if doctor.stdout else doctor.stderr
    assert message in said
    assert run.exit_code == 78
    assert len(levels(conn)) == 4
    with psycopg.connect(conn.info.dsn) as other:
        assert count(other, "select count(*) from maintenance.runs") == 0
