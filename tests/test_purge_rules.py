"""[[purge]] rules of the policy file: any other table, batched, dry run, ledger, status and
metrics like the four; a `where` checked by migrate and doctor before any run uses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    # A check's line, or (a where the policy model refuses) the one error, which --json gives as
    # {error, exitCode} on stdout as well as the line on stderr.
    document = json.loads(doctor.stdout)
    said = document["checks"][-1]["detail"] if "checks" in document else document["error"]
    assert message in said
    if "error" in document:
        assert document["exitCode"] == 78
        assert doctor.stderr == f"maintctl: error: {document['error']}\n"
    assert run.exit_code == 78
    assert len(levels(conn)) == 4
    with psycopg.connect(conn.info.dsn) as other:
        assert count(other, "select count(*) from maintenance.runs") == 0


def add_old_entries(conn: Conn, how_many: int) -> None:
    conn.execute(
        "insert into audit_log (level, created_at, message) "
        "select 'info', now() - interval '100 days', repeat('m', 100) "
        "from generate_series(1, %s)",
        [how_many],
    )


OLD_ENTRIES = "select count(*) from audit_log where level = 'info'"


def purge_audit_log(cli: Cli, *args: str, env: dict[str, str | None] | None = None) -> Any:
    result = cli("purge", "audit-log", "--json", *args, env=env)
    document = json.loads(result.stdout)
    document["exitCode"], document["stderr"] = result.exit_code, result.stderr
    return document


def test_a_purge_rule_reports_its_wal_and_gate_waits_in_the_json_and_the_ledger(
    audited: Cli, conn: Conn
) -> None:
    add_old_entries(conn, 500)

    document = purge_audit_log(audited)

    (task,) = document["tasks"]
    assert (document["exitCode"], task["rows"]) == (0, 500), document["stderr"]
    assert task["walBytes"] > 500 * 24  # at least a WAL record's header per deleted row
    assert task["throttledMs"] == 0
    assert document["walBytes"] == task["walBytes"]
    recorded = conn.execute(
        "select tasks from maintenance.runs where id = %s", [document["runId"]]
    ).fetchone()
    assert recorded is not None
    assert recorded[0][0]["walBytes"] == task["walBytes"]


def test_max_rows_stops_a_purge_rule_and_the_next_run_carries_on(audited: Cli, conn: Conn) -> None:
    add_old_entries(conn, 250)

    first = purge_audit_log(audited, "--max-rows", "100", "--batch-size", "30")
    in_run = json.loads(audited("run", "--json", "--max-rows", "100").stdout)
    last = purge_audit_log(audited, env={"MAINTCTL_MAX_ROWS": "100"})

    (task,) = first["tasks"]
    assert (task["status"], task["rows"], task["remaining"]) == ("stopped", 100, 150)
    assert task["error"] == "max rows reached (MAINTCTL_MAX_ROWS); the next run carries on"
    assert (in_run["tasks"][-1]["task"], in_run["tasks"][-1]["rows"]) == ("audit-log", 100)
    assert (last["tasks"][0]["status"], last["tasks"][0]["rows"]) == ("ok", 50)
    assert count(conn, OLD_ENTRIES) == 0


def test_the_anomaly_guard_refuses_a_purge_rule_far_above_its_recent_runs(
    audited: Cli, conn: Conn
) -> None:
    for _ in range(3):
        add_old_entries(conn, 100)
        assert purge_audit_log(audited)["tasks"][0]["rows"] == 100
    add_old_entries(conn, 2500)  # the baseline is MIN_BASELINE, 1,000 rows

    refused = purge_audit_log(audited, env={"MAINTCTL_ANOMALY_FACTOR": "2"})
    in_run = json.loads(audited("run", "--json", env={"MAINTCTL_ANOMALY_FACTOR": "2"}).stdout)
    forced = purge_audit_log(audited, "--force", env={"MAINTCTL_ANOMALY_FACTOR": "2"})

    (task,) = refused["tasks"]
    assert (refused["exitCode"], task["status"], task["rows"]) == (1, "failed", 0)
    assert task["error"].startswith("refused: 2,500 rows eligible, 2x the most the last 3 runs")
    assert (in_run["tasks"][-1]["task"], in_run["tasks"][-1]["status"]) == ("audit-log", "failed")
    assert (forced["exitCode"], forced["tasks"][0]["rows"]) == (0, 2500)
    assert count(conn, OLD_ENTRIES) == 0


def test_an_entry_another_table_refers_to_is_left_named_and_the_rest_of_the_rule_runs(
    audited: Cli, conn: Conn
) -> None:
    # A [[purge]] rule's table is split around a blocked row as the four rules' are
    # (tests/test_blocked_rows.py).
    for age in ("100 days", "99 days", "98 days", "97 days", "96 days"):
        conn.execute(
            "insert into audit_log (level, created_at) values ('info', now() - %s::interval)",
            [age],
        )
    kept = count(conn, "select id from audit_log order by created_at offset 2 limit 1")
    conn.execute("create table incident (entry bigint references audit_log on delete restrict)")
    conn.execute("insert into incident values (%s)", [kept])

    result = audited("purge", "audit-log", "--json", "--batch-size", "2")

    assert result.exit_code == 1
    task = json.loads(result.stdout)["tasks"][0]
    assert task["rows"] == 4
    assert task["error"].startswith(
        f"1 row(s) could not be changed and were left as they are (first: key {kept}: "
    )
    assert "[constraint incident_entry_fkey]" in task["error"]
    assert [row[0] for row in levels(conn)] == [kept]
